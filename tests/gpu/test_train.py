"""The training path on the device: a steady step run under ``torch.cuda.set_sync_debug_mode("warn")``
warns only in the allow-listed places of tests/train/test_no_host_sync.py (each warning names the
Python line that synchronised); ``xclass train --gpu`` on
configs/debug/tiny_cpu.yaml (20 steps) matches the CPU losses; resume from a GPU checkpoint on
the GPU and on the CPU; 2 NCCL ranks reproduce the 2-rank CPU golden losses.

Loss tolerance of whole runs (20 SGD steps of a small iResNet with BatchNorm, TF32 off via
NVIDIA_TF32_OVERRIDE=0): ``RUN_RTOL`` = 1e-3 relative per step, ``RUN_ATOL`` = 1e-4.
"""
from __future__ import annotations

import ast
import functools
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from tests.gpu.common import device_ctx, test_device
from tests.train.common import features_config, losses, write_features_data

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "debug", "tiny_cpu.yaml")
GOLDEN = os.path.join(ROOT, "tests", "assets", "tiny_cpu_losses.txt")
RUN_RTOL, RUN_ATOL = 1e-3, 1e-4


@pytest.fixture(scope="module")
def device():
    return test_device()


# ---- no host sync in a steady step --------------------------------------------------------
class _SyncWindow:
    """Reader proxy: batches ``on`` .. ``off - 1`` are consumed with sync debug mode "warn"
    (the mode is switched when the loop asks for a batch, i.e. between steps)."""

    def __init__(self, reader, device, on: int, off: int) -> None:
        self.reader, self.device, self.on, self.off = reader, device, on, off
        self.steady = 0

    def __getattr__(self, name):
        return getattr(self.reader, name)

    def _mode(self, mode: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_sync_debug_mode(mode)

    def __iter__(self):
        try:
            for i, batch in enumerate(self.reader):
                self._mode("warn" if self.on <= i < self.off else "default")
                self.steady += int(self.on <= i < self.off)
                yield batch
        finally:
            self._mode("default")


@functools.lru_cache(maxsize=None)
def _functions(path: str) -> tuple:
    """(first line, last line, name) of every function in a source file."""
    tree = ast.parse(open(path).read())
    return tuple((n.lineno, n.end_lineno, n.name) for n in ast.walk(tree)
                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))


def _allowed_sync(filename: str, lineno: int) -> bool:
    """True when the line lies in a function of the CPU test's allow-list (module, function)."""
    from tests.train.test_no_host_sync import ALLOWED

    path = os.path.abspath(filename)
    parts = path[:-3].split(os.sep) if path.endswith(".py") else []
    for root in ("xclass", "torch"):
        if root in parts:
            module = ".".join(parts[len(parts) - 1 - parts[::-1].index(root):])
            names = {name for a, b, name in _functions(path) if a <= lineno <= (b or a)}
            return any((module, name) in ALLOWED for name in names)
    return False


def _train_watching_syncs(cfg, device, monkeypatch) -> None:
    """Train ``cfg`` on ``device`` with steps 4-9 under sync debug mode; fail on any host sync
    outside the allow-list."""
    from xclass import components
    from xclass.train.loop import train

    windows = []
    make_reader = components.make_reader

    def wrapped(*a, **kw):
        windows.append(_SyncWindow(make_reader(*a, **kw), device, on=4, off=10))
        return windows[-1]

    monkeypatch.setattr(components, "make_reader", wrapped)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = train(cfg, device_ctx(device))
    bad = sorted({f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)
                  and not _allowed_sync(w.filename, w.lineno)})
    assert not bad, f"host syncs in steady steps: {bad}"
    assert out["step"] == 12 and windows and windows[0].steady == 6


@pytest.mark.parametrize("extra", [("head.margin=arcface", "optim.grad_clip=1.0"),
                                   ("head.sample_rate=0.5",),
                                   ("head.sample_rate=0.5", "train.grad_accum=2", "data.batch_size=12"),
                                   ("head.name=zloss_efficient",),
                                   ("head.name=angproto",),
                                   ("head.name=margin_angproto", "head.params={ap_weight: 0.5}")],
                         ids=["arcface-clip", "partial-fc", "partial-fc-accum", "zloss-efficient", "angproto",
                              "margin-angproto"])
def test_steady_step_has_no_host_sync(device, tmp_path, monkeypatch, extra):
    data = write_features_data(str(tmp_path / "data"))
    gpu = ["cluster.use_gpu=true"] if device.type == "cuda" else []
    cfg = features_config(data, str(tmp_path / "run"), "train.max_steps=12", "train.log_every=100",
                          "data.prefetch=0", "data.shard_mode=rows", "train.progress=false", *gpu, *extra)
    _train_watching_syncs(cfg, device, monkeypatch)
    assert np.isfinite(losses(cfg.train.out_dir)).all()


