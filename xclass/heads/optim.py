"""Head optimizer: SGD-momentum or AdamW whose state is sharded with the class rows, with a
truly sparse Partial-FC update and a skipped step agreed by all ranks.

- State tensors have the shape of this rank's weight shard ([C_local * K, d]); they are read
  and written only at the rows used this step. Rows outside the Partial-FC sample, their
  momentum / Adam moments and their Adam step count are bitwise untouched (insightface v2
  instead decays every row through momentum and weight decay).
- With ``sample_rate == 1`` the update equals ``torch.optim.SGD`` (dampening 0, no Nesterov) or
  ``torch.optim.AdamW`` on the full shard. AdamW keeps a per-row step count, so the bias
  correction of a row counts the steps *that row* was updated (LazyAdam semantics).
- ``step()`` changes no weight or state when any gradient on any rank is inf/NaN: ``found_inf``
  is all-reduced with MAX over the head group (and ``extra_groups``, e.g. the data-parallel
  group), so every rank skips together and can update its loss scale identically. The flag stays
  on the device (the fused kernel and ``torch.where`` apply it): no host sync. ``step()`` returns
  it as a 0-dim bool tensor (True: applied); ``head.step_count`` counts optimizer steps *taken or
  skipped*, like the loop's step counter and LR schedule, so the host knows it without a read.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch

from xclass.parallel.collectives import all_reduce
from xclass.heads.base import advance_step, head_lr

OPTIMIZERS = ("sgd", "adamw")
_FUSED_SGD = getattr(torch, "_fused_sgd_", None)  # private kernel behind torch.optim.SGD(fused=True)


class ShardedHeadOptimizer:
    """Optimizer for a :class:`~xclass.heads.sharded.ShardedMarginHead` (lr readable/settable)."""

    def __init__(self, head: Any, name: str, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 extra_groups: Iterable[Any] = ()) -> None:
        if name not in OPTIMIZERS:
            raise ValueError(f"head optimizer {name!r} not in {OPTIMIZERS}")
        self.head, self.name, self.lr = head, name, float(lr)
        self.momentum, self.weight_decay = float(momentum), float(weight_decay)
        self.betas, self.eps = (float(betas[0]), float(betas[1])), float(eps)
        self.extra_groups = list(extra_groups)
        self.state: Dict[str, Dict[str, torch.Tensor]] = {}
        self.skipped: Any = 0  # skipped steps: an int, or a 0-dim int64 device tensor once stepped
        # update_in_backward (xclass.heads.fused_update): the backward's non-finite flag and the
        # squared norm of the gradient it applied, until step() / zero_grad()
        self.pending_inf: Optional[torch.Tensor] = None
        self.pending_sq: Optional[torch.Tensor] = None

    @property
    def updates_in_backward(self) -> bool:
        """True when the head applies this optimizer's step in its backward (the loop then sets
        the learning rate before the backward)."""
        return bool(getattr(self.head, "update_in_backward", False))

    # ------------------------------------------------------------------ gradients
    def _grads(self) -> List[Tuple[str, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]]:
        """[(param name, param, row ids or None for dense, gradient)] for this step."""
        out: List[Any] = []
        h = self.head
        if h.active is not None:
            rows, leaf = h.active
            out.append(("weight", h.weight, rows, leaf.grad))
        else:
            out.append(("weight", h.weight, None, h.weight.grad))
        if getattr(h, "bias", None) is not None:
            out.append(("bias", h.bias, None, h.bias.grad))
        return [o for o in out if o[3] is not None]

    def found_inf(self) -> torch.Tensor:
        """0-dim float32 flag on the head's device: 1 when any gradient on any rank of the head
        group (and extra groups) is not finite, else 0. Stays on the device (no host sync)."""
        # one reduction per gradient: inf/NaN anywhere makes the sum non-finite (a finite sum
        # overflowing fp32 would also count as inf, which only happens for already-broken steps)
        dev = self.head.step_count.device
        flag = torch.zeros(1, dtype=torch.float32, device=dev)
        if self.pending_inf is not None:  # a step already applied (or skipped) in the backward
            flag = torch.maximum(flag, self.pending_inf.reshape(1))
        for _, _, _, g in self._grads():
            flag = torch.maximum(flag, (~torch.isfinite(g.sum())).to(torch.float32).reshape(1))
        flag = all_reduce(flag, "max", self.head.group)
        for g in self.extra_groups:
            flag = all_reduce(flag, "max", g)
        return flag.reshape(())

    # ------------------------------------------------------------------ updates
    def _state(self, name: str, p: torch.Tensor) -> Dict[str, torch.Tensor]:
        st = self.state.get(name)
        if st is None:
            if self.name == "sgd":
                st = {"momentum": torch.zeros_like(p)}
            else:
                st = {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p),
                      "steps": torch.zeros(p.shape[0], dtype=torch.int64, device=p.device)}
            self.state[name] = st
        return st

    def _sgd(self, w: torch.Tensor, g: torch.Tensor, st: Dict[str, torch.Tensor], inf: torch.Tensor) -> None:
        """In place on ``w`` and ``st`` unless ``inf`` (0-dim float flag) is set (torch.optim.SGD:
        dampening 0, no Nesterov). One fused pass over (w, g, momentum) where torch has the kernel
        (about 2x less memory traffic than separate ops; equal up to rounding); it reads ``inf``
        on the device."""
        buf = st["momentum"]
        if _FUSED_SGD is not None and self.momentum > 0 and w.is_contiguous() and buf.is_contiguous():
            _FUSED_SGD([w], [g.contiguous()], [buf], weight_decay=self.weight_decay, momentum=self.momentum,
                       lr=self.lr, dampening=0.0, nesterov=False, maximize=False, is_first_step=False,
                       found_inf=inf)
            return
        new_buf = buf * self.momentum + g
        if self.weight_decay:
            new_buf = torch.add(new_buf, w, alpha=self.weight_decay)
        new_w = torch.add(w, new_buf, alpha=-self.lr)
        skip = inf > 0
        buf.copy_(torch.where(skip, buf, new_buf))
        w.copy_(torch.where(skip, w, new_w))

    def _adamw(self, w: torch.Tensor, g: torch.Tensor, st: Dict[str, torch.Tensor], inf: torch.Tensor) -> None:
        """In place on ``w`` and ``st`` unless ``inf`` is set (torch.optim.AdamW with a per-row
        step count)."""
        b1, b2 = self.betas
        skip = inf > 0
        steps = st["steps"] + (~skip).to(torch.int64)
        new_w = w * (1.0 - self.lr * self.weight_decay)
        m = torch.add(st["exp_avg"] * b1, g, alpha=1.0 - b1)
        v = (st["exp_avg_sq"] * b2).addcmul_(g, g, value=1.0 - b2)
        shape = (-1,) + (1,) * (w.dim() - 1)
        bc1 = (1.0 - b1 ** steps.double()).to(w.dtype).view(shape)
        bc2 = (1.0 - b2 ** steps.double()).to(w.dtype).view(shape)
        denom = (v.sqrt() / bc2.sqrt()).add_(self.eps)
        new_w.sub_(m * (self.lr / bc1) / denom)
        st["steps"].copy_(steps)
        st["exp_avg"].copy_(torch.where(skip, st["exp_avg"], m))
        st["exp_avg_sq"].copy_(torch.where(skip, st["exp_avg_sq"], v))
        w.copy_(torch.where(skip, w, new_w))

    @torch.no_grad()
    def _apply(self, name: str, p: torch.Tensor, rows: Optional[torch.Tensor], g: torch.Tensor,
               inf: torch.Tensor) -> None:
        st = self._state(name, p)
        rule = self._sgd if self.name == "sgd" else self._adamw
        if rows is None:
            if self.name == "sgd" and self.momentum == 0:
                st["momentum"].zero_()
            rule(p.data, g, st, inf)
            return
        sub = {k: v.index_select(0, rows) for k, v in st.items()}
        w = p.data.index_select(0, rows)
        if self.name == "sgd" and self.momentum == 0:
            sub["momentum"].zero_()
        rule(w, g, sub, inf)
        p.data.index_copy_(0, rows, w)
        for k, v in sub.items():
            st[k].index_copy_(0, rows, v)

    @torch.no_grad()
    def step_rows(self, lo: int, hi: int, g: torch.Tensor, inf: torch.Tensor) -> None:
        """The step of weight rows [lo, hi) with their gradient g [hi - lo, d], in place on the
        weight and its state rows, unless ``inf`` (update_in_backward: one class chunk). Both
        rules act row by row (AdamW's step count is per row), so a chunk's step is exactly the
        whole step restricted to its rows."""
        p = self.head.weight
        sub = {k: v[lo:hi] for k, v in self._state("weight", p).items()}
        if self.name == "sgd" and self.momentum == 0:
            sub["momentum"].zero_()
        (self._sgd if self.name == "sgd" else self._adamw)(p.data[lo:hi], g, sub, inf)
        self.pending_inf = inf if self.pending_inf is None else torch.maximum(self.pending_inf, inf)

    def backward_sq_norm(self) -> Optional[torch.Tensor]:
        """Squared norm (0-dim float64) of the weight gradient applied in the backward this step,
        summed over chunks (this rank's rows only), or None."""
        return self.pending_sq

    def step(self) -> torch.Tensor:
        """Update the rows used this step unless a gradient is inf/NaN on some rank. Returns a 0-dim
        bool device tensor, True when applied (reading it is a host sync: do so on log steps)."""
        grads = self._grads()
        inf = self.found_inf()
        for name, p, rows, g in grads:
            self._apply(name, p, rows, g, inf)
        self.skipped = inf.to(torch.int64) + self.skipped
        advance_step(self.head)
        self.zero_grad()
        return inf == 0

    def zero_grad(self, set_to_none: bool = True) -> None:
        h = self.head
        self.pending_inf = self.pending_sq = None
        for p in (h.weight, getattr(h, "bias", None)):
            if p is not None:
                p.grad = None
        sampled = getattr(h, "sampled", None)
        if sampled is not None:
            sampled.clear()

    def state_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "lr": self.lr, "skipped": int(self.skipped),
                "state": {k: dict(v) for k, v in self.state.items()}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"head optimizer state is for {state.get('name')!r}, this is {self.name!r}")
        self.lr, self.skipped = float(state["lr"]), int(state["skipped"])
        dev = self.head.step_count.device  # a checkpoint from another device (or resharded on the host)
        self.state = {k: {kk: vv.to(dev, copy=True) for kk, vv in v.items()} for k, v in state["state"].items()}


def build_head_optimizer(head: Any, optim_cfg: Any, extra_groups: Iterable[Any] = (),
                         cls: Any = None) -> ShardedHeadOptimizer:
    """From a config with fields name ("sgd"|"adamw"), lr, head_lr (optional), momentum,
    weight_decay and optionally betas / eps. ``cls``: a ShardedHeadOptimizer subclass."""
    return (cls or ShardedHeadOptimizer)(
        head, str(optim_cfg.name).lower(), head_lr(optim_cfg),
        momentum=float(getattr(optim_cfg, "momentum", 0.9) or 0.0),
        weight_decay=float(getattr(optim_cfg, "weight_decay", 0.0) or 0.0),
        betas=tuple(getattr(optim_cfg, "betas", (0.9, 0.999)) or (0.9, 0.999)),  # type: ignore[arg-type]
        eps=float(getattr(optim_cfg, "eps", 1e-8) or 1e-8), extra_groups=extra_groups)
