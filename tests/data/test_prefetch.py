"""Prefetch queue: same batches as the synchronous path, exact resume from the CONSUMED
position, producer errors re-raised, clean shutdown, bounded read-ahead."""
from __future__ import annotations

import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from xclass.config import ConfigError, load_config
from xclass.data import ParquetReader
from xclass.data.prefetch import Prefetcher, map_tensors, prefetch

N_ROWS = 97


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    ids = np.arange(N_ROWS)
    t = pa.table({"id": pa.array(ids, pa.int64()), "label": pa.array(ids % 7, pa.int64()),
                  "x": pa.FixedSizeListArray.from_arrays(
                      pa.array(np.stack([ids, -ids], 1).reshape(-1).astype(np.float32)), 2)})
    p = str(tmp_path_factory.mktemp("prefetch") / "train.parquet")
    pq.write_table(t, p, row_group_size=11)
    return p


def reader(path, **kw):
    return ParquetReader([path], ["id", "label", "x"], batch_rows=8, seed=3, buffer_rows=30, **kw)


def decode(batch):
    return {"x": torch.tensor(batch["x"]), "id": torch.tensor(batch["id"])}, torch.tensor(batch["label"])


def ids_of(it):
    return [inputs["id"].tolist() for inputs, _ in it]


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_same_batches_as_synchronous(path, depth):
    rd0, rd1 = reader(path), reader(path)
    for epoch in (0, 1):
        rd0.set_epoch(epoch)
        rd1.set_epoch(epoch)
        sync, ahead = list(prefetch(rd0, decode, 0)), list(prefetch(rd1, decode, depth))
        assert len(sync) == len(ahead) == rd0.batches_per_epoch() > 3
        for (a_in, a_lab), (b_in, b_lab) in zip(sync, ahead):
            assert torch.equal(a_in["x"], b_in["x"]) and torch.equal(a_lab, b_lab)
    # and the order is the plain reader's: the queue neither drops nor reorders
    rd2 = reader(path)
    rd2.set_epoch(1)
    assert ids_of(sync) == [b["id"].tolist() for b in rd2]


@pytest.mark.parametrize("depth", [0, 3])
def test_state_dict_is_the_consumed_position_and_resumes_exactly(path, depth):
    rd = reader(path)
    rd.set_epoch(2)
    full = ids_of(prefetch(reader_at(path, 2), decode, 0))
    pf = Prefetcher(rd, decode, depth)
    it = iter(pf)
    assert pf.state_dict() is None
    got = [next(it)[0]["id"].tolist() for _ in range(4)]
    deadline = time.time() + 10
    while depth and rd.state_dict()["batch"] <= 4 and time.time() < deadline:
        time.sleep(0.01)  # let the thread read ahead
    state = pf.state_dict()
    assert state["epoch"] == 2 and state["batch"] == 4  # consumed, not read ahead
    if depth:
        assert rd.state_dict()["batch"] > 4  # the reader itself is ahead
    it.close()
    rd2 = reader(path)
    rd2.load_state_dict(state)
    rest = ids_of(prefetch(rd2, decode, depth))
    assert got + rest == full


def reader_at(path, epoch):
    rd = reader(path)
    rd.set_epoch(epoch)
    return rd


class _Boom:
    """Yields ``good`` batches, then raises."""

    def __init__(self, good):
        self.good = good

    def __iter__(self):
        for i in range(self.good):
            yield {"id": np.array([i]), "label": np.array([0]), "x": np.zeros((1, 2), np.float32)}
        raise ValueError("row 17: bad image bytes")


@pytest.mark.parametrize("depth", [0, 2])
def test_producer_exception_reaches_the_consumer_at_its_batch(depth):
    seen = []
    with pytest.raises(ValueError, match="row 17"):
        for inputs, _ in prefetch(_Boom(3), decode, depth):
            seen.append(int(inputs["id"]))
    assert seen == [0, 1, 2]


class _Counting:
    """Endless reader that counts the batches read."""

    def __init__(self):
        self.read = 0

    def __iter__(self):
        while True:
            self.read += 1
            yield {"id": np.array([self.read]), "label": np.array([0]), "x": np.zeros((1, 2), np.float32)}


def test_bounded_read_ahead_and_clean_shutdown_on_break():
    rd = _Counting()
    before = threading.active_count()
    pf = Prefetcher(rd, decode, depth=3)
    for i, _ in enumerate(pf):
        time.sleep(0.05)
        assert rd.read <= (i + 1) + 3 + 1  # consumed + queue + the one being put
        if i == 5:
            break
    deadline = time.time() + 5
    while threading.active_count() > before and time.time() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before  # the thread was joined
    assert pf._thread is None
    n = rd.read
    time.sleep(0.1)
    assert rd.read == n  # nothing reads after shutdown


def test_close_is_idempotent_and_consumer_exception_stops_thread():
    pf = Prefetcher(_Counting(), decode, depth=2)
    with pytest.raises(RuntimeError):
        for _ in pf:
            raise RuntimeError("step failed")
    pf.close()
    pf.close()
    assert pf._thread is None


def test_cpu_device_yields_the_decoded_tensors_unchanged():
    pf = Prefetcher(_Boom(1), decode, depth=0, device="cpu")
    assert not pf.pin
    with pytest.raises(ValueError):
        for inputs, labels in pf:
            assert inputs["x"].device.type == "cpu" and not inputs["x"].is_pinned()


def test_map_tensors_walks_nested_structures():
    out = map_tensors({"a": torch.ones(2), "b": [torch.zeros(1), (torch.ones(1), 3)], "c": "s"},
                      lambda t: t + 1)
    assert out["a"].tolist() == [2, 2] and out["b"][0].tolist() == [1]
    assert out["b"][1][0].tolist() == [2] and out["b"][1][1] == 3 and out["c"] == "s"


def test_negative_depth_rejected_and_config_range_checked():
    with pytest.raises(ValueError, match="depth"):
        Prefetcher([], decode, depth=-1)
    assert load_config(None, ["data.prefetch=0"]).data.prefetch == 0
    for bad in ("-1", "65"):
        with pytest.raises(ConfigError, match="data.prefetch"):
            load_config(None, [f"data.prefetch={bad}"])


def test_cuda_target_pins_on_the_thread_after_selecting_the_device(monkeypatch):
    """No GPU needed: CUDA availability, set_device and pin_memory are stubbed; the thread must
    select the target device before it pins (else it would open a context on cuda:0)."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d, threading.current_thread().name)))
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: calls.append(("pin",)) or t.clone())
    monkeypatch.setattr(Prefetcher, "_to_device", lambda self, out: out)
    pf = Prefetcher(_Boom(2), decode, depth=2, device="cuda:1")
    assert pf.pin
    with pytest.raises(ValueError):
        for _ in pf:
            pass
    assert calls[0] == ("set_device", 1, "xclass-prefetch")
    assert calls.count(("pin",)) == 2 * 3  # 2 batches x 3 tensors (x, id, label)
