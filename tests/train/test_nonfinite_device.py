"""The accelerator path of the non-finite guard, driven on the CPU: no host read, NaN/Inf
gradients become a zero-gradient step, finite ones are untouched, the device streak counts
consecutive non-finite steps and resets, and check_streak stops the run at the limit."""
import types

import pytest
import torch

from xclass.train import nonfinite


def _setup():
    enc, head = torch.nn.Linear(3, 2), torch.nn.Linear(2, 4)
    for p in [*enc.parameters(), *head.parameters()]:
        p.grad = torch.ones_like(p)
    return types.SimpleNamespace(engine=types.SimpleNamespace(module=enc), head=head)


def test_nonfinite_step_zeroes_every_gradient_and_counts():
    s = _setup()
    s.engine.module.weight.grad[0, 0] = float("nan")
    nonfinite._zero_nonfinite_on_device(s, torch.tensor(float("nan"), dtype=torch.float64))
    for p in [*s.engine.module.parameters(), *s.head.parameters()]:
        assert torch.equal(p.grad, torch.zeros_like(p))
    assert nonfinite.streak(s) == 1
    nonfinite._zero_nonfinite_on_device(s, torch.tensor(float("inf"), dtype=torch.float64))
    assert nonfinite.streak(s) == 2
    with pytest.raises(nonfinite.NonFiniteError, match="2 consecutive"):
        nonfinite.check_streak(s, step=7, limit=2)


def test_finite_step_keeps_gradients_and_resets():
    s = _setup()
    s.nonfinite_streak_dev = torch.tensor(2)
    nonfinite._zero_nonfinite_on_device(s, torch.tensor(3.0, dtype=torch.float64))
    for p in [*s.engine.module.parameters(), *s.head.parameters()]:
        assert torch.equal(p.grad, torch.ones_like(p))
    assert nonfinite.streak(s) == 0
    nonfinite.check_streak(s, step=7, limit=2)  # no error
