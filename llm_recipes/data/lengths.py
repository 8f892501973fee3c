"""Examples longer than the model accepts (unpacked tasks): cut them with a warning, or stop, as `on_long_sequence`
says. Packed pretraining never needs this: its blocks are block_size long by construction."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset

from .sources import DataError

logger = logging.getLogger(__name__)

# Columns with one value per token; a task whose labels are per token (SFT) adds "labels".
TOKEN_COLUMNS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def token_lengths(dataset: Dataset, column: str = "input_ids") -> np.ndarray:
    """Lengths of a list column, read from Arrow without decoding the rows."""
    if dataset._indices is not None:
        dataset = dataset.flatten_indices()
    return pc.list_value_length(dataset.data.column(column)).to_numpy(zero_copy_only=False)


def enforce_max_length(
    dataset: Dataset,
    max_length: int,
    policy: str,
    split: str,
    token_columns: Sequence[str] = TOKEN_COLUMNS,
    num_proc: int | None = None,
) -> Dataset:
    """Apply `policy` ("truncate" or "error") to the tokenized (untruncated) examples longer than `max_length`."""
    lengths = token_lengths(dataset)
    too_long = np.flatnonzero(lengths > max_length)
    if len(too_long) == 0:
        return dataset
    if policy == "error":
        row = int(too_long[0])
        raise DataError(
            f"[{split}] row {row}: {int(lengths[row])} tokens, longer than the maximum of {max_length} "
            f"({len(too_long)} of {len(dataset)} examples are); raise --block_size (up to the model's limit) or "
            "pass --on_long_sequence truncate"
        )
    if policy != "truncate":
        raise ValueError(f"on_long_sequence={policy!r} must be truncate or error")
    logger.warning(
        "[%s] %d of %d examples are longer than %d tokens and were truncated (--on_long_sequence error stops instead)",
        split, len(too_long), len(dataset), max_length,
    )
    columns = [c for c in token_columns if c in dataset.column_names]

    def truncate(batch: dict[str, list]) -> dict[str, list]:
        return {column: [values[:max_length] for values in batch[column]] for column in columns}

    return dataset.map(truncate, batched=True, num_proc=num_proc, desc=f"Truncating {split}")
