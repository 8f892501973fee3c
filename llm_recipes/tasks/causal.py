"""Causal language modelling on packed text: pretraining from scratch and continued pretraining."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from accelerate import Accelerator
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..config import DataConfig, TokenizerConfig
from ..data.sources import DataError
from ..data.text import collate_blocks, prepare_lm_datasets
from ..data.tokenizer import bytes_per_token, load_tokenizer, token_byte_lengths, train_bpe_tokenizer
from ..evaluation import CausalLMEvaluator, unigram_perplexity
from ..generation import sample_completions
from ..modeling import flops_per_token
from ..training import Task


def obtain_tokenizer(
    raw, data_cfg: DataConfig, tok_cfg: TokenizerConfig, accelerator: Accelerator, output_dir, resuming: bool
) -> PreTrainedTokenizerBase:
    """Reuse the configured tokenizer, or train one on the train split (main process first, then shared)."""
    if tok_cfg.tokenizer_name_or_path:
        return load_tokenizer(tok_cfg.tokenizer_name_or_path)
    saved = output_dir / "tokenizer.json"
    with accelerator.main_process_first():
        if accelerator.is_main_process and not (resuming and saved.is_file()):
            texts = (row[data_cfg.text_column] or "" for row in raw["train"])
            tokenizer = train_bpe_tokenizer(texts, tok_cfg, model_max_length=data_cfg.block_size)
            tokenizer.save_pretrained(output_dir)
        tokenizer = load_tokenizer(str(output_dir))
    return tokenizer


def packed_causal_datasets(raw, tokenizer, data_cfg: DataConfig, accelerator: Accelerator) -> dict[str, Any]:
    """Tokenize and pack every split once (main process first; the others read the datasets cache)."""
    with accelerator.main_process_first():
        packed = prepare_lm_datasets(
            raw, tokenizer, data_cfg.text_column, data_cfg.block_size, data_cfg.preprocessing_num_workers
        )
    if "validation" not in packed:
        raise DataError("no validation split: give one or set --validation_fraction above 0")
    return packed


def data_fingerprint(raw_train, tokenizer: PreTrainedTokenizerBase, *settings: Any) -> str:
    """Identifies the training data a run sees: source, tokenizer vocabulary and preprocessing settings."""
    digest = hashlib.sha256(str(getattr(raw_train, "_fingerprint", None)).encode())
    digest.update(tokenizer.backend_tokenizer.to_str().encode() if tokenizer.is_fast else str(tokenizer).encode())
    digest.update(repr(settings).encode())
    return digest.hexdigest()[:16]


def causal_lm_task(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    packed: dict[str, Any],
    sample_prompts: list[str] | None = None,
    sample_max_new_tokens: int = 40,
    fingerprint: str | None = None,
) -> Task:
    token_bytes = token_byte_lengths(tokenizer)
    block_size = packed["train"][0]["input_ids"].shape[-1] if isinstance(packed["train"], Dataset) else None

    def on_evaluate(trained_model, accelerator: Accelerator) -> dict[str, Any] | None:
        if not sample_prompts or not accelerator.is_main_process:
            return None
        sample = sample_completions(
            accelerator.unwrap_model(trained_model), tokenizer, sample_prompts[:1], sample_max_new_tokens
        )[0]
        return {"sample": sample["prompt"] + sample["completion"]}

    train = packed["train"]
    return Task(
        model=model,
        train_dataset=train,
        eval_datasets={k: v for k, v in packed.items() if k != "train"},
        collate_fn=collate_blocks,
        make_evaluator=lambda: CausalLMEvaluator(token_bytes),
        flops_per_token=flops_per_token(model, block_size or 1024),
        on_evaluate=on_evaluate,
        data_fingerprint=fingerprint,
    )


def language_report(tokenizer, raw, packed, vocab_size: int, text_column: str) -> dict[str, float]:
    """Compression on validation text and the unigram (token-frequency) perplexity baseline per eval split."""
    report = {"validation_bytes_per_token": bytes_per_token(tokenizer, raw["validation"][text_column])}
    if isinstance(packed["train"], Dataset):
        train_ids = np.asarray(packed["train"].with_format("numpy")["input_ids"])
        for split in ("validation", "test"):
            if split in packed:
                eval_ids = np.asarray(packed[split].with_format("numpy")["input_ids"])
                report[f"{split}_unigram_perplexity"] = unigram_perplexity(train_ids, eval_ids, vocab_size)
    return report


def sample_prompts_from(raw_validation, text_column: str, count: int, words: int = 4) -> list[str]:
    """The opening words of the first validation documents: prompts in the corpus' own language."""
    prompts = []
    for text in raw_validation[text_column]:
        opening = " ".join((text or "").split()[:words])
        if opening:
            prompts.append(opening)
        if len(prompts) == count:
            break
    return prompts
