"""Synthetic QUIC flows: per-domain packet size / direction / timing templates with jitter.

Domain ``c`` owns, hashed from ``(seed, c)``: a size template per packet position, a
direction pattern (packet 0 is always the client Initial, upstream), a base RTT and
per-position log inter-arrival-time offsets, and a flow-length profile (extra packets after
the first ``N``). A flow jitters sizes, flips a few directions, replaces some packets by
random ones, draws timings around the template and may stop early (``num_packets < N``;
the tail is zero-padded). ``flow_stats`` summarises the whole flow (first N + extra packets).
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import pyarrow as pa

from xclass.data.schema import QUIC_FLOW_STATS
from xclass.data.synth import hash_uniform
from xclass.data.writer import fixed_list, with_task_meta


class QuicGenerator:
    """Rows ``id, label, pkt_sizes int16[N], pkt_dirs int8[N], pkt_iat float32[N] (ms),
    num_packets int32, flow_stats float32[8]`` (names in ``schema.QUIC_FLOW_STATS``)."""

    task = "quic"
    row_group_rows = 65536
    chunk_rows = 32768

    def __init__(self, seed: int, num_packets: int = 30, min_packets: int = 6,
                 size_jitter: float = 60.0, flip_prob: float = 0.05, replace_prob: float = 0.1,
                 iat_sigma: float = 0.6, short_prob: float = 0.3) -> None:
        if not 2 <= min_packets <= num_packets:
            raise ValueError(f"need 2 <= min_packets <= num_packets, got {min_packets}, {num_packets}")
        self.seed, self.n, self.min_packets = seed, num_packets, min_packets
        self.size_jitter, self.flip_prob, self.replace_prob = size_jitter, flip_prob, replace_prob
        self.iat_sigma, self.short_prob = iat_sigma, short_prob

    def input_meta(self) -> Dict:
        return {"packets": {"num_packets": self.n, "columns": ["pkt_sizes", "pkt_dirs", "pkt_iat"],
                            "iat_unit": "ms", "dirs": "+1 client->server, -1 server->client, 0 pad"},
                "flow_stats": list(QUIC_FLOW_STATS)}

    def schema(self) -> pa.Schema:
        n = self.n
        schema = pa.schema([("id", pa.int64()), ("label", pa.int64()),
                            ("pkt_sizes", pa.list_(pa.int16(), n)), ("pkt_dirs", pa.list_(pa.int8(), n)),
                            ("pkt_iat", pa.list_(pa.float32(), n)), ("num_packets", pa.int32()),
                            ("flow_stats", pa.list_(pa.float32(), len(QUIC_FLOW_STATS)))])
        return with_task_meta(schema, self.task, num_packets=n, flow_stats=list(QUIC_FLOW_STATS))

    def template(self, labels: np.ndarray):
        """Per-domain (sizes [n, N], dirs [n, N] in {-1, +1}, log-iat mean [n, N], profile [n, 4])."""
        c, j = labels[:, None], np.arange(self.n)[None, :]
        u_size = hash_uniform(self.seed, c, 1, j)
        u_dir = hash_uniform(self.seed, c, 2, j)
        u_iat = hash_uniform(self.seed, c, 3, j)
        prof = hash_uniform(self.seed, c, 4, np.arange(4))  # rtt, up share, extra up, extra down
        sizes = 50 + 1350 * u_size ** 1.5  # many small control packets, some full ones
        sizes[:, 0] = 1200 + 100 * u_size[:, 0]  # client Initial (padded to >= 1200 bytes)
        dirs = np.where(u_dir < 0.25 + 0.4 * prof[:, 1:2], 1, -1)
        dirs[:, 0], dirs[:, 1] = 1, -1
        log_iat = np.log(2 + 150 * prof[:, 0:1]) + 2.0 * (u_iat - 0.5)
        return sizes, dirs, log_iat, prof

    def flows(self, labels: np.ndarray, rng: np.random.Generator) -> Dict[str, np.ndarray]:
        n, N = len(labels), self.n
        sizes, dirs, log_iat, prof = self.template(labels)
        sizes = sizes + rng.normal(0, self.size_jitter, (n, N))
        dirs = np.where(rng.random((n, N)) < self.flip_prob, -dirs, dirs)
        swap = rng.random((n, N)) < self.replace_prob
        sizes = np.where(swap, rng.uniform(40, 1500, (n, N)), sizes)
        iat = np.exp(log_iat + rng.normal(0, self.iat_sigma, (n, N)))
        iat[:, 0] = 0.0
        count = np.where(rng.random(n) < self.short_prob, rng.integers(self.min_packets, N + 1, n), N)
        live = np.arange(N)[None, :] < count[:, None]
        sizes = np.where(live, np.clip(np.round(sizes), 40, 1500), 0).astype(np.int16)
        dirs = np.where(live, dirs, 0).astype(np.int8)
        iat = np.where(live, iat, 0).astype(np.float32)
        return {"pkt_sizes": sizes, "pkt_dirs": dirs, "pkt_iat": iat, "num_packets": count.astype(np.int32),
                "flow_stats": self._stats(sizes, dirs, iat, count, prof, rng)}

    def _stats(self, sizes, dirs, iat, count, prof, rng) -> np.ndarray:
        """Whole-flow statistics [n, 8]; flows with N packets continue with extra packets."""
        full = count == self.n
        extra_up = np.where(full, rng.poisson(5 + 200 * prof[:, 2] ** 2), 0)
        extra_dn = np.where(full, rng.poisson(10 + 2000 * prof[:, 3] ** 3), 0)
        s = sizes.astype(np.float64)
        up, dn = dirs == 1, dirs == -1
        bytes_up = (s * up).sum(1) + extra_up * 200.0
        bytes_dn = (s * dn).sum(1) + extra_dn * 1200.0
        pk_up, pk_dn = up.sum(1) + extra_up, dn.sum(1) + extra_dn
        mean_iat = iat.sum(1) / np.maximum(count - 1, 1)
        duration = (iat.sum(1) + (extra_up + extra_dn) * mean_iat * 0.2) / 1000.0
        live = dirs != 0
        mean_size = (s * live).sum(1) / count
        std_size = np.sqrt(np.maximum(((s - mean_size[:, None]) ** 2 * live).sum(1) / count, 0))
        return np.stack([duration, bytes_up, bytes_dn, pk_up, pk_dn, mean_size, std_size, mean_iat],
                        axis=1).astype(np.float32)

    def rows(self, ids: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> Dict[str, pa.Array]:
        f = self.flows(labels, rng)
        return {"id": pa.array(ids, pa.int64()), "label": pa.array(labels, pa.int64()),
                "pkt_sizes": fixed_list(f["pkt_sizes"], pa.int16()),
                "pkt_dirs": fixed_list(f["pkt_dirs"], pa.int8()),
                "pkt_iat": fixed_list(f["pkt_iat"], pa.float32()),
                "num_packets": pa.array(f["num_packets"], pa.int32()),
                "flow_stats": fixed_list(f["flow_stats"], pa.float32())}
