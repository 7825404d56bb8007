"""No device->host synchronisation in a steady training step, checked on the CPU.

A real ``train()`` run (tiny features dataset, one process) is driven with the loop's two step
functions (``_micro_step``: forward + backward; ``_optimizer_step``: clip, schedule, head and
encoder step) wrapped in a TorchFunctionMode that records every operation which, on a CUDA
tensor, makes the host wait for the device: ``item``, ``bool``/``int``/``float``/``index``,
``tolist``, ``cpu``, ``numpy``, ``nonzero``, ``unique``, boolean-mask indexing... Steady steps
are the ones that neither log (``train.log_every``) nor checkpoint, after the first (which builds
lazy state: optimizer buffers, the host copy of the step counter). On a GPU the same property is
checked with ``torch.cuda.set_sync_debug_mode("error")`` (tests/gpu).

ALLOWED lists the few reads that stay, each with its reason (they are also in docs/devices.md).
"""
from __future__ import annotations

import sys
from typing import Any, Dict, List, Tuple

import pytest
import torch
from torch.overrides import TorchFunctionMode

from tests.train.common import features_config, write_features_data
from xclass.config import load_config
from xclass.parallel import ParallelContext
from xclass.train import loop as loop_mod
from xclass.train.loop import train

# (module, function) of a frame on the stack -> why the read there is allowed
ALLOWED: Dict[Tuple[str, str], str] = {
    ("xclass.heads.sampling", "sample_classes"):
        "Partial FC: the number of sampled classes is data dependent (it sizes the sampled rows)",
    ("xclass.heads.sharded", "_global_count"):
        "Partial FC + label smoothing: the global sampled-class count (data dependent, as the sample size)",
    ("xclass.parallel.device", "check_on_device"):
        "label range check: a host read only on the CPU (free there); torch._assert_async on CUDA",
    ("xclass.heads.zloss.factored", "needs_dense_step"):
        "Z-loss singular-C guard: one 0-dim read decides whether the O(D d^2) dense fallback runs",
    ("xclass.train.nonfinite", "skip_if_nonfinite"):
        "non-finite step check: a host read of the norm only on the CPU (free there); accelerators zero the "
        "step's gradients on the device instead",
    ("xclass.heads.prototypical", "scalars_may_step"):
        "margin_angproto: the skip flag of the margin optimizer read only on the CPU (free there); "
        "accelerators multiply the gradients of (w, b) by it on the device",
    ("xclass.heads.sparse", "merged"):
        "Partial FC with gradient accumulation: the union of the micro-batches' sampled rows is data "
        "dependent in size, like the sample itself",
    ("xclass.parallel.collectives", "gather_sizes"):
        "ragged batch sizes: host integers exchanged over the gloo side group (host_group); no device "
        "tensor is read",
    ("torch.optim.optimizer", "_get_value"):
        "torch optimizers (encoder) keep their step count on the host unless capturable/fused: not a device read",
}

_SCALAR_READS = {"item", "__bool__", "__int__", "__float__", "__index__", "tolist", "cpu", "numpy"}
_SIZE_DEPENDENT = {"nonzero", "argwhere", "unique", "unique_consecutive", "masked_select", "bincount",
                   "equal", "allclose", "repeat_interleave"}


def _is_bool_index(idx: Any) -> bool:
    items = idx if isinstance(idx, tuple) else (idx,)
    return any(torch.is_tensor(i) and i.dtype == torch.bool for i in items)


def _sync_kind(func: Any, args: tuple, kwargs: dict) -> str:
    """The name of the synchronising operation ``func(*args)`` would be on CUDA, or ''."""
    name = getattr(func, "__name__", "")
    if name in _SCALAR_READS:
        return name
    if name in _SIZE_DEPENDENT:
        if name == "repeat_interleave" and not (len(args) > 1 and torch.is_tensor(args[1])):
            return ""  # an int repeat count gives a known output size
        if name == "bincount" and kwargs.get("minlength", 0):
            return ""
        return name
    if name in ("__getitem__", "__setitem__") and len(args) > 1 and _is_bool_index(args[1]):
        return name + "[bool mask]"
    if name == "where" and len(args) == 1 and not kwargs:
        return "where(cond)"
    return ""


def _allowed_by() -> str:
    f = sys._getframe(2)
    while f is not None:
        key = (f.f_globals.get("__name__", ""), f.f_code.co_name)
        if key in ALLOWED:
            return f"{key[0]}.{key[1]}"
        f = f.f_back
    return ""


