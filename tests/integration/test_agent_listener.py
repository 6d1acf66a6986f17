"""The fault agent on a listener of its own (`--agent-listen`), with real echo node processes.

The agent port serves the FaultAgent and gRPC health; the data port serves the node's
own services and no FaultAgent; faults injected through the agent port still act on
the data traffic (the interceptors stay on the data server and the peer channels).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from faultlab.nodes.agent.client import AgentClient, fault_from_spec
from faultlab.nodes.agent.service import SERVICE_NAME as AGENT_SERVICE
from faultlab.nodes.agent.testing import SERVICE, EchoProcess, free_port, start_echo_nodes

TOKEN = "listener-token"
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, EchoProcess]]:
    started = start_echo_nodes(["a", "b"], Path(tmp_path_factory.mktemp("agent-listen")), TOKEN,
                               separate_agent=True)
    yield started
    for node in started.values():
        node.stop()


async def services(address: str) -> set[str]:
    """Service names the server at `address` lists through reflection."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        async for reply in stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                     timeout=5):
            return {s.name for s in reply.list_services_response.service}
    return set()


async def health(address: str, service: str = "") -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                                timeout=5)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


async def ping_peer(node: EchoProcess, peer: str, count: int = 3) -> set[str]:
    async with grpc.aio.insecure_channel(node.address) as channel:
        raw = await channel.unary_unary(f"/{SERVICE}/PingPeer")(
            json.dumps({"peer": peer, "count": count, "timeout": 2}).encode(), timeout=30)
    return {r["code"] for r in json.loads(raw)["results"]}


async def test_the_agent_is_served_on_its_own_port_only(nodes: dict[str, EchoProcess]) -> None:
    a = nodes["a"]
    assert a.agent_address != a.address
    async with AgentClient(a.agent_address, TOKEN) as agent:
        assert (await agent.list()).node_id == "a"
    async with AgentClient(a.address, TOKEN) as on_data_port:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await on_data_port.list()
    assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED, "the data port must not serve the FaultAgent"
    async with AgentClient(a.agent_address, "wrong") as intruder:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await intruder.list()
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED, "the token still guards the agent port"

    assert await health(a.address) == await health(a.agent_address) == "SERVING"
    assert await health(a.agent_address, AGENT_SERVICE) == "SERVING"
    assert await health(a.address, SERVICE) == "SERVING"
    on_agent, on_data = await services(a.agent_address), await services(a.address)
    assert AGENT_SERVICE in on_agent and SERVICE not in on_agent
    assert SERVICE in on_data and AGENT_SERVICE not in on_data


async def test_faults_injected_on_the_agent_port_act_on_data_traffic(nodes: dict[str, EchoProcess]) -> None:
    a = nodes["a"]
    async with AgentClient(a.agent_address, TOKEN) as agent:
        assert await ping_peer(a, "b") == {"OK"}
        await agent.inject(fault_from_spec("partition", {}, id="apart", ttl_seconds=60,
                                           match={"peers": ["b"], "direction": "outbound"}))
        try:
            assert await ping_peer(a, "b") == {"UNAVAILABLE"}
            assert [f.fault.id for f in (await agent.list()).faults] == ["apart"]
        finally:
            assert await agent.recover("apart")
        assert await ping_peer(a, "b") == {"OK"}


def node_command(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    listen = f"127.0.0.1:{free_port()}"
    return subprocess.run(
        [sys.executable, "-m", "faultlab.nodes.common.main", "echo", "--id", "a", "--listen", listen,
         "--peers", f"a={listen}", "--data-dir", str(tmp_path / "a"), *extra],
        capture_output=True, text=True, timeout=60,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("FAULTLAB_")}, "FAULTLAB_AGENT_TOKEN": TOKEN},
    )


def test_an_agent_port_already_in_use_stops_the_node_naming_the_flag(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        proc = node_command(tmp_path, "--agent-listen", busy)
    assert proc.returncode != 0
    assert f"--agent-listen {busy}: cannot bind" in proc.stderr
