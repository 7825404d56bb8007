"""Head optimizer: SGD-momentum or AdamW whose state is sharded with the class rows, with a
truly sparse Partial-FC update and a skipped step agreed by all ranks.

- State tensors have the shape of this rank's weight shard ([C_local * K, d]); they are read
  and written only at the rows used this step. Rows outside the Partial-FC sample, their
  momentum / Adam moments and their Adam step count are bitwise untouched (insightface v2
  instead decays every row through momentum and weight decay).
- With ``sample_rate == 1`` the update equals ``torch.optim.SGD`` (dampening 0, no Nesterov) or
  ``torch.optim.AdamW`` on the full shard. AdamW keeps a per-row step count, so the bias
  correction of a row counts the steps *that row* was updated (LazyAdam semantics).
- ``step()`` returns False and changes nothing when any gradient on any rank is inf/NaN:
  ``found_inf`` is all-reduced with MAX over the head group (and ``extra_groups``, e.g. the
  data-parallel group), so every rank skips together and can update its loss scale identically.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch

from xclass.parallel.collectives import all_reduce
from xclass.heads.base import head_lr

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
        self.skipped = 0

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

    def found_inf(self) -> bool:
        """True when any gradient on any rank of the head group (and extra groups) is not finite."""
        # one reduction per gradient: inf/NaN anywhere makes the sum non-finite (a finite sum
        # overflowing fp32 would also count as inf, which only happens for already-broken steps)
        local = any(not bool(torch.isfinite(g.sum())) for _, _, _, g in self._grads())
        flag = torch.tensor([1.0 if local else 0.0])
        flag = all_reduce(flag, "max", self.head.group)
        for g in self.extra_groups:
            flag = all_reduce(flag, "max", g)
        return bool(flag.item() > 0)

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

    def _sgd(self, w: torch.Tensor, g: torch.Tensor, st: Dict[str, torch.Tensor]) -> None:
        """In place on ``w`` and ``st`` (torch.optim.SGD: dampening 0, no Nesterov). One fused
        pass over (w, g, momentum) where torch has the kernel (about 2x less memory traffic than
        three separate in-place ops; equal up to rounding)."""
        buf = st["momentum"]
        if _FUSED_SGD is not None and self.momentum > 0 and w.is_contiguous() and buf.is_contiguous():
            _FUSED_SGD([w], [g.contiguous()], [buf], weight_decay=self.weight_decay, momentum=self.momentum,
                       lr=self.lr, dampening=0.0, nesterov=False, maximize=False, is_first_step=False)
            return
        buf.mul_(self.momentum).add_(g)
        if self.weight_decay:
            buf.add_(w, alpha=self.weight_decay)
        w.add_(buf, alpha=-self.lr)

    def _adamw(self, w: torch.Tensor, g: torch.Tensor, st: Dict[str, torch.Tensor]) -> None:
        """In place on ``w`` and ``st`` (torch.optim.AdamW with a per-row step count)."""
        b1, b2 = self.betas
        st["steps"].add_(1)
        w.mul_(1.0 - self.lr * self.weight_decay)
        st["exp_avg"].mul_(b1).add_(g, alpha=1.0 - b1)
        st["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1.0 - b2)
        shape = (-1,) + (1,) * (w.dim() - 1)
        bc1 = (1.0 - b1 ** st["steps"].double()).to(w.dtype).view(shape)
        bc2 = (1.0 - b2 ** st["steps"].double()).to(w.dtype).view(shape)
        denom = (st["exp_avg_sq"].sqrt() / bc2.sqrt()).add_(self.eps)
        w.sub_(st["exp_avg"] * (self.lr / bc1) / denom)

    @torch.no_grad()
    def _apply(self, name: str, p: torch.Tensor, rows: Optional[torch.Tensor], g: torch.Tensor) -> None:
        st = self._state(name, p)
        rule = self._sgd if self.name == "sgd" else self._adamw
        if rows is None:
            if self.name == "sgd" and self.momentum == 0:
                st["momentum"].zero_()
            rule(p.data, g, st)
            return
        sub = {k: v.index_select(0, rows) for k, v in st.items()}
        w = p.data.index_select(0, rows)
        if self.name == "sgd" and self.momentum == 0:
            sub["momentum"].zero_()
        rule(w, g, sub)
        p.data.index_copy_(0, rows, w)
        for k, v in sub.items():
            st[k].index_copy_(0, rows, v)

    def step(self) -> bool:
        """Update the rows used this step; False (and nothing changed) when a step is skipped."""
        grads = self._grads()
        if self.found_inf():
            self.skipped += 1
            self.zero_grad()
            return False
        for name, p, rows, g in grads:
            self._apply(name, p, rows, g)
        self.head.step_count += 1
        self.zero_grad()
        return True

    def zero_grad(self, set_to_none: bool = True) -> None:
        h = self.head
        for p in (h.weight, getattr(h, "bias", None)):
            if p is not None:
                p.grad = None
        sampled = getattr(h, "sampled", None)
        if sampled is not None:
            sampled.clear()

    def state_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "lr": self.lr, "skipped": self.skipped,
                "state": {k: dict(v) for k, v in self.state.items()}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"head optimizer state is for {state.get('name')!r}, this is {self.name!r}")
        self.lr, self.skipped = float(state["lr"]), int(state["skipped"])
        self.state = {k: {kk: vv.clone() for kk, vv in v.items()} for k, v in state["state"].items()}


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
