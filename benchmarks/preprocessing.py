"""B5: preprocessing. Tokenize-and-pack (llm_recipes.data.text, through `datasets.map` and Arrow) against the raw
Rust tokenizer (`tokenizer.backend_tokenizer.encode_batch`) on the same text; and tokenizer training in MB/s.
"""

from __future__ import annotations

import time
from typing import Any

from .common import Corpus, Scale
from .harness import Figure, alternate, paired_ratios


def b5_preprocessing(corpus: Corpus, scale: Scale) -> list[Figure]:
    from datasets import Dataset

    from llm_recipes.config import TokenizerConfig
    from llm_recipes.data.text import pack_blocks, tokenize_documents
    from llm_recipes.data.tokenizer import train_bpe_tokenizer

    texts = corpus.train_texts(scale.b5_megabytes)
    megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    tokenizer = corpus.tokenizer
    backend = tokenizer.backend_tokenizer

    def raw_encode(repeat: int) -> dict[str, Any]:
        started = time.perf_counter()
        encodings = backend.encode_batch(texts, add_special_tokens=False)
        seconds = time.perf_counter() - started
        tokens = sum(len(e.ids) for e in encodings)
        return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds}

    def tokenize_and_pack(repeat: int) -> dict[str, Any]:
        dataset = Dataset.from_dict({"text": texts})  # in memory: nothing cached between repeats
        started = time.perf_counter()
        tokenized = tokenize_documents(dataset, tokenizer, "text")
        blocks = pack_blocks(tokenized, scale.b1_block)
        seconds = time.perf_counter() - started
        tokens = len(blocks) * scale.b1_block
        return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds,
                "num_proc": "default_num_proc"}

    runs = alternate({"tokenize_and_pack": tokenize_and_pack, "encode_batch": raw_encode}, scale.repeats)
    ratio = paired_ratios([r["tokens_per_second"] for r in runs["tokenize_and_pack"]],
                          [r["tokens_per_second"] for r in runs["encode_batch"]])

    train_runs = []
    for _ in range(scale.repeats):
        started = time.perf_counter()
        train_bpe_tokenizer(texts, TokenizerConfig(vocab_size=scale.vocab_size))
        seconds = time.perf_counter() - started
        train_runs.append({"megabytes": megabytes, "seconds": seconds, "mb_per_second": megabytes / seconds})
    return [
        Figure("B5 tokenize+pack", "tokens/s: tokenize_documents + pack_blocks / raw encode_batch",
               ratio, target=0.5, details={"runs": runs, "megabytes": megabytes, "documents": len(texts)}),
        Figure("B5 tokenizer training", f"BPE training speed, MB/s ({megabytes:.1f} MB, vocab {scale.vocab_size})",
               [r["mb_per_second"] for r in train_runs], unit="MB/s", details={"runs": train_runs},
               note="an absolute speed, not a ratio: no peer to set it against"),
    ]
