"""The batching both ends of KV.Pipeline share: what is ready goes in one message, in order,
bounded in bytes, and nothing queued before a close is lost."""

from __future__ import annotations

import asyncio

from faultlab.nodes.raft.pipeline import Outbox, batch_size
from faultlab.protos.raft.v1 import raft_pb2 as pb


def put(i: int, value_bytes: int = 10) -> pb.PipelineRequest:
    return pb.PipelineRequest(id=i + 1, put=pb.PutRequest(key=f"k{i:03d}".encode(), value=b"x" * value_bytes))


def wrap(items: list[pb.PipelineRequest]) -> pb.PipelineRequests:
    return pb.PipelineRequests(requests=items)


def test_batch_size_counts_bytes_and_always_takes_one() -> None:
    items = [put(i, 1000) for i in range(10)]
    each = items[0].ByteSize()
    assert batch_size(items, limit=10 * each) == 10
    assert batch_size(items, limit=3 * each) == 3
    assert batch_size(items, limit=3 * each - 1) == 2
    # An item larger than the limit still goes, alone: a batch is never empty.
    assert batch_size(items, limit=1) == 1
    assert batch_size([], limit=1) == 0


async def test_what_is_ready_at_a_write_goes_in_one_message_in_order() -> None:
    box: Outbox[pb.PipelineRequest, pb.PipelineRequests] = Outbox(wrap)
    got: list[list[int]] = []

    async def consume() -> None:
        async for batch in box.batches():
            got.append([r.id for r in batch.requests])

    consumer = asyncio.create_task(consume())
    for i in range(1, 6):
        box.put(put(i))
    await asyncio.sleep(0)  # the consumer wakes once for all five
    box.put(put(6))
    box.close()
    await asyncio.wait_for(consumer, 5)
    assert got[0] == [2, 3, 4, 5, 6]
    assert [i for batch in got for i in batch] == [2, 3, 4, 5, 6, 7]


async def test_a_close_hands_out_what_was_queued_first() -> None:
    box: Outbox[pb.PipelineRequest, pb.PipelineRequests] = Outbox(wrap)
    for i in range(3):
        box.put(put(i))
    box.close()
    batches = [b async for b in box.batches()]
    assert [[r.id for r in b.requests] for b in batches] == [[1, 2, 3]]


async def test_a_backlog_larger_than_a_message_is_split() -> None:
    box: Outbox[pb.PipelineRequest, pb.PipelineRequests] = Outbox(wrap, limit=5 * put(0, 1000).ByteSize())
    for i in range(12):
        box.put(put(i, 1000))
    box.close()
    sizes = [len(b.requests) async for b in box.batches()]
    assert sizes == [5, 5, 2]
