"""Classifier heads (sharded over classes). Registry: :data:`xclass.heads.base.HEADS`."""
