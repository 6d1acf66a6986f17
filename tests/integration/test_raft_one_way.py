"""One-way network faults between Raft members reach the replies too.

A follower answers the leader's appends on the leader's own call (the reply rides back in
trailing metadata). A fault on what the follower sends to the leader, or on what the leader
receives from it, must still stop those answers, or a "one-way partition" would partition
nothing: here the leader's view of the follower (its match index) freezes while the fault lasts
and catches up once it heals.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from faultlab.nodes.agent.client import AgentClient, fault_from_spec
from tests.integration.cluster import LocalRaftCluster

pytestmark = pytest.mark.timeout(120)

MakeCluster = Callable[..., LocalRaftCluster]
TOKEN = "one-way-test-token"


async def _match(c: LocalRaftCluster, leader: str, member: str) -> int:
    st = await c.status(leader)
    assert st is not None
    return next(m.match_index for m in st.members if m.id == member)


async def _one_way(c: LocalRaftCluster, target: str, peer: str, direction: str, leader: str, follower: str) -> None:
    async with AgentClient(c.members[target].address, TOKEN) as agent, c.client() as kv:
        await kv.put("warm", "up")
        await c.wait_caught_up()
        await agent.inject(fault_from_spec("partition", {}, id="one-way", ttl_seconds=60,
                                           match={"peers": [peer], "direction": direction}))
        frozen = await _match(c, leader, follower)
        for i in range(30):
            await kv.put(f"during-{i}", "v")  # committed by the leader and the other follower
        st = await c.status(leader)
        assert st is not None and st.commit_index >= frozen + 30
        assert await _match(c, leader, follower) == frozen, (
            f"the leader still hears {follower}'s acknowledgements through a one-way partition")
        await agent.recover("one-way")
        commit = st.commit_index

        async def caught_up() -> bool:
            return await _match(c, leader, follower) >= commit
        await c.wait_for(caught_up, 15, f"{follower} acknowledged again after the fault healed")


@pytest.mark.parametrize("side", ["follower-outbound", "leader-inbound"])
async def test_a_one_way_partition_stops_the_followers_acknowledgements(raft_cluster: MakeCluster,
                                                                       side: str) -> None:
    c = raft_cluster(3, env={"FAULTLAB_AGENT_TOKEN": TOKEN})
    leader = await c.wait_leader()
    follower = next(m for m in c.members if m != leader)
    if side == "follower-outbound":
        await _one_way(c, follower, leader, "outbound", leader, follower)
    else:
        await _one_way(c, leader, follower, "inbound", leader, follower)
    assert await c.wait_leader() == leader, "a one-way partition of a follower's sends moved the leadership"
