"""Audio importer: log-mel against a direct DFT/loop computation, a pure tone's mel bin,
WAV (16/24-bit, stdlib) and FLAC (soundfile) reading, folder import -> validated Parquet."""
from __future__ import annotations

import math
import os
import wave

import numpy as np
import pyarrow.parquet as pq
import pytest

from xclass.importers import ImportError_
from xclass.importers.audio import import_audio, log_mel, read_audio

SR = 16000


def _mel(f):
    return 1127.0 * math.log(1.0 + f / 700.0)


def direct_log_mel(x, sr, n_mels=80):
    """Written out: 25 ms / 10 ms frames, DC removal, pre-emphasis 0.97, Hamming, explicit DFT,
    triangular HTK-mel filters built bin by bin, log."""
    L, H = round(0.025 * sr), round(0.010 * sr)
    n_fft = 1
    while n_fft < L:
        n_fft *= 2
    lo, hi = _mel(20.0), _mel(sr / 2)
    pts = [lo + (hi - lo) * i / (n_mels + 1) for i in range(n_mels + 2)]
    fb = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(n_mels):
        for k in range(n_fft // 2 + 1):
            b = _mel(k * sr / n_fft)
            if pts[m] < b <= pts[m + 1]:
                fb[m, k] = (b - pts[m]) / (pts[m + 1] - pts[m])
            elif pts[m + 1] < b < pts[m + 2]:
                fb[m, k] = (pts[m + 2] - b) / (pts[m + 2] - pts[m + 1])
    k = np.arange(n_fft // 2 + 1)[:, None]
    dft = np.exp(-2j * np.pi * k * np.arange(L)[None] / n_fft)  # zero padding = dropping terms
    win = np.array([0.54 - 0.46 * math.cos(2 * math.pi * n / (L - 1)) for n in range(L)])
    out = []
    for t in range(1 + (len(x) - L) // H):
        f = x[t * H:t * H + L].astype(np.float64)
        f = f - f.mean()
        f = np.array([f[0] - 0.97 * f[0]] + [f[n] - 0.97 * f[n - 1] for n in range(1, L)])
        p = np.abs(dft @ (f * win)) ** 2
        out.append(np.log(np.maximum(fb @ p, 1e-10)))
    return np.array(out)


def test_log_mel_equals_direct_computation():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.1, 4000) + 0.3 * np.sin(2 * np.pi * 440 * np.arange(4000) / SR)
    ours = log_mel(x, SR)
    ref = direct_log_mel(x, SR)
    assert ours.shape == (1 + (4000 - 400) // 160, 80) == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("freq", [300.0, 1000.0, 3100.0])
def test_pure_tone_peaks_in_its_mel_bin(freq):
    x = 0.5 * np.sin(2 * np.pi * freq * np.arange(SR // 2) / SR)
    fb = log_mel(x, SR)
    # filter m has its peak at mel point m + 1; the tone belongs to the nearest one
    pts = np.linspace(_mel(20.0), _mel(SR / 2), 82)[1:-1]
    expected = int(np.argmin(np.abs(pts - _mel(freq))))
    assert (fb.argmax(1) == expected).all(), (fb.argmax(1)[:5], expected)


def _write_wav(path, x, sr, width=2):
    scale = {2: 32767, 3: 2 ** 23 - 1}[width]
    v = np.round(x * scale).astype(np.int64)
    raw = b"".join(int(s).to_bytes(width, "little", signed=True) for s in v)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(width)
        w.setframerate(sr)
        w.writeframes(raw)


def test_wav_16_and_24_bit_and_flac_read_the_same_signal(tmp_path):
    x = 0.4 * np.sin(2 * np.pi * 500 * np.arange(800) / 8000)
    _write_wav(tmp_path / "a.wav", x, 8000, 2)
    _write_wav(tmp_path / "b.wav", x, 8000, 3)
    a, sra = read_audio(str(tmp_path / "a.wav"))
    b, srb = read_audio(str(tmp_path / "b.wav"))
    assert sra == srb == 8000
    np.testing.assert_allclose(a, x, atol=1 / 32767)
    np.testing.assert_allclose(b, x, atol=1e-6)
    sf = pytest.importorskip("soundfile")
    sf.write(str(tmp_path / "c.flac"), x, 8000, subtype="PCM_16")
    c, src = read_audio(str(tmp_path / "c.flac"))
    assert src == 8000
    np.testing.assert_allclose(c, a, atol=1e-4)


def test_import_folder_resamples_and_validates(tmp_path):
    from xclass.data.validate import validate_file

    root = tmp_path / "spk"
    for s, f0 in (("alice", 300.0), ("bob", 1000.0)):
        os.makedirs(root / s)
        for i in range(3):
            n = 4000 + 800 * i  # 0.5 .. 0.7 s at 8 kHz
            _write_wav(root / s / f"u{i}.wav", 0.5 * np.sin(2 * np.pi * f0 * np.arange(n) / 8000), 8000)
    meta = import_audio(str(root), str(tmp_path / "out"), test_regex=r"u2\.wav$", num_trials=10,
                        show_progress=False)
    assert meta["num_classes"] == 2 and meta["class_names"] == ["alice", "bob"]
    t = pq.read_table(tmp_path / "out" / "train.parquet").to_pydict()
    # 8 kHz -> 16 kHz doubles the samples: frames = 1 + (2 n - 400) // 160
    assert t["num_frames"] == [1 + (2 * 4000 - 400) // 160, 1 + (2 * 4800 - 400) // 160] * 2
    assert t["label"] == [0, 0, 1, 1]
    pts = np.linspace(_mel(20.0), _mel(8000), 82)[1:-1]
    for fb, n, y in zip(t["fbank"], t["num_frames"], t["label"]):
        peak = np.asarray(fb).reshape(n, 80)[2:-2].argmax(1)
        assert (peak == np.argmin(np.abs(pts - _mel((300.0, 1000.0)[y])))).all()
    validate_file(str(tmp_path / "out" / "train.parquet"), "speaker", 2, n_mels=80)
    trials = pq.read_table(tmp_path / "out" / "trials.parquet").to_pydict()
    assert sorted(trials) == ["enroll", "target", "test"] and trials["target"] == [False]  # 1 test row each


def test_unreadable_file_is_named_and_nothing_is_written(tmp_path):
    root = tmp_path / "spk"
    os.makedirs(root / "a")
    _write_wav(root / "a" / "ok.wav", np.zeros(800), 8000)
    (root / "a" / "broken.wav").write_bytes(b"RIFF....not audio")
    with pytest.raises(ImportError_, match="broken.wav"):
        import_audio(str(root), str(tmp_path / "out"), show_progress=False)
    assert not os.path.exists(tmp_path / "out")
    assert [p for p in os.listdir(tmp_path) if p != "spk"] == []


def test_cli_exit_code_and_message(tmp_path, capsys):
    from xclass.cli.importers import main

    rc = main(["audio", "--root", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2 and "missing: not a directory" in capsys.readouterr().err


def test_float16_filterbanks_match_float32_and_train(tmp_path):
    """--fbank-dtype float16 stores the same log-mel values to half precision; the decoder reads
    them as float32 and training runs on them."""
    import json

    import pyarrow as pa

    from xclass.cli.main import main as xclass

    root = tmp_path / "spk"
    for s, f0 in (("alice", 300.0), ("bob", 1000.0), ("carl", 2000.0)):
        os.makedirs(root / s)
        for i in range(4):
            _write_wav(root / s / f"u{i}.wav", 0.4 * np.sin(2 * np.pi * (f0 + 30 * i) * np.arange(6000) / 8000), 8000)
    out = {}
    for dtype in ("float32", "float16"):
        out[dtype] = str(tmp_path / dtype)
        import_audio(str(root), out[dtype], test_regex=r"u3\.wav$", num_trials=10, show_progress=False,
                     fbank_dtype=dtype)
    t32, t16 = (pq.read_table(os.path.join(out[d], "train.parquet")) for d in ("float32", "float16"))
    assert t16.schema.field("fbank").type == pa.list_(pa.float16())
    a = np.concatenate(t32.column("fbank").to_pylist()).astype(np.float32)
    b = np.concatenate(t16.column("fbank").to_pylist()).astype(np.float32)
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-2)            # half precision of the same values
    assert json.load(open(os.path.join(out["float16"], "meta.json")))["inputs"]["fbank"]["dtype"] == "float16"
    assert xclass(["train", "--config", "configs/speaker/cpu.yaml", f"data.path={out['float16']}",
                   f"train.out_dir={tmp_path / 'run'}", "train.progress=false", "train.max_steps=2",
                   "data.batch_size=4", "optim.warmup_steps=0"]) == 0
    with pytest.raises(ImportError_, match="--fbank-dtype must be one of"):
        import_audio(str(root), str(tmp_path / "bad"), fbank_dtype="int8", show_progress=False)


def test_test_only_audio_import_draws_trials_from_every_file(tmp_path):
    root = tmp_path / "spk"
    for s, f0 in (("alice", 300.0), ("bob", 1000.0)):
        os.makedirs(root / s)
        for i in range(3):
            _write_wav(root / s / f"u{i}.wav", 0.4 * np.sin(2 * np.pi * f0 * np.arange(4000) / 8000), 8000)
    meta = import_audio(str(root), str(tmp_path / "out"), test_only=True, num_trials=8, show_progress=False)
    assert meta["num_classes"] == 0 and meta["test_classes"] == 2 and meta["splits"]["test"]["rows"] == 6
    trials = pq.read_table(tmp_path / "out" / "trials.parquet").to_pydict()
    assert len(trials["target"]) == 8 and any(trials["target"]) and not all(trials["target"])
