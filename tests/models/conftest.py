"""One intra-op thread for the model tests.

On a shared 2-core machine, two OpenMP threads per process spin at barriers while other
processes hold the cores: a 4-image BatchNorm then takes ~70 ms instead of ~0.1 ms.
"""
import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
