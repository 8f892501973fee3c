"""Tokenize documents and pack them into fixed-length blocks: no padding, an end-of-text token between documents, and
nothing dropped but the final partial block of each split."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset, DatasetDict, IterableDataset
from transformers import PreTrainedTokenizerBase

from .sources import DataError
from .tokenizer import end_of_text_id


def default_num_proc(num_rows: int, requested: int | None = None) -> int | None:
    """Worker processes for `datasets.map`: parallel only when the data is big enough to repay the start-up."""
    if requested is not None:
        return requested if requested > 1 else None
    cores = min(os.cpu_count() or 1, 8)
    return cores if num_rows >= 5_000 and cores > 1 else None


def tokenize_documents(
    dataset: Dataset | IterableDataset,
    tokenizer: PreTrainedTokenizerBase,
    text_column: str,
    num_proc: int | None = None,
) -> Dataset | IterableDataset:
    """Each non-blank document becomes its token ids followed by the end-of-text id (cached by `datasets`)."""
    eos = end_of_text_id(tokenizer)

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        texts = [t for t in batch[text_column] if t is not None and t.strip()]
        encoded = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        return {"input_ids": [np.asarray(ids + [eos], dtype=np.int32) for ids in encoded]}

    columns = dataset.column_names
    if isinstance(dataset, IterableDataset):
        return dataset.map(tokenize, batched=True, remove_columns=columns)
    return dataset.map(
        tokenize,
        batched=True,
        remove_columns=columns,
        num_proc=default_num_proc(len(dataset), num_proc),
        desc="Tokenizing",
    )


def pack_blocks(tokenized: Dataset, block_size: int) -> Dataset:
    """Concatenate every document's ids and cut them into `block_size` blocks (zero-copy through Arrow)."""
    if tokenized._indices is not None:
        tokenized = tokenized.flatten_indices()
    chunks = [chunk.flatten() for chunk in tokenized.data.column("input_ids").chunks]
    flat = pa.concat_arrays(chunks) if chunks else pa.array([], type=pa.int32())
    n_blocks = len(flat) // block_size
    blocks = pa.FixedSizeListArray.from_arrays(flat.slice(0, n_blocks * block_size).cast(pa.int32()), block_size)
    # A fingerprint derived from the tokenized data keeps resumes and caches keyed to the same content.
    return Dataset(pa.table({"input_ids": blocks}), fingerprint=f"{tokenized._fingerprint}-packed{block_size}")


class PackedStream(torch.utils.data.IterableDataset):
    """Blocks packed on the fly from a tokenized stream, for corpora larger than memory or disk."""

    def __init__(self, tokenized: IterableDataset, block_size: int) -> None:
        self.tokenized = tokenized
        self.block_size = block_size

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        buffer: list[int] = []
        for example in self.tokenized:
            buffer.extend(int(i) for i in example["input_ids"])
            while len(buffer) >= self.block_size:
                block, buffer = buffer[: self.block_size], buffer[self.block_size :]
                yield {"input_ids": torch.tensor(block, dtype=torch.long)}

    def set_epoch(self, epoch: int) -> None:
        self.tokenized.set_epoch(epoch)


def prepare_lm_datasets(
    raw: DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    text_column: str,
    block_size: int,
    num_proc: int | None = None,
) -> dict[str, Dataset | PackedStream]:
    """Tokenize and pack each split; fail clearly when a split yields no complete block."""
    packed: dict[str, Dataset | PackedStream] = {}
    for split, dataset in raw.items():
        tokenized = tokenize_documents(dataset, tokenizer, text_column, num_proc)
        if isinstance(tokenized, IterableDataset):
            packed[split] = PackedStream(tokenized, block_size)
            continue
        packed[split] = pack_blocks(tokenized, block_size).with_format("torch")
        if len(packed[split]) == 0:
            n_tokens = sum(len(ids) for ids in tokenized["input_ids"])
            raise DataError(
                f"{split} split: {len(tokenized)} document(s), {n_tokens} tokens, fewer than one block of "
                f"block_size={block_size}; lower --block_size or add data"
            )
    return packed


def collate_blocks(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack packed blocks; the labels are the inputs (the model shifts them)."""
    input_ids = torch.stack([torch.as_tensor(e["input_ids"], dtype=torch.long) for e in examples])
    return {"input_ids": input_ids, "labels": input_ids}
