"""``import faces|audio --workers N``: files decoded in N spawned processes give the dataset one
process gives, and a file that cannot be read still stops the import naming it."""
from __future__ import annotations

import os
import wave

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from xclass.importers import ImportError_


def _tables(out):
    return {s: pq.read_table(os.path.join(out, f"{s}.parquet")).to_pydict() for s in ("train", "test")}


def _images(root, n_ids=4, per_id=5):
    rng = np.random.default_rng(0)
    for i in range(n_ids):
        os.makedirs(root / f"p{i}")
        for j in range(per_id):
            Image.fromarray(rng.integers(0, 255, (12 + j, 10, 3), dtype=np.uint8)).save(root / f"p{i}" / f"{j}.png")


def test_faces_with_two_workers_equal_one(tmp_path):
    from xclass.importers.faces import import_faces

    _images(tmp_path / "f")
    metas = [import_faces(str(tmp_path / "f"), str(tmp_path / f"o{w}"), size=8, test_classes=2, num_pairs=10,
                          show_progress=False, workers=w) for w in (1, 2)]
    assert metas[0]["splits"] == metas[1]["splits"]
    assert _tables(tmp_path / "o1") == _tables(tmp_path / "o2")
    assert pq.read_table(tmp_path / "o1" / "pairs.parquet").equals(pq.read_table(tmp_path / "o2" / "pairs.parquet"))


def test_a_bad_file_in_a_worker_names_the_file(tmp_path):
    from xclass.importers.faces import import_faces

    _images(tmp_path / "f")
    (tmp_path / "f" / "p2" / "3.png").write_bytes(b"not a png")
    with pytest.raises(ImportError_, match="3.png: cannot read image") as err:
        import_faces(str(tmp_path / "f"), str(tmp_path / "o"), size=8, test_classes=1, show_progress=False, workers=2)
    assert err.value.file.endswith("3.png") and not os.path.exists(tmp_path / "o")


def test_audio_with_two_workers_equal_one(tmp_path):
    from xclass.importers.audio import import_audio

    for i in range(3):
        for j in range(3):
            os.makedirs(tmp_path / "a" / f"s{i}", exist_ok=True)
            x = 0.3 * np.sin(2 * np.pi * (150 + 40 * i + 7 * j) * np.arange(3000 + 500 * j) / 8000)
            with wave.open(str(tmp_path / "a" / f"s{i}" / f"{j}.wav"), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(8000)
                w.writeframes(np.round(x * 32767).astype("<i2").tobytes())
    for w in (1, 2):
        import_audio(str(tmp_path / "a"), str(tmp_path / f"o{w}"), sample_rate=16000, n_mels=20, test_classes=2,
                     num_trials=6, show_progress=False, workers=w)
    assert _tables(tmp_path / "o1") == _tables(tmp_path / "o2")


def _flow_csv(path, n, bad_row=None):
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        f.write("APP,PPI,DST_PORT\n")
        for i in range(n):
            k = int(rng.integers(3, 12))
            dirs = rng.choice([1, -1], k).tolist()
            if i == bad_row:
                dirs[0] = 3
            ppi = [[0] + rng.integers(0, 90, k - 1).tolist(), dirs, rng.integers(40, 1500, k).tolist()]
            f.write(f'app{int(rng.integers(0, 6))},"{ppi}",{443 if i % 3 else 53}\n')


def test_flows_with_two_workers_equal_one(tmp_path):
    """Record batches (8,192 rows) converted in 2 processes: 20,000 rows, 3 batches, the same dataset;
    a bad row in the last batch stops the import naming its file and row."""
    from xclass.importers.flows import import_flows

    _flow_csv(tmp_path / "f.csv", 20000)
    for w in (1, 2):
        import_flows([str(tmp_path / "f.csv")], str(tmp_path / f"o{w}"), label_column="APP", ppi_column="PPI",
                     port_column="DST_PORT", test_classes=2, show_progress=False, workers=w)
    assert _tables(tmp_path / "o1") == _tables(tmp_path / "o2")
    _flow_csv(tmp_path / "bad.csv", 20000, bad_row=19000)
    with pytest.raises(ImportError_, match=r"bad\.csv: row 19000: directions must be"):
        import_flows([str(tmp_path / "bad.csv")], str(tmp_path / "o3"), label_column="APP", ppi_column="PPI",
                     test_classes=2, show_progress=False, workers=2)
    assert not os.path.exists(tmp_path / "o3")
