"""QUIC flow encoder: CESNET-style 1-D CNN over the first N packets + MLP over flow stats.

Per packet: size / ``size_scale``, direction in {-1, +1}, log1p(inter-arrival ms) and,
with ``size_embed > 0``, a learned vector of the packet's exact size class (size // ``size_bin``
bytes, separately per direction) -> masked Conv-ReLU-BN stack -> learnable GeM pooling over
the valid packets. Flow statistics: signed log1p -> BN -> Linear -> ReLU (and, with
``stats_embed > 0``, a learned vector per statistic for its value's bin). Both are concatenated and projected
to the embedding (the CESNET 30pktTCNET_256 model follows the same two-branch plan with
wider channels, kernels 7/7/5/3 and GeM p=3). The size embedding lets the network tell
apart sizes that a single normalised float puts next to each other (a 1,228- from a
1,232-byte packet): protocol headers and handshakes repeat exact sizes. With ``flat_hidden >
0`` a third branch reads the masked packet features by position (flattened ``[(3 + E) N]`` ->
Linear -> ReLU): pooling forgets that, say, the 4th packet is a 517-byte client hello, which
is what a tree model on the same per-position features keys on. With ``port_embed > 0`` a
learned vector of the flow's service port and IP protocol joins the projection's input (see
:func:`port_rows`; the data must carry ``server_port`` / ``ip_proto``, as ``import pcap``
writes them). With ``port_out > 0`` the embedding's last ``port_out`` dimensions are a learned
vector of the port itself (the projection gives the rest), so flows of one port stay near each
other in the embedding even for labels never trained on.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence

import torch
from torch import Tensor, nn

from xclass.models.layers import ConvReluBN, gem_pool, length_mask
from xclass.models.registry import meta_get, register_encoder


EPHEMERAL_PORT = 49152  # IANA: 49152-65535 are dynamic ports, no service


def port_rows(port: Tensor, proto: Tensor, buckets: int) -> Tensor:
    """Port-table rows ``[B]`` int64 of ports and IP protocols ``[B]``: row 0 = unknown port
    (0), rows 1..1023 = the well-known ports themselves, ``1024 + port % buckets`` = registered
    ports (1,024-49,151, hashed), ``1024 + buckets`` = any dynamic port; UDP (17) uses a second
    block of ``1025 + buckets`` rows after the one of TCP and the rest."""
    port = port.long()
    row = torch.where(port < 1024, port.clamp_min(0), 1024 + port % buckets)
    row = torch.where(port >= EPHEMERAL_PORT, torch.full_like(row, 1024 + buckets), row)
    return row + (proto.long() == 17).long() * (1025 + buckets)


def _check_params(embedding_dim: int, channels: Sequence[int], kernels: Sequence[int], size_embed: int,
                  size_bin: int, max_size: int, flat_hidden: int, num_packets: int, stats_bin: float,
                  stats_bins: int, port_embed: int, port_buckets: int, port_out: int) -> None:
    """ValueError naming the flowcnn parameters that cannot build a network."""
    if port_embed < 0 or port_buckets < 1 or not 0 <= port_out < embedding_dim:
        raise ValueError(f"flowcnn: need port_embed >= 0, port_buckets >= 1 and 0 <= port_out < "
                         f"embedding_dim, got {port_embed}, {port_buckets}, {port_out}")
    if flat_hidden > 0 and num_packets < 1:
        raise ValueError("flowcnn: flat_hidden > 0 needs the packet count (meta.json num_packets)")
    if size_embed < 0 or size_bin < 1 or max_size < size_bin or stats_bin <= 0 or stats_bins < 1:
        raise ValueError(f"flowcnn: need size_embed >= 0, size_bin >= 1, max_size >= size_bin, "
                         f"stats_bin > 0 and stats_bins >= 1, got {size_embed}, {size_bin}, {max_size}, "
                         f"{stats_bin}, {stats_bins}")
    if len(channels) != len(kernels) or not channels or min(channels) < 1 or min(kernels) < 1:
        raise ValueError(f"flowcnn: 'channels' {list(channels)} and 'kernels' "
                         f"{list(kernels)} must be non-empty, of equal length and >= 1")


def signed_log1p(x: Tensor) -> Tensor:
    """Compress heavy-tailed counts/bytes/durations while keeping their sign."""
    return torch.sign(x) * torch.log1p(x.abs())


class FlowCNN(nn.Module):
    """``pkt_sizes, pkt_dirs, pkt_iat [B, N]``, ``lengths [B]``, ``flow_stats [B, S]`` -> ``[B, d]``."""

    def __init__(self, num_stats: int, embedding_dim: int, channels: Sequence[int],
                 kernels: Sequence[int], stats_hidden: int, hidden: int, dropout: float,
                 size_scale: float, gem_p: float, size_embed: int = 0, size_bin: int = 8,
                 max_size: int = 1536, flat_hidden: int = 0, num_packets: int = 0,
                 stats_embed: int = 0, stats_bin: float = 0.5, stats_bins: int = 64,
                 port_embed: int = 0, port_buckets: int = 2048, port_out: int = 0) -> None:
        super().__init__()
        _check_params(embedding_dim, channels, kernels, size_embed, size_bin, max_size, flat_hidden, num_packets,
                      stats_bin, stats_bins, port_embed, port_buckets, port_out)
        self.size_scale, self.num_stats = size_scale, num_stats
        self.size_bin, self.size_bins = size_bin, max_size // size_bin + 1  # the last bin: >= max_size
        # one table row per (size class, direction): rows [0, bins) upstream, [bins, 2 bins) downstream
        self.size_table = nn.Embedding(2 * self.size_bins, size_embed) if size_embed > 0 else None
        convs, c = [], 3 + size_embed
        for w, k in zip(channels, kernels):
            convs.append(ConvReluBN(c, w, k))
            c = w
        self.convs = nn.ModuleList(convs)
        self.gem_p = nn.Parameter(torch.tensor(float(gem_p), device="cpu"))  # moved with the encoder
        d_in = c
        self.num_packets = num_packets
        self.flat = None
        if flat_hidden > 0:
            self.flat = nn.Sequential(nn.Linear((3 + size_embed) * num_packets, flat_hidden), nn.ReLU())
            d_in += flat_hidden
        self.stats_table = None
        if num_stats > 0:
            self.stats = nn.Sequential(nn.BatchNorm1d(num_stats),
                                       nn.Linear(num_stats, stats_hidden), nn.ReLU())
            d_in += stats_hidden
            if stats_embed > 0:  # one table per statistic, rows = bins of its signed log1p value
                self.stats_bin, self.stats_bins = float(stats_bin), int(stats_bins)
                self.stats_table = nn.Embedding(num_stats * stats_bins, stats_embed)
                d_in += num_stats * stats_embed
        self.port_buckets = port_buckets
        rows = 2 * (1025 + port_buckets)
        self.port_table = nn.Embedding(rows, port_embed) if port_embed > 0 else None
        self.port_out = nn.Embedding(rows, port_out) if port_out > 0 else None
        d_in += port_embed
        self.proj = nn.Sequential(nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                  nn.Dropout(dropout), nn.Linear(hidden, embedding_dim - port_out))

    def packet_features(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """-> ``[B, 3 + size_embed, N]``: normalised size, direction (+-1), log inter-arrival time
        (then the size-class vector); not yet masked."""
        dtype = self.proj[0].weight.dtype
        size = inputs["pkt_sizes"].to(dtype) / self.size_scale
        direction = torch.sign(inputs["pkt_dirs"].to(dtype))    # +1 up, -1 down, 0 padding
        ipt = torch.log1p(inputs["pkt_iat"].to(dtype).clamp_min(0.0))
        x = torch.stack([size, direction, ipt], dim=1)
        if self.size_table is None:
            return x
        cls = (inputs["pkt_sizes"].long() // self.size_bin).clamp(0, self.size_bins - 1)
        cls = cls + self.size_bins * (inputs["pkt_dirs"] < 0).long()
        return torch.cat([x, self.size_table(cls).to(dtype).transpose(1, 2)], dim=1)  # [B, 3 + E, N]

    def _flat(self, x: Tensor) -> Tensor:
        """Masked ``[B, 3 + E, T]`` -> ``[B, flat_hidden]`` by position; ``T`` is cut or
        zero-padded to ``num_packets`` (a batch cut to its longest flow reads the same)."""
        n = self.num_packets
        x = x[..., :n] if x.shape[-1] >= n else torch.nn.functional.pad(x, (0, n - x.shape[-1]))
        return self.flat(x.flatten(1))

    def _stats_bins(self, ls: Tensor) -> Tensor:
        """Signed-log statistics ``[B, S]`` -> ``[B, S * stats_embed]``: statistic ``j`` in bin
        ``clamp(floor(value / stats_bin) + bins / 2, 0, bins - 1)`` picks row ``j * bins + bin``."""
        nb = self.stats_bins
        b = (torch.floor(ls.detach() / self.stats_bin).long() + nb // 2).clamp(0, nb - 1)
        rows = b + nb * torch.arange(ls.shape[1], device=ls.device)
        return self.stats_table(rows).to(ls.dtype).flatten(1)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        x = self.packet_features(inputs)
        mask = length_mask(inputs["lengths"], x.shape[-1])      # [B, N]
        x = x * mask.unsqueeze(1)
        flat = self._flat(x) if self.flat is not None else None
        for conv in self.convs:
            x = conv(x, mask)
        # p >= 1 keeps GeM between mean (p=1) and max (p->inf).
        feats = [gem_pool(x, mask, self.gem_p.clamp_min(1.0))] + ([flat] if flat is not None else [])
        if self.num_stats > 0:
            st = inputs["flow_stats"]
            if st.shape[-1] != self.num_stats:
                raise ValueError(f"flowcnn: 'stats' has {st.shape[-1]} columns, "
                                 f"meta.json says {self.num_stats}")
            ls = signed_log1p(st.to(x.dtype))
            feats.append(self.stats(ls))
            if self.stats_table is not None:
                feats.append(self._stats_bins(ls))
        if self.port_table is None and self.port_out is None:
            return self.proj(torch.cat(feats, dim=1))
        if "server_port" not in inputs or "ip_proto" not in inputs:
            raise ValueError("flowcnn: port_embed / port_out > 0 need the 'server_port' and 'ip_proto' inputs")
        rows = port_rows(inputs["server_port"], inputs["ip_proto"], self.port_buckets)
        if self.port_table is not None:
            feats.append(self.port_table(rows).to(x.dtype))
        out = self.proj(torch.cat(feats, dim=1))
        return out if self.port_out is None else torch.cat([out, self.port_out(rows).to(out.dtype)], dim=1)


@register_encoder("flowcnn", tasks=("quic",))
def flowcnn(meta: Dict[str, Any], embedding_dim: int, *,
            channels: Sequence[int] = (32, 64, 64), kernels: Sequence[int] = (7, 5, 3),
            stats_hidden: int = 32, hidden: int = 128, dropout: float = 0.1,
            size_scale: float = 1500.0, gem_p: float = 3.0, size_embed: int = 0,
            size_bin: int = 8, max_size: int = 1536, flat_hidden: int = 0, stats_embed: int = 0,
            stats_bin: float = 0.5, stats_bins: int = 64, port_embed: int = 0,
            port_buckets: int = 2048, port_out: int = 0) -> FlowCNN:
    """FlowCNN over the packet sequences + flow stats.

    ``size_embed`` > 0 adds a learned ``size_embed``-dim vector per packet for its size class
    (``size // size_bin``, sizes from ``max_size`` up share the last class) and direction.
    ``flat_hidden`` > 0 adds the by-position branch (needs ``num_packets`` in meta.json).
    ``stats_embed`` > 0 adds a learned vector per flow statistic for its value's bin (width
    ``stats_bin`` in signed log1p units, ``stats_bins`` bins centred on 0), as trees split them.

    ``port_embed`` > 0 adds a learned vector of the service port and IP protocol
    (:func:`port_rows`; ``port_buckets`` hash rows for registered ports); the data must carry
    them (meta.json ``inputs.ports``, written by ``xclass import pcap``). ``port_out`` > 0 makes
    the last ``port_out`` of the ``embedding_dim`` dimensions a learned vector of the port.

    The stats width comes from meta.json: ``inputs.flow_stats`` (the list of stat names)
    or ``num_stats`` (0 = no stats branch).
    """
    n_pkts = int(meta_get(meta, "num_packets", "encoder 'flowcnn'", "packets")) if flat_hidden else 0
    if (port_embed > 0 or port_out > 0) and "ports" not in (meta.get("inputs") or {}):
        raise ValueError("flowcnn: port_embed / port_out > 0 need data with the service port and protocol "
                         "(meta.json inputs.ports: `xclass import pcap`, or `xclass import flows --port-column "
                         "--proto-column`); set model.params.port_embed and port_out to 0 for data without them")
    return FlowCNN(_num_stats(meta), embedding_dim, tuple(channels), tuple(kernels),
                   stats_hidden, hidden, dropout, size_scale, gem_p, size_embed, size_bin, max_size,
                   flat_hidden, n_pkts, stats_embed, stats_bin, stats_bins, port_embed, port_buckets, port_out)


def _num_stats(meta: Dict[str, Any]) -> int:
    if "num_stats" in meta:
        return int(meta["num_stats"])
    names = meta_get(meta, "flow_stats", "encoder 'flowcnn'", "inputs")
    return len(names)
