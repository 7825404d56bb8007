"""``xclass import text``: JSONL / CSV / Parquet with label lists -> XMC dataset; label ids,
vocabulary, TF-IDF weights checked by hand; errors name file / row / column and leave nothing."""
import json
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xclass.cli import main as xclass_main
from xclass.importers.text import import_text

TRAIN = [{"text": "Red apple, red!", "labels": ["fruit", "red"]},
         {"text": "green apple", "labels": ["fruit"]},
         {"text": "red car", "labels": ["car", "red"]}]
TEST = [{"text": "a red bike", "labels": ["red", "bike"]}]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _csv(path, rows):
    path.write_text("text,labels\n" + "".join(f"\"{r['text']}\",{'|'.join(r['labels'])}\n" for r in rows))
    return str(path)


def _parquet(path, rows):
    pq.write_table(pa.table({"text": [r["text"] for r in rows], "labels": [r["labels"] for r in rows]}), path)
    return str(path)


@pytest.mark.parametrize("writer", [_jsonl, _csv, _parquet])
def test_import_by_hand(tmp_path, writer):
    ext = {"_jsonl": "jsonl", "_csv": "csv", "_parquet": "parquet"}[writer.__name__]
    tr, te = writer(tmp_path / f"tr.{ext}", TRAIN), writer(tmp_path / f"te.{ext}", TEST)
    meta = import_text(str(tmp_path / "out"), tr, te, progress=False)
    out = tmp_path / "out"
    # names in order of first appearance: fruit 0, red 1, car 2, bike 3 (test only)
    assert (out / "label_names.txt").read_text().split() == ["fruit", "red", "car", "bike"]
    assert meta["num_classes"] == 4 and meta["splits"]["test"]["rows"] == 1
    t = pq.read_table(out / "train.parquet").sort_by("id")  # stored in a seeded random order
    assert t.column("labels").to_pylist() == [[0, 1], [0], [1, 2]]
    assert t.column("text").to_pylist()[0] == "Red apple, red!"
    # vocabulary by df then word: red 2, apple 2, car 1, green 1
    vocab = (out / "vocab.txt").read_text().split()
    assert vocab == ["apple", "red", "car", "green"]
    assert meta["inputs"]["tokens"] == {"vocab_size": 4, "pad_id": 4, "weights": True}
    idf = {w: math.log(4 / (1 + df)) + 1 for w, df in (("apple", 2), ("red", 2), ("car", 1), ("green", 1))}
    toks = t.column("tokens").to_pylist()[0]
    assert [vocab[i] for i in toks] == ["red", "apple"]
    w = np.array([(1 + math.log(2)) * idf["red"], idf["apple"]])
    np.testing.assert_allclose(t.column("token_weights").to_pylist()[0], w / np.linalg.norm(w), rtol=1e-6)
    te_t = pq.read_table(out / "test.parquet")
    assert [vocab[i] for i in te_t.column("tokens").to_pylist()[0]] == ["red"]  # a, bike: not in vocab
    assert te_t.column("labels").to_pylist() == [[1, 3]]
    lab = pq.read_table(out / "labels.parquet")
    assert lab.column("train_count").to_pylist() == [2, 2, 1, 0]


def test_label_ids_and_label_file(tmp_path):
    tr = _jsonl(tmp_path / "tr.jsonl", [{"t": "x y", "y": [2, 0]}, {"t": "y z", "y": "1"}])
    te = _jsonl(tmp_path / "te.jsonl", [{"t": "z", "y": [1]}])
    (tmp_path / "labels.txt").write_text("zero x\none y\ntwo\n")
    meta = import_text(str(tmp_path / "o"), tr, te, text_column="t", labels_column="y", label_ids=True,
                       label_file=str(tmp_path / "labels.txt"), progress=False)
    assert meta["num_classes"] == 3
    t = pq.read_table(tmp_path / "o" / "train.parquet")
    assert t.column("labels").to_pylist() == [[0, 2], [1]]
    lab = pq.read_table(tmp_path / "o" / "labels.parquet")
    vocab = (tmp_path / "o" / "vocab.txt").read_text().split()
    assert lab.column("text").to_pylist() == ["zero x", "one y", "two"]
    assert [[vocab[i] for i in r] for r in lab.column("tokens").to_pylist()] == [["x"], ["y"], []]
    bad = _jsonl(tmp_path / "bad.jsonl", [{"t": "x", "y": [0]}, {"t": "z", "y": [3]}])
    with pytest.raises(ValueError, match=r"bad.jsonl: row 1: column 'y': label id 3 >= number of labels 3"):
        import_text(str(tmp_path / "o2"), bad, te, text_column="t", labels_column="y", label_ids=True,
                    label_file=str(tmp_path / "labels.txt"), progress=False)
    assert not os.path.exists(tmp_path / "o2")