def _where() -> str:
    """Innermost xclass frame (file:line function) of the current call."""
    f = sys._getframe(2)
    while f is not None:
        if f.f_globals.get("__name__", "").startswith("xclass."):
            return f"{f.f_code.co_filename.split('xclass/', 1)[-1]}:{f.f_lineno} {f.f_code.co_name}"
        f = f.f_back
    return "?"


class SyncRecorder(TorchFunctionMode):
    """Records synchronising operations as (kind, location, allow-list entry or ''), each tagged
    with ``self.step``: the optimizer step in flight when it happened."""

    def __init__(self) -> None:
        super().__init__()
        self.events: List[Tuple[str, str, str]] = []
        self.steps: List[int] = []
        self.step = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        kind = _sync_kind(func, args, kwargs)
        if kind:
            self.events.append((kind, _where(), _allowed_by()))
            self.steps.append(self.step)
        return func(*args, **kwargs)


def _step_tagging(rec: SyncRecorder) -> Tuple[Any, Any]:
    """Wrappers of the loop's ``_micro_step`` and ``_optimizer_step`` that tag ``rec``'s events with
    the step they belong to: a step runs from its first micro-batch through its optimizer step,
    logging and checkpoint, up to the next step's first micro-batch (so the loop body, logging
    and the next batch's reading are covered)."""
    micro, opt = loop_mod._micro_step, loop_mod._optimizer_step
    done = {"n": 0}

    def micro_w(s, inputs, labels):
        rec.step = done["n"] + 1
        return micro(s, inputs, labels)

    def opt_w(s, cfg, ctx, step, total):
        rec.step = step + 1
        out = opt(s, cfg, ctx, step, total)
        done["n"] = step + 1
        return out

    return micro_w, opt_w


def _instrument(monkeypatch, rec: SyncRecorder) -> None:
    micro_w, opt_w = _step_tagging(rec)
    monkeypatch.setattr(loop_mod, "_micro_step", micro_w)
    monkeypatch.setattr(loop_mod, "_optimizer_step", opt_w)


HEADS = {
    # one run per head family; options that add code paths ride along (AdamW + clipping, smoothing)
    "arcface_adamw_clip": ["head.margin=arcface", "head.margin_params={s: 16.0, m: 0.3}", "optim.name=adamw",
                           "optim.grad_clip=0.5"],
    "partial_fc_label_smoothing": ["head.margin=arcface", "head.margin_params={s: 16.0, m: 0.3}",
                                   "head.sample_rate=0.5", "head.label_smoothing=0.1"],
    "partial_fc_grad_accum": ["head.margin=arcface", "head.margin_params={s: 16.0, m: 0.3}",
                              "head.sample_rate=0.5", "train.grad_accum=2"],
    "sphereface2": ["head.margin=sphereface2"],
    "subcenter_arcface": ["head.margin=subcenter_arcface", "head.margin_params={k: 3}"],
    "intertopk_subcenter": ["head.margin=intertopk_subcenter", "head.margin_params={s: 16.0, m: 0.2, k: 2}"],
    "elastic_arc_plus": ["head.margin=elastic_arc_plus", "head.margin_params={s: 16.0, m: 0.3}"],
    "zloss_efficient": ["head.name=zloss_efficient", "head.params={a: 1.0, b: 2.0}", "optim.head_lr=0.05"],
    "angproto": ["head.name=angproto"],
    "margin_angproto": ["head.name=margin_angproto", "head.margin=arcface", "head.margin_params={s: 16.0, m: 0.3}",
                        "head.params={ap_weight: 0.5}"],
}


def _base_overrides(data: str, out: str) -> List[str]:
    """tests.train.common.features_config's overrides without its margin parameters."""
    return [f"data.path={data}", "data.batch_size=24", "data.shard_mode=global_batch", "model.encoder=mlp",
            "model.embedding_dim=8", "model.params={hidden: []}", "optim.lr=0.1", "optim.schedule=cosine",
            "train.log_every=1", f"train.out_dir={out}", "train.progress=false"]


def test_xmc_dual_decoupled_does_not_sync(tmp_path, monkeypatch):
    """The XMC dual encoder head (free label vectors, no shortlist) on a tiny XMC dataset."""
    from xclass.data import make_data

    d = str(tmp_path / "xmc")
    make_data("xmc", d, 40, rows_per_class=4, seed=0, progress=False)
    log_every, total = 3, 8
    cfg = load_config(None, [
        "data.task=xmc", f"data.path={d}", "data.batch_size=16", "model.encoder=embbag",
        "model.embedding_dim=16", "model.params={token_dim: 16, hidden: []}", "head.name=dual_decoupled",
        "head.params={scale: 10.0}", "optim.name=sgd", "optim.lr=0.05", "optim.grad_clip=1.0",
        f"train.max_steps={total}", f"train.log_every={log_every}", "train.checkpoint_every=0",
        f"train.out_dir={tmp_path / 'run'}", "train.progress=false"])
    rec = SyncRecorder()
    _instrument(monkeypatch, rec)
    with rec:
        train(cfg, ParallelContext.single("cpu"))
    bad = sorted({(k, w) for st, (k, w, allowed) in zip(rec.steps, rec.events) if st in {2, 4, 5, 7} and not allowed})
    assert not bad, f"host syncs in steady steps of dual_decoupled: {bad}"


