"""Matthews correlation coefficient (MCC) as an offline `evaluate` module.

Load it without the Hub: `evaluate.load("path/to/llm_recipes/metrics/matthews_correlation")` or
`llm_recipes.metrics.load_metric("matthews_correlation")`. With `config_name="multilabel"` it scores each label
column as its own binary problem and averages ("macro") or lists them (`average=None`), as the Hub module does.
Constant predictions or references give 0, not an error.
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import matthews_corrcoef

_DESCRIPTION = """
The Matthews correlation coefficient is the correlation between predicted and true labels, computed from the
confusion matrix. It ranges from -1 (total disagreement) through 0 (no better than chance) to +1 (perfect), and
stays informative when classes are unbalanced. The multiclass form follows Gorodkin (2004).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`, or `list` of `list` of `int` for "multilabel"): predicted labels.
    references (`list` of `int`, or `list` of `list` of `int` for "multilabel"): true labels.
    sample_weight (`list` of `float`, optional): one weight per example.
    average (`"macro"` or `None`, defaults to "macro"): "multilabel" only; the mean over label columns, or one
        score per column as a list.
Returns:
    matthews_correlation (`float`, or `list` of `float` for "multilabel" with `average=None`): in [-1, 1].
Examples:
    >>> mcc = evaluate.load("llm_recipes/metrics/matthews_correlation")
    >>> mcc.compute(predictions=[1, 1, 0, 0], references=[1, 1, 0, 0])
    {'matthews_correlation': 1.0}
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
class MatthewsCorrelation(evaluate.Metric):
    def _info(self):
        label = datasets.Value("int32")
        if self.config_name == "multilabel":
            label = datasets.Sequence(label)
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": label, "references": label}),
            reference_urls=["https://en.wikipedia.org/wiki/Phi_coefficient"],
        )

    def _compute(self, predictions, references, sample_weight=None, average="macro"):
        if len(references) == 0:
            raise ValueError("matthews_correlation needs at least one prediction and reference; got none.")
        if self.config_name != "multilabel":
            return {
                "matthews_correlation": float(matthews_corrcoef(references, predictions, sample_weight=sample_weight))
            }
        if average not in ("macro", None):
            raise ValueError(f"matthews_correlation: average={average!r} is not one of ('macro', None).")
        predictions, references = np.asarray(predictions), np.asarray(references)
        per_label = [
            float(matthews_corrcoef(references[:, j], predictions[:, j], sample_weight=sample_weight))
            for j in range(references.shape[1])
        ]
        return {"matthews_correlation": per_label if average is None else float(np.mean(per_label))}
