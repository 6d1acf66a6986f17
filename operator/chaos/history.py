"""Client histories of key-value operations: the model the verdict checkers read.

Clients (workload generators, the Raft simulator, integration tests) record each
call with :meth:`History.begin` and its response with :meth:`History.end`; the
recorded :class:`Operation` list feeds ``faultlab.operator.chaos.checks``.
Histories are saved as JSON lines so every experiment keeps its evidence.

Outcomes follow Jepsen: ``OK`` happened, ``FAIL`` definitely did not happen,
``UNKNOWN`` may or may not have happened (time-out, lost connection) and is
treated as still running forever (``ret = +inf``) by the checkers.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

__all__ = [
    "Call",
    "History",
    "OpHandle",
    "OpKind",
    "Operation",
    "Outcome",
    "load_jsonl",
    "save_jsonl",
]


class OpKind(StrEnum):
    PUT = "put"
    GET = "get"
    DELETE = "delete"
    CAS = "cas"


class Outcome(StrEnum):
    OK = "ok"
    FAIL = "fail"  # definitely not applied
    UNKNOWN = "unknown"  # may or may not have been applied


@dataclass(frozen=True, slots=True)
class Operation:
    """One completed (or abandoned) client call on one key.

    ``value``: the value a PUT writes, or a CAS's new value. ``expected``: the value
    a CAS requires (None = key absent). ``output``: what a GET read (None = not
    found). ``succeeded``: whether a CAS swapped. ``call``/``ret``: invocation and
    response times on one clock (monotonic seconds or simulator steps).
    """

    client: str
    kind: OpKind
    key: str
    value: str | None = None
    expected: str | None = None
    output: str | None = None
    succeeded: bool | None = None
    call: float = 0.0
    ret: float = 0.0
    outcome: Outcome = Outcome.OK

    @property
    def is_write(self) -> bool:
        return self.kind is not OpKind.GET

    @property
    def effective_ret(self) -> float:
        """Return time as the checkers see it: +inf when the outcome is unknown."""
        return math.inf if self.outcome is Outcome.UNKNOWN else self.ret

    def to_dict(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "kind": self.kind.value,
            "key": self.key,
            "value": self.value,
            "expected": self.expected,
            "output": self.output,
            "succeeded": self.succeeded,
            "call": self.call,
            "ret": None if math.isinf(self.ret) else self.ret,
            "outcome": self.outcome.value,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Operation:
        try:
            ret = data.get("ret")
            return cls(
                client=str(data["client"]),
                kind=OpKind(data["kind"]),
                key=str(data["key"]),
                value=data.get("value"),
                expected=data.get("expected"),
                output=data.get("output"),
                succeeded=data.get("succeeded"),
                call=float(data.get("call", 0.0)),
                ret=math.inf if ret is None else float(ret),
                outcome=Outcome(data.get("outcome", Outcome.OK.value)),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"not an operation record: {data!r} ({exc})") from exc

    def __str__(self) -> str:
        match self.kind:
            case OpKind.GET:
                body = f"get({self.key}) -> {self.output!r}"
            case OpKind.PUT:
                body = f"put({self.key}, {self.value!r})"
            case OpKind.DELETE:
                body = f"delete({self.key})"
            case OpKind.CAS:
                swapped = {True: "swapped", False: "no swap", None: "?"}[self.succeeded]
                body = f"cas({self.key}, {self.expected!r} -> {self.value!r}) {swapped}"
        ret = "inf" if math.isinf(self.effective_ret) else f"{self.ret:g}"
        return f"{self.client}: {body} [{self.call:g}, {ret}] {self.outcome.value}"


@dataclass(frozen=True, slots=True)
class OpHandle:
    """Opaque ticket from :meth:`History.begin`, passed back to :meth:`History.end`."""

    index: int


@dataclass(slots=True)
class _Pending:
    client: str
    kind: OpKind
    key: str
    value: str | None
    expected: str | None
    call: float


class History:
    """Thread-safe recorder of client operations.

    ``begin``/``end`` only take a lock for a few microseconds and never block on I/O,
    so they are safe to call from asyncio coroutines, threads and simulators alike.
    ``clock`` gives the timestamps (``time.monotonic`` by default; a simulator passes
    its step counter); ``at=`` overrides it for one call.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._next = 0
        self._pending: dict[int, _Pending] = {}
        self._done: list[tuple[int, Operation]] = []

    def begin(
        self,
        client: str,
        kind: OpKind | str,
        key: str,
        value: str | None = None,
        expected: str | None = None,
        *,
        at: float | None = None,
    ) -> OpHandle:
        kind = OpKind(kind)
        if kind is OpKind.PUT and value is None:
            raise ValueError(f"put on key {key!r} by {client!r} needs a value (use delete to remove a key)")
        if kind is OpKind.CAS and value is None:
            raise ValueError(f"cas on key {key!r} by {client!r} needs a new value")
        call = self._clock() if at is None else at
        with self._lock:
            index = self._next
            self._next += 1
            self._pending[index] = _Pending(client, kind, key, value, expected, call)
        return OpHandle(index)

    def end(
        self,
        handle: OpHandle,
        outcome: Outcome | str = Outcome.OK,
        output: str | None = None,
        succeeded: bool | None = None,
        *,
        at: float | None = None,
    ) -> Operation:
        outcome = Outcome(outcome)
        ret = self._clock() if at is None else at
        with self._lock:
            pending = self._pending.pop(handle.index, None)
            if pending is None:
                raise ValueError(f"operation #{handle.index} was never begun or has already ended")
            op = Operation(
                client=pending.client,
                kind=pending.kind,
                key=pending.key,
                value=pending.value,
                expected=pending.expected,
                output=output,
                succeeded=succeeded,
                call=pending.call,
                ret=max(ret, pending.call),
                outcome=outcome,
            )
            self._done.append((handle.index, op))
        return op

    @contextmanager
    def invoke(
        self,
        client: str,
        kind: OpKind | str,
        key: str,
        value: str | None = None,
        expected: str | None = None,
    ) -> Iterator[Call]:
        """Record one call; it ends ``UNKNOWN`` unless the body settles it.

        ``with history.invoke("c1", OpKind.GET, "k") as call: call.ok(output=await get("k"))``
        — an exception (time-out, lost connection) leaves the outcome unknown.
        """
        recorder = Call(self, self.begin(client, kind, key, value, expected))
        try:
            yield recorder
        finally:
            if not recorder.settled:
                recorder.unknown()

    def record(self, op: Operation) -> None:
        """Append an already complete operation (simulators that know both times)."""
        with self._lock:
            index = self._next
            self._next += 1
            self._done.append((index, op))

    def operations(self, *, include_pending: bool = True) -> list[Operation]:
        """All operations in invocation order; calls still open are reported ``UNKNOWN``."""
        with self._lock:
            items = list(self._done)
            pending = list(self._pending.items()) if include_pending else []
        for index, p in pending:
            op = Operation(p.client, p.kind, p.key, p.value, p.expected, None, None, p.call, math.inf, Outcome.UNKNOWN)
            items.append((index, op))
        items.sort(key=lambda item: (item[1].call, item[0]))
        return [op for _, op in items]

    def __len__(self) -> int:
        with self._lock:
            return len(self._done) + len(self._pending)

    def to_jsonl(self, path: str | Path) -> None:
        save_jsonl(self.operations(), path)

    @classmethod
    def from_jsonl(cls, path: str | Path, clock: Callable[[], float] = time.monotonic) -> History:
        history = cls(clock)
        for op in load_jsonl(path):
            history.record(op)
        return history


