"""The ``recipe`` rows of tools/bench_gpu.py: configs/face/gpu_recipe.yaml on one device.

``encoder_harness``: the recipe's encoder alone (fwd + bwd + SGD step, the recipe's precision)
on one decoded batch already on the device, timed in this process: the ceiling.
``train_D=<n>``: ``xclass train [--gpu]`` itself on generated 112 px face data with
``data.num_classes=n`` (the head size; labels use the first 100 classes), its samples/s read
from metrics.jsonl (median over the logged windows after the first).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Any, Callable, Dict, List

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "configs", "face", "gpu_recipe.yaml")
TINY_MODEL = "model.params={widths: [8, 16, 16, 16], layers: [1, 1, 1, 1], stem_width: 8, dropout: 0.0}"


def recipe_overrides(a: Any, data: str, out: str) -> List[str]:
    """Config overrides of the recipe for one process and a short timed run."""
    q = a.quick
    over = [f"data.path={data}", f"train.out_dir={out}", "cluster.workers=1", "train.progress=false",
            f"data.batch_size={32 if q else 256}", f"train.max_steps={a.recipe_steps}",
            f"train.log_every={a.recipe_log}", "train.checkpoint_every=0", "optim.warmup_steps=0",
            f"cluster.use_gpu={str(a.device.startswith('cuda')).lower()}"]
    return over + ([TINY_MODEL, "model.embedding_dim=32"] if q else [])


def make_recipe_data(a: Any, root: str) -> str:
    """Face data at the recipe's 112 px: 100 generated classes x 2 rows, tiled (new ids, same
    labels and schema) to ``a.recipe_rows`` rows so an epoch spans many steps."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from xclass.data import make_data

    data = os.path.join(root, "faces")
    make_data("face", data, 100, rows_per_class=2, seed=0, progress=False, image_size=16 if a.quick else 112)
    path = os.path.join(data, "train.parquet")
    t = pq.read_table(path)
    reps = -(-a.recipe_rows // t.num_rows)
    big = pa.concat_tables([t] * reps).slice(0, a.recipe_rows)
    big = big.set_column(t.schema.get_field_index("id"), "id", pa.array(np.arange(big.num_rows, dtype=np.int64)))
    pq.write_table(big.replace_schema_metadata(t.schema.metadata), path + ".tmp", row_group_size=1024)
    os.replace(path + ".tmp", path)
    return data


def harness(a: Any, device: torch.device, data: str, root: str) -> Dict[str, Any]:
    """Encoder-only samples/s on one batch that already lives on the device."""
    from bench_gpu import time_ms
    from xclass import components
    from xclass.config import load_config
    from xclass.data.reader import ParquetReader
    from xclass.data.meta import load_meta, split_files

    cfg = load_config(RECIPE, recipe_overrides(a, data, os.path.join(root, "harness")))
    meta = load_meta(data)
    components.load_all()
    enc = components.build_encoder(cfg.model, meta).to(device).train()
    opt = torch.optim.SGD(enc.parameters(), lr=0.01, momentum=0.9)
    reader = ParquetReader(split_files(data, "train"), components.input_columns("face", cfg.model.encoder),
                           batch_rows=cfg.data.batch_size, seed=0)
    inputs, _ = components.make_decoder("face", meta)(next(iter(reader)))
    inputs = {k: v.to(device) for k, v in inputs.items()}
    bf16 = cfg.train.precision == "bf16"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            emb = enc(inputs)
        emb.float().square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    ms = time_ms(step, device, a.warmup, a.steps)
    return {"step_ms": ms, "samples_per_s": cfg.data.batch_size * 1e3 / ms}


def train_run(a: Any, device: torch.device, data: str, out: str, num_classes: int) -> Dict[str, Any]:
    """``xclass train`` on the recipe; samples/s and step_ms from its metrics.jsonl."""
    cmd = [sys.executable, "-m", "xclass.cli", "train", "--config", RECIPE,
           *(["--gpu"] if device.type == "cuda" else []), *recipe_overrides(a, data, out),
           f"data.num_classes={num_classes}"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=a.recipe_timeout)
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["?"])[-1]
        if "out of memory" in res.stderr:
            return {"oom": True, "step_ms": None, "error": tail[:200]}
        return {"failed": True, "step_ms": None, "error": tail[:200]}
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [r for r in map(json.loads, filter(str.strip, f)) if "samples_per_s" in r]
    timed = rows[1:] or rows
    return {"step_ms": statistics.median(r["step_ms"] for r in timed),
            "samples_per_s": statistics.median(r["samples_per_s"] for r in timed),
            "head_mem_mb": rows[-1].get("head_mem_mb"), "windows": len(timed)}


def bench_recipe(a: Any, device: torch.device, measured: Callable) -> List[Dict[str, Any]]:
    from bench_gpu import over_budget

    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="xclass_bench_gpu_") as root:
        data = make_recipe_data(a, root)
        base = {"bench": "recipe", "dtype": "bf16", "r": 1.0, "B": 32 if a.quick else 256}
        rows.append(measured(dict(base, mode="encoder_harness", D=0), device,
                             lambda: harness(a, device, data, root)))
        for D in ([100, 1000] if a.quick else [100, 10**6]):
            row = dict(base, mode=f"train_D={D}", D=D, device=str(device), peak_gb=None)
            if over_budget():
                rows.append(dict(row, step_ms=None, skipped="budget"))
                continue
            row.update(train_run(a, device, data, os.path.join(root, f"run_{D}"), D))
            h = rows[0].get("samples_per_s")
            if h and row.get("samples_per_s"):
                row["vs_harness"] = row["samples_per_s"] / h
                if D == 100:
                    row["loop_overhead"] = 1 - row["vs_harness"]
            rows.append(row)
    return rows
