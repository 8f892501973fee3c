"""F1 as an offline `evaluate` module, averaged over classes ("macro" by default).

Load it without the Hub: `evaluate.load("path/to/llm_recipes/metrics/f1")` or
`llm_recipes.metrics.load_metric("f1")`; `config_name="multilabel"` takes multi-hot rows.
Unlike the Hub module (default `average="binary"`), the default here is "macro", which suits any number of classes,
and a class never predicted (or with no references) scores 0 instead of raising a warning (`zero_division=0`).
"""

import datasets
import evaluate
from sklearn.metrics import f1_score

_AVERAGES = ("macro", "micro", "weighted", "binary", "samples", None)

_DESCRIPTION = """
F1 is the harmonic mean of precision and recall: 2 * precision * recall / (precision + recall).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`, or `list` of `list` of `int` for "multilabel"): predicted labels.
    references (`list` of `int`, or `list` of `list` of `int` for "multilabel"): true labels.
    average (`str` or `None`, defaults to "macro"): how per-class scores combine.
        - "macro": unweighted mean over classes.
        - "micro": from the global counts of true positives, false positives and false negatives.
        - "weighted": mean over classes weighted by each class's number of references.
        - "binary": the score of `pos_label` only (two classes).
        - "samples": mean over examples ("multilabel" only).
        - `None`: one score per class, returned as a list.
    labels (`list` of `int`, optional): the classes to average over; defaults to those in references or predictions.
    pos_label (`int`, defaults to 1): the positive class when `average="binary"`.
    sample_weight (`list` of `float`, optional): one weight per example.
    zero_division (`0`, `1` or `"warn"`, defaults to 0): the score of a class whose precision and
        recall are both undefined.
Returns:
    f1 (`float`, or `list` of `float` when `average=None`): in [0, 1].
Examples:
    >>> f1 = evaluate.load("llm_recipes/metrics/f1")
    >>> f1.compute(predictions=[0, 2, 1, 0], references=[0, 1, 2, 0])
    {'f1': 0.3333333333333333}
"""

_CITATION = """
@article{scikit-learn,
  title={Scikit-learn: Machine Learning in {P}ython},
  author={Pedregosa, F. and Varoquaux, G. and Gramfort, A. and Michel, V. and Thirion, B. and Grisel, O. and
          Blondel, M. and Prettenhofer, P. and Weiss, R. and Dubourg, V. and Vanderplas, J. and Passos, A. and
          Cournapeau, D. and Brucher, M. and Perrot, M. and Duchesnay, E.},
  journal={Journal of Machine Learning Research},
  volume={12},
  pages={2825--2830},
  year={2011}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    def _info(self):
        label = datasets.Value("int32")
        if self.config_name == "multilabel":
            label = datasets.Sequence(label)
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": label, "references": label}),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.f1_score.html"],
        )

    def _compute(
        self, predictions, references, average="macro", labels=None, pos_label=1, sample_weight=None, zero_division=0
    ):
        if len(references) == 0:
            raise ValueError("f1 needs at least one prediction and reference; got none.")
        if average not in _AVERAGES:
            raise ValueError(f"f1: average={average!r} is not one of {_AVERAGES}.")
        score = f1_score(
            references,
            predictions,
            labels=labels,
            pos_label=pos_label,
            average=average,
            sample_weight=sample_weight,
            zero_division=zero_division,
        )
        return {"f1": score.tolist() if average is None else float(score)}
