"""Published verification protocols as an import's test split: LFW pairs.txt (with its folds) for
``import faces --pairs-file``, VoxCeleb / Kaldi trial lists for ``import audio --trials``, and the
10-fold accuracy on a protocol's own folds."""
from __future__ import annotations

import os
import wave

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from xclass.importers import ImportError_
from xclass.importers.protocols import read_protocol

LFW = """2\t2
Ann\t1\t2
Bob\t1\t3
Ann\t1\tCid\t1
Bob\t2\tDan\t1
Cid\t1\t2
Dan\t1\t2
Ann\t2\tBob\t3
Cid\t2\tEve\t1
"""


def test_read_lfw_pairs_with_folds(tmp_path):
    (tmp_path / "pairs.txt").write_text(LFW)
    p = read_protocol(str(tmp_path / "pairs.txt"))
    assert [(x.a, x.b, x.same, x.fold) for x in p[:3]] == [("Ann/Ann_0001", "Ann/Ann_0002", True, 0),
                                                           ("Bob/Bob_0001", "Bob/Bob_0003", True, 0),
                                                           ("Ann/Ann_0001", "Cid/Cid_0001", False, 0)]
    assert [x.fold for x in p] == [0, 0, 0, 0, 1, 1, 1, 1] and [x.same for x in p] == [True, True, False, False] * 2
    assert p[-1].line == 9
    (tmp_path / "dev.txt").write_text("1\nAnn 1 2\nAnn 1 Bob 1\n")           # pairsDevTest-style: no folds
    assert [(x.same, x.fold) for x in read_protocol(str(tmp_path / "dev.txt"))] == [(True, -1), (False, -1)]


def test_read_trial_lists(tmp_path):
    (tmp_path / "vox.txt").write_text("1 id1/a/00001.wav id1/b/00002.wav\r\n0 id1/a/00001.wav id2/c/00001.wav\r\n\n")
    (tmp_path / "kaldi.txt").write_text("id1/a/00001.wav id1/b/00002.wav target\nid1/a/00001.wav id2/c/x.wav nontarget\n")
    for name in ("vox.txt", "kaldi.txt"):
        p = read_protocol(str(tmp_path / name))
        assert [(x.a, x.same, x.fold) for x in p] == [("id1/a/00001.wav", True, -1), ("id1/a/00001.wav", False, -1)]


@pytest.mark.parametrize("text, where", [("2 2\nAnn 1 2\n", "header says 2 x .2 x 2. pairs, the file has 1"),
                                         ("1\nAnn 1 2\nAnn x Bob 1\n", "line 3"),
                                         ("a.wav b.wav maybe\n", "line 1"),
                                         ("", "no pairs"), ("0 0\n", "no pairs")])
def test_malformed_protocols_name_the_line(tmp_path, text, where):
    (tmp_path / "p.txt").write_text(text)
    with pytest.raises(ImportError_, match=where):
        read_protocol(str(tmp_path / "p.txt"))


def _faces(root, people):
    """people: {name: image count}; image j of name is a flat colour unique to (name, j)."""
    for k, (name, n) in enumerate(sorted(people.items())):
        os.makedirs(root / name)
        for j in range(1, n + 1):
            Image.fromarray(np.full((10, 10, 3), (20 * k, 10 * j, 77), np.uint8)).save(root / name / f"{name}_{j:04d}.png")


