"""Audio files -> the speaker Parquet schema (``fbank`` list<float32> frame-major + ``num_frames``).

Input: one folder per speaker (or ``--label-regex`` on file names) of WAV, FLAC or OGG files at any
sample rate. WAV (PCM 8/16/24/32-bit) is read with the stdlib ``wave`` module; FLAC/OGG (and
non-PCM WAV) need the optional ``soundfile`` package. Multi-channel audio is averaged to mono,
samples are scaled to [-1, 1] and resampled (polyphase, scipy) to ``sample_rate`` (16 kHz).

Log-mel filterbank (:func:`log_mel`, Kaldi-like, numpy): frames of 25 ms every 10 ms with no
padding (``1 + (N - L) // H`` frames), per-frame DC removal, pre-emphasis 0.97 (first sample
repeated), Hamming window, power spectrum with ``n_fft`` = the next power of two >= L, ``n_mels``
(80) triangular filters equally spaced on the HTK mel scale ``1127 ln(1 + f / 700)`` between
``low_hz`` (20) and Nyquist, log with a 1e-10 floor. Differences from Kaldi: Hamming instead of
the Povey window, no dithering, samples in [-1, 1] instead of int16 units (a constant offset of
``2 ln 32768`` in every log energy).
"""
from __future__ import annotations

import os
import wave
from contextlib import closing
from functools import partial
from math import gcd
from typing import Dict, List, Optional, Tuple

import numpy as np
import pyarrow as pa

from xclass.data.writer import atomic_dir, var_list, with_task_meta
from xclass.importers.common import ImportError_, SplitWriters, discover, finish, progress
from xclass.importers.inputs import decode_in_order
from xclass.importers.protocols import plan_splits

AUDIO_EXTS = (".wav", ".flac", ".ogg")


