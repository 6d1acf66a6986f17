"""The local runtime with real node processes: up -> leader, status, kill -> restart, pause/resume, down."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner

from faultlab.nodes.agent.client import AgentClient
from faultlab.operator.api import RaftCluster, load_one
from faultlab.operator.cli import cli
from faultlab.operator.runtime import local
from faultlab.operator.runtime.base import Member, RuntimeError_, TargetRef
from faultlab.operator.runtime.local import LocalRuntime, pid_alive

pytestmark = pytest.mark.timeout(180)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "raft-cluster.yaml"
TARGET = TargetRef("RaftCluster", "demo")
UP_TIMEOUT_S = 60.0


def all_pids(runtime: LocalRuntime, name: str) -> list[int]:
    """Every supervisor and node pid the cluster has (or had, for nodes: the current one)."""
    pids: list[int] = []
    for m in runtime.load(name).members:
        pids += [p for p in (m.supervisor_pid, m.node_pid()) if p]
    return pids


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[LocalRuntime, list[Member]]]:
    runtime = LocalRuntime(tmp_path / "state")
    members = await runtime.up(load_one(EXAMPLE, RaftCluster), timeout_s=UP_TIMEOUT_S)
    try:
        yield runtime, members
    finally:
        if runtime.clusters():
            await runtime.down("demo")


async def test_up_elects_a_leader_and_reports_status(cluster: tuple[LocalRuntime, list[Member]]) -> None:
    runtime, members = cluster
    assert [m.id for m in members] == ["n1", "n2", "n3"]
    hosts = {m.address.rpartition(":")[0] for m in members}
    assert len(hosts) == 3 or hosts == {"127.0.0.1"}, "members should sit on distinct loopback addresses"
    assert all(m.process.isdigit() for m in members)

    status = await runtime.status("demo")
    assert status.phase == "Running" and status.ready_replicas == 3 and status.leader in {"n1", "n2", "n3"}
    assert all(s.role in {"Leader", "Follower"} for s in status.members)
    assert sum(s.role == "Leader" for s in status.members) == 1

    cdir = runtime.cluster_dir("demo")
    token_file = cdir / "agent-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert await runtime.agent_token(TARGET) == token_file.read_text().strip() != ""
    saved = json.loads((cdir / "cluster.json").read_text())
    assert [m["id"] for m in saved["members"]] == ["n1", "n2", "n3"] and saved["spec"]["replicas"] == 3
    # each agent listens on a port of its own beside its member's data port, as in a pod
    assert [m["agentAddress"] for m in saved["members"]] == [m.agent_address for m in members]
    for m in members:
        host, _, port = m.address.rpartition(":")
        agent_host, _, agent_port = m.agent_address.rpartition(":")
        assert agent_host == host and agent_port != port
    async with AgentClient(members[0].address, await runtime.agent_token(TARGET)) as on_data_port:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await on_data_port.list()
    assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED, "the data port does not serve the agent"
    assert all((cdir / f"n{i}").is_dir() and (cdir / f"n{i}.log").is_file() for i in (1, 2, 3))

    # `up` again with the same spec is a no-op returning the same members
    again = await runtime.up(load_one(EXAMPLE, RaftCluster), timeout_s=UP_TIMEOUT_S)
    assert [(m.id, m.address, m.agent_address, m.process) for m in again] == [
        (m.id, m.address, m.agent_address, m.process) for m in members]


def command_lines_with(needle: str) -> dict[int, str]:
    """Every process on the host whose command line contains `needle` (what `ps` shows any user)."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue  # exited meanwhile
            if needle.encode() in cmd:
                found[int(entry.name)] = cmd.replace(b"\0", b" ").decode(errors="replace")
    return found


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
async def test_the_agent_token_is_on_no_command_line(cluster: tuple[LocalRuntime, list[Member]]) -> None:
    runtime, members = cluster
    token = await runtime.agent_token(TARGET)
    assert len(token) >= 32
    pids = all_pids(runtime, "demo")
    assert len(pids) == 6 and all(pid_alive(p) for p in pids)
    assert all(Path(f"/proc/{p}/cmdline").read_bytes() for p in pids), "every supervisor and node is readable"
    assert command_lines_with(token) == {}
    # the nodes did get the token: every agent accepts it
    for m in members:
        async with AgentClient(m.agent_address, token) as client:
            assert (await client.list()).node_id == m.id
    # and a node the supervisor restarts reads it again, still off its command line
    victim = members[0]
    old = runtime.node_pid(TARGET, victim.id)
    await runtime.kill(TARGET, victim)
    assert await runtime.wait_running(TARGET, victim, timeout_s=30)
    assert runtime.node_pid(TARGET, victim.id) != old
    assert command_lines_with(token) == {}
    async with AgentClient(victim.agent_address, token) as client:
        assert (await client.list()).node_id == victim.id


