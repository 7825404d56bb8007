"""xclass: distributed extreme-classification training (sharded heads, Z-loss, XMC, FAISS eval)."""

__version__ = "0.1.0"
