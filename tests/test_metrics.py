"""Offline `evaluate` metric modules: they load without the Hub, match scikit-learn/SciPy, and build the report."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import evaluate
import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as sk

from llm_recipes.metrics import (
    METRICS_DIR,
    classification_metrics,
    load_metric,
    local_metric_names,
    local_metric_path,
)

SHIPPED = [
    "accuracy",
    "confusion_matrix",
    "f1",
    "mae",
    "matthews_correlation",
    "mse",
    "pearsonr",
    "precision",
    "recall",
    "spearmanr",
]

# Three classes; class 2 is never predicted, so its precision is 0/0 (zero_division=0 must apply).
LABELS_TRUE = [0, 1, 2, 2, 1, 0, 1, 2, 0, 1]
LABELS_PRED = [0, 1, 1, 0, 1, 0, 0, 1, 0, 1]
MULTI_TRUE = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0]])
MULTI_PRED = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 1, 1], [0, 0, 0]])
VALUES_TRUE = [3.0, -0.5, 2.0, 7.0, 4.2, 1.1]
VALUES_PRED = [2.5, 0.0, 2.0, 8.0, 3.9, 1.7]


@pytest.fixture(autouse=True)
def hub_forbidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to fetch a metric from the Hub fails the test: everything here must be local."""

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"tried to fetch {self.name!r} from the Hub")

    monkeypatch.setattr(evaluate.loading.HubEvaluationModuleFactory, "get_module", refuse)


def test_every_shipped_metric_is_found_by_name() -> None:
    assert local_metric_names() == SHIPPED
    for name in SHIPPED:
        assert local_metric_path(name) == METRICS_DIR / name
    assert local_metric_path("bleu") is None


@pytest.mark.parametrize("name", SHIPPED)
def test_each_module_is_a_real_evaluate_metric_loaded_from_its_folder(name: str) -> None:
    by_path = evaluate.load(str(METRICS_DIR / name))
    by_name = load_metric(name)
    for module in (by_path, by_name):
        assert isinstance(module, evaluate.Metric)
        assert module.name == name
        assert module.description.strip() and module.citation.strip() and module.inputs_description.strip()
        assert set(module.features) == {"predictions", "references"}


