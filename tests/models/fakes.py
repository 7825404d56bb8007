"""Small fake reader batches (the ParquetReader's numpy layout) and metas for each task."""
from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import numpy as np

META: Dict[str, Dict[str, Any]] = {
    "face": {"task": "face", "num_classes": 7, "height": 16, "width": 16, "channels": 3},
    "speaker": {"task": "speaker", "num_classes": 7, "n_mels": 8},
    "quic": {"task": "quic", "num_classes": 7, "num_packets": 12, "num_stats": 8},
    "xmc": {"task": "xmc", "num_classes": 7, "vocab_size": 50},
}
FEATURE_DIM = 10
# Per-row lengths (frames / packets / tokens) of the fake batches: deliberately ragged.
LENGTHS = {"speaker": [5, 17, 11, 30], "quic": [3, 12, 7, 1], "xmc": [2, 9, 5, 1]}


def meta_for(task: str) -> Dict[str, Any]:
    return dict(META[task], feature_dim=FEATURE_DIM)


def _csr(rows: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    return np.concatenate(rows), offsets


def fake_batch(task: str, seed: int = 0, rows: Sequence[int] = (0, 1, 2, 3)) -> Dict[str, np.ndarray]:
    """A reader-layout batch of ``task`` holding the fake rows ``rows`` (row content
    depends only on the row index, so a sub-batch repeats the same examples)."""
    m = meta_for(task)
    gens = [np.random.default_rng([seed, r]) for r in rows]
    out: Dict[str, np.ndarray] = {
        "label": np.array([r % m["num_classes"] for r in rows], dtype=np.int64),
        "features": np.stack([g.normal(size=FEATURE_DIM) for g in gens]).astype(np.float32),
    }
    if task == "face":
        size = m["height"] * m["width"] * m["channels"]
        out["image"] = np.stack([g.integers(0, 256, size) for g in gens]).astype(np.uint8)
    elif task == "speaker":
        frames = [LENGTHS["speaker"][r] for r in rows]
        out["fbank"], out["fbank_offsets"] = _csr(
            [g.normal(size=t * m["n_mels"]).astype(np.float32) for g, t in zip(gens, frames)])
        out["num_frames"] = np.array(frames, dtype=np.int32)
    elif task == "quic":
        _quic(out, gens, [LENGTHS["quic"][r] for r in rows], m["num_packets"])
    elif task == "xmc":
        toks = [g.integers(0, m["vocab_size"], LENGTHS["xmc"][r]) for g, r in zip(gens, rows)]
        out["tokens"], out["tokens_offsets"] = _csr([t.astype(np.int32) for t in toks])
        labs = [g.choice(m["num_classes"], 1 + r % 3, replace=False) for g, r in zip(gens, rows)]
        out["labels"], out["labels_offsets"] = _csr(labs)
        del out["label"]
    return out


def _quic(out: Dict[str, np.ndarray], gens, lengths, n: int) -> None:
    """Packets beyond num_packets are zero, as the writer pads them."""
    valid = np.arange(n)[None, :] < np.array(lengths)[:, None]
    out["pkt_sizes"] = np.stack([g.integers(40, 1500, n) for g in gens]) * valid
    out["pkt_dirs"] = np.stack([g.choice([-1, 1], n) for g in gens]) * valid
    out["pkt_iat"] = (np.stack([g.exponential(20.0, n) for g in gens]) * valid).astype(np.float32)
    out["num_packets"] = np.array(lengths, dtype=np.int32)
    out["flow_stats"] = np.stack([g.exponential(100.0, 8) for g in gens]).astype(np.float32)
