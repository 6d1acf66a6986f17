"""Disk faults through the fault agent: a member whose disk is full acknowledges nothing, then recovers."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from faultlab.nodes.agent import client as agent_client
from faultlab.protos.raft.v1 import raft_pb2 as pb
from faultlab.protos.raft.v1 import raft_pb2_grpc as pb_grpc
from tests.integration.cluster import FAST_TIMING, LocalRaftCluster

pytestmark = pytest.mark.timeout(120)
TOKEN = "raft-disk-test"


async def test_leader_with_full_disk_acks_nothing_and_recovers(
        raft_cluster: Callable[..., LocalRaftCluster]) -> None:
    c = raft_cluster(3, extra_args=(*FAST_TIMING, "--agent-token", TOKEN))
    leader = await c.wait_leader()
    async with c.client() as kv:
        await kv.put("before", "1")
        fault = agent_client.fault_from_spec("diskFill", {"enospc": True}, id="enospc-1", ttl_seconds=60)
        async with agent_client.AgentClient(c.members[leader].address, TOKEN) as agent:
            await agent.inject(fault)
            async with grpc.aio.insecure_channel(c.members[leader].address) as ch:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await pb_grpc.KVStub(ch).Put(pb.PutRequest(key=b"during", value=b"x"), timeout=3)
                assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                            grpc.StatusCode.FAILED_PRECONDITION)
            # the rest of the cluster elects another leader and keeps acknowledging writes
            new_leader = await c.wait_leader(exclude=(leader,), timeout=20)
            assert new_leader != leader
            await kv.put("during", "2")
            await agent.recover("enospc-1")
        await c.wait_caught_up([leader], timeout=30)
        assert await kv.get("during", serializable=True, member=c.members[leader].address) == b"2"
        assert await kv.get("before") == b"1"
