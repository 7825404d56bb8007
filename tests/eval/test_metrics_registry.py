"""Every registered metric: the oracle input reaches its best value, a corrupted input is worse."""
import numpy as np
import pytest

from xclass.eval import METRICS
from xclass.eval.metrics import LabelSets, Ranking, inverse_propensity


def _xmc_inputs():
    rng = np.random.default_rng(0)
    n, L, k = 50, 100, 5
    w = inverse_propensity(rng.integers(0, 30, size=L), 500)
    truth = [rng.choice(L, size=k, replace=False) for _ in range(n)]
    perfect = np.stack([t[np.argsort(-w[t], kind="stable")] for t in truth])
    wrong = np.stack([np.setdiff1d(np.arange(L), t)[:k] for t in truth])
    noisy = perfect.copy()
    noisy[::2] = wrong[::2]
    ls = LabelSets.from_lists(truth)
    return ((Ranking.build(perfect, ls, w), 5), (Ranking.build(noisy, ls, w), 5))


def _verif_inputs():
    rng = np.random.default_rng(1)
    t = rng.random(400) < 0.4
    perfect = np.where(t, 1.0, 0.0) + rng.random(400) * 0.1
    noisy = perfect + rng.normal(size=400)
    return (perfect, t), (noisy, t)


def _ident_inputs():
    rng = np.random.default_rng(2)
    q = rng.integers(0, 10, size=200)
    perfect = np.repeat(q[:, None], 5, axis=1)
    noisy = perfect.copy()
    noisy[::2] = (noisy[::2] + 1) % 10
    return (perfect, q, 5), (noisy, q, 5)


@pytest.mark.parametrize("name", METRICS.names())
def test_registered_metric_oracle_and_worse(name):
    fn = METRICS.get(name)
    assert fn.protocol in {"xmc", "verification", "identification"}
    good_args, bad_args = {"xmc": _xmc_inputs, "verification": _verif_inputs,
                           "identification": _ident_inputs}[fn.protocol]()
    if fn.protocol == "identification":
        good = fn(good_args[0], good_args[1], k=good_args[2])
        bad = fn(bad_args[0], bad_args[1], k=bad_args[2])
    else:
        good, bad = fn(*good_args), fn(*bad_args)
    best = 1.0 if fn.higher_is_better else 0.0
    assert good == pytest.approx(best)
    assert np.isfinite(bad)
    assert (bad < good) if fn.higher_is_better else (bad > good)
