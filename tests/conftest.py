"""Shared test setup."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models: intra-op threads only add contention (two pytest workers share two cores).

    Restored after each test, since backends set the thread count they are asked for.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
