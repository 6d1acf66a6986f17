"""Every fault type, injected by the engine into a real 3-node Raft cluster, takes effect and is fully reverted.

Each case runs a short experiment (no workload) and, while the engine holds the fault,
measures its effect from outside (client RPC latency or errors, health, leader election,
the process's RSS/CPU, restarts); after the run it checks that no agent lists any fault
and that the effect is gone. Kinds with no outside observable on a Raft node (duplicate,
bandwidth, clock skew, WAL corruption) are checked through the agent's own List.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from faultlab.nodes.agent.client import AgentClient
from faultlab.operator.api import ChaosExperiment, RaftCluster, load_one
from faultlab.operator.chaos.engine import Engine, EngineOptions
from faultlab.operator.chaos.journal import FaultStatus, MemoryStateStore
from faultlab.operator.chaos.probes import ClusterView, agreed_leader
from faultlab.operator.runtime.base import TargetRef
from faultlab.operator.runtime.local import LocalRuntime
from faultlab.protos.raft.v1 import raft_pb2, raft_pb2_grpc

pytestmark = pytest.mark.timeout(300)

CLUSTER = """
apiVersion: faultlab.dev/v1alpha1
kind: RaftCluster
metadata: {name: faults}
spec: {replicas: 3}
"""
TARGET = TargetRef("RaftCluster", "faults")


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    rt = LocalRuntime(tmp_path_factory.mktemp("chaos-faults"))
    cluster = load_one(CLUSTER, RaftCluster)
    asyncio.run(rt.up(cluster))
    yield rt
    asyncio.run(rt.down(cluster.name))


def experiment(fault: dict[str, Any], duration: float = 2.0) -> ChaosExperiment:
    fault = {"name": "f", "durationSeconds": duration, **fault}
    return ChaosExperiment.model_validate({
        "apiVersion": "faultlab.dev/v1alpha1", "kind": "ChaosExperiment", "metadata": {"name": "fault-test"},
        "spec": {"target": {"name": "faults"}, "faults": [fault], "workload": {"enabled": False}, "checks": [],
                 "durationSeconds": duration}})


async def addresses(rt: LocalRuntime) -> dict[str, str]:
    return {m.id: m.address for m in await rt.members(TARGET)}


async def agent_addresses(rt: LocalRuntime) -> dict[str, str]:
    return {m.id: m.agent_address for m in await rt.members(TARGET)}


async def wait_for(cond: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def leader(rt: LocalRuntime) -> str:
    view = ClusterView(await addresses(rt))
    found: list[str] = []

    async def agreed() -> bool:
        got = agreed_leader(await view.statuses())
        if got:
            found.append(got[0])
        return got is not None

    try:
        await wait_for(agreed, 20, "a leader")
    finally:
        await view.close()
    return found[-1]


async def status_rtt(address: str, timeout: float = 2.0) -> tuple[float, str]:
    """Seconds a Cluster.Status call takes and its status code name."""
    async with grpc.aio.insecure_channel(address) as ch:
        t = time.monotonic()
        try:
            await raft_pb2_grpc.ClusterStub(ch).Status(raft_pb2.StatusRequest(), timeout=timeout)
            code = "OK"
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
        return time.monotonic() - t, code


async def healthy(address: str) -> bool:
    async with grpc.aio.insecure_channel(address) as ch:
        try:
            r = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=0.5)
        except grpc.aio.AioRpcError:
            return False
        return bool(r.status == health_pb2.HealthCheckResponse.SERVING)


def proc_stat(pid: int) -> tuple[float, int]:
    """(cpu seconds, rss bytes) of a process from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    import os

    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


async def agent_lists(rt: LocalRuntime) -> dict[str, Any]:
    token = await rt.agent_token(TARGET)
    out = {}
    for mid, addr in (await agent_addresses(rt)).items():
        async with AgentClient(addr, token) as agent:
            out[mid] = await agent.list()
    return out


