"""What a grpc.aio server costs per unary call and per stream message, on this machine.

A no-op server in one process; two generator processes of N/2 clients each, every
client with its own channel and one operation in flight: ``unary`` sends one
unary call per operation, ``stream`` one message each way on a bidirectional
stream. Usage: ``python bench/raft/stream_floor.py [--clients 64] [--duration 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from faultlab.protos.raft.v1 import raft_pb2 as pb

SERVICE = "floor.KV"


async def serve(address: str) -> None:
    async def put(request: pb.PutRequest, context: grpc.aio.ServicerContext) -> pb.PutResponse:
        return pb.PutResponse()

    async def stream(requests, context):  # type: ignore[no-untyped-def]
        async for _ in requests:
            yield pb.PutResponse()

    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "Put": grpc.unary_unary_rpc_method_handler(put, pb.PutRequest.FromString, pb.PutResponse.SerializeToString),
        "Stream": grpc.stream_stream_rpc_method_handler(stream, pb.PutRequest.FromString,
                                                        pb.PutResponse.SerializeToString)})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(address)
    await server.start()
    await server.wait_for_termination()


async def generate(address: str, mode: str, clients: int, duration: float) -> int:
    count = 0
    stop = time.perf_counter() + duration
    request = pb.PutRequest(key=b"k", value=b"x" * 100)

    async def one() -> None:
        nonlocal count
        async with grpc.aio.insecure_channel(address) as channel:
            if mode == "unary":
                call = channel.unary_unary(f"/{SERVICE}/Put", pb.PutRequest.SerializeToString,
                                           pb.PutResponse.FromString)
                while time.perf_counter() < stop:
                    await call(request)
                    count += 1
            else:
                stream = channel.stream_stream(f"/{SERVICE}/Stream", pb.PutRequest.SerializeToString,
                                               pb.PutResponse.FromString)()
                while time.perf_counter() < stop:
                    await stream.write(request)
                    await stream.read()
                    count += 1
                await stream.done_writing()

    await asyncio.gather(*(one() for _ in range(clients)))
    return count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--role", choices=("run", "serve", "generate"), default="run", help=argparse.SUPPRESS)
    ap.add_argument("--address", default="", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="unary", help=argparse.SUPPRESS)
    a = ap.parse_args()
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    except ImportError:
        pass
    if a.role == "serve":
        asyncio.run(serve(a.address))
        return
    if a.role == "generate":
        print(asyncio.run(generate(a.address, a.mode, a.clients, a.duration)))
        return
    for mode in ("unary", "stream"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            address = f"127.0.0.1:{s.getsockname()[1]}"
        server = subprocess.Popen([sys.executable, __file__, "--role", "serve", "--address", address])
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(address.split(":"), timeout=0.2).close()  # type: ignore[arg-type]
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            gens = [subprocess.Popen([sys.executable, __file__, "--role", "generate", "--address", address,
                                      "--mode", mode, "--clients", str(a.clients // 2),
                                      "--duration", str(a.duration)], stdout=subprocess.PIPE, text=True)
                    for _ in range(2)]
            total = sum(int(g.communicate()[0]) for g in gens)
            print(f"{mode:6s} {a.clients} clients: {total / a.duration:8.0f} operations/s", flush=True)
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
