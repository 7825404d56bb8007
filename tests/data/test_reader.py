"""ParquetReader: exact partition across ranks, determinism, epochs, resume, batch layout."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.data.orders import assert_seeded_epoch_orders
from xclass.data import DataError, ParquetReader

N_ROWS = 103  # prime: uneven splits over 2 and 3 ranks and over row groups


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two files, uneven row groups; ``x`` = [id, 2*id] fixed list, ``seq`` = list of length id % 4."""
    d = tmp_path_factory.mktemp("reader")
    paths = []
    for fi, (lo, hi, rg) in enumerate([(0, 60, 7), (60, N_ROWS, 13)]):
        ids = np.arange(lo, hi)
        seq_len = ids % 4
        seq_vals = np.concatenate([np.full(k, i, dtype=np.int32) for i, k in zip(ids, seq_len)])
        off = np.concatenate([[0], np.cumsum(seq_len)]).astype(np.int32)
        t = pa.table({"id": pa.array(ids, pa.int64()),
                      "x": pa.FixedSizeListArray.from_arrays(
                          pa.array(np.stack([ids, 2 * ids], 1).reshape(-1).astype(np.float32)), 2),
                      "seq": pa.ListArray.from_arrays(pa.array(off), pa.array(seq_vals))})
        p = str(d / f"part-{fi}.parquet")
        pq.write_table(t, p, row_group_size=rg)
        paths.append(p)
    return paths


