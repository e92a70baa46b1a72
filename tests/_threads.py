"""Run one-process references at a worker's torch thread count.

On some CPUs float32 kernels round differently with another thread count (MKL's AVX2 sgemm: 1 vs 2
threads changes the last bit of some log-likelihoods), so "workers give the items of one process"
is exact only when the one process uses the threads each worker uses (``runner.threads``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
