"""Closed-loop write load generator: one process, N concurrent clients, prints one JSON line.

Each client writes a 100-byte value (by default) to its own key, waits for the
answer, and immediately writes again, for a fixed duration after a warm-up.
Systems: ``faultlab`` (RaftClient, sessions on, via the leader), ``etcd``
(etcd's gRPC KV.Put, request encoded by hand: fields 1 key and 2 value of
etcdserverpb.PutRequest; no stubs to generate). The process's clients share one
client object (a RaftClient, an etcd channel), as an application's request
handlers share one; ``--client-per-loop`` gives each its own. Reports the count,
a latency sample, and this process's CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def etcd_put_request(key: bytes, value: bytes) -> bytes:
    return b"\x0a" + _varint(len(key)) + key + b"\x12" + _varint(len(value)) + value


Writer = Callable[[bytes, bytes], Awaitable[object]]


async def make_writer(system: str, targets: list[str], client: int,
                      pipeline: bool = False) -> tuple[Writer, Callable[[], Awaitable[None]]]:
    if system == "faultlab":
        from faultlab.nodes.raft.client import RaftClient

        kv = RaftClient(targets, timeout=10.0, pipeline=pipeline)

        async def put(k: bytes, v: bytes) -> object:
            return await kv.put(k, v)
        return put, kv.close
    if system == "etcd":
        ch = grpc.aio.insecure_channel(targets[client % len(targets)])
        call = ch.unary_unary("/etcdserverpb.KV/Put", request_serializer=None, response_deserializer=None)

        async def eput(k: bytes, v: bytes) -> object:
            return await call(etcd_put_request(k, v), timeout=10.0)
        return eput, ch.close
    raise SystemExit(f"loadgen: unknown system {system!r}")


async def run(system: str, targets: list[str], clients: int, duration: float, warmup: float, value_bytes: int,
              offset: int, uvloop_used: bool, pipeline: bool = False,
              per_loop: bool = False) -> dict[str, object]:
    stop_at = time.perf_counter() + warmup + duration
    measure_from = time.perf_counter() + warmup
    lat: list[float] = []
    errors = 0
    count = 0
    value = bytes(random.Random(offset).randbytes(value_bytes))

    shared = None if per_loop else await make_writer(system, targets, offset, pipeline)

    async def one(i: int) -> None:
        nonlocal errors, count
        put, close = shared or await make_writer(system, targets, offset + i, pipeline)
        key = f"bench-{offset + i}".encode()
        try:
            while True:
                t = time.perf_counter()
                if t >= stop_at:
                    return
                try:
                    await put(key, value)
                except Exception:
                    errors += 1
                    continue
                done = time.perf_counter()
                if t >= measure_from and done <= stop_at:
                    count += 1
                    lat.append(done - t)
        finally:
            if shared is None:
                await close()

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(*(one(i) for i in range(clients)))
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    if shared is not None:
        await shared[1]()
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    rng = random.Random(0)
    sample = lat if len(lat) <= 20000 else rng.sample(lat, 20000)
    return {"count": count, "errors": errors, "duration": duration, "cpu_s": cpu, "latencies": sample,
            "uvloop": uvloop_used}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--system", required=True)
    p.add_argument("--targets", required=True, help="comma-separated host:port")
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--value-bytes", type=int, default=100)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--uvloop", action="store_true")
    p.add_argument("--pipeline", action="store_true", help="faultlab: RaftClient(pipeline=True), KV.Pipeline streams")
    p.add_argument("--client-per-loop", action="store_true",
                   help="each concurrent client its own RaftClient / etcd channel (default: one shared per process)")
    p.add_argument("--out", help="write the JSON here instead of stdout")
    a = p.parse_args()
    uv = False
    if a.uvloop:
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
        uv = True
    out = asyncio.run(run(a.system, a.targets.split(","), a.clients, a.duration, a.warmup, a.value_bytes,
                          a.offset, uv, a.pipeline, a.client_per_loop))
    if a.out:
        Path(a.out).write_text(json.dumps(out))
    else:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
