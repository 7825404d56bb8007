"""data.sampler: m_per_class: the grouping function, the reader's grouped stream (partition,
whole groups, determinism, resume), config checks and the effect on the angproto head."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.data.orders import assert_seeded_epoch_orders
from xclass.config import ConfigError, load_config
from xclass.data import ParquetReader
from xclass.data.grouping import arrange_windows, group_rows, tail_order

N_ROWS, N_CLASSES = 397, 50  # prime row count: uneven rank splits; odd row groups split label runs


def _write(path, labels, rg):
    t = pa.table({"id": pa.array(np.arange(len(labels)), pa.int64()), "label": pa.array(labels, pa.int64())})
    pq.write_table(t, path, row_group_size=rg)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two files, row groups of 17 and 13 rows, labels random over N_CLASSES (ids 0..N-1)."""
    d = tmp_path_factory.mktemp("mpc")
    labels = np.random.default_rng(0).integers(0, N_CLASSES, N_ROWS)
    paths = [str(d / "a.parquet"), str(d / "b.parquet")]
    _write(paths[0], labels[:200], 17)
    t = pa.table({"id": pa.array(np.arange(200, N_ROWS), pa.int64()), "label": pa.array(labels[200:], pa.int64())})
    pq.write_table(t, paths[1], row_group_size=13)
    return paths, labels


def _reader(paths, **kw):
    args = dict(rank=0, world_size=1, batch_rows=8, seed=3, buffer_rows=40, m_per_class=2)
    return ParquetReader(paths, ["id", "label"], **{**args, **kw})


def _groups_ok(labels, m):
    """True when ``labels`` is whole runs of m equal labels."""
    return len(labels) % m == 0 and bool(np.all(labels.reshape(-1, m) == labels.reshape(-1, m)[:, :1]))


# ---- the pure grouping functions -------------------------------------------------------------------
POOL = np.array([5, 1, 1, 2, 1, 5, 3, 1, 1, 2, 2])  # rows 0, 1 carried; rows 2..10 the window


@pytest.mark.parametrize("m", [2, 3])
def test_group_rows_hand_made(m):
    order, carry = group_rows(POOL, np.random.default_rng(0), m, n_carry=2)
    assert _groups_ok(POOL[order], m) and len(order) > 0
    np.testing.assert_array_equal(np.sort(np.r_[order, carry]), np.arange(len(POOL)))  # each row once
    counts = {lab: int(np.sum(POOL == lab)) for lab in np.unique(POOL)}
    expect = sorted(lab for lab, c in counts.items() for _ in range(c % m))
    assert POOL[carry].tolist() == expect  # each label's remainder, sorted by label
    # carried rows (0: label 5, 1: label 1) are grouped first whenever their label fills a group
    assert 1 in order and (0 in order) == (counts[5] >= m)
    assert not np.isin([0, 1], carry).any() or m > counts[5]


def test_group_rows_exact_carry_and_determinism():
    labels = np.array([7, 7, 7, 4, 9, 4, 4, 4])
    order, carry = group_rows(labels, np.random.default_rng(1), 2)
    assert labels[carry].tolist() == [7, 9]  # 3 x 7 -> one group + 1 carried; 9 alone; 4 x 4 -> 2 groups
    assert sorted(labels[order].tolist()) == [4, 4, 4, 4, 7, 7]
    again = group_rows(labels, np.random.default_rng(1), 2)
    np.testing.assert_array_equal(order, again[0])
    np.testing.assert_array_equal(carry, again[1])
    many = np.repeat(np.arange(30), 4)
    a, _ = group_rows(many, np.random.default_rng(1), 2)
    b, _ = group_rows(many, np.random.default_rng(2), 2)
    assert not np.array_equal(a, b)  # the rng drives both the row and the group permutation
    firsts = many[a][::2]
    assert np.any(np.diff(firsts) < 0) and len(set(a[1::2] - a[::2])) > 1  # groups and rows shuffled


def test_carried_rows_are_grouped_first():
    labels = np.array([6, 2, 6, 6, 6, 2, 2, 2, 2])  # rows 0 (6) and 1 (2) carried
    for seed in range(20):
        order, carry = group_rows(labels, np.random.default_rng(seed), 3, n_carry=2)
        assert {0, 1} <= set(order.tolist()) and len(carry) == 3  # 6: 4 rows, 2: 5 rows


