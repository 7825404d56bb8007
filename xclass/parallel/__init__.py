"""Everything that touches torch.distributed lives here (and in the sharded heads)."""
from xclass.parallel.context import ParallelContext

__all__ = ["ParallelContext"]
