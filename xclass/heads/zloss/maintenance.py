"""Numerical upkeep of the factored state W = V U + 1 omega^T (docs/zloss.md, note 6).

Every operation here leaves W unchanged (up to rounding). Costs for a shard of D_r rows:
stabilise O(d^3) to check, O(D_r d r) when r singular values are out of band; fold_omega
O(D_r d); unfactorise and resync O(D_r d^2). They touch V only when needed.
"""
from __future__ import annotations

from typing import Any, Tuple

import torch

Tensor = torch.Tensor


def materialise(st: Any, lo: int, hi: int) -> Tensor:
    """W rows [lo, hi) of this shard, float64 [hi - lo, d']."""
    return st.V[lo:hi].double() @ st.U + st.omega


def unfactorise(st: Any, block: int = 65536) -> None:
    """V <- V U + 1 omega^T, U = Uinv = I, omega = 0."""
    for lo in range(0, st.V.shape[0], block):
        st.V[lo:lo + block] = materialise(st, lo, lo + block).to(st.V.dtype)
    eye = torch.eye(st.U.shape[0], dtype=torch.float64, device=st.U.device)
    st.U.copy_(eye)
    st.Uinv.copy_(eye)
    st.omega.zero_()


def stabilise(st: Any, band: Tuple[float, float] = (0.5, 2.0), block: int = 65536) -> int:
    """Push every singular value of U outside ``band`` back to 1, in one pass over V.

    With U = sum sigma_k u_k v_k^T: U <- (I + sum alpha_k u_k u_k^T) U, alpha_k = 1/sigma_k - 1,
    and V <- V (I + sum beta_k u_k u_k^T), beta_k = -alpha_k / (1 + alpha_k), so V U is
    unchanged (the u_k are orthonormal). More than a third out of band: unfactorise instead.
    Uinv is recomputed afterwards. Returns the number of values fixed (-1: unfactorised).
    """
    Uu, S, _ = torch.linalg.svd(st.U)
    out = (S < band[0]) | (S > band[1])
    r = int(out.sum())
    if r == 0:
        return 0
    if 3 * r > S.numel():
        unfactorise(st, block)
        return -1
    u, sig = Uu[:, out], S[out]
    alpha = 1.0 / sig - 1.0
    beta = -alpha / (1.0 + alpha)
    st.U.copy_(st.U + (u * alpha) @ (u.t() @ st.U))
    for lo in range(0, st.V.shape[0], block):
        Vb = st.V[lo:lo + block].double()
        st.V[lo:lo + block] = (Vb + ((Vb @ u) * beta) @ u.t()).to(st.V.dtype)
    st.Uinv.copy_(torch.linalg.inv(st.U))
    return r


def fold_omega(st: Any, ratio: float = 1.0) -> bool:
    """Fold omega into V (V <- V + 1 omega^T U^-1, omega = 0) when ||1 omega^T||_F exceeds
    ratio * ||W||_F (= sqrt(tr Q)): with non-negative features omega drifts steadily and
    V U then cancels it (docs/zloss.md, note 6). Returns True when folded."""
    D = st.V.shape[0]
    if D * float(st.omega @ st.omega) <= ratio * ratio * float(torch.trace(st.Q)):
        return False
    st.V.add_((st.omega @ st.Uinv).to(st.V.dtype)[None, :])
    st.omega.zero_()
    return True


def resync(st: Any, block: int = 65536) -> None:
    """Recompute Q = W^T W and w_bar = W^T 1 exactly, accumulating in float64."""
    d = st.U.shape[0]
    Q = torch.zeros(d, d, dtype=torch.float64, device=st.U.device)
    wbar = torch.zeros(d, dtype=torch.float64, device=st.U.device)
    for lo in range(0, st.V.shape[0], block):
        Wb = materialise(st, lo, lo + block)
        Q += Wb.t() @ Wb
        wbar += Wb.sum(0)
    st.Q.copy_(0.5 * (Q + Q.t()))
    st.wbar.copy_(wbar)


def maintain(st: Any, n_updates: int, period: int, band: Tuple[float, float], block: int = 65536) -> None:
    """Scheduled upkeep after update number ``n_updates``: every ``period`` updates check the
    singular values of U (stabilise, which may unfactorise), then the omega drift."""
    if period > 0 and n_updates % period == 0:
        stabilise(st, band, block)
        fold_omega(st)