def test_import_faces_with_lfw_pairs(tmp_path):
    from xclass.importers.faces import import_faces, load_face

    root = tmp_path / "lfw"
    _faces(root, {"Ann": 2, "Bob": 3, "Cid": 2, "Dan": 2, "Eve": 2, "Fay": 3, "Gus": 2})
    (tmp_path / "pairs.txt").write_text(LFW)
    meta = import_faces(str(root), str(tmp_path / "out"), size=8, pairs_file=str(tmp_path / "pairs.txt"),
                        show_progress=False)
    # Ann..Eve are named by the protocol: held out (Eve_0002, named by no pair, is left out); Fay and Gus train
    assert meta["class_names"][:meta["num_classes"]] == ["Fay", "Gus"] and meta["test_classes"] == 5
    assert meta["pairs"]["folds"] == 2 and meta["source"]["protocol"] == str(tmp_path / "pairs.txt")
    tr = pq.read_table(tmp_path / "out" / "train.parquet").to_pydict()
    te = pq.read_table(tmp_path / "out" / "test.parquet").to_pydict()
    pr = pq.read_table(tmp_path / "out" / "pairs.parquet").to_pydict()
    assert len(tr["id"]) == 5 and len(te["id"]) == 10                 # the 10 named files
    assert pr["fold"] == [0, 0, 0, 0, 1, 1, 1, 1] and pr["same"] == [True, True, False, False] * 2
    image = dict(zip(te["id"], te["image"]))
    for line, a, b in zip(LFW.splitlines()[1:], pr["a"], pr["b"]):
        f = line.split()
        files = [f"{f[0]}/{f[0]}_{int(f[1]):04d}", f"{f[0]}/{f[0]}_{int(f[2]):04d}"] if len(f) == 3 else \
            [f"{f[0]}/{f[0]}_{int(f[1]):04d}", f"{f[2]}/{f[2]}_{int(f[3]):04d}"]
        for rid, name in zip((a, b), files):                          # each id holds the named image
            assert image[rid] == load_face(str(root / f"{name}.png"), 8).reshape(-1).tolist()


def test_protocol_errors_leave_no_output(tmp_path):
    from xclass.importers.faces import import_faces

    root = tmp_path / "lfw"
    _faces(root, {"Ann": 2, "Bob": 3, "Cid": 2, "Dan": 2, "Eve": 1})
    cases = [(LFW.replace("Bob\t1\t3", "Bob\t1\t4"), "line 3: 'Bob/Bob_0004' is not a file"),
             (LFW.replace("Ann\t1\tCid\t1", "Ann\t1\tAnn\t2"), "line 4: a different-class pair")]
    for text, msg in cases:
        (tmp_path / "pairs.txt").write_text(text)
        with pytest.raises(ImportError_, match=msg):
            import_faces(str(root), str(tmp_path / "out"), size=8, pairs_file=str(tmp_path / "pairs.txt"),
                         show_progress=False)
        assert not os.path.exists(tmp_path / "out")
    with pytest.raises(ImportError_, match="--pairs-file sets the test split"):
        import_faces(str(root), str(tmp_path / "out"), size=8, pairs_file=str(tmp_path / "pairs.txt"), test_classes=1)


