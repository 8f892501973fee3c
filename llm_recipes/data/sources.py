"""Raw data: local files, Hub datasets or the embedded default corpus, validated and split into train/validation/test.

Every problem is reported before any tokenization starts, naming the file, byte offset, split or column at fault.
"""

from __future__ import annotations

import ast
import codecs
import glob
import inspect
import os
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict

from ..config import DataConfig

SPLITS = ("train", "validation", "test")
BUILDER_BY_SUFFIX = {
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
}
TEXT_LIKE = {".txt", ".text", ".md", ".json", ".jsonl", ".csv", ".tsv"}


class DataError(ValueError):
    """Unusable input data; the message names the file, split, column or value."""


# ---------------------------------------------------------------------------------------------------------------------
# Local files


def resolve_data_files(entries: Sequence[str]) -> dict[str, list[Path]]:
    """Expand `[split=]path|folder|glob` entries into existing files per split, in a stable order."""
    by_split: dict[str, list[Path]] = {}
    for entry in entries:
        split, _, pattern = entry.rpartition("=") if "=" in entry.split(os.sep)[0] else ("", "", entry)
        split = split or "train"
        if split not in SPLITS:
            raise DataError(f"data_files entry {entry!r}: split must be one of {', '.join(SPLITS)}")
        path = Path(pattern).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in BUILDER_BY_SUFFIX)
            if not files:
                raise DataError(f"{path}: folder holds no {'/'.join(sorted(BUILDER_BY_SUFFIX))} files")
        elif any(ch in pattern for ch in "*?["):
            files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
            if not files:
                raise DataError(f"{pattern}: no file matches this pattern")
        elif path.is_file():
            files = [path]
        else:
            raise DataError(f"{path}: file not found")
        by_split.setdefault(split, []).extend(files)
    return by_split


def check_file(path: Path) -> None:
    """Fail on an empty, unreadable or (for text formats) non-UTF-8 file, giving the byte offset of bad bytes."""
    try:
        size = path.stat().st_size
        if size == 0:
            raise DataError(f"{path}: file is empty")
        if path.suffix.lower() not in TEXT_LIKE:
            return
        decoder = codecs.getincrementaldecoder("utf-8")()
        offset = 0
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 22):
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as error:
                    raise DataError(
                        f"{path}: not valid UTF-8 at byte offset {offset + error.start} "
                        f"(byte 0x{chunk[error.start]:02x}); re-encode the file as UTF-8"
                    ) from None
                offset += len(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise DataError(f"{path}: not valid UTF-8: the file ends inside a multi-byte character") from None
    except PermissionError as error:
        raise DataError(f"{path}: file is not readable ({error.strerror})") from None


def load_local_files(
    entries: Sequence[str], streaming: bool = False, sample_by: str = "paragraph"
) -> DatasetDict | IterableDatasetDict:
    by_split = resolve_data_files(entries)
    suffixes = {p.suffix.lower() for files in by_split.values() for p in files}
    builders = {BUILDER_BY_SUFFIX.get(s) for s in suffixes}
    if None in builders or len(builders) != 1:
        raise DataError(
            f"data_files mix or use unsupported formats ({', '.join(sorted(suffixes))}); use one of "
            f"{', '.join(sorted(BUILDER_BY_SUFFIX))}"
        )
    for files in by_split.values():
        for path in files:
            check_file(path)
    builder = builders.pop()
    kwargs = {"delimiter": "\t"} if builder == "csv" and suffixes == {".tsv"} else {}
    if builder == "text":
        kwargs["sample_by"] = sample_by
    data_files = {split: [str(p) for p in files] for split, files in by_split.items()}
    try:
        return datasets.load_dataset(builder, data_files=data_files, streaming=streaming, **kwargs)
    except Exception as error:  # datasets wraps parser errors; keep the file names in view
        raise DataError(f"could not read {', '.join(sum(data_files.values(), []))} as {builder}: {error}") from error


# ---------------------------------------------------------------------------------------------------------------------
# Embedded default corpus: the English documentation that ships inside Python itself


def _python_docs(python_version: str) -> Iterator[dict[str, str]]:
    """Yield the interpreter's reference topics, then one document per standard-library module's docstrings.

    `python_version` is unused here: it is part of the datasets cache key, so each interpreter builds its own copy.
    """
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield {"text": topics[name].strip(), "source": f"pydoc:{name}"}
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idle_test", "site-packages", "dist-packages", "lib2to3", "__pycache__", "turtledemo"}
    for path in sorted(stdlib.rglob("*.py")):
        if skip.intersection(path.relative_to(stdlib).parts):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue
        docs = []
        for node in [tree, *ast.walk(tree)]:
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=False)
                if doc and len(doc) >= 40:
                    docs.append(inspect.cleandoc(doc))
        if docs:
            yield {"text": "\n\n".join(dict.fromkeys(docs)), "source": f"stdlib:{path.relative_to(stdlib)}"}


