"""One torch thread for these tests: the model's many small kernels are fastest on one
core, and OpenMP's spinning threads slow them tenfold when other processes share the
machine. (One test checks invariance with two threads too.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
