"""The XMC importers store the train rows in a seeded random order: sorted input (WordNet's nouns
then verbs) must not reach the training reader sorted. Checked on write_xmc_dataset, the external
bucket shuffle (several buckets), the WordNet miniature and ``import text``."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xclass.importers import wordnet as W
from xclass.importers.text import import_text
from xclass.importers.xmc_dataset import row_schema, shuffle_parquet, write_xmc_dataset

from tests.xmc.test_wordnet_tfidf import NOUN, VERB

N, L = 300, 3


def _rows():  # sorted by label: 100 rows of label 0, then 1, then 2; token i identifies row i
    return [([i * L // N], [i], [1.0]) for i in range(N)]


def _write(path, seed):
    write_xmc_dataset(str(path), {"train": _rows(), "test": _rows()[:5]}, num_labels=L, vocab_size=N,
                      progress=False, shuffle_seed=seed)
    return pq.read_table(path / "train.parquet").to_pydict()


def test_train_rows_shuffled_deterministic_same_set(tmp_path):
    a, b, c = _write(tmp_path / "a", 0), _write(tmp_path / "b", 0), _write(tmp_path / "c", 1)
    labels = [x[0] for x in a["labels"]]
    assert labels != sorted(labels)  # not nouns-then-verbs
    assert a == b and a["id"] != c["id"]  # the seed decides the order
    assert sorted(a["id"]) == list(range(N))
    for i, tok, lab in zip(a["id"], a["tokens"], a["labels"]):  # ids travel with their rows
        assert tok == [i] and lab == [i * L // N]
    t = pq.read_table(tmp_path / "a" / "test.parquet").column("id").to_pylist()
    assert t == list(range(N, N + 5))  # test split: input order, ids after train
    meta = json.load(open(tmp_path / "a" / "meta.json"))
    assert meta["splits"]["train"]["order"] == "shuffled (seed 0)"
    d = _write(tmp_path / "d", None)
    assert d["id"] == list(range(N))


def test_bucket_shuffle_is_a_permutation_and_mixes(tmp_path):
    src = tmp_path / "src.parquet"
    schema = row_schema(10)
    n = 1000
    pq.write_table(pa.table({"id": pa.array(np.arange(n)), "labels": pa.array([[0]] * n, pa.list_(pa.int64())),
                             "tokens": pa.array([[1]] * n, pa.list_(pa.int32())),
                             "token_weights": pa.array([[1.0]] * n, pa.list_(pa.float32()))}, schema=schema), src)
    assert shuffle_parquet(str(src), str(tmp_path / "out.parquet"), schema, seed=3, bucket_rows=64) == n
    ids = pq.read_table(tmp_path / "out.parquet").column("id").to_numpy()
    assert sorted(ids) == list(range(n)) and not src.exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "out.parquet"]  # buckets removed
    # first and second half each hold rows from the whole range (not bucket blocks in order)
    assert ids[:n // 2].max() > 0.9 * n and ids[n // 2:].min() < 0.1 * n
    assert abs(np.corrcoef(np.arange(n), ids)[0, 1]) < 0.2


def test_wordnet_train_not_sorted_by_pos(tmp_path):
    (tmp_path / "data.noun").write_text(NOUN)
    (tmp_path / "data.verb").write_text(VERB)
    out = []
    for seed in (0, 0, 5):
        d = tmp_path / f"out{len(out)}"
        W.import_wordnet(str(d), str(tmp_path), test_fraction=0.0, progress=False, seed=seed)
        out.append(pq.read_table(d / "train.parquet").to_pydict())
    assert out[0] == out[1] and sorted(out[0]["id"]) == list(range(6))
    assert out[0]["id"] != sorted(out[0]["id"]) or out[2]["id"] != sorted(out[2]["id"])
    by_id = dict(zip(out[0]["id"], out[0]["labels"]))
    assert [by_id[i] for i in range(6)] == [[0], [0, 1], [0, 1], [0], [0, 1, 2, 3], [4]]


def test_import_text_train_shuffled(tmp_path):
    rows = [{"text": f"noun word{i}", "labels": ["noun"]} for i in range(50)] + \
           [{"text": f"verb word{i}", "labels": ["verb"]} for i in range(50)]
    tr, te = tmp_path / "tr.jsonl", tmp_path / "te.jsonl"
    tr.write_text("".join(json.dumps(r) + "\n" for r in rows))
    te.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    import_text(str(tmp_path / "o"), str(tr), str(te), progress=False, seed=7)
    t = pq.read_table(tmp_path / "o" / "train.parquet").to_pydict()
    labels = [x[0] for x in t["labels"]]
    assert labels != sorted(labels) and sorted(t["id"]) == list(range(100))
    for i, text in zip(t["id"], t["text"]):
        assert text == rows[i]["text"]