def _rank_unallowed_syncs(ctx, data: str, out: str, head: str) -> List[Tuple[str, str]]:
    """One rank of a multi-rank run: the synchronising operations of its steady steps that no
    allow-list entry covers (ragged rows mode, so every rank's last batch is smaller)."""
    log_every, total = 3, 8
    extra = ["optim.grad_clip=1.0", *HEADS[head], f"train.log_every={log_every}", f"train.max_steps={total}",
             "train.checkpoint_every=0", "data.shard_mode=rows", "data.batch_size=20"]
    cfg = features_config(data, out, *extra)
    rec = SyncRecorder()
    saved = loop_mod._micro_step, loop_mod._optimizer_step
    loop_mod._micro_step, loop_mod._optimizer_step = _step_tagging(rec)
    try:
        with rec:
            train(cfg, ctx)
    finally:  # the rank process is pooled (tests/distutil.py): leave the loop as it was
        loop_mod._micro_step, loop_mod._optimizer_step = saved
    return sorted({(k, w) for st, (k, w, allowed) in zip(rec.steps, rec.events) if st in {2, 4, 5, 7} and not allowed})


@pytest.mark.parametrize("head", ["arcface_adamw_clip", "partial_fc_label_smoothing", "margin_angproto"])
def test_two_ranks_steady_steps_do_not_sync(data, tmp_path, head):
    """With two ranks the ragged batch sizes are exchanged on the host side group, and nothing
    else in a steady step reads the device."""
    from tests.distutil import run_on_ranks

    for r, bad in enumerate(run_on_ranks(_rank_unallowed_syncs, 2, data, str(tmp_path), head)):
        assert not bad, f"rank {r}: host syncs in steady steps of {head}: {bad}"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_features_data(str(tmp_path_factory.mktemp("sync") / "d"))


@pytest.mark.parametrize("head", sorted(HEADS))
def test_steady_steps_do_not_sync(data, tmp_path, monkeypatch, head):
    log_every, total = 3, 8
    extra = ["optim.grad_clip=1.0", *HEADS[head], f"train.log_every={log_every}", f"train.max_steps={total}",
             "train.checkpoint_every=0"]
    cfg = features_config(data, str(tmp_path / head), *extra)
    if "margin_params" not in " ".join(HEADS[head]):  # the shared config's cosface (s, m) would merge in
        cfg = load_config(None, _base_overrides(data, str(tmp_path / head)) + extra)
    rec = SyncRecorder()
    _instrument(monkeypatch, rec)
    with rec:
        train(cfg, ParallelContext.single("cpu"))
    steady = {k for k in range(2, total + 1) if k % log_every and k != total}
    assert steady == {2, 4, 5, 7}
    # the recorder works: log steps read the loss and the gradient norm
    assert any(st == log_every and not allowed for st, (_, _, allowed) in zip(rec.steps, rec.events))
    bad = sorted({(k, w) for st, (k, w, allowed) in zip(rec.steps, rec.events) if st in steady and not allowed})
    assert not bad, f"host syncs in steady steps of {head}: {bad}"


def test_the_recorder_sees_syncs():
    """The detector itself: each kind of read is caught, allowed only under an ALLOWED frame."""
    x = torch.arange(6.0)
    with SyncRecorder() as r:
        float(x.sum()), x[x > 2], x.nonzero(), torch.unique(x), x.tolist(), bool(x[0]), x.sum().item()
        x.repeat_interleave(2), x[torch.tensor([1, 2])]  # known sizes: not syncs
    kinds = [k for k, _, _ in r.events]
    assert kinds == ["__float__", "__getitem__[bool mask]", "nonzero", "unique", "tolist", "__bool__", "item"]
    from xclass.heads.sampling import sample_classes

    with SyncRecorder() as r:
        sample_classes(0, 10, torch.tensor([1, -1]), 0.5, 0, 1)
    assert r.events and all(a == "xclass.heads.sampling.sample_classes" for _, _, a in r.events)
