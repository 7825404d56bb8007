"""Encoder engines: plain torch (data-parallel gradient averaging) or DeepSpeed ZeRO.

The classifier head is never inside an engine: its shard differs per rank, so it keeps
its own optimizer and no data-parallel averaging (see xclass/heads/base.py). Both
engines share one calling pattern per micro-batch::

    emb = engine(inputs)            # [B_local, d]
    engine.backward(loss)           # loss scaled by 1/grad_accum inside
    stepped = engine.step()         # True at a gradient-accumulation boundary
"""
from __future__ import annotations

import importlib
import os
from typing import Any, Dict, Iterable, List

import torch
from torch import nn

from xclass.parallel import ParallelContext
from xclass.heads.base import torch_optimizer
from xclass.parallel.collectives import average_gradients
from xclass.parallel.context import distributed_ready


def make_torch_optimizer(params: Iterable[torch.Tensor], optim_cfg: Any) -> torch.optim.Optimizer:
    """The encoder's optimizer (optim.name, lr, momentum, weight_decay)."""
    return torch_optimizer(list(params), optim_cfg, float(optim_cfg.lr))


class PlainEngine:
    """Encoder + torch optimizer; gradients averaged over ranks at each boundary."""

    def __init__(self, encoder: nn.Module, optim_cfg: Any, ctx: ParallelContext,
                 grad_accum: int = 1, bf16: bool = False) -> None:
        self.module = encoder
        self.ctx = ctx
        self.grad_accum = max(1, grad_accum)
        self.bf16 = bf16
        if getattr(optim_cfg, "sparse_embeddings", False):  # SparseAdam on the tables, see sparse_optim
            from xclass.train.sparse_optim import make_split_optimizer

            self.optimizer: Any = make_split_optimizer(encoder, optim_cfg)
        else:
            self.optimizer = make_torch_optimizer(encoder.parameters(), optim_cfg)
        self.micro = 0

    def __call__(self, inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        if self.bf16:
            with torch.autocast(device_type=_device_type(self.module), dtype=torch.bfloat16):
                return self.module(inputs).float()
        return self.module(inputs)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.grad_accum).backward()

    def at_boundary(self) -> bool:
        return (self.micro + 1) % self.grad_accum == 0

    def grads_ready(self) -> None:
        """Average encoder gradients across ranks (call before clipping and step)."""
        average_gradients([p for p in self.module.parameters()], self.ctx.group)

    def step(self) -> bool:
        boundary = self.at_boundary()
        self.micro += 1
        if boundary:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return boundary

    def set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def state_dict(self) -> Dict[str, Any]:
        return {"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "micro": self.micro}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.micro = int(state.get("micro", 0))


def _device_type(module: nn.Module) -> str:
    p = next(module.parameters(), None)
    return p.device.type if p is not None else "cpu"


def _read_deepspeed_json(path: str) -> Dict[str, Any]:
    """The ``deepspeed.config`` file: a JSON object, else a ConfigError naming the file."""
    from xclass.config_types import ConfigError
    from xclass.data.meta import read_json_object

    try:
        return read_json_object(path, lambda why: ConfigError(f"deepspeed.config: {path}: {why}"))
    except FileNotFoundError:
        raise ConfigError(f"deepspeed.config: {path}: file not found") from None


def deepspeed_config(cfg: Any, ctx: ParallelContext) -> Dict[str, Any]:
    """The DeepSpeed JSON for the encoder: the optional file, then the YAML's keys."""
    ds: Dict[str, Any] = {}
    if cfg.deepspeed.config:
        ds = _read_deepspeed_json(cfg.deepspeed.config)
    micro = max(1, cfg.data.batch_size // ctx.world_size)
    ds.update({
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": max(1, cfg.train.grad_accum),
        "train_batch_size": micro * ctx.world_size * max(1, cfg.train.grad_accum),
        "gradient_clipping": float(cfg.optim.grad_clip),
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    })
    zero = dict(ds.get("zero_optimization", {}))
    if cfg.deepspeed.zero_stage is not None:
        zero["stage"] = int(cfg.deepspeed.zero_stage)
    zero.setdefault("stage", 0)
    if zero["stage"] not in (0, 1, 2):
        raise ValueError(f"deepspeed.zero_stage={zero['stage']}: the encoder supports ZeRO 0, 1, 2")
    ds["zero_optimization"] = zero
    if cfg.deepspeed.bf16 is not None:
        ds["bf16"] = {"enabled": bool(cfg.deepspeed.bf16)}
    ds.setdefault("zero_allow_untested_optimizer", True)
    return ds


class DeepSpeedEngine:
    """The encoder inside ``deepspeed.initialize`` (ZeRO 0/1/2, bf16), client torch optimizer."""

    def __init__(self, encoder: nn.Module, cfg: Any, ctx: ParallelContext) -> None:
        import deepspeed

        # DeepSpeed reads its position from the launcher's environment; Ray and our test
        # harness initialise torch.distributed themselves, so state it here.
        for key, val in (("LOCAL_RANK", ctx.local_rank), ("RANK", ctx.rank), ("WORLD_SIZE", ctx.world_size)):
            os.environ.setdefault(key, str(val))
        if ctx.world_size == 1:  # one process, no launcher: a loopback rendezvous, not MPI discovery
            from xclass.parallel.launch import free_port

            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(free_port()))
        # Skip the one-off JIT build of DeepSpeed's shm all-reduce op (plain gloo is used).
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
        opt = make_torch_optimizer(encoder.parameters(), cfg.optim)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=encoder, optimizer=opt, config=deepspeed_config(cfg, ctx),
            dist_init_required=ctx.world_size == 1 and not distributed_ready())
        self.module = self.engine.module
        self.bf16 = bool(self.engine.bfloat16_enabled())
        if self.bf16:  # DeepSpeed casts parameters only; BatchNorm running stats must follow
            for buf in self.module.buffers():
                if buf.is_floating_point():
                    buf.data = buf.data.to(torch.bfloat16)

    def __call__(self, inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        if self.bf16:
            inputs = {k: (v.bfloat16() if v.is_floating_point() else v) for k, v in inputs.items()}
        return self.engine(inputs).float()

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def at_boundary(self) -> bool:
        return bool(self.engine.is_gradient_accumulation_boundary())

    def grads_ready(self) -> None:
        """DeepSpeed reduces encoder gradients itself."""

    def step(self) -> bool:
        boundary = self.at_boundary()
        self.engine.step()
        return boundary

    def set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def save(self, path: str, tag: str) -> None:
        self.engine.save_checkpoint(path, tag=tag)

    def load(self, path: str, tag: str) -> None:
        """Restore module + optimizer; files are read by xclass.train.safe_io (no unpickled code)."""
        from xclass.train.safe_io import safe_deepspeed_loads

        with safe_deepspeed_loads(self.engine):
            self.engine.load_checkpoint(path, tag=tag)


def build_engine(encoder: nn.Module, cfg: Any, ctx: ParallelContext) -> Any:
    """DeepSpeedEngine when ``deepspeed.enabled``, else PlainEngine."""
    if cfg.deepspeed.enabled:
        return DeepSpeedEngine(encoder, cfg, ctx)
    return PlainEngine(encoder, cfg.optim, ctx, cfg.train.grad_accum, bf16=cfg.train.precision == "bf16")


def encoder_params(engine: Any) -> List[torch.Tensor]:
    return [p for p in engine.module.parameters() if p.requires_grad]
