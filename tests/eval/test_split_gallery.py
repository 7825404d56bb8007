"""xclass split-gallery: stratified seeded split, gallery_query files, errors before writing."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xclass.cli import main
from xclass.eval.split import query_mask


def _emb(path, labels, ids=None):
    ids = np.arange(len(labels)) + 1000 if ids is None else ids
    emb = np.random.default_rng(0).normal(size=(len(labels), 4)).astype(np.float32)
    pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "label": pa.array(labels, pa.int64()),
                             "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), 4)}), path)
    return ids


def test_query_mask_stratified_and_order_free():
    labels = np.repeat(np.arange(5), [1, 2, 4, 7, 10])
    ids = np.arange(len(labels)) * 3
    m = query_mask(ids, labels, 0.5, seed=3)
    for c, n in enumerate([1, 2, 4, 7, 10]):
        q = int(m[labels == c].sum())
        assert q == n - max(1, n - int(round(0.5 * n)))        # 0, 1, 2, 4 (round half to even), 5
    perm = np.random.default_rng(1).permutation(len(ids))
    m2 = query_mask(ids[perm], labels[perm], 0.5, seed=3)
    assert set(ids[perm][m2]) == set(ids[m])                   # file order does not matter
    assert set(ids[query_mask(ids, labels, 0.5, seed=4)]) != set(ids[m])


def test_cli_split_and_gallery_query(tmp_path, capsys):
    labels = np.repeat(np.arange(4), 6)
    ids = _emb(tmp_path / "e.parquet", labels)
    assert main(["split-gallery", "--input", str(tmp_path / "e.parquet"), "--out", str(tmp_path / "o")]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    g, q = (pq.read_table(tmp_path / "o" / f).to_pydict() for f in ("gallery.parquet", "queries.parquet"))
    assert info["gallery_rows"] == len(g["id"]) == 12 and len(q["id"]) == 12
    assert sorted(g["id"] + q["id"]) == ids.tolist() and set(g["label"]) == set(q["label"]) == {0, 1, 2, 3}
    assert len(g["embedding"][0]) == 4
    # an explicit gallery_query file decides
    isq = ids % 3 == 0
    pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "is_query": pa.array(isq)}), tmp_path / "gq.parquet")
    assert main(["split-gallery", "--input", str(tmp_path / "e.parquet"), "--out", str(tmp_path / "o"),
                 "--gallery-query", str(tmp_path / "gq.parquet"), "--overwrite"]) == 0
    q = pq.read_table(tmp_path / "o" / "queries.parquet").column("id").to_pylist()
    assert q == ids[isq].tolist()


def test_cli_errors(tmp_path, capsys):
    _emb(tmp_path / "e.parquet", np.repeat(np.arange(2), 3))
    args = ["split-gallery", "--input", str(tmp_path / "e.parquet"), "--out", str(tmp_path / "o")]
    assert main(args) == 0
    assert main(args) == 2 and "exists (pass --overwrite)" in capsys.readouterr().err
    pq.write_table(pa.table({"id": pa.array([1000], pa.int64()), "is_query": pa.array([True])}), tmp_path / "gq.parquet")
    assert main([*args, "--overwrite", "--gallery-query", str(tmp_path / "gq.parquet")]) == 2
    err = capsys.readouterr().err
    assert "id 1001 is not in" in err and "row 1" in err and len(err.strip().splitlines()) == 1
    assert main([*args, "--overwrite", "--query-fraction", "1.5"]) == 2
    assert "--query-fraction" in capsys.readouterr().err


def test_first_half_mask_by_hand():
    """The demo's split: per class, the first floor(n/2) rows in file order are gallery."""
    from xclass.eval.split import first_half_mask

    labels = np.array([1, 0, 1, 0, 1, 1, 0])
    assert first_half_mask(labels).tolist() == [False, False, False, True, True, True, True]


def test_unenrolled_classes_become_non_mated_queries(tmp_path, capsys):
    labels = np.repeat(np.arange(8), 6)
    _emb(tmp_path / "e.parquet", labels)
    assert main(["split-gallery", "--input", str(tmp_path / "e.parquet"), "--out", str(tmp_path / "plain")]) == 0
    assert main(["split-gallery", "--input", str(tmp_path / "e.parquet"), "--out", str(tmp_path / "open"),
                 "--unenrolled-classes", "3"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    g, q = (pq.read_table(tmp_path / "open" / f"{n}.parquet").to_pydict() for n in ("gallery", "queries"))
    plain_q = pq.read_table(tmp_path / "plain" / "queries.parquet").to_pydict()
    out = set(labels) - set(g["label"])
    assert len(out) == 3 and info["unenrolled_classes"] == 3
    assert sum(lab in out for lab in q["label"]) == 18                     # every row of those classes
    kept = [i for i, lab in zip(q["id"], q["label"]) if lab not in out]
    assert sorted(kept) == sorted(i for i, lab in zip(plain_q["id"], plain_q["label"]) if lab not in out)
    assert main(["split-gallery", "--input", str(tmp_path / "e.parquet"), "--out", str(tmp_path / "x"),
                 "--unenrolled-classes", "8"]) == 2
    assert "--unenrolled-classes must be in [0, 7]" in capsys.readouterr().err
