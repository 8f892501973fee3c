"""Confusion matrix as an offline `evaluate` module: rows are true labels, columns are predicted labels.

Load it without the Hub: `evaluate.load("path/to/llm_recipes/metrics/confusion_matrix")` or
`llm_recipes.metrics.load_metric("confusion_matrix")`. The matrix comes back as a list of lists so it goes
straight into a JSON results file; pass `labels` to fix its size and order when some class is absent.
"""

import datasets
import evaluate
from sklearn.metrics import confusion_matrix

_DESCRIPTION = """
The confusion matrix counts, for each true label (row i), how often each label was predicted (column j): entry
[i][j] is the number of examples of class i predicted as class j, so the diagonal holds the correct predictions.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels.
    references (`list` of `int`): true labels.
    labels (`list` of `int`, optional): the classes, in row/column order; defaults to the sorted union of the
        labels in references and predictions.
    sample_weight (`list` of `float`, optional): one weight per example.
    normalize (`"true"`, `"pred"`, `"all"` or `None`, defaults to `None`): divide by row sums, column sums or the
        total; `None` keeps counts.
Returns:
    confusion_matrix (`list` of `list`): rows = true labels, columns = predicted labels.
Examples:
    >>> confusion = evaluate.load("llm_recipes/metrics/confusion_matrix")
    >>> confusion.compute(predictions=[0, 1, 1], references=[0, 0, 1])
    {'confusion_matrix': [[1, 1], [0, 1]]}
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
class ConfusionMatrix(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.confusion_matrix.html"],
        )

    def _compute(self, predictions, references, labels=None, sample_weight=None, normalize=None):
        if len(references) == 0:
            raise ValueError("confusion_matrix needs at least one prediction and reference; got none.")
        matrix = confusion_matrix(
            references, predictions, labels=labels, sample_weight=sample_weight, normalize=normalize
        )
        return {"confusion_matrix": matrix.tolist()}