def test_tail_order_keeps_labels_together():
    labels = np.array([3, 1, 3, 2, 1, 8])
    order = tail_order(labels, np.random.default_rng(0))
    np.testing.assert_array_equal(np.sort(order), np.arange(6))
    runs = labels[order]
    assert len(np.flatnonzero(np.diff(runs) != 0)) == 3  # 4 labels -> 4 contiguous runs


def test_arrange_windows_carries_into_next_window_and_tail_last():
    def t(ids, labels):
        return pa.table({"id": pa.array(ids, pa.int64()), "label": pa.array(labels, pa.int64())})

    out = list(arrange_windows([t([0, 1, 2, 3], [1, 2, 2, 3]), t([4, 5], [1, 4])], [0], 2, "label"))
    ids = [o.column("id").to_pylist() for o in out]
    assert sorted(ids[0]) == [1, 2]  # window 0: the pair of 2s; 1 and 3 carried
    assert sorted(ids[1]) == [0, 4]  # window 1: carried row 0 pairs with row 4 (label 1)
    assert sorted(ids[2]) == [3, 5]  # the epoch's tail: labels 3 and 4, alone
    assert [len(o) for o in out] == [2, 2, 2]


# ---- the reader --------------------------------------------------------------------------------
def _rank_batches(paths, world, **kw):
    return [[b for b in _reader(paths, rank=r, world_size=world, **kw)] for r in range(world)]


def _split_tail(labels, m):
    """(whole-group prefix length, tail) of a rank's label stream."""
    full = len(labels) // m * m
    chunks = labels[:full].reshape(-1, m)
    bad = np.flatnonzero(np.any(chunks != chunks[:, :1], axis=1))
    p = int(bad[0]) * m if len(bad) else full
    return p, labels[p:]


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("m,batch", [(2, 8), (3, 9)])
def test_partition_and_whole_groups_until_the_tail(files, world, m, batch):
    paths, labels = files
    per_rank = _rank_batches(paths, world, m_per_class=m, batch_rows=batch)
    rd = _reader(paths, world_size=world, m_per_class=m, batch_rows=batch)
    ids = np.concatenate([b["id"] for bs in per_rank for b in bs])
    np.testing.assert_array_equal(np.sort(ids), np.arange(N_ROWS))  # every row once
    for r, bs in enumerate(per_rank):
        assert len(bs) == rd.batches_per_epoch()  # same steps formula on every rank
        assert all(len(b["id"]) == batch for b in bs[:-1])
        lab = np.concatenate([b["label"] for b in bs])
        np.testing.assert_array_equal(lab, labels[np.concatenate([b["id"] for b in bs])])
        p, tail = _split_tail(lab, m)
        # the tail (rows carried to the epoch end) has < m rows per label, kept together
        _, counts = np.unique(tail, return_counts=True)
        assert counts.max(initial=0) < m and len(tail) <= (m - 1) * N_CLASSES
        assert len(np.flatnonzero(np.diff(tail) != 0)) == len(counts) - 1 if len(tail) else True
        assert p >= len(lab) - (m - 1) * N_CLASSES and p > len(lab) // 2
        for b in bs[: p // batch]:  # every batch before the tail: whole same-label groups
            assert _groups_ok(b["label"], m)


@pytest.mark.parametrize("m", [2, 4])
def test_every_batch_whole_groups_when_counts_allow(tmp_path, m):
    """One rank, every label count a multiple of m, labels scattered over odd row groups (so the
    carry is used): every batch, the last included, is whole groups of m."""
    labels = np.random.default_rng(5).permutation(np.repeat(np.arange(40), 2 * m))
    p = str(tmp_path / "bal.parquet")
    _write(p, labels, 11)
    rd = _reader(p, m_per_class=m, batch_rows=4 * m, buffer_rows=20)
    bs = list(rd)
    assert sum(len(b["id"]) for b in bs) == len(labels)
    assert all(_groups_ok(b["label"], m) for b in bs)
    # the carry is used: some groups join rows of different windows (window of each id from the plan)
    window = np.empty(len(labels), np.int64)
    for w, pieces in enumerate(rd._windows(rd.plan())):
        for pc in pieces:
            window[pc.rg * 11 + pc.start: pc.rg * 11 + pc.stop] = w
    groups = window[np.concatenate([b["id"] for b in bs]).reshape(-1, m)]
    assert len(np.unique(window)) > 5 and (groups.min(1) != groups.max(1)).sum() >= 5


def test_epochs_differ_and_seed_repeats(files):
    paths, _ = files

    def order(seed, epoch):
        rd = _reader(paths, seed=seed, rank=1, world_size=2)
        rd.set_epoch(epoch)
        return np.concatenate([b["id"] for b in rd])

    assert_seeded_epoch_orders(order)


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("stop_after", [0, 1, 7, 12, 23])
def test_resume_yields_exactly_the_remaining_batches(files, stop_after, drop_last):
    paths, _ = files
    kw = dict(rank=1, world_size=2, seed=9, drop_last=drop_last)
    full = _reader(paths, **kw)
    full.set_epoch(2)
    expected = [b["id"] for b in full]
    assert stop_after < len(expected)
    first = _reader(paths, **kw)
    first.set_epoch(2)
    it = iter(first)
    for _ in range(stop_after):
        next(it)
    resumed = _reader(paths, **kw)
    resumed.load_state_dict(first.state_dict())
    resumed.set_epoch(2)
    rest = [b["id"] for b in resumed]
    assert len(rest) == len(expected) - stop_after
    for a, b in zip(rest, expected[stop_after:]):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="m_per_class"):  # a shuffled reader's state does not fit
        _reader(paths, m_per_class=0, **kw).load_state_dict(first.state_dict())


