"""Encoder modules; importing this package registers every encoder in ``ENCODERS``."""
from xclass.models.encoders import ecapa, flowcnn, hf, iresnet, mlp, text, thin_resnet  # noqa: F401
