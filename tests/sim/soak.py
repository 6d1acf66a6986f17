"""Run many simulation seeds, in parallel, with progress: the CI sweep and the soak.

``.venv/bin/python -m tests.sim.soak --seeds 100000 --workers 8`` prints progress
lines and, for every failing seed, its replay command; it exits non-zero if any
seed failed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterable

from tests.sim.workload import replay_command, run_seed

__all__ = ["SweepResult", "main", "run_seeds"]


class SweepResult:
    def __init__(self) -> None:
        self.seeds = 0
        self.steps = 0
        self.ops = 0
        self.failures: list[tuple[int, str]] = []
        self.elapsed = 0.0

    def summary(self) -> str:
        rate = self.seeds / self.elapsed * 60 if self.elapsed else 0.0
        return (
            f"{self.seeds} seed(s), {len(self.failures)} failed, {self.steps} events, {self.ops} client ops "
            f"in {self.elapsed:.1f}s ({rate:.0f} seeds/min)"
        )


def _one(seed: int) -> tuple[int, int, int, str | None]:
    try:
        report = run_seed(seed)
    except AssertionError as exc:
        return seed, 0, 0, str(exc)
    except Exception as exc:
        return seed, 0, 0, f"seed {seed}: crashed: {type(exc).__name__}: {exc}\n  replay: {replay_command(seed)}"
    return seed, report.steps, report.ops, None


def run_seeds(
    seeds: Iterable[int],
    workers: int | None = None,
    progress: Callable[[SweepResult], None] | None = None,
    every: int = 1000,
) -> SweepResult:
    """Run ``seeds`` on ``workers`` processes (default: all CPUs)."""
    result = SweepResult()
    started = time.monotonic()
    workers = workers or os.cpu_count() or 1
    seeds = list(seeds)

    def take(item: tuple[int, int, int, str | None]) -> None:
        seed, steps, ops, error = item
        result.seeds += 1
        result.steps += steps
        result.ops += ops
        if error is not None:
            result.failures.append((seed, error))
        if progress is not None and (result.seeds % every == 0 or error is not None):
            result.elapsed = time.monotonic() - started
            progress(result)

    if workers == 1:
        for seed in seeds:
            take(_one(seed))
    else:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(workers) as pool:
            for item in pool.imap_unordered(_one, seeds, chunksize=4):
                take(item)
    result.failures.sort()
    result.elapsed = time.monotonic() - started
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=int(os.environ.get("FAULTLAB_SIM_SEEDS", "100000")))
    parser.add_argument("--start", type=int, default=int(os.environ.get("FAULTLAB_SIM_SEED_START", "0")))
    parser.add_argument("--workers", type=int, default=int(os.environ.get("FAULTLAB_SIM_WORKERS", "0")) or None)
    parser.add_argument("--every", type=int, default=1000, help="print progress every N seeds")
    args = parser.parse_args(argv)

    def show(r: SweepResult) -> None:
        print(r.summary(), flush=True)
        if r.failures and r.failures[-1][0] not in shown:
            seed, error = r.failures[-1]
            shown.add(seed)
            print(f"FAILED {error}", flush=True)

    shown: set[int] = set()
    result = run_seeds(range(args.start, args.start + args.seeds), args.workers, show, args.every)
    print(result.summary())
    for seed, error in result.failures:
        print(f"FAILED seed {seed}: {error.splitlines()[0]}\n  replay: {replay_command(seed)}")
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
