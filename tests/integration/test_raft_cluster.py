"""A real Raft KV cluster (member processes on loopback): the API, errors, membership, recovery."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import grpc
import pytest

from faultlab.nodes.raft.client import FailedPrecondition, InvalidArgument, RaftClient
from faultlab.protos.raft.v1 import raft_pb2 as pb
from faultlab.protos.raft.v1 import raft_pb2_grpc as pb_grpc
from tests.integration.cluster import FAST_TIMING, LocalRaftCluster

pytestmark = pytest.mark.timeout(120)

MakeCluster = Callable[..., LocalRaftCluster]


async def test_kv_api_errors_and_redirects(raft_cluster: MakeCluster) -> None:
    c = raft_cluster(3)
    leader = await c.wait_leader()
    async with c.client() as kv:
        put = await kv.put("a", "1")
        assert put.index > 0 and not put.prev_found
        assert (await kv.put("a", "2")).prev_value == b"1"
        assert await kv.get("a") == b"2"
        assert (await kv.cas("a", "2", "3")).succeeded
        assert not (await kv.cas("a", "2", "4")).succeeded
        assert (await kv.cas("new", None, "x")).succeeded
        await kv.put("p/1", "x")
        await kv.put("p/2", "y")
        assert await kv.range("p/") == ([(b"p/1", b"x"), (b"p/2", b"y")], False)
        assert await kv.range("p/", limit=1) == ([(b"p/1", b"x")], True)
        assert await kv.delete("a") is True
        assert await kv.get("a") is None

        with pytest.raises(InvalidArgument, match="key: must not be empty"):
            await kv.put("", "v")
        with pytest.raises(InvalidArgument, match=r"value: 2000000 bytes exceeds --max-value-bytes=1048576"):
            await kv.put("big", b"x" * 2_000_000)
        with pytest.raises(InvalidArgument, match="id: no member 'n9'"):
            await kv.remove_member("n9")
        with pytest.raises(InvalidArgument, match="id: no member 'n9'"):
            await kv.promote_learner("n9")

        async def replicated() -> pb.StatusResponse | None:
            st = await kv.status()
            return st if all(m.match_index > 0 for m in st.members) else None
        st = await c.wait_for(replicated, 10, "match indexes in Status")
        assert st.role == pb.ROLE_LEADER
        assert {m.id for m in st.members} == {"n1", "n2", "n3"}
        leader = st.id

    follower = next(m for m in c.members if m != leader)
    async with grpc.aio.insecure_channel(c.members[follower].address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await pb_grpc.KVStub(ch).Put(pb.PutRequest(key=b"k", value=b"v"), timeout=5)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        md = dict(err.value.trailing_metadata() or ())
        assert md["faultlab-leader"] == f"{leader}={c.members[leader].address}"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await pb_grpc.KVStub(ch).Get(pb.GetRequest(key=b"k"), timeout=5)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        await c.wait_caught_up()
        got = await pb_grpc.KVStub(ch).Get(
            pb.GetRequest(key=b"new", consistency=pb.READ_CONSISTENCY_SERIALIZABLE), timeout=5)
        assert got.found and got.value == b"x"

    # a client that only knows a follower follows the redirect
    async with RaftClient([c.members[follower].address]) as kv:
        await kv.put("via-follower", "ok")
        assert await kv.get("via-follower") == b"ok"


async def test_retried_write_with_same_session_applies_once(raft_cluster: MakeCluster) -> None:
    c = raft_cluster(3)
    leader = await c.wait_leader()
    async with grpc.aio.insecure_channel(c.members[leader].address) as ch:
        kv = pb_grpc.KVStub(ch)
        session = pb.Session(client_id="retry-test", sequence=1)
        await kv.Put(pb.PutRequest(key=b"k", value=b"first", session=session))
        await kv.Put(pb.PutRequest(key=b"k", value=b"other"))
        again = await kv.Put(pb.PutRequest(key=b"k", value=b"first", session=session))
        assert again.prev_found is False, "the retry returns the first answer"
        assert (await kv.Get(pb.GetRequest(key=b"k"))).value == b"other"


async def test_membership_add_learner_promote_remove_with_snapshot(raft_cluster: MakeCluster) -> None:
    c = raft_cluster(3, extra_args=(*FAST_TIMING, "--snapshot-threshold", "50"))
    await c.wait_leader()
    async with c.client() as kv:
        await asyncio.gather(*(kv.put(f"k{i}", f"v{i}") for i in range(200)))
        n4 = c.add_member("n4")
        resp = await kv.add_learner("n4", n4.address)
        assert {(m.id, m.voter) for m in resp.members} >= {("n4", False)}
        await c.wait_caught_up(["n4"])
        st4 = await c.status("n4")
        assert st4 is not None and st4.role == pb.ROLE_LEARNER and st4.snapshot_index > 0
        assert await kv.get("k150", serializable=True, member=n4.address) == b"v150"

        resp = await kv.promote_learner("n4")
        assert ("n4", True) in {(m.id, m.voter) for m in resp.members}
        leader = await c.wait_leader()
        victim = next(m for m in ("n1", "n2", "n3") if m != leader)
        resp = await kv.remove_member(victim)
        assert victim not in {m.id for m in resp.members}
        c.kill(victim)
        await kv.put("after", "removal")
        assert await kv.get("after") == b"removal"
        leader = await c.wait_leader()
        new_leader = await kv.transfer_leadership()
        assert new_leader != leader
        assert await c.wait_leader() == new_leader
        await kv.put("after", "transfer")
        # removing the leader itself: it hands leadership over, the client follows, the new leader removes it
        resp = await kv.remove_member(new_leader)
        assert new_leader not in {m.id for m in resp.members}
        await kv.put("after", "leader removal")
        assert await kv.get("after") == b"leader removal"


async def test_promote_learner_that_cannot_catch_up_fails_clearly(raft_cluster: MakeCluster) -> None:
    c = raft_cluster(3)
    await c.wait_leader()
    async with c.client() as kv:
        await kv.put("x", "y")
        await kv.add_learner("ghost", "127.0.0.1:1")
        with pytest.raises(FailedPrecondition, match="learner ghost has not caught up"):
            await kv.promote_learner("ghost", timeout=2.0)
        await kv.remove_member("ghost")


async def test_torn_wal_tail_restarts_and_rejoins(raft_cluster: MakeCluster) -> None:
    c = raft_cluster(3)
    leader = await c.wait_leader()
    follower = next(m for m in c.members if m != leader)
    async with c.client() as kv:
        for i in range(30):
            await kv.put(f"k{i}", f"v{i}")
        await c.wait_caught_up()
        c.kill(follower)
        seg = sorted((c.members[follower].data_dir / "wal").glob("*.wal"))[-1]
        with open(seg, "r+b") as f:
            f.truncate(seg.stat().st_size - 7)
        for i in range(30, 40):
            await kv.put(f"k{i}", f"v{i}")
        c.start_member(follower)
        await c.wait_caught_up([follower])
        assert await kv.get("k39", serializable=True, member=c.members[follower].address) == b"v39"
    assert "torn tail truncated" in c.log_tail(follower, 200)


async def test_wal_corrupted_mid_log_refuses_to_start(raft_cluster: MakeCluster) -> None:
    c = raft_cluster(3)
    leader = await c.wait_leader()
    follower = next(m for m in c.members if m != leader)
    async with c.client() as kv:
        for i in range(20):
            await kv.put(f"k{i}", f"v{i}" * 10)
        await c.wait_caught_up()
    c.kill(follower, signal.SIGTERM)
    seg = sorted((c.members[follower].data_dir / "wal").glob("*.wal"))[0]
    raw = bytearray(seg.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    seg.write_bytes(bytes(raw))
    c.start_member(follower)
    code = await c.wait_exit(follower)
    assert code != 0
    out = c.log_tail(follower, 50)
    assert "refusing to start" in out and str(seg) in out and "offset" in out