def test_a_protocol_naming_every_identity_makes_a_test_set(tmp_path, capsys):
    """Through the CLI: --pairs-file alone gives a test set (no training split); --trials with
    --test-classes is refused in one line, exit 2."""
    import json

    from xclass.cli.main import main as xclass

    root = tmp_path / "lfw"
    _faces(root, {"Ann": 2, "Bob": 3, "Cid": 2, "Dan": 2, "Eve": 1})
    (tmp_path / "pairs.txt").write_text(LFW)
    assert xclass(["import", "faces", "--root", str(root), "--size", "8", "--pairs-file", str(tmp_path / "pairs.txt"),
                   "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    meta = json.load(open(tmp_path / "out" / "meta.json"))
    assert meta["num_classes"] == 0 and list(meta["splits"]) == ["test"] and meta["pairs"]["rows"] == 8
    _wav(tmp_path / "wav" / "s1" / "a.wav", 0)
    (tmp_path / "t.txt").write_text("s1/a.wav s1/a.wav target\n")
    capsys.readouterr()
    assert xclass(["import", "audio", "--root", str(tmp_path / "wav"), "--trials", str(tmp_path / "t.txt"),
                   "--test-classes", "1", "--out", str(tmp_path / "a"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--trials sets the test split" in err[0] and not os.path.exists(tmp_path / "a")


def _wav(path, seed, n=4000, sr=8000):
    x = 0.3 * np.sin(2 * np.pi * (200 + 50 * seed) * np.arange(n) / sr)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(np.round(x * 32767).astype("<i2").tobytes())


def test_import_audio_with_voxceleb_trials(tmp_path):
    from xclass.importers.audio import import_audio, utterance_fbank

    root = tmp_path / "wav"
    files = {"id1/a/00001.wav": 0, "id1/b/00002.wav": 1, "id2/c/00001.wav": 2, "id3/d/00001.wav": 3,
             "id3/d/00002.wav": 4, "id4/e/00001.wav": 5}
    for rel, seed in files.items():
        _wav(root / rel, seed, n=4000 + 800 * seed)
    (tmp_path / "veri.txt").write_text("1 id1/a/00001.wav id1/b/00002.wav\n0 id1/a/00001.wav id2/c/00001.wav\n")
    meta = import_audio(str(root), str(tmp_path / "out"), sample_rate=8000, n_mels=20, max_frames=20, segments=True,
                        trials_file=str(tmp_path / "veri.txt"), show_progress=False)
    assert meta["class_names"] == ["id3", "id4", "id1", "id2"] and meta["num_classes"] == 2
    te = pq.read_table(tmp_path / "out" / "test.parquet").to_pydict()
    tr = pq.read_table(tmp_path / "out" / "train.parquet").to_pydict()
    tri = pq.read_table(tmp_path / "out" / "trials.parquet").to_pydict()
    assert set(tr["label"]) == {0, 1} and len(tr["id"]) > 3            # training files cut into segments
    assert tri["target"] == [True, False] and "fold" not in tri
    fb = {i: np.asarray(v, np.float32) for i, v in zip(te["id"], te["fbank"])}
    for enroll, test, line in zip(tri["enroll"], tri["test"], ["id1/a/00001.wav id1/b/00002.wav",
                                                               "id1/a/00001.wav id2/c/00001.wav"]):
        for rid, rel in zip((enroll, test), line.split()):            # whole utterances of the named files
            np.testing.assert_array_equal(fb[rid], utterance_fbank(str(root / rel), 8000, 20).reshape(-1))


def test_kfold_accuracy_on_the_protocols_folds_by_hand():
    from xclass.eval.verification import kfold_accuracy

    s = np.array([0.9, 0.8, 0.3, 0.1, 0.7, 0.6, 0.65, 0.2])
    t = np.array([1, 1, 0, 0, 1, 1, 0, 0], bool)
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    # fold 0 tested with the threshold best on fold 1: (0.6, 0.65) is the only separating gap
    # there, so thr = 0.65 (the highest of the best: "score > thr"); fold 0 scores: all right.
    # fold 1 tested with fold 0's threshold, the highest best one: midpoint 0.55 of (0.3, 0.8);
    # fold 1: 0.7, 0.6 > 0.55 right, 0.65 > 0.55 wrong, 0.2 right -> 3/4.
    mean, std, thr = kfold_accuracy(s, t, folds=folds)
    assert thr.tolist() == pytest.approx([0.675, 0.55]) and mean == pytest.approx(0.875) and std == pytest.approx(0.125)
    with pytest.raises(ValueError, match="folds must number"):
        kfold_accuracy(s, t, folds=np.array([0, 0, 0, 0, 2, 2, 2, 2]))


def test_evaluate_face_uses_the_pairs_file_folds(tmp_path):
    import json

    import pyarrow as pa

    from xclass.cli.main import main as xclass

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(40, 8)).astype(np.float32)
    pq.write_table(pa.table({"id": np.arange(40), "embedding": pa.FixedSizeListArray.from_arrays(
        pa.array(emb.reshape(-1)), 8)}), tmp_path / "e.parquet")
    a, b = rng.integers(0, 40, 60), rng.integers(0, 40, 60)
    same = rng.random(60) < 0.5
    for name, extra in (("plain", {}), ("folds", {"fold": np.repeat(np.arange(3), 20)})):
        pq.write_table(pa.table({"a": a, "b": b, "same": same, **extra}), tmp_path / f"{name}.parquet")
        assert xclass(["evaluate", "--protocol", "face", "--embeddings", str(tmp_path / "e.parquet"), "--pairs",
                       str(tmp_path / f"{name}.parquet"), "--out", str(tmp_path / name), "--no-plots",
                       "--quiet"]) == 0
    plain, folds = (json.load(open(tmp_path / n / "metrics.json")) for n in ("plain", "folds"))
    from xclass.eval.verification import kfold_accuracy

    s = (emb[a] / np.linalg.norm(emb[a], axis=1, keepdims=True) * emb[b] / np.linalg.norm(emb[b], axis=1, keepdims=True)).sum(1)
    m = folds.get("metrics", folds)
    assert m["file_folds"] == 3 and "file_folds" not in plain.get("metrics", plain)
    assert m["acc_10fold"] == pytest.approx(kfold_accuracy(s, same, folds=np.repeat(np.arange(3), 20))[0])
