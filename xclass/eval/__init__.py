"""Evaluation: numpy metrics (XMC, verification, identification), FAISS indexes, reports.

Importing this package registers every metric in :data:`xclass.eval.metrics.METRICS`;
FAISS is only imported by :mod:`xclass.eval.index` (and modules that use it).
"""
from xclass.eval import identification, metrics, verification  # noqa: F401  (registration)
from xclass.eval.metrics import METRICS, LabelSets, Ranking, inverse_propensity, xmc_metrics

__all__ = ["METRICS", "LabelSets", "Ranking", "inverse_propensity", "xmc_metrics"]
