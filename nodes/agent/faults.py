"""Fault validation and the registry of active faults, each healed by its own TTL timer.

The TTL runs on the event loop's clock (real monotonic time), never on the node's
skewable clock, so a clock-skew fault cannot postpone its own healing.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from prometheus_client import Counter, Gauge

from faultlab.protos.agent.v1 import agent_pb2 as pb

log = logging.getLogger("faultlab.agent")

MAX_TTL_SECONDS = 3600
MAX_ID_LENGTH = 128
MAX_DELAY_MS = 60_000
MAX_CPU_THREADS = 256
MAX_MEMORY_MB = 1 << 20
MAX_CORRUPT_BYTES = 1 << 16
MAX_CLOCK_OFFSET_MS = 7 * 24 * 3600 * 1000

KINDS: tuple[str, ...] = tuple(f.name for f in pb.Fault.DESCRIPTOR.oneofs_by_name["kind"].fields)
NETWORK_KINDS = frozenset({"delay", "loss", "duplicate", "bandwidth", "partition", "error", "slow_response"})

ACTIVE = Gauge("faultlab_agent_active_faults", "Faults active in this node's fault agent, by type.", ["type"])
INJECTIONS = Counter("faultlab_agent_injections", "Faults injected by this node's fault agent, by type.", ["type"])

Undo = Callable[[], "Awaitable[None] | None"]
Apply = Callable[[pb.Fault], Awaitable[tuple[str, Undo]]]


class FaultError(Exception):
    """A fault the agent refuses or cannot apply; `code` is the gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(field: str, message: str) -> FaultError:
    return FaultError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {message}")


def fault_kind(fault: pb.Fault) -> str:
    return fault.WhichOneof("kind") or ""


def _probability(field: str, value: float) -> None:
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise invalid(field, f"must be within [0, 1], got {value}")


def _at_most(field: str, value: int, limit: int) -> None:
    if value > limit:
        raise invalid(field, f"must be at most {limit}, got {value}")


def validate_match(match: pb.TrafficMatch, field: str = "fault.match") -> None:
    if match.direction not in pb.Direction.values():
        raise invalid(f"{field}.direction", f"unknown direction {match.direction}")
    for i, peer in enumerate(match.peers):
        if not peer:
            raise invalid(f"{field}.peers[{i}]", "must be a node id, got an empty string")
    for i, method in enumerate(match.methods):
        if not method.startswith("/"):
            raise invalid(f"{field}.methods[{i}]",
                          f"must be a full gRPC method prefix starting with '/' "
                          f"(e.g. /faultlab.raft.v1.Peer/), got {method!r}")


def validate_fault(fault: pb.Fault) -> None:
    """Raises FaultError(INVALID_ARGUMENT) naming the first bad field."""
    if not fault.id:
        raise invalid("fault.id", "required (a caller-chosen id, used to recover the fault)")
    if len(fault.id) > MAX_ID_LENGTH:
        raise invalid("fault.id", f"must be at most {MAX_ID_LENGTH} characters")
    if fault.ttl_seconds == 0:
        raise invalid("fault.ttl_seconds", "required and > 0: every fault heals itself when its TTL ends")
    _at_most("fault.ttl_seconds", fault.ttl_seconds, MAX_TTL_SECONDS)
    kind = fault_kind(fault)
    if not kind:
        raise invalid("fault.kind", f"set exactly one of {', '.join(KINDS)}")
    validate_match(fault.match)
    f = f"fault.{kind}"
    if kind == "delay":
        if fault.delay.latency_ms == 0 and fault.delay.jitter_ms == 0:
            raise invalid(f"{f}.latency_ms", "must be > 0 (or set jitter_ms)")
        _at_most(f"{f}.latency_ms", fault.delay.latency_ms, MAX_DELAY_MS)
        _at_most(f"{f}.jitter_ms", fault.delay.jitter_ms, MAX_DELAY_MS)
    elif kind == "loss":
        _probability(f"{f}.probability", fault.loss.probability)
    elif kind == "duplicate":
        _probability(f"{f}.probability", fault.duplicate.probability)
    elif kind == "bandwidth":
        if fault.bandwidth.bytes_per_second == 0:
            raise invalid(f"{f}.bytes_per_second", "must be > 0")
    elif kind == "error":
        code = fault.error.code
        if code not in grpc.StatusCode.__members__ or code == "OK":
            names = ", ".join(c for c in grpc.StatusCode.__members__ if c != "OK")
            raise invalid(f"{f}.code", f"{code!r} is not a gRPC status code name other than OK; use one of {names}")
        _probability(f"{f}.probability", fault.error.probability)
    elif kind == "slow_response":
        if fault.slow_response.delay_ms == 0:
            raise invalid(f"{f}.delay_ms", "must be > 0")
        _at_most(f"{f}.delay_ms", fault.slow_response.delay_ms, MAX_DELAY_MS)
    elif kind == "crash":
        if not 0 <= fault.crash.exit_code <= 255:
            raise invalid(f"{f}.exit_code", f"must be within [0, 255], got {fault.crash.exit_code}")
    elif kind == "cpu_burn":
        if fault.cpu_burn.threads == 0:
            raise invalid(f"{f}.threads", "must be > 0")
        _at_most(f"{f}.threads", fault.cpu_burn.threads, MAX_CPU_THREADS)
        duty = fault.cpu_burn.duty_cycle
        if math.isnan(duty) or not 0.0 < duty <= 1.0:
            raise invalid(f"{f}.duty_cycle", f"must be within (0, 1], got {duty}")
    elif kind == "memory_pressure":
        if fault.memory_pressure.megabytes == 0:
            raise invalid(f"{f}.megabytes", "must be > 0")
        _at_most(f"{f}.megabytes", fault.memory_pressure.megabytes, MAX_MEMORY_MB)
    elif kind == "clock_skew":
        skew = fault.clock_skew
        if skew.offset_ms == 0 and skew.drift_ppm == 0:
            raise invalid(f"{f}.offset_ms", "set offset_ms or drift_ppm to a non-zero value")
        if abs(skew.offset_ms) > MAX_CLOCK_OFFSET_MS:
            raise invalid(f"{f}.offset_ms", f"must be within ±{MAX_CLOCK_OFFSET_MS}, got {skew.offset_ms}")
        if math.isnan(skew.drift_ppm) or not -1e6 < skew.drift_ppm <= 1e6:
            raise invalid(f"{f}.drift_ppm", f"must be within (-1000000, 1000000], got {skew.drift_ppm}")
    elif kind == "corruption":
        if fault.corruption.target not in ("wal", "snapshot"):
            raise invalid(f"{f}.target", f"must be 'wal' or 'snapshot', got {fault.corruption.target!r}")
        if fault.corruption.bytes == 0:
            raise invalid(f"{f}.bytes", "must be > 0")
        _at_most(f"{f}.bytes", fault.corruption.bytes, MAX_CORRUPT_BYTES)


