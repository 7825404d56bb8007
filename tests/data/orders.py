"""Shared check of the readers' epoch plan: deterministic per (seed, epoch), different across both."""
import numpy as np


def assert_seeded_epoch_orders(order) -> None:
    """``order(seed, epoch)`` -> the ids one rank reads in that epoch, in order."""
    np.testing.assert_array_equal(order(3, 0), order(3, 0))
    np.testing.assert_array_equal(order(3, 2), order(3, 2))
    assert not np.array_equal(order(3, 0), order(3, 1))
    assert not np.array_equal(order(3, 0), order(4, 0))
