"""Z-loss and the spherical loss family (de Brebisson & Vincent; Vincent et al.): a dense
autograd head ("zloss") and an exact factored head ("zloss_efficient"), both registered in
:data:`xclass.heads.base.HEADS` on import. See docs/zloss.md."""
from xclass.heads.zloss.efficient import FactoredSGD, FactoredZLossHead
from xclass.heads.zloss.losses import SPHERICAL_LOSSES, batch_loss
from xclass.heads.zloss.reference import DenseZLossHead

__all__ = ["DenseZLossHead", "FactoredZLossHead", "FactoredSGD", "SPHERICAL_LOSSES", "batch_loss"]