def test_reader_rejects_bad_arguments(files):
    paths, _ = files
    with pytest.raises(ValueError, match="multiple"):
        _reader(paths, batch_rows=9)
    with pytest.raises(ValueError, match="shuffle"):
        _reader(paths, shuffle=False)
    with pytest.raises(ValueError, match="'label'"):
        ParquetReader(paths, ["id"], batch_rows=8, m_per_class=2)


# ---- configuration -------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides,key", [
    (["data.task=speaker", "data.sampler=m_per_class", "data.m_per_class=1"], "data.m_per_class"),
    (["data.task=speaker", "data.sampler=m_per_class", "data.m_per_class=3", "data.batch_size=64"],
     "data.batch_size"),
    (["data.task=speaker", "data.sampler=m_per_class", "data.batch_size=100", "cluster.workers=3"],
     "data.batch_size"),
    (["data.task=xmc", "data.sampler=m_per_class"], "data.sampler"),
    (["data.task=speaker", "data.sampler=per_class"], "data.sampler"),
])
def test_config_errors_name_the_key(tmp_path, overrides, key):
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  batch_size: 64\n")
    with pytest.raises(ConfigError, match=f"c.yaml: .*{key}"):
        load_config(str(p), overrides)


def test_config_defaults_and_make_reader_checks_the_world_size(files, monkeypatch):
    from xclass import components

    monkeypatch.setattr(components, "input_columns", lambda task, encoder, meta=None: ["id", "label"])
    make_reader = components.make_reader
    cfg = load_config(None)
    assert (cfg.data.sampler, cfg.data.m_per_class) == ("shuffle", 2)
    cfg = load_config(None, ["data.task=speaker", "data.sampler=m_per_class", "data.batch_size=12"])
    rd = make_reader(files[0], cfg, {}, SimpleNamespace(rank=0, world_size=2))
    assert rd.m_per_class == 2 and rd.batch_rows == 6 and rd.label_column == "label"
    with pytest.raises(ConfigError, match="data.batch_size"):  # 12 // 4 = 3 rows per rank
        make_reader(files[0], cfg, {}, SimpleNamespace(rank=0, world_size=4))


# ---- the point: rows the angular prototypical head can use ---------------------------------------
def test_angproto_usable_fraction(tmp_path):
    """200 classes x 10 rows, batch 32: with m_per_class every row of every full batch has a
    same-label partner (the head uses it); with shuffle almost none has."""
    labels = np.random.default_rng(1).permutation(np.repeat(np.arange(200), 10))
    p = str(tmp_path / "many.parquet")
    _write(p, labels, 100)

    def usable(**kw):
        rows = used = 0
        for b in _reader(p, batch_rows=32, buffer_rows=500, drop_last=True, **kw):
            _, inv, counts = np.unique(b["label"], return_inverse=True, return_counts=True)
            rows, used = rows + len(inv), used + int(np.sum(counts[inv] >= 2))
        return used / rows

    assert usable(m_per_class=2) > 0.97
    assert usable(m_per_class=0) < 0.25
