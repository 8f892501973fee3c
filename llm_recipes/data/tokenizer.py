"""Tokenizers: train a byte-level BPE vocabulary with `tokenizers`, or load an existing one; measure compression."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from ..config import TokenizerConfig

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
# Byte-level BPE covers every byte, so no unknown token is needed; encoder (MLM) vocabularies add their own specials.
CAUSAL_SPECIAL_TOKENS = {"eos_token": EOS_TOKEN, "bos_token": EOS_TOKEN, "pad_token": PAD_TOKEN}
ENCODER_SPECIAL_TOKENS = {
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "mask_token": "[MASK]",
    "unk_token": "[UNK]",
}


def _limited(texts: Iterable[str], max_bytes: float) -> Iterator[str]:
    seen = 0
    for text in texts:
        if seen >= max_bytes:
            return
        seen += len(text.encode("utf-8"))
        yield text


def train_bpe_tokenizer(
    texts: Iterable[str],
    cfg: TokenizerConfig,
    special_tokens: dict[str, str] | None = None,
    model_max_length: int | None = None,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts`; the result round-trips any string exactly and saves for `AutoTokenizer`."""
    special_tokens = dict(CAUSAL_SPECIAL_TOKENS if special_tokens is None else special_tokens)
    specials = list(dict.fromkeys(special_tokens.values()))
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_limited(texts, cfg.tokenizer_train_max_mb * 1e6), trainer=trainer)
    if "cls_token" in special_tokens:  # encoder: [CLS] text [SEP] (pair: [CLS] a [SEP] b [SEP])
        cls, sep = special_tokens["cls_token"], special_tokens["sep_token"]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}",
            pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, backend.token_to_id(cls)), (sep, backend.token_to_id(sep))],
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, clean_up_tokenization_spaces=False, **special_tokens
    )
    if model_max_length:
        tokenizer.model_max_length = model_max_length
    return tokenizer


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load an existing tokenizer and make sure it can pad and mark the end of a text."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.sep_token
    return tokenizer


def end_of_text_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id placed between packed documents: EOS for decoders, SEP for encoders."""
    token_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if token_id is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has neither an eos nor a sep token to end documents")
    return token_id


def token_byte_lengths(tokenizer: PreTrainedTokenizerBase) -> np.ndarray:
    """UTF-8 bytes each token id stands for (0 for special tokens), for bits-per-byte across tokenizers."""
    vocab = tokenizer.get_vocab()
    lengths = np.zeros(max(len(tokenizer), max(vocab.values()) + 1), dtype=np.int64)
    byte_decoder = {ch: b for b, ch in _bytes_to_unicode().items()}
    backend = json.loads(tokenizer.backend_tokenizer.to_str()) if tokenizer.is_fast else {}
    byte_level = (backend.get("decoder") or {}).get("type") == "ByteLevel"
    special = set(tokenizer.all_special_ids)
    for token, index in vocab.items():
        if index in special:
            continue
        if byte_level and all(ch in byte_decoder for ch in token):
            lengths[index] = len(token)
        else:  # SentencePiece-style vocabularies: decode the piece on its own
            lengths[index] = len(tokenizer.convert_tokens_to_string([token]).encode("utf-8"))
    return lengths


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte-to-printable-character map used by byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def bytes_per_token(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str]) -> float:
    """Compression: UTF-8 bytes of `texts` divided by the tokens they encode to (higher is better)."""
    texts = [t for t in texts if t]
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"])
    return n_bytes / max(n_tokens, 1)
