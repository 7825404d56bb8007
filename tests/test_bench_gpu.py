"""tools/bench_gpu.py smoke test on the CPU (``--device cpu --quick``): the rows it writes, the
OOM row, and the recipe's encoder harness. Timings are not checked (benchmarks, not tests)."""
import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))  # bench_gpu, bench_gpu_recipe, bench_gpu_zloss

import bench_gpu  # noqa: E402
import bench_gpu_recipe  # noqa: E402

KEYS = {"bench", "D", "dtype", "r", "step_ms", "peak_gb", "device"}


def test_quick_cpu_rows(tmp_path):
    out = str(tmp_path / "gpu.jsonl")
    assert bench_gpu.main(["--device", "cpu", "--quick", "--only", "arcface,zloss", "--steps", "1",
                           "--warmup", "0", "--out", out]) == 0
    rows = [json.loads(l) for l in open(out)]
    assert all(KEYS <= r.keys() for r in rows)
    arc = [r for r in rows if r["bench"] == "arcface"]
    assert {(r["D"], r["dtype"], r["r"]) for r in arc} == {(D, t, r) for D in (1000, 4000)
                                                           for t in ("fp32", "bf16") for r in (1.0, 0.1)}
    assert all(r["step_ms"] > 0 and r["floor_ms"] > 0 and r["impl"] == "materialized" for r in arc)
    assert len([r for r in rows if r["bench"] == "gemm_floor"]) == 8
    z = [r for r in rows if r["bench"] == "zloss"]
    assert {r["method"] for r in z} == {"zloss_efficient", "logsoftmax"} and len(z) == 4
    assert all("speedup" in r for r in z if r["method"] == "zloss_efficient")


def test_quick_cpu_fused_rows(tmp_path):
    out = str(tmp_path / "gpu.jsonl")
    assert bench_gpu.main(["--device", "cpu", "--quick", "--only", "fused", "--steps", "1", "--warmup", "0",
                           "--out", out]) == 0
    rows = [json.loads(l) for l in open(out)]
    assert all(KEYS <= r.keys() for r in rows)
    fused = [r for r in rows if r["bench"] == "fused"]
    assert {(r["D"], r["impl"]) for r in fused} == {(1000, "fused"), (1000, "fused_update"), (1000, "materialized"),
                                                   (4000, "fused"), (4000, "fused_update"), (4000, "materialized"),
                                                   (8000, "fused"), (8000, "fused_update")}
    assert all(r["dtype"] == "bf16" and r["r"] == 1.0 and r["step_ms"] > 0 and r["x_floor"] > 0 for r in fused)
    assert len([r for r in rows if r["bench"] == "gemm_floor"]) == 3


def test_out_of_memory_becomes_a_row_and_other_errors_propagate():
    def oom():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB")

    row = bench_gpu.measured({"bench": "arcface", "D": 10**7}, torch.device("cpu"), oom)
    assert row["oom"] is True and row["step_ms"] is None and "40.00 GiB" in row["error"]
    assert "peak_gb" in row

    def bug():
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        bench_gpu.measured({"bench": "arcface"}, torch.device("cpu"), bug)


def test_recipe_harness_and_overrides(tmp_path):
    a = bench_gpu.parse(["--device", "cpu", "--quick", "--steps", "1", "--warmup", "0"])
    data = bench_gpu_recipe.make_recipe_data(a, str(tmp_path))
    got = bench_gpu_recipe.harness(a, torch.device("cpu"), data, str(tmp_path))
    assert got["step_ms"] > 0 and got["samples_per_s"] > 0
    from xclass.config import load_config

    cfg = load_config(bench_gpu_recipe.RECIPE, bench_gpu_recipe.recipe_overrides(a, data, str(tmp_path / "r")))
    assert cfg.cluster.workers == 1 and cfg.train.precision == "bf16" and cfg.data.batch_size == 32
    assert not cfg.cluster.use_gpu  # the recipe asks for GPUs; a --device cpu run must not


def test_budget_zero_skips_every_measurement(tmp_path):
    out = str(tmp_path / "gpu.jsonl")
    bench_gpu.main(["--device", "cpu", "--quick", "--only", "zloss,arcface", "--budget-s", "0", "--out", out])
    rows = [json.loads(l) for l in open(out)]
    assert rows and all(r.get("skipped") == "budget" and r["step_ms"] is None for r in rows)
    assert all(KEYS <= r.keys() for r in rows)
