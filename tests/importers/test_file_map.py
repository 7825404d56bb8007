"""files.parquet: a folder import (faces, audio) maps every row id to the file it came from, so
embeddings, rankings and errors can be traced back to images and recordings."""
from __future__ import annotations

import json
import os
import wave

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from xclass.importers.audio import import_audio, utterance_fbank
from xclass.importers.faces import import_faces, load_face


def _rows(out, split):
    t = pq.read_table(os.path.join(out, f"{split}.parquet")).to_pydict()
    return dict(zip(t["id"], zip(t["label"], *(t[c] for c in t if c not in ("id", "label")))))


def test_face_ids_map_to_their_image_files(tmp_path):
    root = tmp_path / "faces"
    rng = np.random.default_rng(0)
    for i in range(4):
        os.makedirs(root / f"p{i}" / "sub")
        for j in range(3):  # every image different, one in a sub-folder
            where = root / f"p{i}" / ("sub" if j == 2 else "")
            Image.fromarray(rng.integers(0, 255, (20, 16, 3), dtype=np.uint8)).save(where / f"{j}.png")
    out = str(tmp_path / "out")
    meta = import_faces(str(root), out, size=8, test_classes=2, num_pairs=10, show_progress=False)
    fm = pq.read_table(os.path.join(out, "files.parquet")).to_pydict()
    assert meta["file_map"] == {"file": "files.parquet", "rows": 12, "columns": ["id", "split", "label", "path"]}
    assert fm["id"] == list(range(12)) and "p0/sub/2.png" in fm["path"]
    rows = {s: _rows(out, s) for s in ("train", "test")}
    for i, split, label, path in zip(fm["id"], fm["split"], fm["label"], fm["path"]):
        stored_label, image = rows[split][i]
        assert stored_label == label and meta["class_names"][label] == path.split("/")[0]
        np.testing.assert_array_equal(np.asarray(image, np.uint8), load_face(str(root / path), 8).reshape(-1))


def _wav(path, x, sr=8000):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(sr)
        w.writeframes(np.round(x * 32767).astype("<i2").tobytes())


def test_speaker_chunks_map_to_their_recording(tmp_path):
    root = tmp_path / "spk"
    for s, f0 in (("alice", 300.0), ("bob", 900.0), ("carol", 1500.0)):
        os.makedirs(root / s)
        for i in range(2):
            n = 8000 * (2 + i)  # 2 and 3 s
            _wav(root / s / f"u{i}.wav", 0.3 * np.sin(2 * np.pi * (f0 + 50 * i) * np.arange(n) / 8000))
    out = str(tmp_path / "out")
    meta = import_audio(str(root), out, test_classes=2, max_frames=60, segments=True, num_trials=4,
                        show_progress=False)
    fm = pq.read_table(os.path.join(out, "files.parquet")).to_pydict()
    assert json.load(open(os.path.join(out, "meta.json")))["file_map"]["rows"] == len(fm["id"]) > 6
    rows = {s: _rows(out, s) for s in ("train", "test")}
    by_path = {}
    for i, split, path in zip(fm["id"], fm["split"], fm["path"]):
        label, fbank, frames = rows[split][i]
        by_path.setdefault(path, []).append((i, split, np.asarray(fbank, np.float32).reshape(frames, -1)))
    assert len(by_path) == 6
    for path, parts in by_path.items():
        whole = utterance_fbank(str(root / path), 16000, 80)
        ids = [p[0] for p in parts]
        assert ids == list(range(ids[0], ids[0] + len(ids)))          # a recording's chunks are consecutive ids
        got = np.concatenate([p[2] for p in parts])
        np.testing.assert_allclose(got, whole[:len(got)], rtol=1e-5, atol=1e-5)
        if parts[0][1] == "test":                                     # held-out recordings stay whole
            assert len(parts) == 1 and len(got) == len(whole)
        else:
            assert len(parts) == len(whole) // 60 + (len(whole) % 60 >= 30)
    assert {meta["class_names"][lab] for lab in fm["label"]} == {"alice", "bob", "carol"}
