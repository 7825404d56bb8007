"""Margins (pure, on local class shards), objectives (sharded with a group, dense without) and
the dense reference. Importing this package registers every margin in :data:`MARGINS`."""
from xclass.losses import elastic, intertopk, sphereface, sphereface2  # noqa: F401  (registration side effects)
from xclass.losses.margins import MARGINS, MarginAux

__all__ = ["MARGINS", "MarginAux"]
