"""Evaluation: numpy metrics (XMC, verification, identification), FAISS indexes, reports.

Importing this package registers every metric in :data:`xclass.eval.metrics.METRICS`;
FAISS is only imported by :mod:`xclass.eval.index` (and modules that use it).
"""
from xclass.eval import identification, metrics, verification  # noqa: F401  (registration)
from xclass.eval.metrics import METRICS, LabelSets, Ranking, inverse_propensity, xmc_metrics

#: The evaluation protocols of ``xclass evaluate --protocol`` (a task record lists the ones its
#: models are evaluated with): ``xmc`` P@k/nDCG@k/PSP@k of a label index; ``face`` 10-fold pair
#: accuracy; ``speaker`` EER/minDCF of trials; ``ident`` gallery/query identification.
PROTOCOLS = ("xmc", "face", "speaker", "ident")
#: The protocols that score verification pairs/trials (the task record's ``pairs`` file).
VERIFICATION_PROTOCOLS = ("face", "speaker")

__all__ = ["PROTOCOLS", "VERIFICATION_PROTOCOLS", "METRICS", "LabelSets", "Ranking", "inverse_propensity", "xmc_metrics"]
