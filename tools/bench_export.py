"""Benchmark ``export-index`` encoding of variable-length speaker utterances; JSON lines.

    PYTHONPATH=. python tools/bench_export.py [--out /tmp/xclass_bench_export] [--rows 200]

Generates speaker data with utterances of 1-16 s (100-1,600 frames, like read speech), trains
the CPU speaker config for one step (weights do not change the cost), then encodes the test split
with :func:`xclass.eval.embed.embed_split` twice in one process: ``frame_budget=0`` (the whole
512-row reader batch padded to its longest utterance: the old path) and the default
length-sorted sub-batches. Prints rows/s of each and the largest embedding difference.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import pyarrow.parquet as pq
import torch

from xclass.cli import main as xclass
from xclass.data import make_data
from xclass.eval.embed import embed_split


def run(out: str, rows: int, threads: int) -> None:
    torch.set_num_threads(threads)
    data, run_dir = os.path.join(out, "data"), os.path.join(out, "run")
    classes = max(4, rows // 10)
    make_data("speaker", data, classes + 10, rows_per_class=10, test_classes=classes, seed=0, progress=False,
              overwrite=True, min_frames=100, max_frames=1600)
    rc = xclass(["train", "--config", "configs/speaker/cpu.yaml", f"data.path={data}", f"train.out_dir={run_dir}",
                 "train.max_steps=1", "train.progress=false", "data.batch_size=16", "optim.warmup_steps=0"])
    assert rc == 0, rc
    n = pq.read_metadata(os.path.join(data, "test.parquet")).num_rows
    results = {}
    for name, budget in (("padded_batch_512", 0), ("length_sorted_256k", 1 << 18), ("length_sorted_32k", 32768)):
        path = os.path.join(out, f"emb_{name}.parquet")
        t0, c0 = time.perf_counter(), time.process_time()
        embed_split(run_dir, "test", path, frame_budget=budget)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        results[name] = np.stack(pq.read_table(path).column("embedding").to_numpy(zero_copy_only=False))
        print(json.dumps({"bench": "export_speaker", "path": name, "frame_budget": budget, "rows": n,
                          "frames": "100-1600", "threads": threads, "seconds": round(dt, 2), "cpu_seconds": round(cpu, 2),
                          "rows_per_s": round(n / dt, 1)}), flush=True)
    diff = float(np.abs(results["padded_batch_512"] - results["length_sorted_256k"]).max())
    print(json.dumps({"bench": "export_speaker", "max_abs_embedding_diff": diff}), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="/tmp/xclass_bench_export")
    ap.add_argument("--rows", type=int, default=200, help="test utterances to encode")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    run(a.out, a.rows, a.threads)
