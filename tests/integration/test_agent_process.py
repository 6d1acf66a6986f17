"""Fault agent process, resource, time and data faults on a real echo node process.

Effects are read from outside the process (/proc, files) or through its Stats RPC.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from faultlab.nodes.agent.client import AgentClient, fault_from_spec
from faultlab.nodes.agent.testing import SERVICE, EchoProcess, start_echo_nodes

TOKEN = "integration-token"
MIB = 1024 * 1024
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EchoProcess]:
    started = start_echo_nodes(["p"], Path(tmp_path_factory.mktemp("agent-proc")), TOKEN)
    yield started["p"]
    started["p"].stop()


async def poll(condition: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.05)


async def stats(address: str) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(address) as channel:
        return json.loads(await channel.unary_unary(f"/{SERVICE}/Stats")(b"", timeout=5))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def cpu_rate(pid: int, window: float = 0.5) -> float:
    start_cpu, start = cpu_seconds(pid), time.monotonic()
    time.sleep(window)  # a measurement window, not synchronisation
    return (cpu_seconds(pid) - start_cpu) / (time.monotonic() - start)


async def inject(client: AgentClient, kind: str, params: dict[str, Any], fault_id: str, ttl: int = 60) -> str:
    response = await client.inject(fault_from_spec(kind, params, id=fault_id, ttl_seconds=ttl))
    assert response.created
    return response.detail


async def test_clock_skew_visible_and_reset(node: EchoProcess) -> None:
    async with AgentClient(node.address, TOKEN) as client:
        await inject(client, "clockSkew", {"offsetMs": 30_000}, "skew")
        s = await stats(node.address)
        assert s["time"] - s["real_time"] == pytest.approx(30.0, abs=1.0)
        await client.recover("skew")
        s = await stats(node.address)
        assert abs(s["time"] - s["real_time"]) < 0.5


async def test_cpu_burn_shows_in_process_cpu_time(node: EchoProcess) -> None:
    # Rates, not absolute numbers: the test machine may be shared, so poll each over short windows.
    def rate_at_least(x: float) -> Awaitable[bool]:
        return asyncio.to_thread(lambda: cpu_rate(node.pid) >= x)

    def rate_below(x: float) -> Awaitable[bool]:
        return asyncio.to_thread(lambda: cpu_rate(node.pid) < x)

    await poll(lambda: rate_below(0.1), what="node idle before the burn")
    async with AgentClient(node.address, TOKEN) as client:
        await inject(client, "cpuBurn", {"threads": 2, "dutyCycle": 0.8}, "cpu")
        await poll(lambda: rate_at_least(0.3), what="CPU burn visible in the process's CPU time")
        await client.recover("cpu")
        await poll(lambda: rate_below(0.1), what="CPU burn stopped after recover")


async def test_memory_pressure_shows_in_rss(node: EchoProcess) -> None:
    base = rss_bytes(node.pid)
    async with AgentClient(node.address, TOKEN) as client:
        await inject(client, "memoryPressure", {"megabytes": 200}, "mem")
        assert rss_bytes(node.pid) >= base + 190 * MIB
        await client.recover("mem")
        await poll(lambda: rss_bytes(node.pid) < base + 50 * MIB, what="memory released")


async def test_enospc_flag(node: EchoProcess) -> None:
    async with AgentClient(node.address, TOKEN) as client:
        await inject(client, "diskFill", {"enospc": True}, "enospc")
        assert (await stats(node.address))["enospc"] is True
        await client.recover("enospc")
        assert (await stats(node.address))["enospc"] is False


async def test_disk_fill_with_ballast(node: EchoProcess) -> None:
    st = os.statvfs(node.data_dir)
    leave = st.f_bavail * st.f_frsize - 50 * MIB  # never more than 50 MiB of ballast on the real disk
    ballast = node.data_dir / ".faultlab-ballast"
    async with AgentClient(node.address, TOKEN) as client:
        detail = await inject(client, "diskFill", {"leaveFreeBytes": leave}, "fill")
        assert "ballast" in detail
        size = sum(p.stat().st_size for p in ballast.iterdir())
        assert 30 * MIB <= size <= 70 * MIB
        await client.recover("fill")
        assert not ballast.exists()


def ballast_bytes(data_dir: Path) -> int:
    folder = data_dir / ".faultlab-ballast"
    return sum(p.stat().st_size for p in folder.iterdir()) if folder.is_dir() else 0


async def test_ballast_never_takes_the_shared_disk_below_the_node_floor(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Members of a local cluster share the host's disk: the floor bounds everything the ballast takes."""
    st = os.statvfs(tmp_path)
    free = st.f_bavail * st.f_frsize
    floor = free - 48 * MIB
    monkeypatch.setenv("FAULTLAB_DISK_FILL_FLOOR", str(floor))
    started = start_echo_nodes(["f"], tmp_path, TOKEN)
    node = started["f"]
    filler = tmp_path / "another-member"
    try:
        async with AgentClient(node.address, TOKEN) as client:
            # leaveFreeBytes far below the floor (0 would mean "as full as possible"): the floor wins
            detail = await inject(client, "diskFill", {"leaveFreeBytes": free - 256 * MIB}, "fill")
            assert "filled down to the safe floor" in detail, detail
            held = ballast_bytes(node.data_dir)
            assert 24 * MIB <= held <= 56 * MIB, held
            # someone else on the same disk writes 24 MiB: the agent gives that much back
            with open(filler, "wb") as f:
                os.posix_fallocate(f.fileno(), 0, 24 * MIB)
            await poll(lambda: ballast_bytes(node.data_dir) <= held - 16 * MIB, timeout=10,
                       what="the ballast to shrink back above the floor")
            await client.recover("fill")
            assert not (node.data_dir / ".faultlab-ballast").exists()
    finally:
        node.stop()
        filler.unlink(missing_ok=True)


async def test_snapshot_corruption_flips_and_restores(node: EchoProcess) -> None:
    snap = node.data_dir / "snap"
    snap.mkdir(exist_ok=True)
    target = snap / "0000000000000010.snap"
    original = os.urandom(64 * 1024)
    target.write_bytes(original)
    async with AgentClient(node.address, TOKEN) as client:
        detail = await inject(client, "corruption", {"target": "snapshot", "bytes": 16, "seed": 7}, "corrupt")
        data = target.read_bytes()
        flipped = [i for i in range(len(data)) if data[i] != original[i]]
        assert len(flipped) == 16 and str(target) in detail
        listed = await client.list()
        assert listed.faults[0].detail == detail
        await client.recover("corrupt")
        assert target.read_bytes() == original


async def test_list_reports_process_start(node: EchoProcess) -> None:
    async with AgentClient(node.address, TOKEN) as client:
        listed = await client.list()
        assert listed.node_id == "p" and 0 < listed.started_at <= time.time()


async def test_crash_exits_the_process_after_replying(tmp_path: Path) -> None:
    crashing = start_echo_nodes(["c"], tmp_path, TOKEN)["c"]
    try:
        async with AgentClient(crashing.address, TOKEN) as client:
            detail = await inject(client, "crash", {"exitCode": 42}, "crash")
            assert "42" in detail
        await poll(lambda: crashing.proc.poll() is not None, what="process exited")
        assert crashing.proc.returncode == 42
    finally:
        crashing.stop()