async def run_with_probe(rt: LocalRuntime, tmp: Path, fault: dict[str, Any],
                         during: Callable[[str, dict[str, str]], Awaitable[Any]],
                         duration: float = 2.0) -> tuple[dict[str, Any], Any, str]:
    """Run the experiment; once its primary fault is active, await `during(target_member, addresses)`."""
    await leader(rt)
    store = MemoryStateStore()
    engine = Engine(experiment(fault, duration), rt, store,
                    EngineOptions(out_dir=tmp, warmup_s=0, after_s=0, settle_s=0.2, ttl_margin_s=5, html=False,
                                  seed=1))
    task = asyncio.create_task(engine.run())
    try:
        async def active() -> bool:
            return engine.state is not None and any(
                f.primary and f.status in (FaultStatus.ACTIVE, FaultStatus.RECOVERED) for f in engine.state.faults)

        await wait_for(active, 20, "the fault to be injected")
        assert engine.state is not None
        target = next(f.member for f in engine.state.faults if f.primary)
        measured = await during(target, await addresses(rt))
    finally:
        report = await task
    assert report["rollback_confirmed"] is True, report["timeline"]
    lists = await agent_lists(rt)
    assert all(not lst.faults for lst in lists.values()), {m: list(lst.faults) for m, lst in lists.items()}
    return report, measured, target


CLIENT_NET = {"includeClients": True}


@pytest.mark.parametrize("fault,effect", [
    ({"type": "delay", "params": {"latencyMs": 400, **CLIENT_NET}, "direction": "inbound"}, "slow"),
    ({"type": "slowResponse", "params": {"delayMs": 400, **CLIENT_NET}}, "slow"),
    ({"type": "error", "params": {"code": "UNAVAILABLE", **CLIENT_NET}, "direction": "inbound"}, "UNAVAILABLE"),
    ({"type": "loss", "params": {"probability": 1.0, **CLIENT_NET}, "direction": "inbound"}, "dropped"),
], ids=["delay", "slowResponse", "error", "loss"])
async def test_network_fault_takes_effect_and_is_reverted(runtime: LocalRuntime, tmp_path: Path,
                                                          fault: dict[str, Any], effect: str) -> None:
    async def measure(target: str, addrs: dict[str, str]) -> tuple[float, str]:
        return await status_rtt(addrs[target], timeout=1.0)

    _, (rtt, code), target = await run_with_probe(runtime, tmp_path, {**fault, "target": {"mode": "one"}}, measure)
    if effect == "slow":
        assert rtt >= 0.35 and code == "OK", (rtt, code)
    elif effect == "dropped":
        assert code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"), (rtt, code)
    else:
        assert code == effect, (rtt, code)
    rtt, code = await status_rtt((await addresses(runtime))[target])
    assert code == "OK" and rtt < 0.3, "the effect is gone after rollback"


async def test_partition_of_the_leader_elects_another_and_heals(runtime: LocalRuntime, tmp_path: Path) -> None:
    before = await leader(runtime)

    async def new_leader(target: str, addrs: dict[str, str]) -> str:
        others = ClusterView({m: a for m, a in addrs.items() if m != target})
        got: list[str] = []

        async def elected() -> bool:
            st = await others.statuses()
            leaders = [s.id for s in st.values() if s is not None and s.role == "leader"]
            got.extend(leaders)
            return bool(leaders)

        try:
            await wait_for(elected, 10, "the majority side to elect a leader")
        finally:
            await others.close()
        return got[-1]

    report, elected, target = await run_with_probe(
        runtime, tmp_path, {"type": "partition", "target": {"role": "leader"}}, new_leader, duration=3)
    assert target == before and elected != before
    sides = {(f["member"], f["primary"]) for f in report["faults"]}
    assert len(sides) == 3, "both sides of the partition hold it"
    view = ClusterView(await addresses(runtime))
    try:
        await wait_for(lambda: _all_agree(view), 15, "every member to follow one leader again")
    finally:
        await view.close()


async def _all_agree(view: ClusterView) -> bool:
    st = await view.statuses()
    ids = {s.leader_id for s in st.values() if s is not None}
    return None not in st.values() and len(ids) == 1 and "" not in ids


async def test_pause_freezes_the_member_and_resume_thaws_it(runtime: LocalRuntime, tmp_path: Path) -> None:
    async def frozen(target: str, addrs: dict[str, str]) -> bool:
        return await healthy(addrs[target])

    _, was_healthy, target = await run_with_probe(runtime, tmp_path, {"type": "pause", "target": {"mode": "one"}},
                                                  frozen)
    assert was_healthy is False
    assert await healthy((await addresses(runtime))[target])


