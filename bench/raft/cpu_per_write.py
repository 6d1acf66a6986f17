"""CPU per write of each faultlab process: the leader, a follower and the client generators.

On a machine the benchmark saturates, throughput is the CPU divided by what one write costs
everywhere; this says where that cost is. Starts a 3-node cluster as ``run.py`` does, drives it
with the same generators (64 clients by default) and reads each node's CPU from
/proc/PID/stat over the middle of the run. Usage: ``python bench/raft/cpu_per_write.py
[--rounds 3] [--clients 64] [--unary]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # bench/raft/run.py

HZ = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def one_round(clients: int, pipeline: bool, duration: float) -> dict[str, float]:
    cluster = bench.FaultlabCluster(bench._has_uvloop(), pipeline=pipeline)
    with tempfile.TemporaryDirectory(prefix="cpu-per-write-") as tmp:
        cluster.start(Path(tmp))
        try:
            out: dict[str, Any] = {}
            extra = ("--pipeline",) if pipeline else ()
            load = threading.Thread(target=lambda: out.update(
                bench.generator_load("faultlab", cluster.targets(), clients, duration, 1.0, 100, extra)))
            load.start()
            window = duration / 2
            time.sleep(1.0 + duration / 4)  # past the warm-up, into the steady middle of the run
            before = {m: cpu_seconds(p) for m, p in cluster.pids.items()}
            t0 = time.monotonic()
            time.sleep(window)
            after = {m: cpu_seconds(p) for m, p in cluster.pids.items()}
            elapsed = time.monotonic() - t0
            load.join()
        finally:
            cluster.stop()
    writes = out["throughput"] * elapsed
    followers = [m for m in after if m != cluster.leader]
    return {"writes_per_s": out["throughput"],
            "leader_us": (after[cluster.leader] - before[cluster.leader]) / writes * 1e6,
            "follower_us": statistics.mean((after[m] - before[m]) / writes * 1e6 for m in followers),
            "client_us": out["generator_cpu_s"] / (out["throughput"] * (duration + 1.0)) * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--duration", type=float, default=6.0)
    ap.add_argument("--unary", action="store_true", help="unary KV.Put instead of KV.Pipeline")
    a = ap.parse_args()
    if bench._has_uvloop():
        bench.GENERATOR_FLAGS.append("--uvloop")
    rows = []
    for i in range(a.rounds):
        r = one_round(a.clients, not a.unary, a.duration)
        rows.append(r)
        print(f"round {i + 1}: {r['writes_per_s']:6.0f} writes/s; CPU per write: leader {r['leader_us']:5.1f} us, "
              f"each follower {r['follower_us']:5.1f} us, client {r['client_us']:5.1f} us", flush=True)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    total = med["leader_us"] + 2 * med["follower_us"] + med["client_us"]
    print(f"median: {med['writes_per_s']:6.0f} writes/s; leader {med['leader_us']:.0f} us + 2 x follower "
          f"{med['follower_us']:.0f} us + client {med['client_us']:.0f} us = {total:.0f} us of CPU per write "
          f"({os.cpu_count()} cpus: at most {os.cpu_count() * 1e6 / total:,.0f} writes/s at that cost)")


if __name__ == "__main__":
    main()
