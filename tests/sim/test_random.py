"""Randomized deterministic simulation: many seeds of faults, churn and clients.

``FAULTLAB_SIM_SEEDS`` (default 500) and ``FAULTLAB_SIM_SEED_START`` choose the
sweep, ``FAULTLAB_SIM_WORKERS`` the processes; a failing seed is replayed alone
with ``FAULTLAB_SIM_SEED=<seed> ... -k replay -s`` (``FAULTLAB_SIM_TRACE=1``
prints the tail of its event trace).
"""

from __future__ import annotations

import os

from tests.sim.soak import run_seeds
from tests.sim.workload import run_seed


def test_random_seeds() -> None:
    count = int(os.environ.get("FAULTLAB_SIM_SEEDS", "500"))
    start = int(os.environ.get("FAULTLAB_SIM_SEED_START", "0"))
    workers = int(os.environ.get("FAULTLAB_SIM_WORKERS", "0")) or None
    result = run_seeds(range(start, start + count), workers)
    print(result.summary())
    assert not result.failures, f"{len(result.failures)} seed(s) failed; first:\n{result.failures[0][1]}"


def test_replay() -> None:
    seed = int(os.environ.get("FAULTLAB_SIM_SEED", "0"))
    trace = os.environ.get("FAULTLAB_SIM_TRACE", "") not in ("", "0")
    first = run_seed(seed, trace=trace)
    again = run_seed(seed)
    assert first == again, f"seed {seed} is not deterministic: {first} vs {again}"
