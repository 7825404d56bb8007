"""Extreme multi-label classification: dual-encoder (decoupled softmax) and one-vs-all heads
sharded over labels, XC-repository format readers/writer, the WordNet importer and a TF-IDF
kNN baseline. Importing this package registers the heads "dual_decoupled" and "ova"."""
from xclass.heads.xmc import heads  # noqa: F401  (registers HEADS entries)
