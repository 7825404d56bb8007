"""data.sampler: class_balanced: draw frequencies against N_c ** -p, determinism, resume, step
counts, config checks."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xclass.config import ConfigError, load_config
from xclass.data import ParquetReader

COUNTS = {0: 400, 1: 100, 2: 25}  # long-tailed: 16 : 4 : 1


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    labels = np.concatenate([np.full(n, c) for c, n in COUNTS.items()])
    labels = labels[np.random.default_rng(0).permutation(len(labels))]
    p = str(tmp_path_factory.mktemp("cb") / "t.parquet")
    pq.write_table(pa.table({"id": pa.array(np.arange(len(labels)), pa.int64()),
                             "label": pa.array(labels, pa.int64())}), p, row_group_size=60)
    return p


def _reader(path, power, **kw):
    args = dict(rank=0, world_size=1, batch_rows=25, seed=1, buffer_rows=10 ** 6, balance_power=power)
    return ParquetReader([path], ["id", "label"], **{**args, **kw})


def _epochs(reader, n):
    out = []
    for e in range(n):
        reader.set_epoch(e)
        out.append(np.concatenate([b["label"] for b in reader]))
    return out


@pytest.mark.parametrize("power", [1.0, 0.5])
def test_class_shares_follow_count_to_the_minus_power(path, power):
    labels = np.concatenate(_epochs(_reader(path, power), 40))
    w = {c: n * n ** -power for c, n in COUNTS.items()}          # share of class c: N_c * N_c^-p
    expect = np.array([w[c] / sum(w.values()) for c in sorted(COUNTS)])
    got = np.bincount(labels, minlength=3) / len(labels)
    np.testing.assert_allclose(got, expect, atol=0.015)           # 21,000 draws
    plain = np.concatenate(_epochs(_reader(path, 0.0), 2))
    np.testing.assert_array_equal(np.bincount(plain), [800, 200, 50])  # off: every row once per epoch


def test_same_steps_deterministic_resumable_and_ranks_differ(path):
    r = _reader(path, 0.5)
    assert len(r) == len(_reader(path, 0.0)) == 21
    a, b = _epochs(r, 2), _epochs(_reader(path, 0.5), 2)
    assert all((x == y).all() for x, y in zip(a, b)) and not (a[0] == a[1]).all()
    r.set_epoch(1)
    it = iter(r)
    first = [next(it)["id"] for _ in range(5)]
    state = r.state_dict()
    rest = [x["id"] for x in it]
    r2 = _reader(path, 0.5)
    r2.load_state_dict(state)
    np.testing.assert_array_equal(np.concatenate([x["id"] for x in r2]), np.concatenate(rest))
    assert len(first) == 5
    with pytest.raises(ValueError, match="balance_power"):
        r2.load_state_dict({**state, "balance_power": 1.0})
    r0, r1 = (_reader(path, 0.5, world_size=2, rank=k, batch_rows=12) for k in (0, 1))
    ids0, ids1 = (np.concatenate([x["id"] for x in rr]) for rr in (r0, r1))
    assert len(r0) == len(r1) and not set(ids0) & set(ids1)  # each rank draws from its own rows


def test_bad_power_and_config_keys_are_named(path, tmp_path):
    with pytest.raises(ValueError, match="balance_power"):
        _reader(path, 1.5)
    with pytest.raises(ValueError, match="balance_power"):
        _reader(path, 0.5, shuffle=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {task: quic, sampler: class_balanced, balance_power: 0}\n")
    with pytest.raises(ConfigError, match="data.balance_power"):
        load_config(str(cfg))
    cfg.write_text("data: {task: xmc, sampler: class_balanced}\n")
    with pytest.raises(ConfigError, match="single-label"):
        load_config(str(cfg))
