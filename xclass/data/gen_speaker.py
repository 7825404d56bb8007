"""Synthetic speakers: log-mel filterbank utterances with speaker-specific spectral structure.

Frame ``t`` of an utterance of speaker ``c`` is (all over ``n_mels`` bins)::

    fbank[t] = envelope_c + ripple_c(pitch jitter) + channel_u + phone_{p(t)} + energy_t + noise

``envelope_c`` (formant bumps + tilt) and ``ripple_c`` (harmonic ripple whose period plays
the pitch) are hashed from ``(seed, c)``. The *phone* sequence comes from a bank shared by all
speakers and dominates frame variance, so single frames/bins are weak cues; the utterance
average identifies the speaker. ``channel_u`` is a random smooth tilt per utterance.
Lengths vary uniformly in ``[min_frames, max_frames]``.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import pyarrow as pa

from xclass.data.synth import hash_uniform
from xclass.data.writer import var_list, with_task_meta


class SpeakerGenerator:
    """Rows ``id, label, fbank`` (list<float32>, T*n_mels flattened, frame-major) ``, num_frames``."""

    task = "speaker"
    row_group_rows = 512
    chunk_rows = 256

    def __init__(self, seed: int, n_mels: int = 80, min_frames: int = 40, max_frames: int = 120,
                 num_phones: int = 24, noise: float = 0.5, pitch_jitter: float = 0.03) -> None:
        if not 1 <= min_frames <= max_frames:
            raise ValueError(f"need 1 <= min_frames <= max_frames, got {min_frames}, {max_frames}")
        self.seed, self.n_mels = seed, n_mels
        self.min_frames, self.max_frames = min_frames, max_frames
        self.num_phones, self.noise, self.pitch_jitter = num_phones, noise, pitch_jitter
        m = np.arange(n_mels, dtype=np.float32)
        # Shared phone bank [P, n_mels]: class-free content (the "words" being said).
        u = hash_uniform(seed, -1, np.arange(num_phones)[:, None], np.arange(9)[None, :]).astype(np.float32)
        self.phones = sum(
            (1.0 + 2.0 * u[:, 3 * k + 2, None])
            * np.exp(-((m - n_mels * u[:, 3 * k, None]) ** 2) / (2 * (2 + 6 * u[:, 3 * k + 1, None]) ** 2))
            for k in range(3)).astype(np.float32)

    def input_meta(self) -> Dict:
        return {"fbank": {"n_mels": self.n_mels, "min_frames": self.min_frames,
                          "max_frames": self.max_frames, "layout": "frame-major [T, n_mels] flattened"}}

    def schema(self) -> pa.Schema:
        schema = pa.schema([("id", pa.int64()), ("label", pa.int64()),
                            ("fbank", pa.list_(pa.float32())), ("num_frames", pa.int32())])
        return with_task_meta(schema, self.task, n_mels=self.n_mels)

    def speaker_profile(self, labels: np.ndarray, pitch_scale: np.ndarray) -> np.ndarray:
        """Speaker envelope + harmonic ripple [n, n_mels]; ``pitch_scale`` [n] jitters the period."""
        m = np.arange(self.n_mels, dtype=np.float32)[None, :]
        c = labels[:, None]
        u = hash_uniform(self.seed, c, np.arange(12)).astype(np.float32)  # [n, 12]
        env = (u[:, 0:1] - 0.5) * 2.0 * (m / self.n_mels - 0.5)  # spectral tilt
        for k in range(3):  # formants
            centre = self.n_mels * (0.1 + 0.8 * u[:, 1 + 3 * k:2 + 3 * k])
            width = 2.0 + 5.0 * u[:, 2 + 3 * k:3 + 3 * k]
            env = env + (0.8 + 1.2 * u[:, 3 + 3 * k:4 + 3 * k]) * np.exp(-((m - centre) ** 2) / (2 * width ** 2))
        period = (3.0 + 5.0 * u[:, 10:11]) * pitch_scale[:, None]
        ripple = (0.4 + 0.6 * u[:, 11:12]) * np.cos(2 * np.pi * m / period)
        return (env + ripple).astype(np.float32)

    def utterances(self, labels: np.ndarray, rng: np.random.Generator):
        """(padded fbank [n, T_max, n_mels] float32, frames [n] int32)."""
        n, tmax, nm = len(labels), self.max_frames, self.n_mels
        frames = rng.integers(self.min_frames, self.max_frames + 1, n).astype(np.int32)
        prof = self.speaker_profile(labels, 1.0 + self.pitch_jitter * rng.standard_normal(n))
        m = np.arange(nm, dtype=np.float32)[None, :]
        channel = (rng.normal(0, 0.5, (n, 1)) * (m / nm - 0.5)).astype(np.float32)  # per utterance
        seg = rng.integers(3, 9, n)[:, None]  # phone segment length per utterance
        ids = rng.integers(0, self.num_phones, (n, tmax // 3 + 1))
        t = np.arange(tmax)[None, :]
        phone_seq = np.take_along_axis(ids, t // seg, axis=1)  # [n, T_max]
        energy = rng.normal(0, 0.7, (n, tmax, 1)).astype(np.float32)
        x = self.phones[phone_seq] + (prof + channel)[:, None, :] + energy
        x += rng.normal(0, self.noise, x.shape).astype(np.float32)
        return x.astype(np.float32), frames

    def rows(self, ids: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> Dict[str, pa.Array]:
        x, frames = self.utterances(labels, rng)
        mask = np.arange(self.max_frames)[None, :] < frames[:, None]
        values = x[mask].reshape(-1)  # row-major: utterance by utterance, frame-major
        offsets = np.concatenate([[0], np.cumsum(frames.astype(np.int64) * self.n_mels)])
        return {"id": pa.array(ids, pa.int64()), "label": pa.array(labels, pa.int64()),
                "fbank": var_list(values, offsets, pa.float32()),
                "num_frames": pa.array(frames, pa.int32())}