@pytest.mark.slow  # a fresh interpreter importing evaluate takes ~15 s of CPU (it imports transformers pipelines)
def test_modules_load_in_a_fresh_process_with_the_hub_offline(tmp_path: Path) -> None:
    """The acceptance check as a user would run it: HF_HUB_OFFLINE=1, a fresh interpreter, an empty module cache."""
    script = (
        "import evaluate\n"
        "from llm_recipes.metrics import METRICS_DIR, load_metric, local_metric_names\n"
        "for name in local_metric_names():\n"
        "    load_metric(name)\n"
        "    evaluate.load(str(METRICS_DIR / name))\n"
        "print(load_metric('accuracy').compute(predictions=[0, 1, 1], references=[0, 1, 0]))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "{'accuracy': 0.6666666666666666}" in done.stdout


def test_classification_modules_match_scikit_learn() -> None:
    y_true, y_pred = LABELS_TRUE, LABELS_PRED
    assert load_metric("accuracy").compute(predictions=y_pred, references=y_true)["accuracy"] == pytest.approx(
        sk.accuracy_score(y_true, y_pred)
    )
    for name, reference in (("precision", sk.precision_score), ("recall", sk.recall_score), ("f1", sk.f1_score)):
        module = load_metric(name)
        for average in ("macro", "micro", "weighted"):
            ours = module.compute(predictions=y_pred, references=y_true, average=average)[name]
            assert ours == pytest.approx(reference(y_true, y_pred, average=average, zero_division=0)), (name, average)
        per_class = module.compute(predictions=y_pred, references=y_true, average=None)[name]
        assert per_class == pytest.approx(list(reference(y_true, y_pred, average=None, zero_division=0)))
        binary_true, binary_pred = [1, 0, 1, 1, 0, 0], [1, 0, 0, 1, 1, 0]
        binary = module.compute(predictions=binary_pred, references=binary_true, average="binary")[name]
        assert binary == pytest.approx(reference(binary_true, binary_pred))
    mcc = load_metric("matthews_correlation").compute(predictions=y_pred, references=y_true)
    assert mcc["matthews_correlation"] == pytest.approx(sk.matthews_corrcoef(y_true, y_pred))
    matrix = load_metric("confusion_matrix").compute(predictions=y_pred, references=y_true)["confusion_matrix"]
    assert matrix == sk.confusion_matrix(y_true, y_pred).tolist()


def test_default_average_is_macro_and_a_never_predicted_class_scores_zero() -> None:
    assert 2 not in LABELS_PRED
    per_class = load_metric("precision").compute(predictions=LABELS_PRED, references=LABELS_TRUE, average=None)
    assert per_class["precision"][2] == 0.0
    default = load_metric("precision").compute(predictions=LABELS_PRED, references=LABELS_TRUE)["precision"]
    assert default == pytest.approx(np.mean(per_class["precision"]))


def test_multilabel_configuration_matches_scikit_learn() -> None:
    y_true, y_pred = MULTI_TRUE, MULTI_PRED
    accuracy = load_metric("accuracy", "multilabel").compute(predictions=y_pred, references=y_true)["accuracy"]
    assert accuracy == pytest.approx(sk.accuracy_score(y_true, y_pred)) == pytest.approx(2 / 5)
    for name, reference in (("precision", sk.precision_score), ("recall", sk.recall_score), ("f1", sk.f1_score)):
        module = load_metric(name, "multilabel")
        for average in ("macro", "micro", "weighted", "samples"):
            ours = module.compute(predictions=y_pred, references=y_true, average=average)[name]
            assert ours == pytest.approx(reference(y_true, y_pred, average=average, zero_division=0)), (name, average)
    mcc_module = load_metric("matthews_correlation", "multilabel")
    mcc = mcc_module.compute(predictions=y_pred, references=y_true, average=None)
    expected = [sk.matthews_corrcoef(y_true[:, j], y_pred[:, j]) for j in range(3)]
    assert mcc["matthews_correlation"] == pytest.approx(expected)


def test_regression_modules_match_scikit_learn_and_scipy() -> None:
    y_true, y_pred = VALUES_TRUE, VALUES_PRED
    assert load_metric("mse").compute(predictions=y_pred, references=y_true)["mse"] == pytest.approx(
        sk.mean_squared_error(y_true, y_pred), rel=1e-12
    )
    assert load_metric("mae").compute(predictions=y_pred, references=y_true)["mae"] == pytest.approx(
        sk.mean_absolute_error(y_true, y_pred), rel=1e-12
    )
    pearson = load_metric("pearsonr").compute(predictions=y_pred, references=y_true, return_pvalue=True)
    expected = stats.pearsonr(y_true, y_pred)
    assert pearson["pearsonr"] == pytest.approx(expected.statistic, rel=1e-12)
    assert pearson["p-value"] == pytest.approx(expected.pvalue, rel=1e-9)
    spearman = load_metric("spearmanr").compute(predictions=y_pred, references=y_true)["spearmanr"]
    assert spearman == pytest.approx(stats.spearmanr(y_true, y_pred).statistic, rel=1e-12)


def test_constant_predictions_give_nan_correlations_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pearson = load_metric("pearsonr").compute(predictions=[2.0, 2.0, 2.0], references=[1.0, 2.0, 3.0])
        spearman = load_metric("spearmanr").compute(predictions=[2.0, 2.0, 2.0], references=[1.0, 2.0, 3.0])
    assert math.isnan(pearson["pearsonr"]) and math.isnan(spearman["spearmanr"])


def test_evaluate_combine_runs_several_of_them_together() -> None:
    combined = evaluate.combine([load_metric("accuracy"), load_metric("f1"), load_metric("matthews_correlation")])
    results = combined.compute(predictions=LABELS_PRED, references=LABELS_TRUE)
    assert results == pytest.approx(
        {
            "accuracy": sk.accuracy_score(LABELS_TRUE, LABELS_PRED),
            "f1": sk.f1_score(LABELS_TRUE, LABELS_PRED, average="macro", zero_division=0),
            "matthews_correlation": sk.matthews_corrcoef(LABELS_TRUE, LABELS_PRED),
        }
    )
    by_path = evaluate.combine([str(METRICS_DIR / "mse"), str(METRICS_DIR / "mae")])
    assert by_path.compute(predictions=[1.0, 2.0], references=[2.0, 4.0]) == {"mse": 2.5, "mae": 1.5}


def test_batches_added_one_at_a_time_give_the_same_result() -> None:
    module = load_metric("f1")
    for start in range(0, len(LABELS_TRUE), 3):
        module.add_batch(predictions=LABELS_PRED[start : start + 3], references=LABELS_TRUE[start : start + 3])
    assert module.compute()["f1"] == pytest.approx(sk.f1_score(LABELS_TRUE, LABELS_PRED, average="macro"))


def test_empty_inputs_and_bad_arguments_raise_clear_errors() -> None:
    for name in SHIPPED:
        with pytest.raises(ValueError, match=f"{name} needs at least"):
            load_metric(name).compute(predictions=[], references=[])
    with pytest.raises(ValueError, match="average='sideways'"):
        load_metric("f1").compute(predictions=[0, 1], references=[0, 1], average="sideways")


def test_unknown_metric_names_itself_and_lists_ours() -> None:
    with pytest.raises(ValueError, match="'no_such_metric'.*accuracy, confusion_matrix") as caught:
        load_metric("no_such_metric")
    assert "tried to fetch" in str(caught.value.__cause__)  # the Hub fallback was attempted (and refused here)


def test_other_local_module_paths_fall_through_to_evaluate_load(tmp_path: Path) -> None:
    folder = tmp_path / "my_accuracy"
    folder.mkdir()
    shutil.copy(METRICS_DIR / "accuracy" / "accuracy.py", folder / "my_accuracy.py")
    module = load_metric(str(folder))
    assert module.compute(predictions=[1, 1], references=[1, 0]) == {"accuracy": 0.5}


def test_single_label_report_has_known_values_and_true_labels_as_rows() -> None:
    report = classification_metrics(LABELS_PRED, LABELS_TRUE, "single_label_classification", ["neg", "neu", "pos"])
    assert report["accuracy"] == pytest.approx(0.6)
    # class 0: predicted 5 times, 3 right (P 3/5), all 3 found (R 3/3); class 1: P 3/5, R 3/4;
    # class 2: never predicted -> P 0 (zero_division=0), R 0/3.
    assert report["precision_macro"] == pytest.approx((3 / 5 + 3 / 5 + 0) / 3)
    assert report["recall_macro"] == pytest.approx((3 / 3 + 3 / 4 + 0) / 3)
    assert report["f1_macro"] == pytest.approx(sk.f1_score(LABELS_TRUE, LABELS_PRED, average="macro", zero_division=0))
    assert report["matthews_correlation"] == pytest.approx(sk.matthews_corrcoef(LABELS_TRUE, LABELS_PRED))
    assert report["confusion_matrix_labels"] == ["neg", "neu", "pos"]
    # Rows are true labels: true class 2 ("pos") was predicted as 0 once and as 1 twice, never as 2.
    assert report["confusion_matrix"] == [[3, 0, 0], [1, 3, 0], [1, 2, 0]]
    assert [sum(row) for row in report["confusion_matrix"]] == [LABELS_TRUE.count(c) for c in range(3)]


def test_single_label_report_takes_scores_and_keeps_absent_classes_in_the_matrix() -> None:
    logits = np.array([[2.0, -1.0, 0.0, 0.0], [0.1, 0.3, -2.0, 0.0], [0.0, 0.0, 5.0, 0.0]])
    report = classification_metrics(logits, [0, 1, 1], "single_label_classification", ["a", "b", "c", "d"])
    assert report["accuracy"] == pytest.approx(2 / 3)
    assert report["confusion_matrix"] == [[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    unnamed = classification_metrics([0, 1, 1], [0, 1, 0], "single_label_classification")
    assert unnamed["confusion_matrix_labels"] == ["0", "1"]
    assert unnamed["confusion_matrix"] == [[1, 1], [0, 1]]


def test_multi_label_report_thresholds_probabilities() -> None:
    probabilities = np.where(MULTI_PRED == 1, 0.8, 0.3)
    probabilities[0, 2] = 0.55  # above 0.5: predicted; below 0.6: not
    report = classification_metrics(probabilities, MULTI_TRUE, "multi_label_classification", ["x", "y", "z"])
    predicted = MULTI_PRED.copy()
    predicted[0, 2] = 1
    assert report["accuracy"] == pytest.approx(sk.accuracy_score(MULTI_TRUE, predicted)) == pytest.approx(3 / 5)
    assert report["f1_micro"] == pytest.approx(sk.f1_score(MULTI_TRUE, predicted, average="micro"))
    assert report["f1_macro"] == pytest.approx(sk.f1_score(MULTI_TRUE, predicted, average="macro"))
    assert report["precision_macro"] == pytest.approx(sk.precision_score(MULTI_TRUE, predicted, average="macro"))
    assert report["recall_macro"] == pytest.approx(sk.recall_score(MULTI_TRUE, predicted, average="macro"))
    strict = classification_metrics(probabilities, MULTI_TRUE, "multi_label_classification", threshold=0.6)
    assert strict["accuracy"] == pytest.approx(2 / 5)


def test_regression_report_has_known_values_and_nan_for_constant_predictions() -> None:
    report = classification_metrics(np.array(VALUES_PRED)[:, None], VALUES_TRUE, "regression")
    assert report["mse"] == pytest.approx(np.mean((np.array(VALUES_PRED) - np.array(VALUES_TRUE)) ** 2))
    assert report["mae"] == pytest.approx(np.mean(np.abs(np.array(VALUES_PRED) - np.array(VALUES_TRUE))))
    assert report["pearson"] == pytest.approx(stats.pearsonr(VALUES_TRUE, VALUES_PRED).statistic)
    assert report["spearman"] == pytest.approx(1.0)  # the predictions rank the examples exactly as the targets do
    constant = classification_metrics([1.0, 1.0, 1.0], [0.0, 1.0, 2.0], "regression")
    assert constant["mse"] == pytest.approx(2 / 3)
    assert math.isnan(constant["pearson"]) and math.isnan(constant["spearman"])


@pytest.mark.parametrize(
    ("predictions", "references", "problem_type", "label_names", "message"),
    [
        ([], [], "single_label_classification", None, "0 predictions and 0 references"),
        ([0, 1], [0], "single_label_classification", None, "2 predictions but 1 references"),
        ([0, 1], [0, 1], "ordinal", None, "problem_type='ordinal'"),
        ([0, 3], [0, 1], "single_label_classification", ["a", "b"], "predictions hold class ids from 0 to 3"),
        ([[2.0, -1.0]], [[1, 0]], "multi_label_classification", None, "logits\\? apply a sigmoid"),
        ([[0.2, 0.9]], [[1, 0]], "multi_label_classification", ["a"], "1 label names"),
        ([[0.2, 0.9]], [[2, 0]], "multi_label_classification", None, "multi-hot"),
        ([[1.0, 2.0]], [[1.0, 2.0]], "regression", None, "shape \\(n,\\) or \\(n, 1\\)"),
    ],
)
def test_report_rejects_bad_input_with_a_clear_error(predictions, references, problem_type, label_names, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(predictions, references, problem_type, label_names)
