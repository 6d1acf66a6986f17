"""Deadlines: one timer expires many futures on time, never a settled one, and lets go of
futures that completed."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from faultlab.nodes.common.deadlines import Deadlines


def expired(fut: asyncio.Future[Any], arg: Any) -> None:
    fut.set_exception(TimeoutError(arg))


async def test_pending_futures_fail_at_their_deadlines_in_order() -> None:
    loop = asyncio.get_running_loop()
    d = Deadlines()
    late, early, done = loop.create_future(), loop.create_future(), loop.create_future()
    start = loop.time()
    d.add(late, 1.0, expired, "late")
    d.add(early, 0.05, expired, "early")  # earlier than the armed timer: re-armed
    d.add(done, 0.05, expired, "done")
    done.set_result("answered")
    with pytest.raises(TimeoutError, match=r"^early$"):
        await asyncio.wait_for(early, 2)
    assert loop.time() - start >= 0.04
    assert not late.done()
    assert done.result() == "answered"  # a settled future is never touched
    with pytest.raises(TimeoutError, match=r"^late$"):
        await asyncio.wait_for(late, 5)
    assert loop.time() - start >= 0.99
    assert len(d) == 0


async def test_completed_futures_are_dropped_as_new_ones_arrive() -> None:
    loop = asyncio.get_running_loop()
    d = Deadlines()
    for _ in range(1000):
        fut = loop.create_future()
        d.add(fut, 60, expired)
        fut.set_result(None)
    assert len(d) == 1  # only the last one: every earlier one was settled when the next arrived


async def test_a_forgotten_future_is_not_kept_alive() -> None:
    loop = asyncio.get_running_loop()
    d = Deadlines()
    d.add(loop.create_future(), 60, expired)
    gc.collect()
    d.add(loop.create_future(), 60, expired)
    assert len(d) == 1
