"""One PySyncObj member for the benchmark; its clients run inside the process (as PySyncObj's do).

Tuned as PySyncObj recommends for throughput: ``autoTickPeriod=0.001``,
``appendEntriesPeriod=0.002``, batching on. No journal file: PySyncObj keeps its
log in memory (its optional mmap journal is never fsynced either), so it does
not fsync.

Control protocol on stdin/stdout, one line each:
``status`` -> ``{"leader": bool}``; ``load CLIENTS DURATION WARMUP VALUE_BYTES [MODE]`` ->
one JSON line with count, latencies and this process's CPU seconds.

Two client shapes (MODE): ``callbacks`` (default): each client is a chain of
``put(..., callback=...)`` calls, the next issued from the previous one's
callback on PySyncObj's own thread; no client thread at all, the cheapest a
client can be. ``threads``: each client is a thread calling ``put(..., sync=True)``
in a loop, as an application's request handlers would; they share the GIL
with PySyncObj's thread.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import threading
import time

from pysyncobj import SyncObj, SyncObjConf, replicated  # type: ignore[import-not-found]


class KV(SyncObj):  # type: ignore[misc]
    def __init__(self, self_addr: str, partners: list[str]) -> None:
        conf = SyncObjConf(autoTick=True, autoTickPeriod=0.001, appendEntriesPeriod=0.002,
                           appendEntriesUseBatch=True, raftMinTimeout=0.4, raftMaxTimeout=1.4,
                           dynamicMembershipChange=False, commandsQueueSize=1_000_000)
        super().__init__(self_addr, partners, conf=conf)
        self.data: dict[bytes, bytes] = {}

    @replicated  # type: ignore[misc]
    def put(self, key: bytes, value: bytes) -> None:
        self.data[key] = value


def load(kv: KV, clients: int, duration: float, warmup: float, value_bytes: int,
         mode: str = "callbacks") -> dict[str, object]:
    value = random.Random(0).randbytes(value_bytes)
    measure_from = time.perf_counter() + warmup
    stop_at = measure_from + duration
    lat: list[float] = []
    lock = threading.Lock()
    errors = 0
    active = clients
    done = threading.Event()

    def issue(i: int) -> None:
        nonlocal active
        t = time.perf_counter()
        if t >= stop_at:
            with lock:
                active -= 1
                if active == 0:
                    done.set()
            return

        def cb(result: object, error: object) -> None:
            nonlocal errors
            end = time.perf_counter()
            if error:
                errors += 1
            elif t >= measure_from and end <= stop_at:
                lat.append(end - t)
            issue(i)
        kv.put(f"bench-{i}".encode(), value, callback=cb)

    def blocking(i: int) -> None:
        nonlocal errors
        key = f"bench-{i}".encode()
        while (t := time.perf_counter()) < stop_at:
            try:
                kv.put(key, value, sync=True, timeout=10)
            except Exception:
                with lock:
                    errors += 1
                continue
            end = time.perf_counter()
            if t >= measure_from and end <= stop_at:
                with lock:
                    lat.append(end - t)

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    if mode == "threads":
        threads = [threading.Thread(target=blocking, args=(i,), daemon=True) for i in range(clients)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(duration + warmup + 30)
    elif mode == "callbacks":
        for i in range(clients):
            issue(i)
        done.wait(duration + warmup + 30)
    else:
        raise SystemExit(f"pso_node: unknown client mode {mode!r} (callbacks or threads)")
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    sample = lat if len(lat) <= 20000 else random.Random(0).sample(lat, 20000)
    return {"count": len(lat), "errors": errors, "duration": duration, "cpu_s": cpu, "latencies": sample}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--self", required=True)
    p.add_argument("--partners", required=True)
    a = p.parse_args()
    kv = KV(a.self, a.partners.split(","))
    for line in sys.stdin:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "status":
            print(json.dumps({"leader": kv._isLeader(), "ready": kv.isReady()}), flush=True)
        elif parts[0] == "load":
            clients, duration, warmup, value_bytes = int(parts[1]), float(parts[2]), float(parts[3]), int(parts[4])
            mode = parts[5] if len(parts) > 5 else "callbacks"
            print(json.dumps(load(kv, clients, duration, warmup, value_bytes, mode)), flush=True)
        elif parts[0] == "quit":
            break
    kv.destroy()


if __name__ == "__main__":
    main()
