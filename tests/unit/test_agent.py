"""Fault agent: matching, planning, validation, spec building, TTL healing, idempotency, auth."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from faultlab.nodes.agent import attach_agent, resources
from faultlab.nodes.agent.client import AgentClient, FaultSpecError, fault_from_spec, match_from_spec
from faultlab.nodes.agent.faults import ACTIVE, FaultError, FaultRegistry, validate_fault
from faultlab.nodes.agent.network import FROM_METADATA, NetworkFaults, TokenBucket, exempt, matches, sender_id
from faultlab.nodes.agent.resources import CORRUPTION_DIR, Corruption, DiskFloor, heal_leftover_corruption
from faultlab.nodes.common import faults as process_faults
from faultlab.nodes.common.clock import Clock
from faultlab.nodes.common.node import NodeContext
from faultlab.protos.agent.v1 import agent_pb2 as pb

PEER_SEND = "/faultlab.raft.v1.Peer/Send"
KV_PUT = "/faultlab.raft.v1.KV/Put"
TOKEN = "s3cret"
MIB = 1 << 20


async def wait_for(predicate, timeout: float = 5.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


# ------------------------------------------------------------------ matching


def test_exempt_services_are_never_matched() -> None:
    everything = pb.TrafficMatch(include_clients=True)
    for method in ("/faultlab.agent.v1.FaultAgent/Recover", "/grpc.health.v1.Health/Check",
                   "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"):
        assert exempt(method)
        assert not matches(everything, inbound=True, peer=None, method=method)
        assert not matches(everything, inbound=False, peer="n2", method=method)


@pytest.mark.parametrize(("match", "inbound", "peer", "method", "expected"), [
    (pb.TrafficMatch(), False, "n2", PEER_SEND, True),
    (pb.TrafficMatch(), True, "n2", PEER_SEND, True),
    (pb.TrafficMatch(peers=["n2"]), False, "n3", PEER_SEND, False),
    (pb.TrafficMatch(peers=["n2", "n3"]), True, "n3", PEER_SEND, True),
    (pb.TrafficMatch(direction=pb.DIRECTION_OUTBOUND), True, "n2", PEER_SEND, False),
    (pb.TrafficMatch(direction=pb.DIRECTION_OUTBOUND), False, "n2", PEER_SEND, True),
    (pb.TrafficMatch(direction=pb.DIRECTION_INBOUND), False, "n2", PEER_SEND, False),
    (pb.TrafficMatch(direction=pb.DIRECTION_INBOUND), True, "n2", PEER_SEND, True),
    (pb.TrafficMatch(methods=["/faultlab.raft.v1.Peer/"]), True, "n2", PEER_SEND, True),
    (pb.TrafficMatch(methods=["/faultlab.raft.v1.Peer/InstallSnapshot"]), True, "n2", PEER_SEND, False),
    # client traffic (no faultlab-from) only with include_clients, whatever the peers list says
    (pb.TrafficMatch(), True, None, KV_PUT, False),
    (pb.TrafficMatch(include_clients=True), True, None, KV_PUT, True),
    (pb.TrafficMatch(peers=["n2"], include_clients=True), True, None, KV_PUT, True),
    (pb.TrafficMatch(include_clients=True, direction=pb.DIRECTION_OUTBOUND), True, None, KV_PUT, False),
])
def test_matches(match: pb.TrafficMatch, inbound: bool, peer: str | None, method: str, expected: bool) -> None:
    assert matches(match, inbound=inbound, peer=peer, method=method) is expected


def test_token_bucket_serializes_messages() -> None:
    bucket = TokenBucket(1000)
    assert bucket.reserve(500, now=10.0) == pytest.approx(0.5)
    assert bucket.reserve(500, now=10.0) == pytest.approx(1.0)  # queued behind the first
    assert bucket.reserve(100, now=20.0) == pytest.approx(0.1)  # link idle again


def _fault(fault_id: str = "f1", ttl: int = 60, match: pb.TrafficMatch | None = None, **kind: object) -> pb.Fault:
    return pb.Fault(id=fault_id, ttl_seconds=ttl, match=match or pb.TrafficMatch(), **kind)  # type: ignore[arg-type]


def test_plan_combines_rules() -> None:
    net = NetworkFaults(seed=1)
    assert net.plan(inbound=False, peer="n2", method=PEER_SEND) is None
    net.add(_fault("d", delay=pb.Delay(latency_ms=100)))
    net.add(_fault("b", bandwidth=pb.Bandwidth(bytes_per_second=1000)))
    net.add(_fault("s", slow_response=pb.SlowResponse(delay_ms=50)))
    plan = net.plan(inbound=False, peer="n2", method=PEER_SEND)
    assert plan is not None and plan.delay == pytest.approx(0.1) and not plan.drop and plan.slow == 0
    assert len(plan.buckets) == 1
    inbound = net.plan(inbound=True, peer="n2", method=PEER_SEND)
    assert inbound is not None and inbound.slow == pytest.approx(0.05)
    net.add(_fault("p", partition=pb.Partition(), match=pb.TrafficMatch(peers=["n3"])))
    assert not net.plan(inbound=False, peer="n2", method=PEER_SEND).drop  # type: ignore[union-attr]
    assert "partition" in net.plan(inbound=False, peer="n3", method=PEER_SEND).drop  # type: ignore[union-attr]
    for fault_id in "dbsp":
        net.remove(fault_id)
    assert net.plan(inbound=False, peer="n3", method=PEER_SEND) is None


def test_plan_probabilities() -> None:
    net = NetworkFaults(seed=7)
    net.add(_fault("l", loss=pb.Loss(probability=0.25)))
    drops = sum(bool(net.plan(inbound=False, peer="n2", method=PEER_SEND).drop) for _ in range(4000))  # type: ignore[union-attr]
    assert 800 < drops < 1200
    net.remove("l")
    net.add(_fault("e", error=pb.ErrorInjection(code="ABORTED", probability=1.0)))
    plan = net.plan(inbound=True, peer="n2", method=PEER_SEND)
    assert plan is not None and plan.error is not None and plan.error[0] == grpc.StatusCode.ABORTED


# ------------------------------------------------------------------ validation and specs


@pytest.mark.parametrize(("fault", "field"), [
    (pb.Fault(ttl_seconds=5, partition=pb.Partition()), "fault.id"),
    (pb.Fault(id="x", partition=pb.Partition()), "fault.ttl_seconds"),
    (pb.Fault(id="x", ttl_seconds=3601, partition=pb.Partition()), "fault.ttl_seconds"),
    (pb.Fault(id="x", ttl_seconds=5), "fault.kind"),
    (pb.Fault(id="x", ttl_seconds=5, loss=pb.Loss(probability=1.5)), "fault.loss.probability"),
    (pb.Fault(id="x", ttl_seconds=5, delay=pb.Delay()), "fault.delay.latency_ms"),
    (pb.Fault(id="x", ttl_seconds=5, error=pb.ErrorInjection(code="BOOM")), "fault.error.code"),
    (pb.Fault(id="x", ttl_seconds=5, error=pb.ErrorInjection(code="OK")), "fault.error.code"),
    (pb.Fault(id="x", ttl_seconds=5, bandwidth=pb.Bandwidth()), "fault.bandwidth.bytes_per_second"),
    (pb.Fault(id="x", ttl_seconds=5, cpu_burn=pb.CpuBurn(threads=1, duty_cycle=2)), "fault.cpu_burn.duty_cycle"),
    (pb.Fault(id="x", ttl_seconds=5, memory_pressure=pb.MemoryPressure()), "fault.memory_pressure.megabytes"),
    (pb.Fault(id="x", ttl_seconds=5, clock_skew=pb.ClockSkew()), "fault.clock_skew.offset_ms"),
    (pb.Fault(id="x", ttl_seconds=5, corruption=pb.Corruption(target="log", bytes=1)), "fault.corruption.target"),
    (pb.Fault(id="x", ttl_seconds=5, partition=pb.Partition(), match=pb.TrafficMatch(methods=["Peer"])),
     "fault.match.methods[0]"),
])
def test_validation_names_the_field(fault: pb.Fault, field: str) -> None:
    with pytest.raises(FaultError) as info:
        validate_fault(fault)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.message.startswith(field + ":"), info.value.message


def test_fault_from_spec_builds_every_type() -> None:
    specs = {
        "delay": {"latency": "150ms", "jitterMs": 10}, "loss": {"probability": 0.1}, "duplicate": {},
        "bandwidth": {"bytesPerSecond": 10_000}, "partition": {}, "error": {"code": "unavailable"},
        "slowResponse": {"delay": "1s"}, "crash": {"exitCode": 3}, "cpuBurn": {"threads": 2, "dutyCycle": 0.5},
        "memoryPressure": {"megabytes": 64}, "diskFill": {"enospc": True}, "clockSkew": {"offsetMs": -500},
        "corruption": {"target": "wal", "bytes": 4, "seed": 9},
    }
    for kind, params in specs.items():
        fault = fault_from_spec(kind, params, id=f"f-{kind}", ttl_seconds=30, match={"peers": ["n2"]})
        assert fault.id == f"f-{kind}" and fault.ttl_seconds == 30 and list(fault.match.peers) == ["n2"]
    delay = fault_from_spec("delay", {"latency": "150ms"}, id="d", ttl_seconds=1).delay
    assert delay.latency_ms == 150
    assert fault_from_spec("slowResponse", {"delay": "1.5s"}, id="s", ttl_seconds=1).slow_response.delay_ms == 1500
    assert fault_from_spec("error", {"code": "unavailable"}, id="e", ttl_seconds=1).error.probability == 1.0
    match = match_from_spec({"direction": "inbound", "methods": "/faultlab.raft.v1.Peer/", "includeClients": True})
    assert match.direction == pb.DIRECTION_INBOUND and match.include_clients and list(match.methods)


@pytest.mark.parametrize(("kind", "params", "ttl", "match", "field"), [
    ("teleport", {}, 5, None, "type"),
    ("loss", {"probability": 1.5}, 5, None, "loss.probability"),
    ("loss", {}, 5, None, "loss.probability"),
    ("loss", {"probability": "lots"}, 5, None, "loss.probability"),
    ("delay", {"latency": "soon"}, 5, None, "delay.latency"),
    ("partition", {"foo": 1}, 5, None, "partition.foo"),
    ("partition", {}, 0, None, "ttlSeconds"),
    ("partition", {}, 9999, None, "ttlSeconds"),
    ("partition", {}, 5, {"direction": "sideways"}, "match.direction"),
    ("error", {"code": "NOPE"}, 5, None, "error.code"),
    ("corruption", {"target": "disk"}, 5, None, "corruption.target"),
])
def test_fault_from_spec_errors_name_the_field(kind: str, params: dict, ttl: int, match: dict | None,
                                               field: str) -> None:
    with pytest.raises(FaultSpecError) as info:
        fault_from_spec(kind, params, id="x", ttl_seconds=ttl, match=match)
    assert info.value.field == field, str(info.value)


# ------------------------------------------------------------------ registry


async def test_inject_is_idempotent_and_recover_undoes_once() -> None:
    applied: list[str] = []
    undone: list[str] = []

    async def apply(fault: pb.Fault):
        applied.append(fault.id)
        return "ok", lambda: undone.append(fault.id)

    registry = FaultRegistry(apply)
    fault = _fault("a", partition=pb.Partition())
    _, created = await registry.inject(fault)
    assert created
    _, created = await registry.inject(fault)
    assert not created and applied == ["a"]
    with pytest.raises(FaultError) as info:
        await registry.inject(_fault("a", loss=pb.Loss(probability=1)))
    assert info.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert await registry.recover("a") and not await registry.recover("a")
    assert undone == ["a"]
    _, created = await registry.inject(fault)  # an id can be reused once recovered
    assert created and await registry.recover_all() == ["a"]


async def test_concurrent_injects_with_one_id_apply_once() -> None:
    applied: list[str] = []
    gate = asyncio.Event()

    async def apply(fault: pb.Fault):
        applied.append(fault.id)
        await gate.wait()
        return "ok", lambda: None

    registry = FaultRegistry(apply)
    fault = _fault("a", partition=pb.Partition())
    first = asyncio.ensure_future(registry.inject(fault))
    second = asyncio.ensure_future(registry.inject(fault))
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(first, second)
    assert sorted(created for _, created in results) == [False, True] and applied == ["a"]
    await registry.recover_all()


async def test_ttl_heals_without_anyone_calling_recover() -> None:
    undone = asyncio.Event()

    async def apply(fault: pb.Fault):
        return "ok", undone.set

    registry = FaultRegistry(apply)
    entry, _ = await registry.inject(_fault("t", ttl=1, partition=pb.Partition()))
    assert entry.expires_at == pytest.approx(entry.injected_at + 1)
    start = time.monotonic()
    await asyncio.wait_for(undone.wait(), timeout=5)
    assert 0.9 <= time.monotonic() - start < 3 and registry.active() == []


# ------------------------------------------------------------------ the service in-process


@pytest.fixture
async def agent_server(tmp_path: Path) -> AsyncIterator[tuple[NodeContext, str]]:
    ctx = NodeContext(kind="echo", node_id="n1", listen="127.0.0.1:0", peers={}, data_dir=tmp_path,
                      agent_token=TOKEN, clock=Clock())
    agent = attach_agent(ctx)
    assert agent is not None and len(ctx.server_interceptors) == 1 and len(ctx.client_interceptor_factories) == 1
    server = ctx.create_server()
    agent.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield ctx, f"127.0.0.1:{port}"
    finally:
        await agent.close()
        await server.stop(0)


def test_attach_agent_without_token_is_disabled(tmp_path: Path) -> None:
    ctx = NodeContext(kind="echo", node_id="n1", listen="127.0.0.1:0", peers={}, data_dir=tmp_path)
    assert attach_agent(ctx) is None
    assert ctx.server_interceptors == [] and ctx.client_interceptor_factories == []


@pytest.mark.parametrize("token", ["", "wrong", f"{TOKEN}x"])
async def test_calls_without_the_token_are_unauthenticated(agent_server, token: str) -> None:
    _, address = agent_server
    if token:
        client = AgentClient(address, token)
    else:
        client = AgentClient(address, "")
        client._metadata = ()  # no authorization header at all
    async with client:
        for call in (client.list(), client.recover_all(), client.recover("x"),
                     client.inject(_fault("a", partition=pb.Partition()))):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "token" in (info.value.details() or "")


async def test_other_services_do_not_need_the_token(agent_server) -> None:
    _, address = agent_server
    async with grpc.aio.insecure_channel(address) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_service_inject_list_recover(agent_server) -> None:
    ctx, address = agent_server
    async with AgentClient(address, TOKEN) as client:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.inject(pb.Fault(id="z", partition=pb.Partition()))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (info.value.details() or "").startswith("fault.ttl_seconds:")
        fault = fault_from_spec("clockSkew", {"offsetMs": 5000}, id="skew", ttl_seconds=60)
        first = await client.inject(fault)
        again = await client.inject(fault)
        assert first.created and not again.created and first.id == "skew"
        assert ctx.clock.time() - time.time() == pytest.approx(5.0, abs=0.5)
        listed = await client.list()
        assert listed.node_id == "n1" and listed.started_at == ctx.started_at
        assert [f.fault.id for f in listed.faults] == ["skew"]
        assert listed.faults[0].expires_at == pytest.approx(listed.faults[0].injected_at + 60)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.inject(fault_from_spec("clockSkew", {"offsetMs": 1}, id="skew2", ttl_seconds=60))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert await client.recover("skew") and not await client.recover("skew")
        assert not ctx.clock.skewed and (await client.list()).faults == []


async def test_enospc_flag(agent_server) -> None:
    _, address = agent_server
    async with AgentClient(address, TOKEN) as client:
        await client.inject(fault_from_spec("diskFill", {"enospc": True}, id="e1", ttl_seconds=60))
        await client.inject(fault_from_spec("diskFill", {"enospc": True}, id="e2", ttl_seconds=60))
        assert process_faults.DISK.enospc
        with pytest.raises(OSError):
            process_faults.DISK.check_write("x")
        await client.recover("e1")
        assert process_faults.DISK.enospc  # e2 still holds it
        assert await client.recover_all() == ["e2"]
        assert not process_faults.DISK.enospc


async def test_corruption_flips_and_restores(agent_server) -> None:
    ctx, address = agent_server
    async with AgentClient(address, TOKEN) as client:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.inject(fault_from_spec("corruption", {"target": "wal", "bytes": 8}, id="c", ttl_seconds=60))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "wal" in (info.value.details() or "")
        wal = ctx.data_dir / "wal"
        wal.mkdir()
        (wal / "0001.wal").write_bytes(b"a" * 4096)
        newest = wal / "0002.wal"
        original = bytes(range(256)) * 16
        newest.write_bytes(original)
        response = await client.inject(
            fault_from_spec("corruption", {"target": "wal", "bytes": 8, "seed": 42}, id="c", ttl_seconds=60))
        corrupted = newest.read_bytes()
        diff = [i for i in range(len(original)) if corrupted[i] != original[i]]
        assert len(diff) == 8 and str(newest) in response.detail and "seed=42" in response.detail
        assert all(str(i) in response.detail for i in diff)
        assert (wal / "0001.wal").read_bytes() == b"a" * 4096
        records = list((ctx.data_dir / CORRUPTION_DIR).glob("*.json"))
        assert len(records) == 1 and '"fault": "c"' in records[0].read_text()
        await client.recover("c")
        assert newest.read_bytes() == original
        assert not (ctx.data_dir / CORRUPTION_DIR).exists()


def _wal_file(data_dir: Path) -> tuple[Path, bytes]:
    (data_dir / "wal").mkdir(parents=True)
    path = data_dir / "wal" / "0000000000000001.wal"
    original = bytes(range(256)) * 8
    path.write_bytes(original)
    return path, original


def test_corruption_outlives_its_process_and_the_next_one_heals_it(tmp_path: Path) -> None:
    """The agent that flipped the bytes died with its process: the record on disk undoes them."""
    path, original = _wal_file(tmp_path)
    Corruption.apply(tmp_path, "wal", 8, seed=5, fault_id="fl-run-0-n3-1")  # the process then dies
    assert path.read_bytes() != original
    notes = heal_leftover_corruption(tmp_path)
    assert path.read_bytes() == original
    assert len(notes) == 1 and "'fl-run-0-n3-1'" in notes[0] and "restored 8 of 8" in notes[0]
    assert not (tmp_path / CORRUPTION_DIR).exists() and heal_leftover_corruption(tmp_path) == []


def test_heal_puts_back_only_bytes_still_flipped(tmp_path: Path) -> None:
    path, _ = _wal_file(tmp_path)
    c = Corruption.apply(tmp_path, "wal", 4, seed=9, fault_id="x")
    first = min(c.original)
    data = bytearray(path.read_bytes())
    data[first] = 0x5A if c.flipped[first] != 0x5A else 0xA5  # rewritten since by someone else
    path.write_bytes(bytes(data[: len(data) - 1]))  # and the last byte truncated away
    notes = heal_leftover_corruption(tmp_path)
    healed = path.read_bytes()
    restored = sum(1 for pos, old in c.original.items() if pos < len(healed) and healed[pos] == old)
    assert healed[first] == data[first] and "rewritten or truncated" in notes[0]
    assert f"restored {restored} of 4" in notes[0]


def test_a_file_replaced_since_is_left_alone(tmp_path: Path) -> None:
    path, _ = _wal_file(tmp_path)
    c = Corruption.apply(tmp_path, "wal", 4, seed=2, fault_id="x")
    damaged = path.read_bytes()
    tmp = path.with_name("rewrite.tmp")
    tmp.write_bytes(damaged)  # an atomic rewrite: same name and bytes, another file
    tmp.replace(path)
    assert c.restore() == 0 and path.read_bytes() == damaged


def test_attaching_the_agent_heals_corruption_a_dead_process_left(tmp_path: Path) -> None:
    path, original = _wal_file(tmp_path)
    Corruption.apply(tmp_path, "wal", 3, seed=1, fault_id="old")
    ctx = NodeContext(kind="echo", node_id="n1", listen="127.0.0.1:0", peers={}, data_dir=tmp_path)
    assert attach_agent(ctx) is None  # even with the agent disabled
    assert path.read_bytes() == original


def test_unreadable_corruption_record_is_dropped(tmp_path: Path) -> None:
    (tmp_path / CORRUPTION_DIR).mkdir()
    (tmp_path / CORRUPTION_DIR / "bad.json").write_text("{not json")
    notes = heal_leftover_corruption(tmp_path)
    assert "unreadable" in notes[0] and not (tmp_path / CORRUPTION_DIR).exists()


async def test_disk_fill_leaves_the_requested_free_space(agent_server) -> None:
    import os

    ctx, address = agent_server
    st = os.statvfs(ctx.data_dir)
    free = st.f_bavail * st.f_frsize
    leave = max(0, free - 32 * 1024 * 1024)  # at most 32 MiB of ballast, never the whole disk
    ballast = ctx.data_dir / ".faultlab-ballast"
    async with AgentClient(address, TOKEN) as client:
        await client.inject(fault_from_spec("diskFill", {"leaveFreeBytes": leave}, id="d", ttl_seconds=60))
        size = sum(p.stat().st_size for p in ballast.iterdir())
        assert 16 * 1024 * 1024 <= size <= 48 * 1024 * 1024
        await client.recover("d")
        assert not ballast.exists()


@pytest.mark.parametrize(("text", "min_bytes", "percent"), [
    ("auto", 1 << 30, 5.0), ("", 1 << 30, 5.0), ("0", 0, 0.0), ("2GiB", 2 << 30, 0.0), ("512mb", 512 << 20, 0.0),
    ("1.5G", 3 << 29, 0.0), ("4096", 4096, 0.0), ("10%", 0, 10.0),
])
def test_disk_floor_parse(text: str, min_bytes: int, percent: float) -> None:
    assert DiskFloor.parse(text) == DiskFloor(min_bytes, percent)


@pytest.mark.parametrize("text", ["lots", "-1G", "150%", "1 parsec"])
def test_disk_floor_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="disk fill floor"):
        DiskFloor.parse(text)


def test_default_disk_floor_is_the_larger_of_1gib_and_5_percent(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    assert DiskFloor().bytes_for(tmp_path) == max(1 << 30, st.f_blocks * st.f_frsize * 5 // 100)
    assert DiskFloor.parse("0").bytes_for(tmp_path) == 0


def test_ballast_refuses_when_free_space_is_already_at_the_floor(tmp_path: Path) -> None:
    floor = resources.free_bytes(tmp_path) + (1 << 30)
    with pytest.raises(FaultError) as info:
        resources.Ballast.fill(tmp_path, 0, floor)
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "safe floor" in info.value.message and "enospc" in info.value.message
    assert not (tmp_path / resources.BALLAST_DIR).exists()


def test_ballast_stops_at_the_floor_and_gives_space_back_below_it(tmp_path: Path) -> None:
    free = resources.free_bytes(tmp_path)
    floor = free - 32 * MIB
    # leave_free far below the floor, as `leaveFreeBytes: 0` would: the floor bounds the ballast
    ballast = resources.Ballast.fill(tmp_path, max(0, free - 256 * MIB), floor)
    try:
        held = sum(p.stat().st_size for p in ballast.files)
        assert 16 * MIB <= held <= 40 * MIB and held == ballast.written
        filler = tmp_path / "someone-else"
        with open(filler, "wb") as f:  # another member (or the host) writes 16 MiB on the shared disk
            os.posix_fallocate(f.fileno(), 0, 16 * MIB)
        released = ballast.trim(floor)
        assert 8 * MIB <= released <= held
        assert sum(p.stat().st_size for p in ballast.files) == held - released == ballast.written
    finally:
        ballast.remove()
    assert not (tmp_path / resources.BALLAST_DIR).exists()


async def test_disk_fill_through_the_agent_respects_the_node_floor(tmp_path: Path) -> None:
    free = resources.free_bytes(tmp_path)
    ctx = NodeContext(kind="echo", node_id="n1", listen="127.0.0.1:0", peers={}, data_dir=tmp_path,
                      agent_token=TOKEN, clock=Clock(), disk_fill_floor=str(free - 32 * MIB))
    agent = attach_agent(ctx)
    assert agent is not None
    fault = fault_from_spec("diskFill", {"leaveFreeBytes": max(0, free - 256 * MIB)}, id="d", ttl_seconds=60)
    entry, _ = await agent.registry.inject(fault)
    try:
        held = sum(p.stat().st_size for p in (tmp_path / resources.BALLAST_DIR).iterdir())
        assert held <= 40 * MIB and "safe floor" in entry.detail
    finally:
        await agent.close()
    assert not (tmp_path / resources.BALLAST_DIR).exists()


async def test_ttl_heals_clock_skew_although_the_clock_jumped(agent_server) -> None:
    ctx, address = agent_server
    async with AgentClient(address, TOKEN) as client:
        await client.inject(fault_from_spec("clockSkew", {"offsetMs": -3_600_000, "driftPpm": -500_000},
                                            id="skew", ttl_seconds=1))
        assert ctx.clock.skewed
        await wait_for(lambda: not ctx.clock.skewed, timeout=5)
        assert (await client.list()).faults == []


def test_sender_id() -> None:
    assert sender_id("n1") == "n1"
    assert sender_id("n1=10.0.0.1:7000") == "n1"
    assert sender_id(b"n2=host:1") == "n2"


async def test_interceptors_stamp_sender_and_fault_by_peer(tmp_path: Path) -> None:
    """n2 calls n1 through a peer channel: n1 sees who sent it, and faults follow the peer id."""
    seen: list[str] = []

    async def ping(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        seen.extend(str(v) for k, v in context.invocation_metadata() if k == FROM_METADATA)
        return request

    async def upload(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        return str(sum([len(r) async for r in requests])).encode()

    n1 = NodeContext(kind="t", node_id="n1", listen="127.0.0.1:0", peers={}, data_dir=tmp_path / "1",
                     agent_token=TOKEN, clock=Clock())
    agent1 = attach_agent(n1)
    assert agent1 is not None
    server = n1.create_server()
    agent1.add_to_server(server)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Echo", {
        "Ping": grpc.unary_unary_rpc_method_handler(ping),
        "Upload": grpc.stream_unary_rpc_method_handler(upload),
    }),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    n2 = NodeContext(kind="t", node_id="n2", listen="127.0.0.1:0", peers={}, data_dir=tmp_path / "2",
                     agent_token=TOKEN, clock=Clock())
    agent2 = attach_agent(n2)
    assert agent2 is not None
    channel = n2.channel("n1", f"127.0.0.1:{port}")
    ping_call = channel.unary_unary("/t.Echo/Ping")
    upload_call = channel.stream_unary("/t.Echo/Upload")
    try:
        assert await ping_call(b"x") == b"x"
        assert await ping_call(b"x", metadata=((FROM_METADATA, "n2=127.0.0.1:9"),)) == b"x"
        assert seen == ["n2", "n2=127.0.0.1:9"]  # a caller's own value is kept, not doubled

        gauge = ACTIVE.labels("partition")
        before = gauge._value.get()
        await agent1.registry.inject(_fault("in", partition=pb.Partition(), match=pb.TrafficMatch(peers=["n2"])))
        assert gauge._value.get() == before + 1
        for metadata in (None, ((FROM_METADATA, "n2=127.0.0.1:9"),)):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await ping_call(b"x", metadata=metadata)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "partition" in (info.value.details() or "")
        await agent1.registry.recover("in")
        assert gauge._value.get() == before

        await agent2.registry.inject(_fault("out", partition=pb.Partition(), match=pb.TrafficMatch(peers=["n1"])))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await upload_call(iter([b"ab", b"cd"]))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        await agent2.registry.recover("out")
        assert await upload_call(iter([b"ab", b"cd"])) == b"4"
    finally:
        await channel.close()
        await agent1.close()
        await agent2.close()
        await server.stop(0)
