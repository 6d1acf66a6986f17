"""Fault agent network faults between two real echo node processes on loopback.

Each fault is measured while active and measured again after recovery.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from faultlab.nodes.agent.client import AgentClient, fault_from_spec
from faultlab.nodes.agent.testing import SERVICE, EchoProcess, start_echo_nodes

TOKEN = "integration-token"
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, EchoProcess]]:
    started = start_echo_nodes(["a", "b"], Path(tmp_path_factory.mktemp("agent-net")), TOKEN)
    yield started
    for node in started.values():
        node.stop()


class Echo:
    def __init__(self, nodes: dict[str, EchoProcess]) -> None:
        self.nodes = nodes
        self.channels = {i: grpc.aio.insecure_channel(n.address) for i, n in nodes.items()}
        self.agents = {i: AgentClient(n.address, TOKEN) for i, n in nodes.items()}

    async def call(self, node: str, method: str, body: dict[str, Any] | None = None, timeout: float = 30) -> Any:
        raw = await self.channels[node].unary_unary(f"/{SERVICE}/{method}")(
            json.dumps(body or {}).encode(), timeout=timeout)
        return json.loads(raw)

    async def pings(self, src: str, dst: str, count: int = 5, **args: Any) -> list[dict[str, Any]]:
        response = await self.call(src, "PingPeer", {"peer": dst, "count": count, **args})
        return response["results"]

    async def median_ms(self, src: str, dst: str, count: int = 5, **args: Any) -> float:
        results = await self.pings(src, dst, count, **args)
        assert all(r["code"] == "OK" for r in results), results
        return statistics.median(r["ms"] for r in results)

    async def client_ping(self, node: str, timeout: float = 5) -> str:
        try:
            await self.channels[node].unary_unary(f"/{SERVICE}/Ping")(b"hi", timeout=timeout)
            return "OK"
        except grpc.aio.AioRpcError as exc:
            return exc.code().name

    async def received(self, node: str, sender: str) -> int:
        return int((await self.call(node, "Stats"))["received"].get(sender, 0))

    async def inject(self, node: str, kind: str, params: dict[str, Any], fault_id: str, ttl: int = 60,
                     **match: Any) -> None:
        response = await self.agents[node].inject(fault_from_spec(kind, params, id=fault_id, ttl_seconds=ttl,
                                                                  match=match))
        assert response.created

    async def close(self) -> None:
        for node, agent in self.agents.items():
            if self.nodes[node].proc.poll() is None:
                await agent.recover_all()
            await agent.close()
        for channel in self.channels.values():
            await channel.close()


@pytest.fixture
async def echo(nodes: dict[str, EchoProcess]) -> AsyncIterator[Echo]:
    e = Echo(nodes)
    try:
        yield e
    finally:
        await e.close()


async def test_outbound_delay_adds_latency_then_reverts(echo: Echo) -> None:
    base = await echo.median_ms("a", "b")
    await echo.inject("a", "delay", {"latencyMs": 200}, "delay", peers=["b"], direction="outbound")
    assert await echo.median_ms("a", "b") >= base + 190
    assert await echo.median_ms("b", "a") < base + 100  # outbound only: b -> a untouched
    assert await echo.agents["a"].recover("delay")
    assert await echo.median_ms("a", "b") < base + 100


async def test_inbound_delay_and_jitter_reorder(echo: Echo) -> None:
    base = await echo.median_ms("a", "b")
    await echo.inject("b", "delay", {"latencyMs": 150, "jitterMs": 100}, "jitter", peers=["a"],
                      direction="inbound")
    results = await echo.pings("a", "b", count=20, parallel=True)
    latencies = [r["ms"] for r in results]
    assert all(r["code"] == "OK" for r in results)
    assert statistics.median(latencies) >= base + 100
    assert max(latencies) - min(latencies) >= 50  # jitter spreads (and so reorders) concurrent calls
    await echo.agents["b"].recover("jitter")
    assert await echo.median_ms("a", "b") < base + 100


async def test_partition_blocks_both_ways_then_heals(echo: Echo) -> None:
    await echo.inject("a", "partition", {}, "part", peers=["b"])
    for src, dst in (("a", "b"), ("b", "a")):
        results = await echo.pings(src, dst, count=3)
        assert {r["code"] for r in results} == {"UNAVAILABLE"}, (src, dst, results)
    assert await echo.client_ping("a") == "OK"  # clients are not partitioned without includeClients
    assert (await echo.agents["a"].list()).faults  # the agent itself is never faulted
    await echo.agents["a"].recover("part")
    for src, dst in (("a", "b"), ("b", "a")):
        assert {r["code"] for r in await echo.pings(src, dst, count=3)} == {"OK"}


async def test_one_way_partition(echo: Echo) -> None:
    await echo.inject("a", "partition", {}, "oneway", peers=["b"], direction="outbound")
    assert {r["code"] for r in await echo.pings("a", "b", count=3)} == {"UNAVAILABLE"}
    assert {r["code"] for r in await echo.pings("b", "a", count=3)} == {"OK"}
    await echo.agents["a"].recover("oneway")
    assert {r["code"] for r in await echo.pings("a", "b", count=3)} == {"OK"}


async def test_include_clients_partitions_client_traffic(echo: Echo) -> None:
    await echo.inject("b", "partition", {}, "clients", direction="inbound", includeClients=True)
    assert await echo.client_ping("b") == "UNAVAILABLE"
    assert (await echo.agents["b"].list()).faults  # FaultAgent still reachable
    await echo.agents["b"].recover("clients")
    assert await echo.client_ping("b") == "OK"


async def test_loss_rate_roughly_matches(echo: Echo) -> None:
    await echo.inject("a", "loss", {"probability": 0.3}, "loss", peers=["b"], direction="outbound")
    results = await echo.pings("a", "b", count=500, parallel=True)
    lost = sum(r["code"] == "UNAVAILABLE" for r in results) / len(results)
    assert 0.2 <= lost <= 0.4, lost
    assert {r["code"] for r in results} <= {"OK", "UNAVAILABLE"}
    await echo.agents["a"].recover("loss")
    assert {r["code"] for r in await echo.pings("a", "b", count=100, parallel=True)} == {"OK"}


async def test_inbound_loss(echo: Echo) -> None:
    await echo.inject("b", "loss", {"probability": 1.0}, "inloss", peers=["a"], direction="inbound")
    assert {r["code"] for r in await echo.pings("a", "b", count=5)} == {"UNAVAILABLE"}
    await echo.agents["b"].recover("inloss")
    assert {r["code"] for r in await echo.pings("a", "b", count=5)} == {"OK"}


async def test_duplication_delivers_twice(echo: Echo) -> None:
    before = await echo.received("b", "a")
    await echo.inject("a", "duplicate", {"probability": 1.0}, "dup", peers=["b"])
    assert {r["code"] for r in await echo.pings("a", "b", count=10)} == {"OK"}
    deadline = time.monotonic() + 10
    while await echo.received("b", "a") < before + 20 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert await echo.received("b", "a") == before + 20
    await echo.agents["a"].recover("dup")
    before = await echo.received("b", "a")
    await echo.pings("a", "b", count=10)
    assert await echo.received("b", "a") == before + 10


async def test_bandwidth_limit_throttles_unary_and_streams(echo: Echo) -> None:
    size = 10_000
    fast = await echo.median_ms("a", "b", count=3, size=size)
    await echo.inject("a", "bandwidth", {"bytesPerSecond": 50_000}, "bw", peers=["b"], direction="outbound")
    start = time.monotonic()
    assert {r["code"] for r in await echo.pings("a", "b", count=5, size=size)} == {"OK"}
    assert time.monotonic() - start >= 0.9  # 50 kB through a 50 kB/s link
    start = time.monotonic()  # client stream (like Peer.InstallSnapshot): metered per chunk
    assert {r["code"] for r in await echo.pings("a", "b", count=1, size=size, chunks=5)} == {"OK"}
    assert time.monotonic() - start >= 0.9
    await echo.agents["a"].recover("bw")
    assert await echo.median_ms("a", "b", count=3, size=size) < fast + 100


async def test_error_injection_by_method(echo: Echo) -> None:
    await echo.inject("b", "error", {"code": "RESOURCE_EXHAUSTED", "message": "injected"}, "err", peers=["a"],
                      methods=[f"/{SERVICE}/Ping"])
    results = await echo.pings("a", "b", count=3)
    assert {(r["code"], r["details"]) for r in results} == {("RESOURCE_EXHAUSTED", "injected")}
    assert {r["code"] for r in await echo.pings("a", "b", count=1, chunks=2)} == {"OK"}  # Upload not matched
    await echo.agents["b"].recover("err")
    assert {r["code"] for r in await echo.pings("a", "b", count=3)} == {"OK"}


async def test_outbound_error_injection(echo: Echo) -> None:
    await echo.inject("a", "error", {"code": "DEADLINE_EXCEEDED"}, "oerr", direction="outbound")
    assert {r["code"] for r in await echo.pings("a", "b", count=3)} == {"DEADLINE_EXCEEDED"}
    await echo.agents["a"].recover("oerr")
    assert {r["code"] for r in await echo.pings("a", "b", count=3)} == {"OK"}


async def test_slow_response(echo: Echo) -> None:
    base = await echo.median_ms("a", "b")
    await echo.inject("b", "slowResponse", {"delayMs": 250}, "slow", peers=["a"])
    assert await echo.median_ms("a", "b", count=3) >= base + 240
    await echo.agents["b"].recover("slow")
    assert await echo.median_ms("a", "b") < base + 100


async def test_ttl_heals_partition_without_a_controller(echo: Echo) -> None:
    async with AgentClient(echo.nodes["a"].address, TOKEN) as controller:
        await controller.inject(fault_from_spec("partition", {}, id="ttl", ttl_seconds=1, match={"peers": ["b"]}))
    # the controller is gone; nobody calls Recover
    assert {r["code"] for r in await echo.pings("a", "b", count=2)} == {"UNAVAILABLE"}
    deadline = time.monotonic() + 10
    while (await echo.agents["a"].list()).faults:
        assert time.monotonic() < deadline, "TTL did not heal the partition"
        await asyncio.sleep(0.05)
    assert {r["code"] for r in await echo.pings("a", "b", count=3)} == {"OK"}