@pytest.mark.parametrize("kind", ["kill", "crash"])
async def test_kill_and_crash_restart_the_process(runtime: LocalRuntime, tmp_path: Path, kind: str) -> None:
    token = await runtime.agent_token(TARGET)
    addrs = await addresses(runtime)
    agents = await agent_addresses(runtime)
    started = {}
    for m, a in agents.items():
        async with AgentClient(a, token) as agent:
            started[m] = (await agent.list()).started_at

    async def nothing(target: str, addrs: dict[str, str]) -> None:
        return None

    report, _, target = await run_with_probe(runtime, tmp_path, {"type": kind, "target": {"role": "follower"}},
                                             nothing)
    async with AgentClient(agents[target], token) as agent:
        assert (await agent.list()).started_at != started[target], "the process restarted"
    assert any(e["kind"] == "restart" for e in report["timeline"])
    assert await healthy(addrs[target])


async def test_memory_pressure_and_cpu_burn_are_visible_in_proc(runtime: LocalRuntime, tmp_path: Path) -> None:
    async def rss(target: str, addrs: dict[str, str]) -> tuple[int, int]:
        pid = runtime.node_pid(TARGET, target)
        assert pid
        return pid, proc_stat(pid)[1]

    _, (pid, during), _ = await run_with_probe(
        runtime, tmp_path, {"type": "memoryPressure", "params": {"megabytes": 200}, "target": {"mode": "one"}}, rss)
    after = proc_stat(pid)[1]
    assert during - after >= 150 * 2**20, (during, after)

    # CPU time is no measure on a loaded 2-core machine; the burning threads themselves are
    # (Python 3.11 does not name OS threads, so count them).
    async def burners(target: str, addrs: dict[str, str]) -> tuple[int, int]:
        pid = runtime.node_pid(TARGET, target)
        assert pid
        return pid, burning_threads(pid)

    _, (pid, busy), _ = await run_with_probe(
        runtime, tmp_path, {"type": "cpuBurn", "params": {"threads": 2, "dutyCycle": 0.9}, "target": {"mode": "one"}},
        burners)
    assert busy - burning_threads(pid) >= 2, "the two burner threads ran during the fault and stopped after"


def burning_threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


async def test_disk_full_fails_the_leaders_writes(runtime: LocalRuntime, tmp_path: Path) -> None:
    async def put_fails(target: str, addrs: dict[str, str]) -> str:
        async with grpc.aio.insecure_channel(addrs[target]) as ch:
            try:
                await raft_pb2_grpc.KVStub(ch).Put(raft_pb2.PutRequest(key=b"disk", value=b"full"), timeout=1.0)
                return "OK"
            except grpc.aio.AioRpcError as exc:
                return exc.code().name

    _, code, _ = await run_with_probe(
        runtime, tmp_path, {"type": "diskFill", "params": {"enospc": True}, "target": {"role": "leader"}}, put_fails)
    assert code != "OK", "a write on a leader whose disk is full must not be acknowledged"
    lead = await leader(runtime)
    async with grpc.aio.insecure_channel((await addresses(runtime))[lead]) as ch:
        await raft_pb2_grpc.KVStub(ch).Put(raft_pb2.PutRequest(key=b"disk", value=b"ok"), timeout=3.0)


@pytest.mark.parametrize("fault", [
    {"type": "duplicate", "params": {"probability": 0.5}},
    {"type": "bandwidth", "params": {"bytesPerSecond": 100000}},
    {"type": "clockSkew", "params": {"offsetMs": 5000, "driftPpm": 1000}},
    {"type": "corruption", "params": {"target": "wal", "bytes": 4, "seed": 3}},
], ids=["duplicate", "bandwidth", "clockSkew", "corruption"])
async def test_agent_holds_the_fault_while_active_and_not_after(runtime: LocalRuntime, tmp_path: Path,
                                                               fault: dict[str, Any]) -> None:
    async def listed(target: str, addrs: dict[str, str]) -> list[str]:
        token = await runtime.agent_token(TARGET)
        async with AgentClient((await agent_addresses(runtime))[target], token) as agent:
            return [f"{a.fault.id} {a.detail}" for a in (await agent.list()).faults]

    _, held, _ = await run_with_probe(runtime, tmp_path, {**fault, "target": {"role": "follower"}}, listed)
    assert len(held) == 1, held
    if fault["type"] == "corruption":
        assert "flipped 4 byte(s)" in held[0]
