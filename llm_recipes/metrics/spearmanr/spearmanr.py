"""Spearman rank correlation coefficient as an offline `evaluate` module.

Load it without the Hub: `evaluate.load("path/to/llm_recipes/metrics/spearmanr")` or
`llm_recipes.metrics.load_metric("spearmanr")`. When predictions or references are constant the correlation is
undefined and the result is NaN (as SciPy gives, without its warning): a model that predicts one value for everything
has no correlation to report, and 0 would hide that.
"""

import warnings

import datasets
import evaluate
from scipy.stats import ConstantInputWarning, spearmanr

_DESCRIPTION = """
The Spearman rank correlation is the Pearson correlation of the ranks of predictions and references: it measures
how monotonic their relationship is, from -1 (one falls as the other rises) through 0 to +1 (both rise together),
whatever its shape. It is undefined (NaN)
when either side is constant.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `float`): predicted values.
    references (`list` of `float`): true values.
    return_pvalue (`bool`, defaults to `False`): also return the two-sided p-value.
Returns:
    spearmanr (`float`): in [-1, 1], or NaN when either side is constant.
    p-value (`float`): only with `return_pvalue=True`.
Examples:
    >>> spearman = evaluate.load("llm_recipes/metrics/spearmanr")
    >>> spearman.compute(predictions=[1.0, 2.0, 3.0], references=[1.0, 8.0, 27.0])
    {'spearmanr': 1.0}
"""

_CITATION = """
@article{scipy,
  title={{SciPy} 1.0: Fundamental Algorithms for Scientific Computing in {P}ython},
  author={Virtanen, Pauli and Gommers, Ralf and Oliphant, Travis E. and Haberland, Matt and Reddy, Tyler and
          Cournapeau, David and Burovski, Evgeni and Peterson, Pearu and Weckesser, Warren and Bright, Jonathan and
          others},
  journal={Nature Methods},
  volume={17},
  pages={261--272},
  year={2020}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Spearmanr(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
            reference_urls=["https://docs.scipy.org/doc/scipy/reference/generated/scipy.stats.spearmanr.html"],
        )

    def _compute(self, predictions, references, return_pvalue=False):
        if len(references) < 2:
            raise ValueError(f"spearmanr needs at least two predictions and references; got {len(references)}.")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConstantInputWarning)
            statistic, pvalue = spearmanr(references, predictions)
        results = {"spearmanr": float(statistic)}
        if return_pvalue:
            results["p-value"] = float(pvalue)
        return results
