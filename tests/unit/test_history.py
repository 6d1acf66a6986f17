"""History recorder: timestamps, outcomes, concurrency and JSON-lines artifacts."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import threading
from pathlib import Path

import pytest

from faultlab.operator.chaos.history import (
    History,
    Operation,
    OpKind,
    Outcome,
    load_jsonl,
    save_jsonl,
)


def step_clock() -> itertools.count[float]:
    return itertools.count(1.0)


def test_begin_end_records_times_from_the_clock() -> None:
    ticks = step_clock()
    history = History(clock=lambda: next(ticks))
    handle = history.begin("c1", OpKind.PUT, "k", value="v1")
    op = history.end(handle)
    assert op == Operation("c1", OpKind.PUT, "k", value="v1", call=1.0, ret=2.0, outcome=Outcome.OK)
    got = history.end(history.begin("c2", "get", "k"), "ok", output="v1")
    assert (got.kind, got.output, got.call, got.ret) == (OpKind.GET, "v1", 3.0, 4.0)
    cas = history.end(history.begin("c1", OpKind.CAS, "k", value="v2", expected="v1", at=10), succeeded=True, at=12)
    assert (cas.expected, cas.value, cas.succeeded, cas.call, cas.ret) == ("v1", "v2", True, 10, 12)
    assert history.operations() == [op, got, cas]
    assert len(history) == 3


def test_end_twice_or_unknown_handle_is_an_error() -> None:
    history = History()
    handle = history.begin("c1", OpKind.GET, "k")
    history.end(handle, output=None)
    with pytest.raises(ValueError, match="already ended"):
        history.end(handle)


def test_put_and_cas_need_a_value() -> None:
    history = History()
    with pytest.raises(ValueError, match="needs a value"):
        history.begin("c1", OpKind.PUT, "k")
    with pytest.raises(ValueError, match="new value"):
        history.begin("c1", OpKind.CAS, "k", expected="a")


def test_pending_calls_are_reported_unknown_forever() -> None:
    history = History(clock=lambda: 5.0)
    history.begin("c1", OpKind.PUT, "k", value="v")
    history.end(history.begin("c2", OpKind.GET, "k"), output=None)
    (pending, done) = history.operations()
    assert pending.outcome is Outcome.UNKNOWN and pending.ret == math.inf and pending.effective_ret == math.inf
    assert done.outcome is Outcome.OK
    assert history.operations(include_pending=False) == [done]


def test_unknown_outcome_keeps_its_ret_but_checkers_see_infinity() -> None:
    op = Operation("c", OpKind.PUT, "k", value="v", call=1, ret=2, outcome=Outcome.UNKNOWN)
    assert op.ret == 2 and op.effective_ret == math.inf


def test_operations_are_ordered_by_invocation() -> None:
    history = History()
    h1 = history.begin("a", OpKind.PUT, "k", value="1", at=5)
    h2 = history.begin("b", OpKind.PUT, "k", value="2", at=1)
    history.end(h1, at=6)
    history.end(h2, at=7)
    assert [op.client for op in history.operations()] == ["b", "a"]


def test_invoke_context_manager_settles_outcomes() -> None:
    history = History(clock=step_clock().__next__)
    with history.invoke("c1", OpKind.GET, "k") as call:
        call.ok(output="x")
    with history.invoke("c1", OpKind.PUT, "k", value="y") as call:
        call.fail()
    with pytest.raises(TimeoutError), history.invoke("c1", OpKind.PUT, "k", value="z"):
        raise TimeoutError
    with history.invoke("c1", OpKind.DELETE, "k"):
        pass
    outcomes = [(op.kind, op.outcome) for op in history.operations()]
    assert outcomes == [
        (OpKind.GET, Outcome.OK),
        (OpKind.PUT, Outcome.FAIL),
        (OpKind.PUT, Outcome.UNKNOWN),
        (OpKind.DELETE, Outcome.UNKNOWN),
    ]
    with history.invoke("c1", OpKind.GET, "k") as call:
        call.ok(output=None)
        with pytest.raises(ValueError, match="already settled"):
            call.fail()


def test_threads_record_concurrently() -> None:
    history = History()

    def client(name: str) -> None:
        for i in range(500):
            handle = history.begin(name, OpKind.PUT, "k", value=f"{name}-{i}")
            history.end(handle)

    threads = [threading.Thread(target=client, args=(f"c{n}",)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ops = history.operations()
    assert len(ops) == 4000
    assert len({op.value for op in ops}) == 4000
    assert all(op.ret >= op.call for op in ops)


async def test_asyncio_clients_record_concurrently() -> None:
    history = History()

    async def client(name: str) -> None:
        for i in range(50):
            with history.invoke(name, OpKind.PUT, f"k{i % 3}", value=f"{name}-{i}") as call:
                await asyncio.sleep(0)
                call.ok()

    await asyncio.gather(*(client(f"c{n}") for n in range(16)))
    ops = history.operations()
    assert len(ops) == 800
    assert all(op.outcome is Outcome.OK for op in ops)


def test_jsonl_round_trip(tmp_path: Path) -> None:
    ops = [
        Operation("c1", OpKind.PUT, "k", value="v1", call=0.5, ret=1.25),
        Operation("c2", OpKind.GET, "k", output=None, call=1, ret=2),
        Operation("c3", OpKind.CAS, "k", value="v2", expected="v1", succeeded=False, call=2, ret=3),
        Operation("c4", OpKind.DELETE, "k", call=3, ret=math.inf, outcome=Outcome.UNKNOWN),
        Operation("c5", OpKind.PUT, "ключ", value="ü", call=4, ret=5, outcome=Outcome.FAIL),
    ]
    history = History()
    for op in ops:
        history.record(op)
    path = tmp_path / "history.jsonl"
    history.to_jsonl(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(ops)
    assert json.loads(lines[3])["ret"] is None  # strict JSON: no Infinity
    assert History.from_jsonl(path).operations() == ops
    assert load_jsonl(path) == ops


def test_jsonl_pending_calls_are_saved_unknown(tmp_path: Path) -> None:
    history = History(clock=lambda: 1.0)
    history.begin("c1", OpKind.PUT, "k", value="v")
    path = tmp_path / "h.jsonl"
    history.to_jsonl(path)
    (op,) = load_jsonl(path)
    assert op.outcome is Outcome.UNKNOWN and op.ret == math.inf


def test_jsonl_bad_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    save_jsonl([Operation("c", OpKind.GET, "k")], path)
    with path.open("a", encoding="utf-8") as f:
        f.write('{"client": "c", "kind": "teleport", "key": "k"}\n')
    with pytest.raises(ValueError, match=r"h\.jsonl:2"):
        load_jsonl(path)
