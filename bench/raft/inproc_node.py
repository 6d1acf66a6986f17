"""A faultlab Raft member whose clients run inside its process, as PySyncObj's do in pso_node.py.

The node is the real one (`faultlab-node raft`, fsync on, peers over gRPC); only the clients skip the
network: each is a closed loop of ``RaftNode.propose`` calls with a session, as the KV service makes
them. This measures the Raft core, WAL and replication without the cost of a gRPC client per write,
which is what PySyncObj's in-process clients leave out.

Usage: ``python bench/raft/inproc_node.py <faultlab-node raft arguments>``. Control on stdin, one
line each: ``load CLIENTS DURATION WARMUP VALUE_BYTES`` -> one JSON line on stdout with count,
latencies and this process's CPU seconds (run it on the leader).
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from faultlab.nodes.common import main as node_main
from faultlab.nodes.raft import node as raft_node
from faultlab.nodes.raft.statemachine import encode_put

_nodes: list[raft_node.RaftNode] = []
_loop: list[asyncio.AbstractEventLoop] = []


class _Captured(raft_node.RaftNode):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _nodes.append(self)
        _loop.append(asyncio.get_running_loop())


async def load(node: raft_node.RaftNode, clients: int, duration: float, warmup: float,
               value_bytes: int) -> dict[str, Any]:
    value = random.Random(0).randbytes(value_bytes)
    measure_from = time.perf_counter() + warmup
    stop_at = measure_from + duration
    lat: list[float] = []
    errors = 0

    async def client(i: int) -> None:
        nonlocal errors
        key, cid, seq = f"bench-{i}".encode(), f"inproc-{i}", 0
        while (t := time.perf_counter()) < stop_at:
            seq += 1
            try:
                await node.propose(encode_put(key, value, cid, seq), 10.0)
            except raft_node.RaftNodeError:
                errors += 1
                continue
            end = time.perf_counter()
            if t >= measure_from and end <= stop_at:
                lat.append(end - t)

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(*(client(i) for i in range(clients)))
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    sample = lat if len(lat) <= 20000 else random.Random(0).sample(lat, 20000)
    return {"count": len(lat), "errors": errors, "duration": duration, "cpu_s": cpu, "latencies": sample}


def control() -> None:
    for line in sys.stdin:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "load" and _nodes:
            clients, duration, warmup, value_bytes = int(parts[1]), float(parts[2]), float(parts[3]), int(parts[4])
            future = asyncio.run_coroutine_threadsafe(load(_nodes[0], clients, duration, warmup, value_bytes),
                                                      _loop[0])
            print(json.dumps(future.result()), flush=True)
        else:
            print(json.dumps({"error": f"unknown command or no node yet: {line.strip()!r}"}), flush=True)


if __name__ == "__main__":
    raft_node.RaftNode = _Captured  # type: ignore[misc]
    threading.Thread(target=control, daemon=True).start()
    node_main.main(["raft", *sys.argv[1:]])
