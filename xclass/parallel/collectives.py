"""Collectives used by the math path. Each takes the group explicitly; group=None or a
world of one is the identity, so single-process code needs no process group.

Devices: tensors handed to a group live on the group's device (:func:`group_device`: the current
CUDA device for NCCL, the CPU for gloo). The training path creates them there; a host tensor
given to an NCCL group (set-up code such as an initial column sum) is copied to the GPU and the
result copied back, so no caller can hand NCCL a CPU tensor.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist


def world_size(group: Optional[Any]) -> int:
    """Size of ``group``; 1 when there is no group."""
    if group is None or not dist.is_initialized():
        return 1
    return dist.get_world_size(group)


def rank(group: Optional[Any]) -> int:
    """Rank in ``group``; 0 when there is no group."""
    if group is None or not dist.is_initialized():
        return 0
    return dist.get_rank(group)


def group_device(group: Optional[Any]) -> torch.device:
    """The device a tensor given to ``group`` must be on: the current CUDA device for an NCCL
    group, else the CPU."""
    if group is not None and dist.is_initialized() and dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _on_group_device(x: torch.Tensor, group: Any) -> torch.Tensor:
    """``x`` itself, or a copy on the GPU when ``group`` is NCCL and ``x`` is not on CUDA."""
    if x.device.type != "cuda" and dist.get_backend(group) == "nccl":
        return x.to(group_device(group))
    return x


def all_reduce(x: torch.Tensor, op: str = "sum", group: Optional[Any] = None) -> torch.Tensor:
    """Out-of-place all-reduce (no autograd). ``op`` in {sum, max, min}. The result is on
    ``x``'s device."""
    if world_size(group) == 1:
        return x
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    y = _on_group_device(x, group)
    y = y.clone() if y is x else y
    dist.all_reduce(y, op=ops[op], group=group)
    return y.to(x.device)


_HOST_GROUPS: Dict[Any, Any] = {}


def host_group(group: Any) -> Any:
    """A group over the same ranks whose collectives run on the host: ``group`` itself when it
    is gloo, else a gloo twin made on first use. ``dist.new_group`` must be called by every
    rank at the same point: the twin is made either where every rank builds its context
    (:meth:`ParallelContext.from_env`) or here, inside a collective every rank is calling."""
    if dist.get_backend(group) == "gloo":
        return group
    if group not in _HOST_GROUPS:
        _HOST_GROUPS[group] = dist.new_group(ranks=dist.get_process_group_ranks(group), backend="gloo")
    return _HOST_GROUPS[group]


def gather_sizes(n: int, group: Optional[Any]) -> List[int]:
    """All ranks' values of a host integer (e.g. ragged batch sizes), replicated.

    The exchange runs on the host (:func:`host_group`): an int64 CPU tensor over gloo, so an
    NCCL run reads no device memory for it and the device stream is never synchronised (the
    later gathers of device tensors are sized from this host list)."""
    ws = world_size(group)
    if ws == 1:
        return [int(n)]
    hg = host_group(group)
    t = torch.tensor([int(n)], dtype=torch.int64, device="cpu")  # a host tensor on purpose (gloo)
    out = [torch.zeros_like(t) for _ in range(ws)]
    dist.all_gather(out, t, group=hg)
    return torch.cat(out).tolist()


