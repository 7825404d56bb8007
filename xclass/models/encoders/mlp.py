"""A plain MLP over the generic dense ``features`` input (any task)."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence

from torch import Tensor, nn

from xclass.models.registry import meta_get, register_encoder


def mlp_stack(d_in: int, hidden: Sequence[int], d_out: int, dropout: float) -> nn.Sequential:
    """Linear-BN-ReLU(-Dropout) per hidden width, then Linear to ``d_out``."""
    layers = []
    for h in hidden:
        layers += [nn.Linear(d_in, h), nn.BatchNorm1d(h), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        d_in = h
    layers.append(nn.Linear(d_in, d_out))
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """``features [B, F]`` float -> ``[B, d]``."""

    def __init__(self, num_features: int, embedding_dim: int, hidden: Sequence[int] = (256,),
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.num_features = num_features
        self.net = mlp_stack(num_features, hidden, embedding_dim, dropout)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        x = inputs["features"]
        if x.shape[-1] != self.num_features:
            raise ValueError(f"mlp encoder: 'features' has {x.shape[-1]} columns, "
                             f"meta.json says feature_dim={self.num_features}")
        return self.net(x.to(self.net[0].weight.dtype))


@register_encoder("mlp", tasks=("face", "speaker", "quic", "xmc"), inputs="features")
def mlp(meta: Dict[str, Any], embedding_dim: int, *, hidden: Sequence[int] = (256,),
        dropout: float = 0.0) -> MLPEncoder:
    """MLP over ``features``; needs ``feature_dim`` in meta.json."""
    return MLPEncoder(int(meta_get(meta, "feature_dim", "encoder 'mlp'", "features")), embedding_dim,
                      tuple(hidden), dropout)
