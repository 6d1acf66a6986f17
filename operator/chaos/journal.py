"""Durable experiment state: what the engine did and what it must undo.

The engine writes its state *before* every action (phase changes, each fault it is
about to inject), so a killed engine can be resumed and always rolls back what it
injected. Storage sits behind :class:`StateStore`: locally a journal file written
atomically with fsync (:class:`FileStateStore`); on Kubernetes the resource's status.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "TERMINAL_PHASES",
    "Event",
    "ExperimentState",
    "FaultRecord",
    "FaultStatus",
    "FileStateStore",
    "MemoryStateStore",
    "Phase",
    "StateStore",
]


class Phase(StrEnum):
    """The API's ExperimentPhase names, so a journal maps onto a ChaosExperiment status."""

    PENDING = "Pending"
    DRY_RUN = "DryRun"
    STEADY_STATE_CHECK = "SteadyStateCheck"
    INJECTING = "Injecting"
    OBSERVING = "Observing"
    ROLLING_BACK = "RollingBack"
    VERIFYING = "Verifying"
    CHECKING = "Checking"
    COMPLETED = "Completed"
    ABORTED = "Aborted"
    FAILED = "Failed"


TERMINAL_PHASES = frozenset({Phase.COMPLETED, Phase.ABORTED, Phase.FAILED, Phase.DRY_RUN})


class FaultStatus(StrEnum):
    INJECTING = "injecting"  # journaled, Inject sent or about to be: outcome unknown
    ACTIVE = "active"
    RECOVERING = "recovering"
    RECOVERED = "recovered"  # rollback confirmed (agent List shows it gone / process back)
    FAILED = "failed"  # Inject refused: nothing to undo, kept for the report


@dataclass
class FaultRecord:
    """One fault on one member. ``mechanism``: agent | kill | pause."""

    id: str
    member: str
    address: str
    type: str
    mechanism: str
    step: int
    fault_index: int
    fault_name: str
    ttl_seconds: int
    params: dict[str, Any] = field(default_factory=dict)
    peers: list[str] = field(default_factory=list)
    primary: bool = True  # False for the mirror side of a partition
    process: str = ""
    agent_started_at: float | None = None
    status: FaultStatus = FaultStatus.INJECTING
    injected_at: float | None = None
    recovered_at: float | None = None
    detail: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultRecord:
        data = dict(data)
        data["status"] = FaultStatus(data.get("status", FaultStatus.INJECTING.value))
        return cls(**data)


@dataclass
class Event:
    """One timeline entry: ``at`` is Unix time (seconds)."""

    at: float
    kind: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        return cls(at=float(data["at"]), kind=str(data["kind"]), message=str(data["message"]),
                   data=dict(data.get("data") or {}))


@dataclass
class ExperimentState:
    """Everything needed to resume, roll back and report an experiment run."""

    name: str
    run_id: str
    spec: dict[str, Any]
    seed: int
    phase: Phase = Phase.PENDING
    step: int = -1
    injection_started_at: float | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    faults: list[FaultRecord] = field(default_factory=list)
    timeline: list[Event] = field(default_factory=list)
    members: dict[str, str] = field(default_factory=dict)  # id -> address at plan time
    # id -> FaultAgent address at plan time (journals from before agents had a port of their own
    # lack it: their agents answered at `members`).
    agents: dict[str, str] = field(default_factory=dict)
    plan: list[dict[str, Any]] = field(default_factory=list)
    aborted: str = ""
    message: str = ""
    verdict: str | None = None
    interrupted: bool = False
    interruption: str = ""  # what interrupted the run and what that cut short (e.g. an operator shutdown)
    resumes: int = 0
    rollback_confirmed: bool | None = None
    paused_seconds: float = 0.0  # time spec.paused held injection back (the clock runs on)
    watchdogs: list[int] = field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES

    def event(self, kind: str, message: str, at: float | None = None, **data: Any) -> Event:
        ev = Event(at=time.time() if at is None else at, kind=kind, message=message, data=data)
        self.timeline.append(ev)
        return ev

    def outstanding(self) -> list[FaultRecord]:
        """Faults that may still be in effect: everything not confirmed recovered or refused."""
        return [f for f in self.faults if f.status not in (FaultStatus.RECOVERED, FaultStatus.FAILED)]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["phase"] = self.phase.value
        for f in data["faults"]:
            f["status"] = FaultStatus(f["status"]).value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentState:
        data = dict(data)
        data["phase"] = Phase(data.get("phase", Phase.PENDING.value))
        data["faults"] = [FaultRecord.from_dict(f) for f in data.get("faults", [])]
        data["timeline"] = [Event.from_dict(e) for e in data.get("timeline", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


class StateStore(Protocol):
    """Where an experiment's state lives between (and across) engine processes."""

    def load(self) -> ExperimentState | None: ...

    def save(self, state: ExperimentState) -> None: ...


class MemoryStateStore:
    """In-process store (tests, dry runs); keeps a serialized copy, like a real store."""

    def __init__(self) -> None:
        self.saved: dict[str, Any] | None = None
        self.saves = 0

    def load(self) -> ExperimentState | None:
        return None if self.saved is None else ExperimentState.from_dict(json.loads(json.dumps(self.saved)))

    def save(self, state: ExperimentState) -> None:
        self.saved = json.loads(json.dumps(state.to_dict()))
        self.saves += 1


class FileStateStore:
    """``journal.json`` written atomically: temp file, fsync, rename, fsync of the directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> ExperimentState | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return ExperimentState.from_dict(json.loads(text))
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{self.path}: not a faultlab experiment journal ({exc})") from exc

    def save(self, state: ExperimentState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        payload = json.dumps(state.to_dict(), indent=1, sort_keys=True).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