@pytest.mark.parametrize("rows,extra,message", [
    ("text,tags\nfine,a\n", [], "column 'labels': no such column"),
    ("text,labels\n\"a, b\",x\nonly-one-field\n", [], "row 1: 1 fields, the header has 2"),
    ("text,labels\nfine,a\n", ["--label-ids"], "row 0: column 'labels': label 'a' is not a non-negative"),
])
def test_csv_errors_exit_2(tmp_path, capsys, rows, extra, message):
    (tmp_path / "tr.csv").write_text(rows)
    te = _csv(tmp_path / "te.csv", TEST)
    argv = ["import", "text", "--out", str(tmp_path / "o"), "--train", str(tmp_path / "tr.csv"), "--test", te,
            "--no-progress", *extra]
    assert xclass_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tr.csv" in err[0] and message in err[0], err
    assert not os.path.exists(tmp_path / "o")


@pytest.mark.parametrize("name,data,message", [
    ("tr.jsonl", b'{"text": "a", "labels": ["x"]}\n{"text": "caf\xe9", "labels": ["x"]}\n',
     "tr.jsonl: line 2: not UTF-8 text (invalid continuation byte at byte 13 of the line)"),
    ("tr.csv", b"text,labels\nfine,a\nbad \xff,b\n", "tr.csv: line 3: not UTF-8 text (invalid start byte at byte 4"),
    ("tr.csv.gz", b"\x1f\x8b\x08\x00" + bytes(20), "tr.csv.gz: after line 0: cannot decompress"),
])
def test_undecodable_text_names_the_file_and_line(tmp_path, capsys, name, data, message):
    (tmp_path / name).write_bytes(data)
    te = _jsonl(tmp_path / "te.jsonl", TEST)
    argv = ["import", "text", "--out", str(tmp_path / "o"), "--train", str(tmp_path / name), "--test", te,
            "--no-progress"]
    assert xclass_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not os.path.exists(tmp_path / "o")


def test_json_errors_and_overwrite(tmp_path, capsys):
    (tmp_path / "tr.jsonl").write_text('{"text": "a", "labels": ["x"]}\n{"text": null, "labels": ["x"]}\n')
    te = _jsonl(tmp_path / "te.jsonl", TEST)
    with pytest.raises(ValueError, match=r"tr.jsonl: row 1: column 'text': text is null"):
        import_text(str(tmp_path / "o"), str(tmp_path / "tr.jsonl"), te, progress=False)
    tr = _jsonl(tmp_path / "ok.jsonl", TRAIN)
    (tmp_path / "o").mkdir()
    assert xclass_main(["import", "text", "--out", str(tmp_path / "o"), "--train", tr, "--test", te]) == 2
    assert "exists" in capsys.readouterr().err


def test_trains_and_baseline_runs(tmp_path):
    """The imported layout is what the XMC decoder, embbag encoder and TF-IDF baseline read."""
    from xclass.models.decoders import decode_batch
    from xclass.models.encoders.text import embbag
    from xclass.eval.tfidf import tfidf_knn_baseline

    tr, te = _jsonl(tmp_path / "tr.jsonl", TRAIN), _jsonl(tmp_path / "te.jsonl", TEST)
    meta = import_text(str(tmp_path / "o"), tr, te, progress=False)
    t = pq.read_table(tmp_path / "o" / "train.parquet")
    batch = {}
    for c in ("labels", "tokens", "token_weights"):
        arr = t.column(c).combine_chunks()
        batch[c], batch[c + "_offsets"] = arr.flatten().to_numpy(), arr.offsets.to_numpy().astype(np.int64)
    inputs, labels = decode_batch("xmc", batch, meta)
    assert embbag(meta, 8)(inputs).shape == (3, 8) and labels.shape == (3, 2)
    got = tfidf_knn_baseline(str(tmp_path / "o/train.parquet"), str(tmp_path / "o/test.parquet"), 4, ks=(1,),
                             k=2, progress=False)
    assert got["weighting"] == "given" and got["P@1"] == 1.0  # "red" -> label red


def test_damaged_parquet_names_the_file(tmp_path, capsys):
    tr = _parquet(tmp_path / "tr.parquet", TRAIN * 50)
    page = pq.ParquetFile(tr).metadata.row_group(0).column(0).data_page_offset
    raw = bytearray(open(tr, "rb").read())
    raw[page + 20:page + 84] = b"\xff" * 64
    open(tr, "wb").write(bytes(raw))
    te = _jsonl(tmp_path / "te.jsonl", TEST)
    assert xclass_main(["import", "text", "--out", str(tmp_path / "o"), "--train", tr, "--test", te,
                        "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tr.parquet: cannot read the Parquet data after row 0" in err[0], err
    assert not os.path.exists(tmp_path / "o")
