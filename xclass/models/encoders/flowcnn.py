"""QUIC flow encoder: CESNET-style 1-D CNN over the first N packets + MLP over flow stats.

Per packet: size / ``size_scale``, direction in {-1, +1}, log1p(inter-arrival ms) ->
masked Conv-ReLU-BN stack -> learnable GeM pooling over the valid packets. Flow
statistics: signed log1p -> BN -> Linear -> ReLU. Both are concatenated and projected
to the embedding (the CESNET 30pktTCNET_256 model follows the same two-branch plan with
wider channels, kernels 7/7/5/3 and GeM p=3).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence

import torch
from torch import Tensor, nn

from xclass.models.layers import ConvReluBN, gem_pool, length_mask
from xclass.models.registry import meta_get, register_encoder


def signed_log1p(x: Tensor) -> Tensor:
    """Compress heavy-tailed counts/bytes/durations while keeping their sign."""
    return torch.sign(x) * torch.log1p(x.abs())


class FlowCNN(nn.Module):
    """``pkt_sizes, pkt_dirs, pkt_iat [B, N]``, ``lengths [B]``, ``flow_stats [B, S]`` -> ``[B, d]``."""

    def __init__(self, num_stats: int, embedding_dim: int, channels: Sequence[int],
                 kernels: Sequence[int], stats_hidden: int, hidden: int, dropout: float,
                 size_scale: float, gem_p: float) -> None:
        super().__init__()
        if len(channels) != len(kernels) or not channels:
            raise ValueError(f"flowcnn: 'channels' {list(channels)} and 'kernels' "
                             f"{list(kernels)} must be non-empty and of equal length")
        self.size_scale, self.num_stats = size_scale, num_stats
        convs, c = [], 3
        for w, k in zip(channels, kernels):
            convs.append(ConvReluBN(c, w, k))
            c = w
        self.convs = nn.ModuleList(convs)
        self.gem_p = nn.Parameter(torch.tensor(float(gem_p)))
        d_in = c
        if num_stats > 0:
            self.stats = nn.Sequential(nn.BatchNorm1d(num_stats),
                                       nn.Linear(num_stats, stats_hidden), nn.ReLU())
            d_in += stats_hidden
        self.proj = nn.Sequential(nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                  nn.Dropout(dropout), nn.Linear(hidden, embedding_dim))

    def packet_features(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """-> ``[B, 3, N]``: normalised size, direction (+-1), log inter-arrival time."""
        dtype = self.proj[0].weight.dtype
        size = inputs["pkt_sizes"].to(dtype) / self.size_scale
        direction = torch.sign(inputs["pkt_dirs"].to(dtype))    # +1 up, -1 down, 0 padding
        ipt = torch.log1p(inputs["pkt_iat"].to(dtype).clamp_min(0.0))
        return torch.stack([size, direction, ipt], dim=1)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        x = self.packet_features(inputs)
        mask = length_mask(inputs["lengths"], x.shape[-1])      # [B, N]
        x = x * mask.unsqueeze(1)
        for conv in self.convs:
            x = conv(x, mask)
        # p >= 1 keeps GeM between mean (p=1) and max (p->inf).
        feats = [gem_pool(x, mask, self.gem_p.clamp_min(1.0))]
        if self.num_stats > 0:
            st = inputs["flow_stats"]
            if st.shape[-1] != self.num_stats:
                raise ValueError(f"flowcnn: 'stats' has {st.shape[-1]} columns, "
                                 f"meta.json says {self.num_stats}")
            feats.append(self.stats(signed_log1p(st.to(x.dtype))))
        return self.proj(torch.cat(feats, dim=1))


@register_encoder("flowcnn", tasks=("quic",))
def flowcnn(meta: Dict[str, Any], embedding_dim: int, *,
            channels: Sequence[int] = (32, 64, 64), kernels: Sequence[int] = (7, 5, 3),
            stats_hidden: int = 32, hidden: int = 128, dropout: float = 0.1,
            size_scale: float = 1500.0, gem_p: float = 3.0) -> FlowCNN:
    """FlowCNN over the packet sequences + flow stats.

    The stats width comes from meta.json: ``inputs.flow_stats`` (the list of stat names)
    or ``num_stats`` (0 = no stats branch).
    """
    return FlowCNN(_num_stats(meta), embedding_dim, tuple(channels), tuple(kernels),
                   stats_hidden, hidden, dropout, size_scale, gem_p)


def _num_stats(meta: Dict[str, Any]) -> int:
    if "num_stats" in meta:
        return int(meta["num_stats"])
    names = meta_get(meta, "flow_stats", "encoder 'flowcnn'", "inputs")
    return len(names)
