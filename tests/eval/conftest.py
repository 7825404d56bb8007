"""Helpers that write the Parquet layouts of the eval contract."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest


def write_embeddings(path, ids, emb, label=None, labels=None):
    emb = np.asarray(emb, dtype=np.float32)
    cols = {"id": pa.array(np.asarray(ids, np.int64)),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), emb.shape[1])}
    if label is not None:
        cols["label"] = pa.array(np.asarray(label, np.int64))
    if labels is not None:
        cols["labels"] = pa.array([list(map(int, r)) for r in labels], type=pa.list_(pa.int64()))
    pq.write_table(pa.table(cols), path)
    return str(path)


def clustered(n, d, n_centers, seed, noise=0.3):
    """Unit vectors around random centres (structured data, unlike Gaussian noise)."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(n_centers, d))
    lab = rng.integers(0, n_centers, size=n)
    x = c[lab] + noise * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), lab


@pytest.fixture
def write_emb():
    return write_embeddings
