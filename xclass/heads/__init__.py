"""Classifier heads (sharded over classes). Registry: :data:`xclass.heads.base.HEADS`.

Importing this package registers the margin heads ("margin", "softmax_dense")."""
from xclass.heads import margin_head  # noqa: F401  (registers HEADS entries)