@dataclass
class ActiveEntry:
    fault: pb.Fault
    injected_at: float
    expires_at: float
    detail: str
    undo: Undo
    timer: asyncio.TimerHandle | None = None

    def to_proto(self) -> pb.ActiveFault:
        return pb.ActiveFault(fault=self.fault, injected_at=self.injected_at, expires_at=self.expires_at,
                              detail=self.detail)


class FaultRegistry:
    """Active faults by id. Inject is idempotent by id; every fault heals itself after its TTL."""

    def __init__(self, apply: Apply, *, on_change: Callable[[str, pb.Fault], None] | None = None) -> None:
        self._apply = apply
        self._on_change = on_change
        self._active: dict[str, ActiveEntry] = {}
        self._pending: dict[str, asyncio.Future[ActiveEntry]] = {}
        self._tasks: set[asyncio.Task[object]] = set()

    def get(self, fault_id: str) -> ActiveEntry | None:
        return self._active.get(fault_id)

    def active(self) -> list[ActiveEntry]:
        return list(self._active.values())

    @staticmethod
    def _same(existing: pb.Fault, fault: pb.Fault) -> None:
        if existing != fault:
            raise FaultError(grpc.StatusCode.ALREADY_EXISTS,
                             f"fault {fault.id!r} is active with a different spec; recover it first "
                             f"or choose another id")

    async def inject(self, fault: pb.Fault) -> tuple[ActiveEntry, bool]:
        """Applies the fault (validated first); returns (entry, created). created=False: already active."""
        validate_fault(fault)
        existing = self._active.get(fault.id)
        if existing is not None:
            self._same(existing.fault, fault)
            return existing, False
        pending = self._pending.get(fault.id)
        if pending is not None:
            entry = await asyncio.shield(pending)
            self._same(entry.fault, fault)
            return entry, False
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ActiveEntry] = loop.create_future()
        self._pending[fault.id] = future
        try:
            detail, undo = await self._apply(fault)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # marks it retrieved when no duplicate is waiting
            raise
        finally:
            del self._pending[fault.id]
        now = time.time()
        entry = ActiveEntry(fault=fault, injected_at=now, expires_at=now + fault.ttl_seconds, detail=detail,
                            undo=undo)
        entry.timer = loop.call_later(fault.ttl_seconds, self._expire, fault.id)
        self._active[fault.id] = entry
        future.set_result(entry)
        kind = fault_kind(fault)
        ACTIVE.labels(kind).inc()
        INJECTIONS.labels(kind).inc()
        log.warning("fault %s (%s) injected for %ss: %s", fault.id, kind, fault.ttl_seconds, detail)
        if self._on_change:
            self._on_change("fault_injected", fault)
        return entry, True

    def _expire(self, fault_id: str) -> None:
        entry = self._active.get(fault_id)
        if entry is None:
            return
        log.warning("fault %s healed: TTL of %ss ended", fault_id, entry.fault.ttl_seconds)
        task = asyncio.ensure_future(self.recover(fault_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def recover(self, fault_id: str) -> bool:
        """Undoes the fault; False when no fault with this id is active."""
        entry = self._active.pop(fault_id, None)
        if entry is None:
            return False
        if entry.timer is not None:
            entry.timer.cancel()
        ACTIVE.labels(fault_kind(entry.fault)).dec()
        try:
            result = entry.undo()
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("fault %s: undo failed", fault_id)
        log.warning("fault %s (%s) recovered", fault_id, fault_kind(entry.fault))
        if self._on_change:
            self._on_change("fault_recovered", entry.fault)
        return True

    async def recover_all(self) -> list[str]:
        recovered = []
        for fault_id in list(self._active):
            if await self.recover(fault_id):
                recovered.append(fault_id)
        return recovered