async def test_kill_restarts_the_member_with_a_new_pid(cluster: tuple[LocalRuntime, list[Member]]) -> None:
    runtime, members = cluster
    leader = await runtime.wait_for_leader("demo")
    victim = next(m for m in members if m.id == leader)
    old_pid = runtime.node_pid(TARGET, victim.id)
    assert old_pid is not None
    supervisor = runtime.load("demo").member(victim.id).supervisor_pid

    await runtime.kill(TARGET, victim)
    assert await runtime.wait_running(TARGET, victim, timeout_s=30)
    new_pid = runtime.node_pid(TARGET, victim.id)
    assert new_pid is not None and new_pid != old_pid
    assert not pid_alive(old_pid)
    assert runtime.load("demo").member(victim.id).supervisor_pid == supervisor and pid_alive(supervisor)
    assert runtime.load("demo").member(victim.id).supervisor_state()["restarts"] == 1
    # the cluster has a leader again and the restarted member rejoins it
    await runtime.wait_for_leader("demo", timeout_s=30)
    views = {v.id: v for v in await runtime.inspect("demo")}
    assert views[victim.id].process == "running" and views[victim.id].restarts == 1


async def test_pause_and_resume(cluster: tuple[LocalRuntime, list[Member]]) -> None:
    runtime, members = cluster
    leader = await runtime.wait_for_leader("demo")
    follower = next(m for m in members if m.id != leader)
    pid = runtime.node_pid(TARGET, follower.id)

    await runtime.pause(TARGET, follower)
    views = {v.id: v for v in await runtime.inspect("demo")}
    assert views[follower.id].process == "paused" and not views[follower.id].ready
    assert not await runtime.wait_running(TARGET, follower, timeout_s=0.3)
    # the other two still form a quorum
    assert (await runtime.status("demo")).phase == "Degraded"

    await runtime.resume(TARGET, follower)
    await runtime.resume(TARGET, follower)  # safe on a running process
    assert await runtime.wait_running(TARGET, follower, timeout_s=30)
    assert runtime.node_pid(TARGET, follower.id) == pid, "resume must not restart the process"


async def test_down_leaves_no_processes(cluster: tuple[LocalRuntime, list[Member]]) -> None:
    runtime, members = cluster
    leader = await runtime.wait_for_leader("demo")
    await runtime.pause(TARGET, next(m for m in members if m.id != leader))  # down resumes it first
    pids = all_pids(runtime, "demo")
    assert len(pids) == 6 and all(pid_alive(p) for p in pids)

    await runtime.down("demo")
    assert [p for p in pids if pid_alive(p)] == []
    assert runtime.clusters() == []
    assert (runtime.cluster_dir("demo") / "n1.log").is_file(), "logs outlive the cluster"
    with pytest.raises(RuntimeError_, match="no local cluster 'demo'"):
        await runtime.members(TARGET)


async def test_a_node_that_cannot_start_fails_up_with_its_log(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "NODE_MODULE", "faultlab.nodes.no_such_node")
    runtime = LocalRuntime(tmp_path / "state")
    with pytest.raises(RuntimeError_) as info:
        await runtime.up(load_one(EXAMPLE, RaftCluster), timeout_s=UP_TIMEOUT_S)
    message = str(info.value)
    assert "failed to start: its node process exited" in message
    assert "No module named faultlab.nodes.no_such_node" in message
    assert [p for p in all_pids(runtime, "demo") if pid_alive(p)] == []


def test_cli_up_status_down(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    runner = CliRunner()
    up = runner.invoke(cli, ["up", "-f", str(EXAMPLE), "--state-dir", state, "--timeout", str(UP_TIMEOUT_S)])
    try:
        assert up.exit_code == 0, up.output
        assert "RaftCluster demo is up" in up.output and "leader: n" in up.output
        status = runner.invoke(cli, ["status", "demo", "--state-dir", state])
        assert status.exit_code == 0, status.output
        for member in ("n1", "n2", "n3"):
            assert member in status.output
        assert "Leader" in status.output and "SERVING" in status.output
        assert "agent" in status.output
        for m in LocalRuntime(Path(state)).load("demo").members:
            assert m.address in status.output and m.agent_address in status.output

        # two of three frozen: no quorum, no leader -> non-zero exit
        runtime = LocalRuntime(Path(state))
        frozen = asyncio.run(runtime.members(TARGET))[:2]
        for m in frozen:
            asyncio.run(runtime.pause(TARGET, m))
        try:
            lost = runner.invoke(cli, ["status", "--state-dir", state])
            assert lost.exit_code == 1 and "no leader" in lost.output, lost.output
        finally:
            for m in frozen:
                asyncio.run(runtime.resume(TARGET, m))
    finally:
        down = runner.invoke(cli, ["down", "--all", "--state-dir", state])
    assert down.exit_code == 0, down.output
    after = runner.invoke(cli, ["status", "--state-dir", state])
    assert after.exit_code == 1 and "no local clusters" in after.output