@pytest.mark.parametrize("task", ["face", "speaker"])
def test_augmented_steady_step_has_no_host_sync(device, tiny_data, tmp_path, monkeypatch, task):
    """data.hflip (face) / data.spec_mask (speaker) draw their masks on the run's device inside the
    step: still no host sync."""
    from xclass.config import load_config
    from xclass.data import make_data

    data, extra = tiny_data, ["data.hflip=0.5"]
    if task == "speaker":
        data, extra = str(tmp_path / "speaker"), ["data.spec_mask=0.6"]
        make_data("speaker", data, 40, rows_per_class=12, seed=0, progress=False, max_frames=60, min_frames=30)
    gpu = ["cluster.use_gpu=true"] if device.type == "cuda" else []
    cfg = load_config(f"configs/{task}/cpu.yaml", [f"data.path={data}", f"train.out_dir={tmp_path / 'run'}",
                                                   "train.max_steps=12", "train.log_every=100", "data.prefetch=0",
                                                   "train.progress=false", "data.batch_size=32", *extra, *gpu])
    _train_watching_syncs(cfg, device, monkeypatch)


# ---- xclass train --gpu vs the CPU ---------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from xclass.data import make_data

    data = str(tmp_path_factory.mktemp("gpu_tiny") / "tiny_face")
    make_data("face", data, 100, rows_per_class=20, seed=0, progress=False, image_size=16)
    return data


def _env():
    env = dict(os.environ, NVIDIA_TF32_OVERRIDE="0", PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env.pop("XCLASS_GPU_TEST_DEVICE", None)
    return env


def _cli_train(data, out, on_gpu: bool, *extra: str) -> list:
    cmd = [sys.executable, "-m", "xclass.cli", "train", "--config", TINY, *(["--gpu"] if on_gpu else []),
           f"data.path={data}", f"train.out_dir={out}", "train.log_every=1", "train.progress=false",
           "train.checkpoint_every=10", "train.keep_last=2", *extra]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return losses(out)


@pytest.fixture(scope="module")
def runs(device, tiny_data, tmp_path_factory):
    """The CPU reference run and the device run, 20 steps each."""
    d = tmp_path_factory.mktemp("gpu_runs")
    cpu = _cli_train(tiny_data, str(d / "cpu"), False)
    gpu = _cli_train(tiny_data, str(d / "gpu"), device.type == "cuda")
    return d, cpu, gpu


def test_train_gpu_20_steps_matches_cpu(runs):
    _, cpu, gpu = runs
    assert len(cpu) == len(gpu) == 20
    np.testing.assert_allclose(gpu, cpu, rtol=RUN_RTOL, atol=RUN_ATOL)
    assert np.mean(gpu[-5:]) < np.mean(gpu[:5])  # and it learns


@pytest.mark.parametrize("resume_on", ["device", "cpu"])
def test_resume_from_gpu_checkpoint(device, runs, tiny_data, tmp_path, resume_on):
    d, _, gpu = runs
    out = tmp_path / "resumed"
    os.makedirs(out / "checkpoints")
    shutil.copytree(d / "gpu" / "checkpoints" / "step_00000010", out / "checkpoints" / "step_00000010")
    got = _cli_train(tiny_data, str(out), resume_on == "device" and device.type == "cuda")
    np.testing.assert_allclose(got, gpu[10:], rtol=RUN_RTOL, atol=RUN_ATOL)


# ---- 2 NCCL ranks ----------------------------------------------------------------------------
def test_two_nccl_ranks_match_cpu_golden(device, tiny_data, tmp_path):
    """torchrun, 2 processes, one GPU each; the fake-device mode runs the same on 2 gloo ranks."""
    if device.type == "cuda" and torch.cuda.device_count() < 2:
        pytest.skip("needs 2 visible GPUs")
    backend = ["cluster.use_gpu=true", "cluster.backend=nccl"] if device.type == "cuda" else []
    out = str(tmp_path / "run")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(ROOT, "launch", "torchrun_train.py"), TINY, f"data.path={tiny_data}",
           f"train.out_dir={out}", "train.log_every=1", "train.progress=false", *backend]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    want = np.loadtxt(GOLDEN)
    np.testing.assert_allclose(losses(out), want[:, 1], rtol=RUN_RTOL, atol=RUN_ATOL)
