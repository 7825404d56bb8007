"""Exact O(d^2)-per-example SGD for spherical losses (Vincent, de Brebisson & Bouthillier 2015).

The output layer of one class shard is kept implicitly as ``W = V U + 1 omega^T`` with
bookkeeping ``Q = W^T W`` and ``w_bar = W^T 1`` (docs/zloss.md, note 1). Shapes, for a shard of
D_r classes, inputs of width d' (embedding + constant feature) and a batch of m rows:

    V [D_r, d'] (float32/64, the only D-sized tensor)   U, Uinv, Q [d', d'] float64
    omega, w_bar [d'] float64                            H [m, d'] float64, replicated
    idx [m, K] local row ids, local [m, K] bool (target lives on this shard)
    gA [m, K], gq [m], gs [m] float64: dL/dA, dL/dq, dL/ds of the replicated loss

All functions below act on one shard ``st`` (any object with those attributes) and are
exact for that shard: the per-shard partial statistics/gradients are summed by the caller.
Only rows ``idx[local]`` of V are read or written by a training step.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch

Tensor = torch.Tensor


def forward_stats(st: Any, H: Tensor, idx: Tensor, local: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Shard-partial statistics: A [m, K] target outputs (0 where not local), q [m] = sum o^2
    and s [m] = sum o over this shard's classes, plus H Q [m, d'] (reused by :func:`grad_h`).
    O(m d^2 + m K d)."""
    HQ = H @ st.Q
    q = (HQ * H).sum(1)
    s = H @ st.wbar
    Ht = H @ st.U.t()                                    # rows (U h_j)^T
    Vsel = st.V[idx].double()                            # [m, K, d']
    A = torch.einsum("jkd,jd->jk", Vsel, Ht) + (H @ st.omega)[:, None]
    return torch.where(local, A, torch.zeros_like(A)), q, s, HQ


def _zh(st: Any, H: Tensor, idx: Tensor, gA: Tensor, gs: Tensor) -> Tuple[Tensor, Tensor]:
    """(Zh [m, d'] = Ydot W + gs w_bar^T, ybar [m] = row sums of gA); gA is 0 off-shard."""
    ybar = gA.sum(1)
    Yhat = torch.einsum("jk,jkd->jd", gA, st.V[idx].double())
    Zh = (Yhat @ st.U).addr_(ybar, st.omega).addr_(gs, st.wbar)   # + ybar omega^T + gs w_bar^T
    return Zh, ybar