def _gather_ragged(x: torch.Tensor, sizes: List[int], group: Any) -> torch.Tensor:
    """Concatenate per-rank tensors of ragged first dimension (pads to the max)."""
    n_max = max(sizes)
    pad = torch.zeros((n_max - x.shape[0],) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    xp = _on_group_device(torch.cat([x.contiguous(), pad], 0), group)
    out = [torch.empty_like(xp) for _ in sizes]
    dist.all_gather(out, xp, group=group)
    return torch.cat([o[:s] for o, s in zip(out, sizes)], 0).to(x.device)


class _AllGatherGrad(torch.autograd.Function):
    """Forward: concatenate every rank's ``x`` along dim 0 (ragged sizes allowed).
    Backward: all-reduce (sum) the gradient of the concatenation, return this rank's slice.

    Gradient-scale convention: the summed gradient is what the loss on the global batch
    sends to this rank's inputs; no 1/world_size factor is applied here.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: Any, sizes: List[int], r: int) -> torch.Tensor:  # type: ignore[override]
        ctx.group, ctx.sizes, ctx.rank = group, sizes, r
        return _gather_ragged(x, sizes, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        g = grad.contiguous().clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return g[start : start + ctx.sizes[ctx.rank]], None, None, None


def all_gather_with_grad(x: torch.Tensor, group: Optional[Any] = None) -> torch.Tensor:
    """[B_local, ...] -> [B_global, ...] replicated, rank order; backward returns each rank
    the summed gradient of its own rows. Identity for world size 1."""
    ws = world_size(group)
    if ws == 1:
        return x
    sizes = gather_sizes(x.shape[0], group)
    return _AllGatherGrad.apply(x, group, sizes, rank(group))


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``k``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, k: float) -> torch.Tensor:  # type: ignore[override]
        ctx.k = k
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        return g * ctx.k, None


def gather_global_batch(emb: torch.Tensor, group: Optional[Any] = None) -> torch.Tensor:
    """emb [B_local, d] sharded over the batch -> [B_global, d] replicated, for a head.

    The gradient that reaches ``emb`` is ``world_size * dL/d emb_local`` (the gradient-scale
    convention of xclass.heads.base): data-parallel averaging of the encoder's gradients
    then equals the single-process gradient on the concatenated batch.
    """
    ws = world_size(group)
    if ws == 1:
        return emb
    return all_gather_with_grad(_ScaleGrad.apply(emb, float(ws)), group)


def all_gather_nograd(x: torch.Tensor, group: Optional[Any] = None) -> torch.Tensor:
    """Like :func:`all_gather_with_grad` without autograd (labels, indices)."""
    ws = world_size(group)
    if ws == 1:
        return x
    sizes = gather_sizes(x.shape[0], group)
    return _gather_ragged(x, sizes, group)


def broadcast_object(obj: Any, src: int = 0, group: Optional[Any] = None) -> Any:
    """Broadcast a picklable object from ``src``; identity for world size 1."""
    if world_size(group) == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def barrier(group: Optional[Any] = None) -> None:
    if world_size(group) > 1:
        if dist.get_backend(group) == "nccl":  # name the device: NCCL would otherwise guess it from the rank
            dist.barrier(group=group, device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier(group=group)


def average_gradients(params: List[torch.Tensor], group: Optional[Any] = None) -> None:
    """Data-parallel average of replicated parameters' gradients (in place, one flat
    all-reduce). Used for the encoder when DeepSpeed is off; heads never come here."""
    ws = world_size(group)
    if ws == 1:
        return
    for p in params:  # sparse embedding-table gradients (optim.sparse_embeddings): rows, not all of it
        if p.grad is not None and p.grad.is_sparse:
            p.grad = _average_sparse(p.grad, group)
    grads = [p.grad for p in params if p.grad is not None and not p.grad.is_sparse]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    flat /= ws
    off = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[off : off + n].view_as(g))
        off += n


def _average_sparse(grad: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Data-parallel mean of a sparse COO gradient ``[V, D]``: every rank's (row ids, row values)
    all-gathered (sizes differ per rank), summed per row; -> coalesced COO over the union of the
    touched rows. World size 1: the gradient itself, coalesced. Reads the per-rank sizes on the
    host (one sync per sparse table per step, multi-rank only)."""
    g = grad.coalesce()
    ws = world_size(group)
    if ws == 1:
        return g
    idx, val = g.indices()[0], g.values()
    n = torch.tensor([idx.numel()], dtype=torch.int64, device=idx.device)
    sizes = [torch.zeros_like(n) for _ in range(ws)]
    dist.all_gather(sizes, n, group=group)
    m = int(max(int(s) for s in sizes))
    pad_idx = torch.zeros(m, dtype=idx.dtype, device=idx.device)
    pad_val = torch.zeros((m,) + tuple(val.shape[1:]), dtype=val.dtype, device=val.device)
    pad_idx[:idx.numel()], pad_val[:idx.numel()] = idx, val
    all_idx = [torch.empty_like(pad_idx) for _ in range(ws)]
    all_val = [torch.empty_like(pad_val) for _ in range(ws)]
    dist.all_gather(all_idx, pad_idx, group=group)
    dist.all_gather(all_val, pad_val, group=group)
    keep_i = torch.cat([a[:int(s)] for a, s in zip(all_idx, sizes)])
    keep_v = torch.cat([a[:int(s)] for a, s in zip(all_val, sizes)]) / ws
    return torch.sparse_coo_tensor(keep_i.unsqueeze(0), keep_v, g.shape).coalesce()


def sharded_sq_norm(local_sq: torch.Tensor, group: Optional[Any] = None) -> torch.Tensor:
    """Sum over ranks of a per-rank squared norm (for class-sharded parameters)."""
    return all_reduce(local_sq, "sum", group)
