"""Node bootstrap shared by every kind: flags, the gRPC server, health, reflection, metrics.

A kind provides `async def serve(ctx: NodeContext) -> None` (registered in
`faultlab.nodes.common.main.KINDS`) that adds its services to `ctx.server`,
calls `await ctx.start()` and runs until `ctx.stopping` is set.

With `agent_listen` (`--agent-listen`) the fault agent gets a gRPC server of its own
(`ctx.agent_host()`, with health and reflection) on that address, so a NetworkPolicy can
admit only the operator to it while peers and clients reach the data port; without it
the agent shares the data server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from faultlab.nodes.common.clock import CLOCK, Clock
from faultlab.nodes.common.resolver import PeerResolver

log = logging.getLogger("faultlab.node")

# Large enough for batched AppendEntries and snapshot chunks.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.enable_retries", 0),
]


@dataclass
class NodeContext:
    """Everything a node kind needs from the process it runs in."""

    kind: str
    node_id: str
    listen: str
    peers: dict[str, str]
    data_dir: Path
    advertise: str = ""
    agent_token: str = ""
    # Free space the fault agent's disk-fill ballast never takes the filesystem below
    # ("auto", "0", "2GiB", "10%"; see faultlab.nodes.agent.resources.DiskFloor).
    disk_fill_floor: str = "auto"
    metrics_listen: str = ""
    # host:port of the fault agent's own server; empty: the agent is served on `listen`.
    agent_listen: str = ""
    options: dict[str, str] = field(default_factory=dict)
    clock: Clock = CLOCK
    resolver: PeerResolver = field(default_factory=PeerResolver)
    server_interceptors: list[grpc.aio.ServerInterceptor] = field(default_factory=list)
    # Interceptors placed on every outgoing channel; each is built for the peer id it talks to.
    client_interceptor_factories: list[Callable[[str], Sequence[grpc.aio.ClientInterceptor]]] = field(
        default_factory=list
    )
    # Hooks the fault agent uses: called with no arguments on crash/disk faults etc.
    hooks: dict[str, Callable[..., Any]] = field(default_factory=dict)
    # Set by the fault agent: whether network faults apply to what this member sends to a peer
    # (by peer id). A reply that would ride back on the peer's own call must then travel as a
    # call of this member's, through the outbound interceptors, or the faults would miss it.
    outbound_faulted: Callable[[str], bool] = field(default=lambda peer_id: False)
    # ... and to what it receives from a peer: its replies must come as the peer's own calls.
    inbound_faulted: Callable[[str], bool] = field(default=lambda peer_id: False)
    started_at: float = field(default_factory=time.time)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    server: grpc.aio.Server | None = None
    health: health.aio.HealthServicer | None = None  # type: ignore[name-defined]
    agent_server: grpc.aio.Server | None = None
    agent_health: health.aio.HealthServicer | None = None  # type: ignore[name-defined]
    _service_names: list[str] = field(default_factory=list)
    _agent_service_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.advertise = self.advertise or self.listen

    def create_server(self) -> grpc.aio.Server:
        self.server = grpc.aio.server(interceptors=self.server_interceptors, options=CHANNEL_OPTIONS)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        return self.server

    def agent_host(self) -> grpc.aio.Server:
        """The server the fault agent is added to: its own on `agent_listen`, else the data server.

        The agent's server has no interceptors: network faults apply to data traffic, never to
        the calls that recover them.
        """
        if not self.agent_listen:
            assert self.server is not None, "call create_server() first"
            return self.server
        if self.agent_server is None:
            self.agent_server = grpc.aio.server(options=[*CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)])
            self.agent_health = health.aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(self.agent_health, self.agent_server)
        return self.agent_server

    def add_service_name(self, full_name: str, server: grpc.aio.Server | None = None) -> None:
        """Names a service for health and reflection on `server` (default: the data server)."""
        if server is not None and server is self.agent_server:
            self._agent_service_names.append(full_name)
        else:
            self._service_names.append(full_name)

    def channel(self, peer_id: str, address: str) -> grpc.aio.Channel:
        """An insecure channel to a peer, with the fault agent's client interceptors."""
        interceptors: list[grpc.aio.ClientInterceptor] = []
        for factory in self.client_interceptor_factories:
            interceptors.extend(factory(peer_id))
        return grpc.aio.insecure_channel(
            self.resolver.resolve(address), options=CHANNEL_OPTIONS, interceptors=interceptors or None
        )

    async def start(self) -> None:
        """Binds, enables reflection and metrics, and marks every service SERVING."""
        assert self.server is not None and self.health is not None, "call create_server() first"
        names = [*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, self.server)
        _bind(self.server, self.listen, "--listen")
        if self.metrics_listen:
            from prometheus_client import start_http_server

            host, _, mport = self.metrics_listen.rpartition(":")
            start_http_server(int(mport), addr=host or "0.0.0.0")
        if self.agent_server is not None:
            names = [*self._agent_service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
            reflection.enable_server_reflection(names, self.agent_server)
            _bind(self.agent_server, self.agent_listen, "--agent-listen")
        await self.server.start()
        if self.agent_server is not None:
            await self.agent_server.start()
        await self.set_serving(True)
        log.info("%s node %s serving on %s", self.kind, self.node_id, self.listen)
        if self.agent_server is not None:
            log.info("fault agent of node %s serving on %s", self.node_id, self.agent_listen)

    async def set_serving(self, serving: bool) -> None:
        assert self.health is not None
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self._service_names]:
            await self.health.set(name, status)
        if self.agent_health is not None:
            for name in ["", *self._agent_service_names]:
                await self.agent_health.set(name, status)

    async def wait_stopping(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        await self.stopping.wait()

    async def stop(self, grace: float = 1.0) -> None:
        if self.server is not None:
            await self.set_serving(False)
            await self.server.stop(grace)
        if self.agent_server is not None:
            await self.agent_server.stop(grace)


def _bind(server: grpc.aio.Server, address: str, flag: str) -> None:
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(f"{flag} {address}: cannot bind (address in use or not local)")


def env_default(name: str, default: str = "") -> str:
    """A flag's default from `FAULTLAB_<NAME>` (how pods pass flags)."""
    return os.environ.get("FAULTLAB_" + name.upper().replace("-", "_"), default)
