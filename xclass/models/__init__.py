"""Encoders (one per task) and the decoders that feed them.

Public API:
    ENCODERS, build_encoder(model_cfg, meta) -> nn.Module   (forward(inputs) -> [B, d])
    DECODERS, decode_batch(task, batch, meta) -> (inputs, labels)
    input_columns(task, encoder) -> Parquet columns to read
    DEFAULT_ENCODER: task -> encoder name
"""
from xclass.models import encoders  # noqa: F401  (registers every encoder)
from xclass.models.decoders import (DECODERS, IGNORE, decode_batch, input_columns,
                                    pad_ragged)
from xclass.models.registry import (DEFAULT_ENCODER, ENCODER_INPUTS, ENCODER_TASKS,
                                    ENCODERS, build_encoder, encoder_params)

__all__ = ["DECODERS", "DEFAULT_ENCODER", "ENCODERS", "ENCODER_INPUTS", "ENCODER_TASKS",
           "IGNORE", "build_encoder", "decode_batch", "encoder_params", "input_columns",
           "pad_ragged"]