class Call:
    """The open call yielded by :meth:`History.invoke`; settle it once."""

    __slots__ = ("_handle", "_history", "operation")

    def __init__(self, history: History, handle: OpHandle) -> None:
        self._history = history
        self._handle = handle
        self.operation: Operation | None = None

    @property
    def settled(self) -> bool:
        return self.operation is not None

    def ok(self, output: str | None = None, succeeded: bool | None = None) -> Operation:
        return self._settle(Outcome.OK, output, succeeded)

    def fail(self) -> Operation:
        return self._settle(Outcome.FAIL, None, None)

    def unknown(self) -> Operation:
        return self._settle(Outcome.UNKNOWN, None, None)

    def _settle(self, outcome: Outcome, output: str | None, succeeded: bool | None) -> Operation:
        if self.operation is not None:
            raise ValueError(f"call already settled as {self.operation.outcome.value}: {self.operation}")
        self.operation = self._history.end(self._handle, outcome, output=output, succeeded=succeeded)
        return self.operation


def save_jsonl(ops: Iterable[Operation], path: str | Path) -> None:
    """Write one JSON object per line; an infinite ``ret`` is written as null."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for op in ops:
            out.write(json.dumps(op.to_dict(), separators=(",", ":"), allow_nan=False))
            out.write("\n")
    tmp.replace(target)


def load_jsonl(path: str | Path) -> list[Operation]:
    ops: list[Operation] = []
    with Path(path).open(encoding="utf-8") as src:
        for lineno, line in enumerate(src, 1):
            if not line.strip():
                continue
            try:
                ops.append(Operation.from_dict(json.loads(line)))
            except (json.JSONDecodeError, ValueError) as exc:
                raise ValueError(f"{path}:{lineno}: {exc}") from exc
    return ops
