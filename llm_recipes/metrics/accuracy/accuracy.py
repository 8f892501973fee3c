"""Accuracy as an offline `evaluate` module: the fraction of predictions equal to their reference.

Load it without the Hub: `evaluate.load("path/to/llm_recipes/metrics/accuracy")` or
`llm_recipes.metrics.load_metric("accuracy")`; `config_name="multilabel"` takes multi-hot rows and counts a row as
correct only when every label matches (subset accuracy).
"""

import datasets
import evaluate
from sklearn.metrics import accuracy_score

_DESCRIPTION = """
Accuracy is the proportion of correct predictions among all predictions: (TP + TN) / (TP + TN + FP + FN).
With the "multilabel" configuration a prediction is correct only when its whole multi-hot row equals the reference
row (exact-match or subset accuracy).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`, or `list` of `list` of `int` for "multilabel"): predicted labels.
    references (`list` of `int`, or `list` of `list` of `int` for "multilabel"): true labels.
    normalize (`bool`, defaults to `True`): if `False`, return the number of correct predictions instead.
    sample_weight (`list` of `float`, optional): one weight per example.
Returns:
    accuracy (`float`): in [0, 1] (or a count when `normalize=False`).
Examples:
    >>> accuracy = evaluate.load("llm_recipes/metrics/accuracy")
    >>> accuracy.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0])
    {'accuracy': 0.75}
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
class Accuracy(evaluate.Metric):
    def _info(self):
        label = datasets.Value("int32")
        if self.config_name == "multilabel":
            label = datasets.Sequence(label)
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": label, "references": label}),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.accuracy_score.html"],
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        if len(references) == 0:
            raise ValueError("accuracy needs at least one prediction and reference; got none.")
        return {
            "accuracy": float(
                accuracy_score(references, predictions, normalize=normalize, sample_weight=sample_weight)
            )
        }
