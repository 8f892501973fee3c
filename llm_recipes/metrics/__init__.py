"""Task metrics as `evaluate` modules that load offline, and the classification/regression report built from them.

`evaluate.load("accuracy")` fetches its script from the Hub. Each folder here holds `<name>/<name>.py`, a complete
`evaluate.Metric`, so `evaluate.load("<this folder>/<name>")` needs no network; `load_metric(name)` finds them by name
and falls back to the Hub for any other name.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # importing evaluate pulls in transformers pipelines: seconds, so only when a metric is loaded
    import evaluate

METRICS_DIR = Path(__file__).parent
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")


def local_metric_names() -> list[str]:
    """The metrics this package ships, each loadable offline by name."""
    return sorted(path.parent.name for path in METRICS_DIR.glob("*/*.py") if path.stem == path.parent.name)


def local_metric_path(name: str) -> Path | None:
    """The folder of the shipped metric `name`, for `evaluate.load(str(path))`; None when we do not ship it."""
    folder = METRICS_DIR / name
    return folder if (folder / f"{name}.py").is_file() else None


def load_metric(name: str, config_name: str | None = None, **load_kwargs: Any) -> evaluate.EvaluationModule:
    """Load a metric by name: ours first (offline), else `evaluate.load(name)` (Hub names or local paths).

    `load_kwargs` go to `evaluate.load` (for example `keep_in_memory=True`, `experiment_id`, `num_process`).
    """
    import evaluate

    local_path = local_metric_path(name)
    if local_path is not None:
        return evaluate.load(str(local_path), config_name, **load_kwargs)
    try:
        return evaluate.load(name, config_name, **load_kwargs)
    except Exception as error:
        raise ValueError(
            f"Metric {name!r} is not one of llm-recipes' offline metrics ({', '.join(local_metric_names())}) and "
            f"evaluate.load({name!r}) failed (a Hub metric needs the network; a path needs <dir>/<name>.py): {error}"
        ) from error


@functools.cache
def _report_metric(name: str, config_name: str | None = None) -> evaluate.EvaluationModule:
    """One in-memory instance per metric for `classification_metrics`: no cache files, no reload per evaluation."""
    return load_metric(name, config_name, keep_in_memory=True)


def _compute(name: str, predictions: np.ndarray, references: np.ndarray, config_name: str | None = None, **kwargs):
    return _report_metric(name, config_name).compute(predictions=predictions, references=references, **kwargs)[name]


def classification_metrics(
    predictions: Sequence | np.ndarray,
    references: Sequence | np.ndarray,
    problem_type: str,
    label_names: Sequence[str] | None = None,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """The metrics a classification or regression run reports, as one flat dict, each from a module above.

    - "single_label_classification": `predictions` are class ids of shape (n,) or scores/logits of shape (n, k)
      (argmax taken); `references` are class ids. Returns accuracy, precision_macro, recall_macro, f1_macro,
      matthews_correlation, confusion_matrix (list of lists, rows = true labels, columns = predictions, over every
      class 0..k-1) and confusion_matrix_labels (the `label_names`, or the ids as strings). Macro averages run over
      the classes seen in references or predictions; a class never predicted counts 0 precision.
    - "multi_label_classification": `predictions` are probabilities of shape (n, k) (apply a sigmoid to logits
      first); a label is predicted when its probability >= `threshold`. `references` are multi-hot (n, k). Returns
      accuracy (exact match of the whole row), f1_micro, f1_macro, precision_macro, recall_macro (macro over all k
      labels).
    - "regression": `predictions` and `references` of shape (n,) or (n, 1). Returns mse, mae, pearson, spearman;
      pearson and spearman are NaN when either side is constant (undefined, not 0).
    """
    if problem_type not in PROBLEM_TYPES:
        raise ValueError(f"problem_type={problem_type!r} is not one of {PROBLEM_TYPES}.")
    predictions, references = np.asarray(predictions), np.asarray(references)
    if len(references) == 0 or len(predictions) == 0:
        raise ValueError(
            f"classification_metrics got {len(predictions)} predictions and {len(references)} references; "
            "it needs at least one example (is the evaluation split empty?)."
        )
    if len(predictions) != len(references):
        raise ValueError(
            f"classification_metrics got {len(predictions)} predictions but {len(references)} references; "
            "each example needs one of each."
        )
    if problem_type == "single_label_classification":
        return _single_label_metrics(predictions, references, label_names)
    if problem_type == "multi_label_classification":
        return _multi_label_metrics(predictions, references, label_names, threshold)
    return _regression_metrics(predictions, references)


def _single_label_metrics(
    predictions: np.ndarray, references: np.ndarray, label_names: Sequence[str] | None
) -> dict[str, Any]:
    if predictions.ndim == 2:
        predictions = predictions.argmax(axis=-1)
    if predictions.ndim != 1 or references.ndim != 1:
        raise ValueError(
            f"single_label_classification expects predictions of shape (n,) or (n, num_labels) and references of "
            f"shape (n,); got {predictions.shape} and {references.shape}."
        )
    predictions, references = predictions.astype(np.int64), references.astype(np.int64)
    num_labels = len(label_names) if label_names is not None else int(max(predictions.max(), references.max())) + 1
    for side, values in (("predictions", predictions), ("references", references)):
        if values.min() < 0 or values.max() >= num_labels:
            raise ValueError(
                f"single_label_classification: {side} hold class ids from {values.min()} to {values.max()}, "
                f"outside 0..{num_labels - 1} for the {num_labels} label names {list(label_names or [])}."
            )
    all_labels = list(range(num_labels))
    shown_labels = [str(name) for name in label_names] if label_names is not None else [str(i) for i in all_labels]
    return {
        "accuracy": _compute("accuracy", predictions, references),
        "precision_macro": _compute("precision", predictions, references, average="macro"),
        "recall_macro": _compute("recall", predictions, references, average="macro"),
        "f1_macro": _compute("f1", predictions, references, average="macro"),
        "matthews_correlation": _compute("matthews_correlation", predictions, references),
        "confusion_matrix": _compute("confusion_matrix", predictions, references, labels=all_labels),
        "confusion_matrix_labels": shown_labels,
    }


def _multi_label_metrics(
    probabilities: np.ndarray, references: np.ndarray, label_names: Sequence[str] | None, threshold: float
) -> dict[str, Any]:
    if probabilities.ndim != 2 or probabilities.shape != references.shape:
        raise ValueError(
            "multi_label_classification expects probabilities and multi-hot references of the same shape "
            f"(n, num_labels); got {probabilities.shape} and {references.shape}."
        )
    if label_names is not None and len(label_names) != references.shape[1]:
        raise ValueError(
            f"multi_label_classification: {len(label_names)} label names {list(label_names)} but "
            f"{references.shape[1]} label columns."
        )
    if probabilities.min() < 0 or probabilities.max() > 1:
        raise ValueError(
            f"multi_label_classification expects probabilities in [0, 1]; got values from {probabilities.min()} to "
            f"{probabilities.max()} (logits? apply a sigmoid first)."
        )
    if not np.isin(references, (0, 1)).all():
        raise ValueError("multi_label_classification expects multi-hot references (only 0 and 1).")
    predictions, references = (probabilities >= threshold).astype(np.int64), references.astype(np.int64)
    return {
        "accuracy": _compute("accuracy", predictions, references, "multilabel"),
        "f1_micro": _compute("f1", predictions, references, "multilabel", average="micro"),
        "f1_macro": _compute("f1", predictions, references, "multilabel", average="macro"),
        "precision_macro": _compute("precision", predictions, references, "multilabel", average="macro"),
        "recall_macro": _compute("recall", predictions, references, "multilabel", average="macro"),
    }


def _regression_metrics(predictions: np.ndarray, references: np.ndarray) -> dict[str, float]:
    if predictions.ndim == 2 and predictions.shape[1] == 1:
        predictions = predictions[:, 0]
    if references.ndim == 2 and references.shape[1] == 1:
        references = references[:, 0]
    if predictions.ndim != 1 or references.ndim != 1:
        raise ValueError(
            f"regression expects predictions and references of shape (n,) or (n, 1); got {predictions.shape} "
            f"and {references.shape}."
        )
    predictions, references = predictions.astype(np.float64), references.astype(np.float64)
    correlations = {"pearson": float("nan"), "spearman": float("nan")}
    if len(references) >= 2:  # one example has no correlation; report NaN instead of failing the evaluation
        correlations = {
            "pearson": _compute("pearsonr", predictions, references),
            "spearman": _compute("spearmanr", predictions, references),
        }
    return {
        "mse": _compute("mse", predictions, references),
        "mae": _compute("mae", predictions, references),
        **correlations,
    }
