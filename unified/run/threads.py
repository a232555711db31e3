"""The compute threads of everything that trains or calibrates: one fixed count.

The thread count changes the order of float summations (a reduction split over two threads
adds in another order), so the same job trained with 1 or 2 torch threads gives different
weights: measured on the quickstart model, one epoch apart by up to 0.18 in a weight. A row
must be a function of its declared inputs, not of ``--jobs`` or of the executor, so every
job and the reference train with JOB_THREADS threads (docs/architecture.md, "The cache key").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

JOB_THREADS = 1


@contextlib.contextmanager
def torch_threads(threads: int = JOB_THREADS) -> Iterator[None]:
    """Run the block with ``threads`` torch threads, then restore the previous count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
