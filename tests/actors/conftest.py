"""Fixtures of the actor tests."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    # OpenMP spin-waiting on a shared 2-core machine is 10-20x slower than one thread
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