def read_all(files, world, **kw):
    """Per rank: list of id arrays (one per batch)."""
    out = []
    for r in range(world):
        rd = ParquetReader(files, ["id", "x", "seq"], rank=r, world_size=world, **kw)
        out.append([b["id"] for b in rd])
    return out


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("batch", [8, 10])
def test_every_row_exactly_once_and_equal_steps(files, world, batch):
    per_rank = read_all(files, world, batch_rows=batch, seed=5, buffer_rows=20)
    rd = ParquetReader(files, ["id"], rank=0, world_size=world, batch_rows=batch, seed=5)
    steps = rd.batches_per_epoch()
    assert steps == -(-(-(-N_ROWS // world)) // batch)  # ceil(ceil(N/W)/B)
    all_ids = np.concatenate([np.concatenate(b) for b in per_rank])
    np.testing.assert_array_equal(np.sort(all_ids), np.arange(N_ROWS))
    counts = [sum(len(x) for x in b) for b in per_rank]
    assert max(counts) - min(counts) <= 1
    for r, batches in enumerate(per_rank):
        assert len(batches) == steps
        assert all(len(x) == batch for x in batches[:-1])  # only the last batch is ragged
        assert counts[r] == rd.rows_for_rank(r)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_drop_last_full_batches(files, world):
    per_rank = read_all(files, world, batch_rows=8, seed=1, drop_last=True, buffer_rows=20)
    steps = (N_ROWS // world) // 8
    ids = np.concatenate([np.concatenate(b) for b in per_rank])
    assert all(len(b) == steps and all(len(x) == 8 for x in b) for b in per_rank)
    assert len(np.unique(ids)) == len(ids) == world * steps * 8


def test_epochs_differ_and_seed_repeats(files):
    def order(seed, epoch, world=2, rank=1):
        rd = ParquetReader(files, ["id"], rank=rank, world_size=world, batch_rows=16, seed=seed,
                           buffer_rows=20)
        rd.set_epoch(epoch)
        return np.concatenate([b["id"] for b in rd])

    assert_seeded_epoch_orders(order)
    # The shuffle is not only a row-group permutation: ids within a row group get mixed.
    o = order(3, 0, world=1, rank=0)
    assert np.mean(np.abs(np.diff(o)) == 1) < 0.5


def test_no_shuffle_keeps_file_order(files):
    per_rank = read_all(files, 3, batch_rows=7, seed=0, shuffle=False)
    ids = np.concatenate([np.concatenate(b) for b in per_rank])
    np.testing.assert_array_equal(ids, np.arange(N_ROWS))


@pytest.mark.parametrize("stop_after", [0, 1, 3, 6])
def test_resume_from_state_dict(files, stop_after):
    kw = dict(rank=1, world_size=2, batch_rows=5, seed=9, buffer_rows=12)
    full = ParquetReader(files, ["id"], **kw)
    full.set_epoch(2)
    expected = [b["id"] for b in full]
    first = ParquetReader(files, ["id"], **kw)
    first.set_epoch(2)
    it = iter(first)
    for _ in range(stop_after):
        next(it)
    state = first.state_dict()
    assert state["epoch"] == 2 and state["batch"] == stop_after
    resumed = ParquetReader(files, ["id"], **kw)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # the training loop's call for the same epoch keeps the position
    rest = [b["id"] for b in resumed]
    assert len(rest) == len(expected) - stop_after
    for a, b in zip(rest, expected[stop_after:]):
        np.testing.assert_array_equal(a, b)
    resumed.set_epoch(3)  # the next epoch starts from batch 0
    assert len(list(resumed)) == len(expected)


def test_state_dict_rejects_other_layout(files):
    rd = ParquetReader(files, ["id"], rank=0, world_size=2, batch_rows=5, seed=0)
    other = ParquetReader(files, ["id"], rank=0, world_size=3, batch_rows=5, seed=0)
    with pytest.raises(ValueError, match="world_size"):
        other.load_state_dict(rd.state_dict())


def test_batch_layout_matches_rows(files):
    rd = ParquetReader(files, ["id", "x", "seq"], rank=0, world_size=1, batch_rows=17, seed=2,
                       buffer_rows=30)
    seen = 0
    for b in rd:
        ids = b["id"]
        assert b["x"].shape == (len(ids), 2) and b["x"].dtype == np.float32
        np.testing.assert_array_equal(b["x"][:, 1], 2 * ids)
        off = b["seq_offsets"]
        assert off[0] == 0 and len(off) == len(ids) + 1 and off[-1] == len(b["seq"])
        for i, rid in enumerate(ids):
            np.testing.assert_array_equal(b["seq"][off[i]:off[i + 1]], np.full(rid % 4, rid))
        seen += len(ids)
    assert seen == N_ROWS


def test_empty_last_batch_keeps_steps_equal(tmp_path):
    # 7 rows on 2 ranks, batch 4: ranks own 3 and 4 rows; steps = ceil(4/4) = 1; with batch 3,
    # steps = ceil(4/3) = 2 and rank 0 (3 rows) yields a full batch then an empty one.
    p = str(tmp_path / "seven.parquet")
    pq.write_table(pa.table({"id": np.arange(7), "v": pa.array([[1.0]] * 7, pa.list_(pa.float32()))}), p)
    r0 = list(ParquetReader(p, ["id", "v"], rank=0, world_size=2, batch_rows=3, seed=0))
    r1 = list(ParquetReader(p, ["id", "v"], rank=1, world_size=2, batch_rows=3, seed=0))
    assert [len(b["id"]) for b in r0] == [3, 0] and [len(b["id"]) for b in r1] == [3, 1]
    assert r0[1]["v"].shape == (0,) and r0[1]["v_offsets"].tolist() == [0]


def test_missing_column_names_file(files):
    with pytest.raises(DataError, match="part-0.parquet.*column 'nope'"):
        ParquetReader(files, ["id", "nope"], rank=0, world_size=1, batch_rows=4)


def test_auto_buffer_is_sized_in_bytes(tmp_path):
    p = str(tmp_path / "wide.parquet")
    rows = np.zeros((64, 1000), np.float32)  # ~4 kB per row
    pq.write_table(pa.table({"id": np.arange(64), "v": pa.FixedSizeListArray.from_arrays(
        pa.array(rows.reshape(-1)), 1000)}), p, row_group_size=8)
    rd = ParquetReader(p, ["id", "v"], batch_rows=4, buffer_bytes=40_000)
    assert 8 <= rd.buffer_rows <= 12  # ~40 kB / ~4 kB per row
    assert ParquetReader(p, ["id", "v"], batch_rows=32, buffer_bytes=40_000).buffer_rows == 32  # >= batch
    assert ParquetReader(p, ["id"], batch_rows=4, buffer_bytes=40_000).buffer_rows == 5000  # 8 B rows
    ids = np.concatenate([b["id"] for b in rd])
    np.testing.assert_array_equal(np.sort(ids), np.arange(64))
