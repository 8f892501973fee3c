"""Data loading, validation, tokenizer training and packing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset

from llm_recipes.config import DataConfig, TokenizerConfig
from llm_recipes.data.sources import DataError, load_raw_datasets
from llm_recipes.data.text import collate_blocks, pack_blocks, tokenize_documents
from llm_recipes.data.tokenizer import bytes_per_token, token_byte_lengths, train_bpe_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    texts = ["Hello world, this is a test of the tokenizer."] * 20 + ["Ünïcödé — ✓ 🤗 tabs\tand\nnewlines"] * 5
    return train_bpe_tokenizer(texts, TokenizerConfig(vocab_size=320, min_frequency=2))


@pytest.mark.parametrize(
    "text",
    ["plain ascii text.", "  leading and trailing spaces  ", "Ünïcödé — ✓ 🤗 中文 العربية", "tabs\tand\nnew\r\nlines",
     "", "<|endoftext|> inside", "x" * 500],
)
def test_tokenizer_round_trips_text_exactly(tokenizer, text: str) -> None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_trained_tokenizer_vocabulary_and_specials(tokenizer, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    assert len(tokenizer) <= 320
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token == "<|pad|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded("Hello world")["input_ids"] == tokenizer("Hello world")["input_ids"]
    assert reloaded.eos_token_id == tokenizer.eos_token_id


def test_min_frequency_limits_the_vocabulary() -> None:
    texts = ["abcabc rare1 rare2 rare3"] * 3
    loose = train_bpe_tokenizer(texts, TokenizerConfig(vocab_size=400, min_frequency=1))
    strict = train_bpe_tokenizer(texts, TokenizerConfig(vocab_size=400, min_frequency=4))
    assert len(strict) < len(loose)


def test_token_byte_lengths_sum_to_utf8_length(tokenizer) -> None:
    text = "Ünïcödé — ✓ 🤗 Hello world"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    lengths = token_byte_lengths(tokenizer)
    assert lengths[ids].sum() == len(text.encode("utf-8"))
    assert lengths[tokenizer.eos_token_id] == 0
    assert bytes_per_token(tokenizer, [text]) == pytest.approx(len(text.encode()) / len(ids))


def test_packing_keeps_every_token_without_padding(tokenizer) -> None:
    docs = Dataset.from_dict({"text": [f"document number {i} " * (i + 1) for i in range(30)] + ["   ", ""]})
    tokenized = tokenize_documents(docs, tokenizer, "text")
    assert len(tokenized) == 30  # blank documents are dropped
    flat = np.concatenate([np.asarray(ids) for ids in tokenized["input_ids"]])
    assert (flat == tokenizer.eos_token_id).sum() == 30  # one end-of-text after each document
    packed = pack_blocks(tokenized, block_size=16)
    blocks = np.asarray(packed["input_ids"])
    assert blocks.shape == (len(flat) // 16, 16)
    np.testing.assert_array_equal(blocks.reshape(-1), flat[: blocks.size])  # order kept, only the tail dropped
    assert len(flat) - blocks.size < 16
    assert tokenizer.pad_token_id not in blocks
    batch = collate_blocks([packed.with_format("torch")[i] for i in range(2)])
    assert batch["input_ids"].shape == (2, 16) and (batch["labels"] == batch["input_ids"]).all()


def test_local_folder_is_split_deterministically(text_corpus: Path) -> None:
    cfg = DataConfig(data_files=[str(text_corpus)], validation_fraction=0.1, test_fraction=0.1)
    first = load_raw_datasets(cfg, seed=1)
    again = load_raw_datasets(cfg, seed=1)
    assert set(first) == {"train", "validation", "test"}
    assert first["validation"]["text"] == again["validation"]["text"]
    total = sum(len(first[s]) for s in first)
    assert total == 48 and len(first["test"]) == 5  # 4 files x 12 paragraphs; 10% of 48 held out per split
    assert not set(first["test"]["text"]) & set(first["train"]["text"])


def test_explicit_splits_json_and_csv(tmp_path: Path) -> None:
    for name in ("train", "validation"):
        rows = [{"body": f"{name} text {i}"} for i in range(5)]
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = DataConfig(
        data_files=[f"train={tmp_path / 'train.jsonl'}", f"validation={tmp_path / 'validation.jsonl'}"],
        text_column="body",
        test_fraction=0.0,
    )
    raw = load_raw_datasets(cfg)
    assert raw["validation"]["body"][0] == "validation text 0" and len(raw["train"]) == 5
    (tmp_path / "d.csv").write_text("text,label\nhello,1\nworld,0\nagain,1\n")
    raw = load_raw_datasets(DataConfig(data_files=[str(tmp_path / "d.csv")], validation_fraction=0.3,
                                       test_fraction=0.0))
    assert len(raw["train"]) + len(raw["validation"]) == 3


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make, columns, message",
    [
        (lambda d: d / "missing.txt", None, r"missing\.txt: file not found"),
        (lambda d: _write(d / "empty.txt", b""), None, r"empty\.txt: file is empty"),
        (lambda d: _write(d / "latin1.txt", b"good line\ncaf\xe9 au lait\n"), None,
         r"latin1\.txt: not valid UTF-8 at byte offset 13"),
        (lambda d: _write(d / "cols.jsonl", b'{"body": "x"}\n{"body": "y"}\n{"body": "z"}\n'), ["text"],
         r"column 'text' not found; available columns: body"),
        (lambda d: d / "nothing-*.txt", None, r"no file matches"),
    ],
    ids=["missing-file", "empty-file", "non-utf8", "missing-column", "empty-glob"],
)
def test_bad_input_fails_fast_naming_the_culprit(tmp_path: Path, make, columns, message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(DataError, match=message):
        load_raw_datasets(DataConfig(data_files=[str(path)]), required_columns=columns)


def test_streamed_documents_drop_blanks_even_when_the_stream_does_not_know_its_columns(tokenizer) -> None:
    """A generator-backed stream reports no column names; blank documents must still be dropped, not crash the map."""
    from datasets import IterableDataset

    texts = ["", "first document", "   ", "second document", None, "third"]
    stream = IterableDataset.from_generator(lambda: ({"text": t, "source": "x"} for t in texts))
    assert stream.column_names is None
    rows = list(tokenize_documents(stream, tokenizer, "text"))
    assert [tokenizer.decode(r["input_ids"][:-1]) for r in rows] == ["first document", "second document", "third"]
    assert all(set(r) == {"input_ids"} for r in rows)