def embedded_corpus() -> DatasetDict:
    """Python's own documentation as a dataset (~5 MB of English), built once and then served from the cache."""
    version = ".".join(map(str, sys.version_info[:3]))
    dataset = Dataset.from_generator(_python_docs, gen_kwargs={"python_version": version})
    return DatasetDict({"train": dataset})


# ---------------------------------------------------------------------------------------------------------------------
# Entry point


def load_raw_datasets(
    cfg: DataConfig, required_columns: Sequence[str] | None = None, seed: int = 42
) -> DatasetDict | IterableDatasetDict:
    """Load the configured source, check its columns, and return train/validation/test splits."""
    required_columns = list(required_columns or [cfg.text_column])
    if cfg.data_files:
        raw = load_local_files(cfg.data_files, streaming=cfg.streaming, sample_by=cfg.sample_by)
        source = ", ".join(cfg.data_files)
    elif cfg.dataset_name:
        raw = datasets.load_dataset(cfg.dataset_name, cfg.dataset_config, streaming=cfg.streaming)
        source = cfg.dataset_name
    else:
        raw = embedded_corpus()
        if cfg.streaming:
            raw = IterableDatasetDict({k: v.to_iterable_dataset() for k, v in raw.items()})
        source = "the embedded Python documentation corpus"
    raw = _rename_standard_splits(raw, cfg)
    if "train" not in raw:
        raise DataError(f"{source}: no train split (found: {', '.join(raw) or 'none'})")
    for split, dataset in raw.items():
        columns = dataset.column_names
        if columns is None and isinstance(dataset, IterableDataset):
            columns = list(next(iter(dataset.take(1)), {}).keys())
        missing = [c for c in required_columns if c not in columns]
        if missing:
            raise DataError(
                f"{source} [{split}]: column {', '.join(repr(c) for c in missing)} not found; available columns: "
                f"{', '.join(columns) or 'none'} (set --text_column or the matching column option)"
            )
    raw = split_train_validation_test(raw, cfg, seed)
    if cfg.max_train_documents is not None:
        train = raw["train"]
        raw["train"] = train.take(cfg.max_train_documents) if isinstance(train, IterableDataset) else train.select(
            range(min(cfg.max_train_documents, len(train)))
        )
    if not isinstance(raw["train"], IterableDataset) and len(raw["train"]) == 0:
        raise DataError(f"{source}: the train split has no examples")
    return raw


def _rename_standard_splits(raw, cfg: DataConfig):
    renamed = {}
    for split, dataset in raw.items():
        if split == cfg.validation_split or split in ("valid", "dev", "val"):
            split = "validation"
        elif split == cfg.test_split:
            split = "test"
        renamed.setdefault(split, dataset)
    return type(raw)(renamed)


def split_train_validation_test(raw, cfg: DataConfig, seed: int):
    """Hold out validation/test documents from train when the source lacks those splits (whole documents only)."""
    if isinstance(raw["train"], IterableDataset):
        for split in ("validation", "test"):
            if split not in raw:
                raw[split] = raw["train"].take(cfg.streaming_eval_documents)
                raw["train"] = raw["train"].skip(cfg.streaming_eval_documents)
        return raw
    for split, fraction in (("test", cfg.test_fraction), ("validation", cfg.validation_fraction)):
        if split in raw or fraction == 0:
            continue
        train = raw["train"]
        if len(train) < 3:
            raise DataError(
                f"only {len(train)} training example(s): too few to hold out a {split} split; provide a {split} "
                f"file (--data_files {split}=PATH) or set --{split}_fraction 0"
            )
        # Fractions are of the original train split, so the test fraction is applied first.
        held_out = max(1, round(fraction * len(train)))
        parts = train.train_test_split(test_size=held_out, seed=seed, shuffle=True)
        raw["train"], raw[split] = parts["train"], parts["test"]
    return raw