def grad_h(st: Any, H: Tensor, idx: Tensor, gA: Tensor, gq: Tensor, gs: Tensor,
           HQ: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """(gradH, Zh): this shard's part of dL/dH = G W [m, d'], G = 2 diag(gq) O + gs 1^T + Ydot,
    and Zh (kept so that the update need not recompute it). ``HQ`` = H Q from :func:`forward_stats`
    (same, unchanged Q) saves the largest product of the step."""
    Zh, _ = _zh(st, H, idx, gA, gs)
    return torch.addcmul(Zh, gq[:, None], H @ st.Q if HQ is None else HQ, value=2.0), Zh


# m K up to which R^T R is formed from the [m K, m K] same-target matrix: on an accelerator it
# saves ~11 launches (a sort among them) for O((m K)^2 d') flops; on the CPU, where launches are
# cheap, only while those flops stay below the rest of the step (note 9)
_PAIR_MAX = {"cpu": 256, "accelerator": 2048}


def _target_gram(H: Tensor, idx: Tensor, local: Tensor, gA: Tensor) -> Tensor:
    """R^T R [d', d'] with R = Ydot^T H over the distinct local targets (H^T Ydot Ydot^T H).

    Entry (j, k) contributes the row gA[j,k] h_j (zero off-shard) to its target's row of R. For
    m K <= _PAIR_MAX[device kind]: R^T R = P^T E P with P [m K, d'] those rows and E the 0/1 same-target
    matrix (off-shard rows are zero, so their key does not matter): 4 launches, O((m K)^2 d').
    Larger: the rows are summed per target with a sort + index_add (fixed size, no host sync);
    unused rows stay zero, which leaves R^T R unchanged (note 9)."""
    K = idx.shape[1]
    P = ((gA * local)[:, :, None] * H[:, None, :]).reshape(-1, H.shape[1])
    key = idx.reshape(-1)
    if key.numel() <= _PAIR_MAX["cpu" if H.device.type == "cpu" else "accelerator"]:
        E = (key[:, None] == key[None, :]).to(H.dtype)
        return P.t() @ (E @ P)
    sel = local.reshape(-1)
    key = torch.where(sel, key, torch.full_like(sel, -1, dtype=idx.dtype))
    sorted_key, order = torch.sort(key)
    first = torch.ones_like(sel)
    first[1:] = sorted_key[1:] != sorted_key[:-1]
    seg = torch.empty_like(order).scatter_(0, order, first.to(torch.int64).cumsum(0) - 1)
    R = torch.zeros(K * H.shape[0], H.shape[1], dtype=H.dtype, device=H.device).index_add_(0, seg, P)
    return R.t() @ R


def _h_gram_h(st: Any, H: Tensor, idx: Tensor, local: Tensor, gA: Tensor, X: Tensor, a: Tensor,
              Zh: Tensor, ybar: Tensor) -> Tensor:
    """H^T M H [d', d'] with M = G G^T (docs/zloss.md, note 2) expanded so that no m x m matrix is formed:
    4 X Q X + D a a^T + R^T R + 2 X (Zh^T H) + 2 (H^T Zh) X + a b^T + b a^T, where
    X = H^T diag(gq) H, a = H^T gs, b = H^T ybar, R = Ydot^T H. O(m d^2 + d^3).
    Evaluated as 4 (X Q) X + R^T R + T + T^T with T = 2 X (Zh^T H) + a (b + D a / 2)^T (note 9)."""
    D = st.V.shape[0]
    c = torch.addmv(a, H.t(), ybar, beta=0.5 * D)            # b + (D/2) a
    T = torch.addr(X @ (Zh.t() @ H), a, c, beta=2.0)
    out = torch.addmm(T, X @ st.Q, X, alpha=4.0).add_(T.t())
    return out.add_(_target_gram(H, idx, local, gA))


def needs_dense_step(X: Tensor, e: float, tau: float) -> bool:
    """True when C = I - 2 e X (X = H^T diag(gq) H, symmetric) is nearly singular (min |eig| < tau).
    Skips the O(d^3) eigvalsh when ||C - I||_F = 2 |e| ||X||_F < 1 - tau already bounds every
    eigenvalue of C above tau (the eigenvalues of C are 1 - 2 e lambda(X)).

    The one host read of a Z-loss step (a 0-dim norm): it decides whether the O(D d^2) dense
    fallback runs, which a branch-free step would have to pay every time (note 9)."""
    if 2.0 * abs(e) * float(torch.linalg.matrix_norm(X)) < 1.0 - tau:
        return False
    C = torch.eye(X.shape[0], dtype=X.dtype, device=X.device) - 2.0 * e * X
    return bool(torch.linalg.eigvalsh(C).abs().min() < tau)


def _scatter_rows(st: Any, idx: Tensor, local: Tensor, gA: Tensor, P: Tensor, eta: float) -> None:
    """V[idx[j,k]] -= eta gA[j,k] P[j] for local targets; duplicates accumulate."""
    # every entry is added (off-shard ones as exact zeros onto row idx = 0): no boolean-mask
    # indexing, so no host sync
    rows = ((gA * local).mul_(-eta)[:, :, None] * P[:, None, :]).reshape(-1, P.shape[1])
    st.V.index_add_(0, idx.reshape(-1), rows.to(st.V.dtype))


def _dense_step(st: Any, C: Tensor, H: Tensor, idx: Tensor, local: Tensor, gA: Tensor, gs: Tensor,
                eta: float, block: int) -> None:
    """Exact fallback (docs/zloss.md, note 4): V <- (V U + 1 omega^T) C - eta 1 (H^T gs)^T
    - eta Ydot^T H, then U = Uinv = I, omega = 0. O(D d^2)."""
    shift = eta * (H.t() @ gs)
    for lo in range(0, st.V.shape[0], block):
        Wb = (st.V[lo:lo + block].double() @ st.U + st.omega) @ C - shift
        st.V[lo:lo + block] = Wb.to(st.V.dtype)
    eye = torch.eye(C.shape[0], dtype=torch.float64, device=C.device)
    st.U.copy_(eye)
    st.Uinv.copy_(eye)
    st.omega.zero_()
    _scatter_rows(st, idx, local, gA, H, eta)


def sgd_update(st: Any, H: Tensor, idx: Tensor, local: Tensor, gA: Tensor, gq: Tensor, gs: Tensor,
               eta: float, weight_decay: float = 0.0, tau: float = 1e-2, block: int = 65536,
               pre: Optional[Tuple[Tensor, Tensor]] = None) -> bool:
    """Exact W <- W - eta (G^T H + weight_decay W) on the factors (docs/zloss.md, notes 2 and 3).
    All inputs must come from the current (pre-update) state; ``pre`` = (gradH, Zh) from
    :func:`grad_h` when already computed. Returns True if the dense fallback was taken."""
    decay = 1.0 - eta * weight_decay
    if decay <= 0:
        raise ValueError(f"lr * weight_decay must be < 1, got {eta * weight_decay}")
    e = eta / decay                     # run the plain step with eta/(1 - eta lambda), then scale
    D = st.V.shape[0]
    gradH, Zh = pre if pre is not None else grad_h(st, H, idx, gA, gq, gs)
    ybar = gA.sum(1)
    X = H.t() @ (gq[:, None] * H)
    a = H.t() @ gs
    HMH = _h_gram_h(st, H, idx, local, gA, X, a, Zh, ybar)
    # Q and w_bar first: they do not depend on the branch below, so on a GPU their launches are
    # queued before the host waits for the guard's norm (note 9)
    v = torch.addcmul(ybar, gq, H @ st.wbar, value=2.0).add_(gs, alpha=D)   # 2 gq s + D gs + ybar
    Q = torch.addmm(st.Q, gradH.t(), H, alpha=-2.0 * e).add_(HMH, alpha=e * e)
    torch.add(Q, Q.t(), out=st.Q).mul_(0.5)       # Q - e (gradH^T H + H^T gradH) + e^2 HMH, symmetrised
    st.wbar.addmv_(H.t(), v, alpha=-e)
    dense = needs_dense_step(X, e, tau)
    C = torch.mul(X, -2.0 * e)
    C.diagonal().add_(1.0)                         # C = I - 2 e X
    if dense:
        _dense_step(st, C, H, idx, local, gA, gs, e, block)
    else:
        st.U.copy_(st.U @ C)
        st.Uinv.copy_(torch.linalg.inv_ex(st.U).inverse)   # recompute (mode 5); inv_ex: no error-check sync
        st.omega.copy_(torch.addmv(a, C, st.omega, beta=-e))   # C omega - e H^T gs
        _scatter_rows(st, idx, local, gA, H @ st.Uinv, e)   # must use the new U^-1
    if weight_decay:
        st.U.mul_(decay)
        st.Uinv.div_(decay)
        st.omega.mul_(decay)
        st.Q.mul_(decay * decay)
        st.wbar.mul_(decay)
    return dense
