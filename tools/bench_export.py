"""Benchmark ``export-index`` encoding of variable-length speaker utterances; JSON lines.

    PYTHONPATH=. python tools/bench_export.py [--out /tmp/xclass_bench_export] [--rows 200]
    PYTHONPATH=. python tools/bench_export.py --run runs/speaker_fsdd [--split test]

With ``--run``: the whole ``xclass export-index`` command on that trained run (a subprocess:
wall clock and CPU seconds, rows/s end to end; twice with glibc's default malloc,
``XCLASS_MALLOC=system``, the path before, and twice with the heap setting the CLI now applies,
interleaved), then its phases one by one in this process
(interpreter + imports, encoder load, Parquet read + fbank decode, encoder forward at each
``--budgets`` frame budget, Parquet write; heap malloc setting as in the CLI) and the largest
embedding difference between the budgets. Without it:

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
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from xclass.cli import main as xclass
from xclass.data import make_data
from xclass.eval.embed import embed_split, encode_batch


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


def _child(cmd, env) -> tuple:
    """(wall, CPU seconds) of a subprocess."""
    import resource
    import subprocess

    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - t0, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def _cli_rows(run_dir: str, split: str, out: str, threads: int, base: dict) -> None:
    """The whole ``export-index`` command (glibc malloc / heap setting, interleaved), then the
    interpreter and imports alone."""
    import sys

    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    for malloc in ("system", "heap", "system", "heap"):  # before (glibc default) / after, interleaved
        wall, cpu = _child([sys.executable, "-m", "xclass.cli", "export-index", "--run", run_dir, "--split", split,
                            "--out", os.path.join(out, "index"), "--overwrite"], dict(env, XCLASS_MALLOC=malloc))
        print(json.dumps({**base, "phase": "end_to_end_cli", "malloc": malloc, "seconds": round(wall, 2),
                          "cpu_seconds": round(cpu, 2), "rows_per_s": round(base["rows"] / wall, 1)}), flush=True)
    wall, cpu = _child([sys.executable, "-c", "import xclass.cli.main, xclass.cli.export, xclass.eval.embed, torch"],
                       env)
    print(json.dumps({**base, "phase": "python_and_imports", "seconds": round(wall, 2), "cpu_seconds": round(cpu, 2)}),
          flush=True)


def run_real(run_dir: str, split: str, out: str, threads: int, budgets) -> None:
    """The whole ``export-index`` command on a trained run (subprocess, wall and CPU), then its
    phases in this process: interpreter + imports, encoder load, read + decode, encoder forward
    per frame budget, Parquet write."""
    from xclass import components
    from xclass.data.meta import load_meta, split_files
    from xclass.data.reader import ParquetReader
    from xclass.eval.embed import load_encoder, load_run
    from xclass.eval.io import write_parquet_atomic
    from xclass.perf import tune_malloc

    os.makedirs(out, exist_ok=True)
    cfg = load_run(run_dir)
    files = split_files(cfg.data.path, split)
    n = sum(pq.read_metadata(f).num_rows for f in files)
    base = {"bench": "export_speaker_run", "run": run_dir, "split": split, "rows": n, "threads": threads}
    _cli_rows(run_dir, split, out, threads, base)
    torch.set_num_threads(threads)
    tune_malloc()  # as the CLI does (XCLASS_MALLOC=system in the environment turns it off here too)

    def timed(name, fn, **extra):
        t0, c0 = time.perf_counter(), time.process_time()
        res = fn()
        dt, c = time.perf_counter() - t0, time.process_time() - c0
        print(json.dumps({**base, "phase": name, **extra, "seconds": round(dt, 2), "cpu_seconds": round(c, 2),
                          **({"rows_per_s": round(n / dt, 1)} if name.startswith("forward") else {})}), flush=True)
        return res

    meta = load_meta(cfg.data.path)
    enc = timed("load_encoder", lambda: load_encoder(run_dir, cfg, meta))
    decode = components.make_decoder(cfg.data.task, meta, cfg.model)
    columns = components.input_columns(cfg.data.task, cfg.model.encoder, meta)
    reader = lambda: ParquetReader(files, columns, rank=0, world_size=1, batch_rows=512, seed=0, shuffle=False)  # noqa: E731
    batches = timed("read_decode", lambda: [decode(b)[0] for b in _epoch0(reader())])
    frames = torch.cat([b["lengths"] for b in batches]).double()
    base["frames_mean"], base["frames_max"] = round(float(frames.mean()), 1), int(frames.max())
    embs = {}
    with torch.no_grad():
        for budget in budgets:
            embs[budget] = timed("forward", lambda: np.concatenate([encode_batch(enc, b, budget) for b in batches]),
                                 frame_budget=budget)
    ref = embs[budgets[0]]
    table = pa.table({"embedding": pa.FixedSizeListArray.from_arrays(pa.array(ref.reshape(-1)), ref.shape[1])})
    timed("write_parquet", lambda: write_parquet_atomic(table, os.path.join(out, "emb.parquet")))
    print(json.dumps({**base, "max_abs_embedding_diff_vs_budget_%d" % budgets[0]:
                      max(float(np.abs(e - ref).max()) for e in embs.values())}), flush=True)


def _epoch0(reader):
    reader.set_epoch(0)
    return reader


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="/tmp/xclass_bench_export")
    ap.add_argument("--rows", type=int, default=200, help="test utterances to encode")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--run", help="a trained speaker run: time export-index on it end to end and by phase")
    ap.add_argument("--split", default="test")
    ap.add_argument("--budgets", default="0,262144,32768,16384",
                    help="with --run: frame budgets of the forward phase (the first is the reference)")
    a = ap.parse_args()
    if a.run:
        run_real(a.run, a.split, a.out, a.threads, [int(b) for b in a.budgets.split(",")])
    else:
        run(a.out, a.rows, a.threads)