def mel_filterbank(n_mels: int, n_fft: int, sr: int, low_hz: float = 20.0,
                   high_hz: Optional[float] = None) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] triangular filters, equally spaced on the HTK mel scale."""
    high_hz = sr / 2 if high_hz is None else high_hz
    mel = lambda f: 1127.0 * np.log1p(np.asarray(f, np.float64) / 700.0)  # noqa: E731
    edges = np.linspace(mel(low_hz), mel(high_hz), n_mels + 2)
    bins = mel(np.arange(n_fft // 2 + 1) * sr / n_fft)  # mel of every FFT bin
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (bins[None] - left) / (centre - left)
    down = (right - bins[None]) / (right - centre)
    return np.clip(np.minimum(up, down), 0.0, None)


def log_mel(x: np.ndarray, sr: int, n_mels: int = 80, win_ms: float = 25.0, hop_ms: float = 10.0,
            preemph: float = 0.97, low_hz: float = 20.0) -> np.ndarray:
    """Mono signal x [N] (float, [-1, 1]) -> log-mel [T, n_mels] float32 (see module docstring)."""
    L, H = int(round(sr * win_ms / 1000)), int(round(sr * hop_ms / 1000))
    if len(x) < L:
        raise ValueError(f"{len(x)} samples is shorter than one {win_ms} ms frame ({L} samples)")
    t = 1 + (len(x) - L) // H
    idx = np.arange(L)[None, :] + H * np.arange(t)[:, None]
    frames = x.astype(np.float64)[idx]
    frames -= frames.mean(axis=1, keepdims=True)
    frames = np.concatenate([frames[:, :1] * (1 - preemph), frames[:, 1:] - preemph * frames[:, :-1]], axis=1)
    frames *= np.hamming(L)[None]
    n_fft = 1 << (L - 1).bit_length()
    power = np.abs(np.fft.rfft(frames, n=n_fft, axis=1)) ** 2
    energies = power @ mel_filterbank(n_mels, n_fft, sr, low_hz).T
    return np.log(np.maximum(energies, 1e-10)).astype(np.float32)


def _read_wav_stdlib(path: str) -> Tuple[np.ndarray, int]:
    with wave.open(path, "rb") as w:
        ch, width, sr, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
        raw = w.readframes(n)
    if width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float64) - 128) / 128
    elif width == 2:
        x = np.frombuffer(raw, "<i2") / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = np.where(v >= 1 << 23, v - (1 << 24), v) / float(1 << 23)
    elif width == 4:
        x = np.frombuffer(raw, "<i4") / float(1 << 31)
    else:
        raise ValueError(f"unsupported sample width {width} bytes")
    return x.reshape(-1, ch).mean(axis=1), sr


def read_audio(path: str) -> Tuple[np.ndarray, int]:
    """(mono float64 samples in [-1, 1], sample rate). Raises ImportError_ naming ``path``."""
    try:
        if path.lower().endswith(".wav"):
            try:
                return _read_wav_stdlib(path)
            except wave.Error:
                pass  # e.g. IEEE-float WAV: soundfile reads it
        try:
            import soundfile as sf
        except ImportError:
            raise ImportError_(f"{path}: reading this file needs the 'soundfile' package "
                               f"(pip install soundfile)", file=path) from None
        x, sr = sf.read(path, dtype="float64", always_2d=True)
        return x.mean(axis=1), int(sr)
    except ImportError_:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure becomes one clear message
        raise ImportError_(f"{path}: cannot read audio ({type(exc).__name__}: {exc})", file=path) from None


def resample(x: np.ndarray, sr: int, target: int) -> np.ndarray:
    """Polyphase resampling (scipy.signal.resample_poly, Kaiser-windowed FIR)."""
    if sr == target:
        return x
    from scipy.signal import resample_poly

    g = gcd(sr, target)
    return resample_poly(x, target // g, sr // g)


def utterance_fbank(path: str, sample_rate: int, n_mels: int) -> np.ndarray:
    x, sr = read_audio(path)
    try:
        return log_mel(resample(x, sr, sample_rate), sample_rate, n_mels)
    except ValueError as exc:
        raise ImportError_(f"{path}: {exc}", file=path) from None


#: stored filterbank value types (``--fbank-dtype``): float16 halves the dataset
FBANK_TYPES = {"float32": (pa.float32(), np.float32), "float16": (pa.float16(), np.float16)}


def speaker_schema(n_mels: int, fbank_dtype: str = "float32") -> pa.Schema:
    schema = pa.schema([("id", pa.int64()), ("label", pa.int64()), ("fbank", pa.list_(FBANK_TYPES[fbank_dtype][0])),
                        ("num_frames", pa.int32())])
    return with_task_meta(schema, "speaker", n_mels=n_mels)


def _to_arrow(rows: List[dict], fbank_dtype: str = "float32") -> Dict[str, pa.Array]:
    arrow_type, np_type = FBANK_TYPES[fbank_dtype]
    offsets = np.cumsum([0] + [r["fbank"].size for r in rows])
    values = np.concatenate([r["fbank"].reshape(-1) for r in rows]).astype(np_type, copy=False)
    return {"id": pa.array([r["id"] for r in rows], pa.int64()),
            "label": pa.array([r["label"] for r in rows], pa.int64()),
            "fbank": var_list(values, offsets, arrow_type),
            "num_frames": pa.array([r["fbank"].shape[0] for r in rows], pa.int32())}


def chunks(fb: np.ndarray, max_frames: int, segments: bool) -> List[np.ndarray]:
    """The whole utterance, its first ``max_frames`` frames, or (``segments``) consecutive
    ``max_frames`` chunks (a last chunk shorter than half of it is dropped)."""
    if not max_frames or fb.shape[0] <= max_frames:
        return [fb]
    if not segments:
        return [fb[:max_frames]]
    out = [fb[a:a + max_frames] for a in range(0, fb.shape[0], max_frames)]
    return [c for c in out if c.shape[0] * 2 >= max_frames]


def import_audio(root: str, out: str, *, sample_rate: int = 16000, n_mels: int = 80, max_frames: int = 0,
                 segments: bool = False, test_classes: int = 0, test_regex: Optional[str] = None,
                 label_regex: Optional[str] = None, num_trials: int = 6000, seed: int = 0,
                 overwrite: bool = False, show_progress: bool = True, impostor_ratio: float = 1.0,
                 trials_file: Optional[str] = None, workers: int = 1, fbank_dtype: str = "float32",
                 test_only: bool = False) -> Dict:
    """Import an audio folder into ``out`` (train.parquet, test.parquet + trials.parquet when a
    test split is requested, meta.json). Returns the meta dict. ``trials_file``: a published
    trial list (VoxCeleb, Kaldi / WeSpeaker) as the test split and its trials
    (:mod:`~xclass.importers.protocols`). ``workers``: processes computing filterbanks (rows come
    out in the same order as with one). ``fbank_dtype``: float32, or float16 (half the size; log-mel
    values keep about three significant digits). ``test_only``: every file in the test split (no
    training classes; trials only with --num-trials > 0 and two speakers or more)."""
    if fbank_dtype not in FBANK_TYPES:
        raise ImportError_(f"--fbank-dtype must be one of {sorted(FBANK_TYPES)}, got {fbank_dtype!r}")
    plan = plan_splits(discover(root, AUDIO_EXTS, label_regex), root, trials_file, "--trials",
                       test_classes=test_classes, test_regex=test_regex, seed=seed, test_only=test_only)
    items = plan.items
    with atomic_dir(out, overwrite=overwrite) as tmp:
        w = SplitWriters(tmp, speaker_schema(n_mels, fbank_dtype), partial(_to_arrow, fbank_dtype=fbank_dtype),
                         chunk_rows=128)
        row, frames, row_of = 0, [], {}
        with closing(decode_in_order(partial(utterance_fbank, sample_rate=sample_rate, n_mels=n_mels),
                                     [it.path for it in items], workers)) as fbanks:   # the pool ends here
            for k, (it, fb) in enumerate(progress(zip(items, fbanks), len(items), "import audio", show_progress)):
                row_of[k] = row
                # held-out (test) utterances are kept whole: trials score complete recordings
                for c in (chunks(fb, max_frames, segments) if it.split == "train" else [fb]):
                    w.add(it.split, {"id": row, "label": it.label, "fbank": c}, source=it.relative(root))
                    frames.append(c.shape[0])
                    row += 1
        inputs = {"fbank": {"n_mels": n_mels, "layout": "frame-major [T, n_mels] flattened",
                            "min_frames": int(min(frames)), "max_frames": int(max(frames)),
                            "sample_rate": sample_rate, "win_ms": 25.0, "hop_ms": 10.0, "dtype": fbank_dtype}}
        source = {"importer": "audio", "root": os.path.abspath(root), "files": len(items),
                  **({"protocol": plan.file} if plan.file else {})}
        return finish(tmp, "speaker", w, plan.train_names, plan.test_names, inputs, source, num_trials, seed,
                      impostor_ratio, plan.table(row_of), test_only=test_only)
