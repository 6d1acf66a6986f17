"""`echo`: a tiny node kind for testing the fault agent without any real system.

It serves health, the FaultAgent and `faultlab.test.v1.Echo` (raw bytes, JSON bodies):
`Ping` echoes its request and counts it by sender (`faultlab-from`), `Upload`
(client stream) returns the byte count, `PingPeer` makes this node ping a peer
through its (faultable) peer channel and reports each call, `Stats` returns counters,
the node's clock and the ENOSPC flag.

Run: `python -m faultlab.nodes.agent.testing --id a --listen 127.0.0.1:7001
--peers a=127.0.0.1:7001,b=127.0.0.1:7002 --data-dir /tmp/a` with the agent token in
`FAULTLAB_AGENT_TOKEN` (or `faultlab-node echo ...`); `--agent-listen 127.0.0.1:7101`
serves the agent on a port of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from faultlab.nodes.agent import attach_agent
from faultlab.nodes.agent.network import FROM_METADATA
from faultlab.nodes.common import faults as process_faults
from faultlab.nodes.common.node import NodeContext
from faultlab.nodes.common.resolver import parse_peers

SERVICE = "faultlab.test.v1.Echo"
PING = f"/{SERVICE}/Ping"
UPLOAD = f"/{SERVICE}/Upload"


class Echo:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.received: Counter[str] = Counter()
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _sender(self, context: grpc.aio.ServicerContext) -> str:
        for key, value in context.invocation_metadata() or ():
            if key == FROM_METADATA:
                return str(value)
        return "client"

    async def ping(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.received[self._sender(context)] += 1
        return request

    async def upload(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        total = 0
        async for chunk in requests:
            total += len(chunk)
        self.received[self._sender(context)] += 1
        return str(total).encode()

    async def stats(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return json.dumps({
            "received": dict(self.received), "time": self.ctx.clock.time(), "real_time": time.time(),
            "enospc": process_faults.DISK.enospc, "pid": os.getpid(), "node_id": self.ctx.node_id,
        }).encode()

    def _channel(self, peer: str) -> grpc.aio.Channel:
        if peer not in self._channels:
            self._channels[peer] = self.ctx.channel(peer, self.ctx.peers[peer])
        return self._channels[peer]

    async def ping_peer(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """{"peer", "count", "size", "timeout", "parallel", "chunks" (>0: Upload in that many chunks)}."""
        args: dict[str, Any] = json.loads(request or b"{}")
        peer = args["peer"]
        if peer not in self.ctx.peers:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"peer: unknown peer {peer!r}")
        count = min(int(args.get("count", 1)), 10_000)
        payload = b"x" * int(args.get("size", 16))
        timeout = float(args.get("timeout", 5.0))
        chunks = int(args.get("chunks", 0))
        channel = self._channel(peer)
        ping = channel.unary_unary(PING)
        upload = channel.stream_unary(UPLOAD)

        async def one() -> dict[str, Any]:
            start = time.monotonic()
            try:
                if chunks:
                    await upload(iter([payload] * chunks), timeout=timeout)
                else:
                    await ping(payload, timeout=timeout)
                code, details = "OK", ""
            except grpc.aio.AioRpcError as exc:
                code, details = exc.code().name, exc.details() or ""
            return {"code": code, "details": details, "ms": (time.monotonic() - start) * 1000}

        if args.get("parallel"):
            results = await asyncio.gather(*(one() for _ in range(count)))
        else:
            results = [await one() for _ in range(count)]
        return json.dumps({"results": results}).encode()


async def serve(ctx: NodeContext) -> None:
    agent = attach_agent(ctx)
    server = ctx.create_server()
    if agent:
        agent.add_to_server(ctx.agent_host())
    echo = Echo(ctx)
    unary = {"Ping": echo.ping, "Stats": echo.stats, "PingPeer": echo.ping_peer}
    handlers: dict[str, grpc.RpcMethodHandler] = {
        name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in unary.items()
    }
    handlers["Upload"] = grpc.stream_unary_rpc_method_handler(echo.upload)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    ctx.add_service_name(SERVICE)
    await ctx.start()
    await ctx.wait_stopping()
    if agent:
        await agent.close()
    await ctx.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="echo-node")
    parser.add_argument("--id", required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--peers", default="")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--agent-token", default=os.environ.get("FAULTLAB_AGENT_TOKEN", ""))
    parser.add_argument("--agent-listen", default=os.environ.get("FAULTLAB_AGENT_LISTEN", ""))
    parser.add_argument("--disk-fill-floor", default=os.environ.get("FAULTLAB_DISK_FILL_FLOOR", "auto"))
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> None:
        ctx = NodeContext(kind="echo", node_id=args.id, listen=args.listen, peers=parse_peers(args.peers),
                          data_dir=Path(args.data_dir), agent_token=args.agent_token,
                          disk_fill_floor=args.disk_fill_floor, agent_listen=args.agent_listen)
        await serve(ctx)

    asyncio.run(run())


if __name__ == "__main__":
    main()


# ------------------------------------------------------------------ test harness: echo nodes as processes


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EchoProcess:
    """One echo node as a child process (what the integration tests start).

    `agent_address` is where its FaultAgent listens: its own port when given (--agent-listen),
    else `address`.
    """

    def __init__(self, node_id: str, peers: dict[str, str], data_dir: Path, token: str,
                 agent_address: str = "") -> None:
        self.node_id = node_id
        self.address = peers[node_id]
        self.agent_address = agent_address or self.address
        self.separate_agent = bool(agent_address)
        self.peers = peers
        self.data_dir = data_dir
        self.token = token
        self.proc: Any = None

    def start(self) -> EchoProcess:
        import subprocess
        import sys

        self.data_dir.mkdir(parents=True, exist_ok=True)
        peers = ",".join(f"{k}={v}" for k, v in self.peers.items())
        agent = ["--agent-listen", self.agent_address] if self.separate_agent else []
        log = open(self.data_dir.parent / f"{self.node_id}.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "faultlab.nodes.agent.testing", "--id", self.node_id, "--listen", self.address,
             "--peers", peers, "--data-dir", str(self.data_dir), *agent],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "FAULTLAB_AGENT_TOKEN": self.token})
        log.close()
        return self

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def wait_ready(self, timeout: float = 20.0) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        for address in dict.fromkeys([self.address, self.agent_address]):
            with grpc.insecure_channel(address) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                while True:
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"echo node {self.node_id} exited with {self.proc.returncode}")
                    try:
                        if stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status == 1:
                            break
                    except grpc.RpcError:
                        pass
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"echo node {self.node_id} not serving on {address} after {timeout}s")
                    time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except Exception:
                self.proc.kill()
                self.proc.wait(5)


def start_echo_nodes(ids: list[str], base_dir: Path, token: str, *,
                     separate_agent: bool = False) -> dict[str, EchoProcess]:
    """Echo nodes on loopback; with `separate_agent` each serves its agent on a port of its own."""
    peers = {i: f"127.0.0.1:{free_port()}" for i in ids}
    agents = {i: f"127.0.0.1:{free_port()}" if separate_agent else "" for i in ids}
    nodes = {i: EchoProcess(i, peers, base_dir / i, token, agents[i]).start() for i in ids}
    try:
        for node in nodes.values():
            node.wait_ready()
    except BaseException:
        for node in nodes.values():
            node.stop()
        raise
    return nodes
