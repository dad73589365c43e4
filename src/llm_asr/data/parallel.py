"""Process pools for the data stages (synthesis, corpus checks, features)."""

from __future__ import annotations

import os


def num_workers(requested: int) -> int:
    return requested or len(os.sched_getaffinity(0))


def process_pool(workers: int):  # -> multiprocessing.pool.Pool
    """A worker pool safe to start from a process that already runs threads (torch's OpenMP
    pool, MLflow, pytest plugins): `fork` copies locks held by those threads and its children
    can hang forever on them (seen in the test suite); `forkserver` forks from a clean server."""
    from multiprocessing import get_context

    return get_context("forkserver").Pool(workers)
