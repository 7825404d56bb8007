"""Benchmark data generation and the sharded reader; one JSON object per line.

    python tools/bench_data.py [--out /tmp/xclass_bench_data] [--scale 1.0]

Generation: rows/s and bytes per task. Reader: rows/s of ParquetReader (shuffled and
unshuffled, 1 of 2 ranks) side by side with the plain ``pyarrow`` baseline
``ParquetFile.iter_batches`` + the same numpy conversion, in the same process.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import pyarrow.parquet as pq

from xclass.data import ParquetReader, make_data
from xclass.data.arrow import table_to_numpy
import pyarrow as pa

TASKS = {"face": (dict(rows_per_class=20, image_size=32), 1000, ["id", "label", "image"]),
         "speaker": (dict(rows_per_class=10), 300, ["id", "label", "fbank", "num_frames"]),
         "quic": (dict(rows_per_class=20), 20000, ["id", "label", "pkt_sizes", "pkt_dirs", "pkt_iat", "flow_stats"]),
         "xmc": (dict(), 20000, ["id", "labels", "tokens"])}


def _size(d: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)


def bench(task: str, root: str, scale: float) -> None:
    kw, classes, cols = TASKS[task]
    classes = max(10, int(classes * scale))
    out = os.path.join(root, task)
    t0 = time.perf_counter()
    meta = make_data(task, out, classes, seed=0, progress=False, overwrite=True, **kw)
    dt = time.perf_counter() - t0
    rows = sum(s["rows"] for s in meta["splits"].values())
    print(json.dumps({"bench": "generate", "task": task, "classes": classes, "rows": rows,
                      "seconds": round(dt, 2), "rows_per_s": round(rows / dt), "mb": round(_size(out) / 2**20, 1)}))
    path = os.path.join(out, meta["splits"]["train"]["files"][0])
    n = meta["splits"]["train"]["rows"]
    results = {}
    t0 = time.perf_counter()
    for b in pq.ParquetFile(path).iter_batches(batch_size=256, columns=cols):
        table_to_numpy(pa.Table.from_batches([b]))
    results["pyarrow_iter_batches"] = time.perf_counter() - t0
    for name, shuffle, world in (("reader_noshuffle_1rank", False, 1), ("reader_shuffle_1rank", True, 1),
                                 ("reader_shuffle_rank0of2", True, 2)):
        rd = ParquetReader(path, cols, rank=0, world_size=world, batch_rows=256, seed=0, shuffle=shuffle)
        t0 = time.perf_counter()
        got = sum(len(b["id"]) for b in rd)
        results[name] = time.perf_counter() - t0
        assert got == rd.rows_for_rank(0)
    for name, sec in results.items():
        r = n // 2 if name.endswith("of2") else n
        print(json.dumps({"bench": "read", "task": task, "method": name, "rows": r, "batch_rows": 256,
                          "seconds": round(sec, 3), "rows_per_s": round(r / sec)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/xclass_bench_data")
    ap.add_argument("--scale", type=float, default=1.0)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    try:
        for task in TASKS:
            bench(task, args.out, args.scale)
    finally:
        shutil.rmtree(args.out, ignore_errors=True)


if __name__ == "__main__":
    main()
