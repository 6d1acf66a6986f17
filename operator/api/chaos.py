"""ChaosExperiment: what to break, how far, for how long, and how the verdict is checked.

Validation that needs no cluster lives in the models; the blast-radius rule that
needs the target's size is `check_blast_radius(spec, replicas)`, which the engine
and the operator call before injecting anything.
"""

from __future__ import annotations

import math
import re
import zoneinfo
from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from faultlab.operator.api.common import PRESERVE_UNKNOWN, ApiModel, Condition, Resource
from faultlab.operator.api.raftcluster import fault_tolerance, member_ids

# ---------------------------------------------------------------- target

TargetKind = Literal["RaftCluster"]


class Target(ApiModel):
    """The system under test."""

    kind: TargetKind = Field(default="RaftCluster", description="Kind of the target resource.")
    name: str = Field(min_length=1, description="Name of the target resource.")
    namespace: str | None = Field(default=None, description="Its namespace; defaults to the experiment's.")
    selector: dict[str, str] | None = Field(
        default=None, description="Only members whose labels match all of these can be fault targets.")


# ---------------------------------------------------------------- probes

ProbeType = Literal["workloadErrorRate", "workloadLatency", "health", "leaderExists", "http", "command"]
Percentile = Literal["p50", "p90", "p99"]


class Tolerance(ApiModel):
    """What a probe accepts as steady: an error-rate bound or a latency bound."""

    max_value: float | None = Field(default=None, alias="max", ge=0,
                                    description="workloadErrorRate: highest acceptable error rate, 0..1.")
    max_ms: float | None = Field(default=None, gt=0, description="workloadLatency: highest acceptable latency (ms).")
    percentile: Percentile = Field(default="p99", description="workloadLatency: percentile compared with maxMs.")


class Probe(ApiModel):
    """A check of the steady state, evaluated every `everySeconds`."""

    name: str = Field(min_length=1, description="Unique name, referenced by abortConditions.")
    type: ProbeType = Field(description="What is measured.")
    tolerance: Tolerance | None = Field(
        default=None, description="Bound for workloadErrorRate (max) and workloadLatency (maxMs, percentile).")
    url: str | None = Field(default=None, description="http: URL to GET.")
    expect_status: int = Field(default=200, ge=100, le=599, description="http: expected status code.")
    command: list[str] | None = Field(default=None, description="command: argv to run; exit 0 means steady.")
    timeout_seconds: float = Field(default=5.0, gt=0, description="http/command: time limit of one evaluation.")
    every_seconds: float = Field(default=1.0, gt=0, description="Evaluation interval.")

    @model_validator(mode="after")
    def _type_fields(self) -> Probe:
        t = self.type
        tol = self.tolerance
        if t == "workloadErrorRate":
            if tol is None or tol.max_value is None:
                raise ValueError("type workloadErrorRate needs tolerance.max, the highest error rate "
                                 "(0..1), e.g. tolerance: {max: 0.01}")
            if tol.max_value > 1:
                raise ValueError(f"tolerance.max: an error rate is 0..1 (got {tol.max_value}); "
                                 f"for 5% write 0.05")
        if t == "workloadLatency" and (tol is None or tol.max_ms is None):
            raise ValueError("type workloadLatency needs tolerance.maxMs, e.g. "
                             "tolerance: {maxMs: 200, percentile: p99}")
        if t == "http" and not self.url:
            raise ValueError("type http needs url, e.g. url: http://127.0.0.1:8080/healthz")
        if t != "http" and self.url:
            raise ValueError(f"url applies only to type http (this probe is {t}); remove it")
        if t == "command" and not self.command:
            raise ValueError("type command needs command, an argv list, e.g. command: [./check.sh]")
        if t != "command" and self.command:
            raise ValueError(f"command applies only to type command (this probe is {t}); remove it")
        return self


# ---------------------------------------------------------------- faults

FaultType = Literal[
    "delay", "loss", "duplicate", "bandwidth", "partition", "error", "slowResponse", "crash", "pause",
    "cpuBurn", "memoryPressure", "diskFill", "clockSkew", "corruption", "kill",
]
FAULT_TYPES: tuple[str, ...] = FaultType.__args__  # type: ignore[attr-defined]
# Faults on traffic between members: these take `direction` and `peers`.
NETWORK_FAULTS = frozenset({"delay", "loss", "duplicate", "bandwidth", "partition", "error", "slowResponse"})
# Faults done by the runtime (signals to the process), not by the member's FaultAgent.
RUNTIME_FAULTS = frozenset({"kill", "pause"})
# Faults that can take a member out of the quorum; the blast-radius rule counts these.
QUORUM_FAULTS = frozenset({"kill", "crash", "pause", "partition", "loss", "error", "diskFill", "corruption",
                           "memoryPressure"})
# Faults that act once: the member comes back by itself (its runtime restarts it).
ONE_SHOT_FAULTS = frozenset({"kill", "crash"})
# Every agent fault carries a TTL: the rest of its window plus FAULT_TTL_MARGIN_SECONDS (the engine's default
# margin). The agent refuses TTLs over its MAX_TTL_SECONDS (nodes/agent/faults.py; a unit test keeps the two
# equal, so these models need not import the node side), so no window may be longer than MAX_WINDOW_SECONDS.
AGENT_MAX_TTL_SECONDS = 3600
FAULT_TTL_MARGIN_SECONDS = 10
MAX_WINDOW_SECONDS = AGENT_MAX_TTL_SECONDS - FAULT_TTL_MARGIN_SECONDS
_WINDOW_WHY = (f"every fault carries a TTL of its window plus {FAULT_TTL_MARGIN_SECONDS}s and the fault agent "
               f"accepts TTLs up to {AGENT_MAX_TTL_SECONDS}s")


def _window_bound(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > MAX_WINDOW_SECONDS:
        raise ValueError(f"at most {MAX_WINDOW_SECONDS}s (got {value:g}): {_WINDOW_WHY}; for a longer "
                         f"campaign run the experiment repeatedly with spec.schedule")
    return value


GRPC_CODES = frozenset({
    "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
})


class _Param:
    """One known parameter of a fault type: its kind, default and bounds."""

    def __init__(self, kind: type, default: Any, lo: float | None = None, hi: float | None = None,
                 choices: Sequence[str] = (), doc: str = "") -> None:
        self.kind, self.default, self.lo, self.hi, self.choices, self.doc = kind, default, lo, hi, choices, doc

    def check(self, key: str, value: Any) -> Any:
        if self.kind is list:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{key}: must be a list of strings (got {value!r})")
            return value
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{key}: must be true or false (got {value!r})")
            return value
        if self.kind is str:
            if not isinstance(value, str):
                raise ValueError(f"{key}: must be a string (got {value!r})")
            if self.choices and value not in self.choices:
                raise ValueError(f"{key}: must be one of {', '.join(self.choices)} (got {value!r})")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{key}: must be a number (got {value!r})")
        if self.kind is int:
            if value != int(value):
                raise ValueError(f"{key}: must be a whole number (got {value!r})")
            value = int(value)
        else:
            value = float(value)
        if self.lo is not None and value < self.lo:
            raise ValueError(f"{key}: must be >= {self.lo:g} (got {value!r})")
        if self.hi is not None and value > self.hi:
            raise ValueError(f"{key}: must be <= {self.hi:g} (got {value!r})")
        return value


_NET = {
    "methods": _Param(list, [], doc="gRPC full method name prefixes; empty = every method"),
    "includeClients": _Param(bool, False, doc="also affect client (KV, Cluster) traffic arriving at the member"),
}
_U32 = 2**32 - 1
# Known params per fault type, with defaults; the engine reads the normalised dict.
FAULT_PARAMS: dict[str, dict[str, _Param]] = {
    "delay": {"latencyMs": _Param(int, 100, 0, _U32, doc="added to every matching call (ms)"),
              "jitterMs": _Param(int, 0, 0, _U32, doc="uniform +/- spread around latencyMs (ms); reorders calls"),
              **_NET},
    "loss": {"probability": _Param(float, 1.0, 0, 1, doc="chance each matching call is dropped (UNAVAILABLE)"),
             **_NET},
    "duplicate": {"probability": _Param(float, 0.5, 0, 1, doc="chance each matching call is delivered twice"),
                  **_NET},
    "bandwidth": {"bytesPerSecond": _Param(int, 65536, 1, 2**63 - 1,
                                           doc="link rate per direction; messages queue behind each other"),
                  **_NET},
    "partition": {**_NET},
    "error": {"code": _Param(str, "UNAVAILABLE", choices=sorted(GRPC_CODES), doc="gRPC status code answered"),
              "probability": _Param(float, 1.0, 0, 1, doc="chance each matching call fails"),
              "message": _Param(str, "injected by faultlab", doc="status details returned"), **_NET},
    "slowResponse": {"delayMs": _Param(int, 200, 0, _U32, doc="the member answers this much later (ms)"), **_NET},
    "crash": {"exitCode": _Param(int, 1, 0, 255, doc="exit status of the process")},
    "pause": {},
    "kill": {},
    "cpuBurn": {"threads": _Param(int, 1, 1, 256, doc="busy threads inside the member's process"),
                "dutyCycle": _Param(float, 0.9, 0.01, 1, doc="fraction of each 100 ms a thread spins")},
    "memoryPressure": {"megabytes": _Param(int, 256, 1, 2**40, doc="memory held (and touched) by the process")},
    "diskFill": {"leaveFreeBytes": _Param(int, 0, 0, 2**63 - 1,
                                          doc="ballast file in the data dir until this much space is free"),
                 "enospc": _Param(bool, False, doc="instead of ballast, make every log write fail with ENOSPC")},
    "clockSkew": {"offsetMs": _Param(int, 1000, -(2**62), 2**62, doc="jump of the member's clock (ms)"),
                  "driftPpm": _Param(float, 0.0, doc="rate error of the member's clock (parts per million)")},
    "corruption": {"target": _Param(str, "wal", choices=("wal", "snapshot"), doc="which file is damaged"),
                   "bytes": _Param(int, 16, 1, 1 << 20, doc="how many bytes are flipped"),
                   "seed": _Param(int, 0, -(2**63), 2**63 - 1, doc="chooses the offsets (replayable)")},
}

# One line per fault type for the reference (docs/chaos-reference.md, generated by tools/gen_docs.py).
FAULT_SUMMARIES: dict[str, str] = {
    "delay": "Delays matching gRPC calls of the target (interceptors on both sides of every peer channel).",
    "loss": "Drops matching calls with a probability: the caller sees UNAVAILABLE.",
    "duplicate": "Delivers matching calls twice (the caller gets one answer).",
    "bandwidth": "Throttles matching traffic to a byte rate per direction.",
    "partition": "Drops all matching traffic between the target and its `peers` (one-way with `direction`).",
    "error": "Fails matching calls with a gRPC status code, with a probability (use `methods` to aim).",
    "slowResponse": "The target answers matching calls late (its work is done on time).",
    "crash": "The target's process exits at once with `exitCode`; the runtime restarts it as a pod would be.",
    "kill": "The runtime kills the member (SIGKILL locally, pod deletion on Kubernetes); it restarts.",
    "pause": "SIGSTOP, then SIGCONT at rollback (local runtime only; a detached watchdog resumes it at the TTL).",
    "cpuBurn": "Busy threads inside the member's process.",
    "memoryPressure": "The member's process holds resident memory.",
    "diskFill": ("Fills the member's data filesystem with ballast, or makes its log writes fail with ENOSPC "
                 "(ballast on Kubernetes: clusters with storage.type pvc only)."),
    "clockSkew": "Shifts (and drifts) the member's clock, which its timeouts, leases and timestamps read.",
    "corruption": "Flips bytes in the member's WAL or snapshot on disk; the member must detect it, never serve it.",
}


def fault_param_defaults(fault_type: str) -> dict[str, Any]:
    """The parameters of a fault type with their defaults."""
    return {k: (list(p.default) if isinstance(p.default, list) else p.default)
            for k, p in FAULT_PARAMS[fault_type].items()}


class FaultTarget(ApiModel):
    """Which members a fault hits: candidates (members, role, target.selector) then a pick by mode."""

    role: Literal["leader", "follower", "any"] = Field(
        default="any", description="Only the leader, only followers, or any member (resolved at injection).")
    mode: Literal["one", "fixed", "percent", "all"] = Field(
        default="one", description="one: a random candidate; fixed: `value` of them; percent: `value`% "
                                   "of them (rounded up); all: every candidate.")
    value: float | None = Field(default=None, ge=0,
                                description="Count for mode fixed (>= 1), percent for mode percent (0..100].")
    members: list[str] | None = Field(default=None, description="Explicit member ids the candidates come from.")

    @model_validator(mode="after")
    def _mode_value(self) -> FaultTarget:
        if self.mode == "fixed":
            if self.value is None or self.value < 1 or self.value != int(self.value):
                raise ValueError(f"mode fixed needs value, a whole number >= 1 (got {self.value!r})")
        elif self.mode == "percent":
            if self.value is None or not 0 < self.value <= 100:
                raise ValueError(f"mode percent needs value in (0, 100] (got {self.value!r})")
        elif self.value is not None:
            raise ValueError(f"value applies only to mode fixed or percent (mode is {self.mode}); remove it")
        if self.members is not None:
            if not self.members:
                raise ValueError("members: empty list; remove it to choose among all members")
            if len(set(self.members)) != len(self.members):
                raise ValueError(f"members: duplicate ids in {self.members}")
        return self

    def max_count(self, replicas: int) -> int:
        """The most members this selection can hit in a cluster of `replicas`."""
        candidates = len(self.members) if self.members is not None else replicas
        if self.role == "leader":
            candidates = min(candidates, 1)
        elif self.role == "follower":
            candidates = min(candidates, replicas - 1)
        if self.mode == "one":
            wanted = 1
        elif self.mode == "fixed":
            wanted = int(self.value or 0)
        elif self.mode == "percent":
            wanted = math.ceil(candidates * (self.value or 0) / 100)
        else:
            wanted = candidates
        return max(0, min(wanted, candidates))


class Fault(ApiModel):
    """One fault of the method: what, on which members, when and for how long."""

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                      description="Unique within the experiment; part of the fault id the agents hold.")
    type: FaultType = Field(description="Kind of fault.")
    params: dict[str, Any] = Field(
        default_factory=dict, json_schema_extra=PRESERVE_UNKNOWN,
        description="Type-specific parameters; unset ones get defaults (see FAULT_PARAMS).")
    target: FaultTarget = Field(default_factory=FaultTarget, description="Which members.")
    direction: Literal["both", "inbound", "outbound"] | None = Field(
        default=None, description="Network faults: which traffic of a target member (default both).")
    peers: Literal["others", "selected"] | None = Field(
        default=None,
        description="Network faults: whose traffic with a target is affected. others: members not selected "
                    "(the default for partition: cut the selected members off from the rest); selected: the "
                    "other selected members. Unset on other network faults: every peer.")
    start_after_seconds: float = Field(default=0, ge=0, description="Delay from the start of injection.")
    duration_seconds: float = Field(
        default=10, gt=0, le=MAX_WINDOW_SECONDS,
        description=f"How long the fault holds; its TTL in the agent is the rest of this plus "
                    f"{FAULT_TTL_MARGIN_SECONDS}s, so at most {MAX_WINDOW_SECONDS}s ({_WINDOW_WHY}).")

    @field_validator("duration_seconds", mode="before")
    @classmethod
    def _duration_bound(cls, value: Any) -> Any:
        return _window_bound(value)

    @field_validator("params")
    @classmethod
    def _params(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        fault_type = info.data.get("type")
        if fault_type not in FAULT_PARAMS:
            return value
        known = FAULT_PARAMS[fault_type]
        out = fault_param_defaults(fault_type)
        for key, given in value.items():
            if key not in known:
                valid = ", ".join(known) or "none"
                raise ValueError(f"unknown parameter {key!r} for fault type {fault_type}; valid: {valid}")
            out[key] = known[key].check(key, given)
        return out

    @model_validator(mode="after")
    def _network_only(self) -> Fault:
        if self.type not in NETWORK_FAULTS:
            for name, val in (("direction", self.direction), ("peers", self.peers)):
                if val is not None:
                    raise ValueError(f"{name} applies only to network faults ({', '.join(sorted(NETWORK_FAULTS))}); "
                                     f"remove it from this {self.type} fault")
        if (self.type == "partition" and self.target.mode == "all" and self.effective_peers == "others"
                and self.target.members is None and self.target.role == "any"):
            raise ValueError("a partition of all members with peers: others has no other side; select fewer "
                             "members or use peers: selected")
        return self

    @property
    def effective_direction(self) -> str:
        return self.direction or "both"

    @property
    def effective_peers(self) -> str | None:
        return self.peers or ("others" if self.type == "partition" else None)

    @property
    def end_seconds(self) -> float:
        return self.start_after_seconds + self.duration_seconds


# ---------------------------------------------------------------- limits, rollout, abort

class BlastRadius(ApiModel):
    """Upper bound on the members faulted at once; checked before anything is injected."""

    max_targets: int | None = Field(default=None, ge=1, description="At most this many members at once.")
    max_percent: float | None = Field(default=None, gt=0, le=100,
                                      description="At most this percent of the members at once (rounded down).")
    allow_quorum_loss: bool = Field(
        default=False, description="Allow faulting more members than the cluster tolerates (loses availability).")

    def limit(self, replicas: int) -> int:
        """Members allowed at once in a cluster of `replicas`."""
        limit = replicas
        if self.max_targets is not None:
            limit = min(limit, self.max_targets)
        if self.max_percent is not None:
            limit = min(limit, math.floor(replicas * self.max_percent / 100))
        return limit


class RolloutStep(ApiModel):
    """One stage of a gradual rollout: grow the targets to this bound, then hold."""

    max_targets: int | None = Field(default=None, ge=1, description="Members faulted in this step.")
    max_percent: float | None = Field(default=None, gt=0, le=100, description="Percent of members in this step.")
    hold_seconds: float = Field(default=0, ge=0, description="Observe this long before the next step.")

    @model_validator(mode="after")
    def _one_bound(self) -> RolloutStep:
        if (self.max_targets is None) == (self.max_percent is None):
            raise ValueError("a rollout step needs exactly one of maxTargets or maxPercent")
        return self

    def count(self, replicas: int) -> int:
        if self.max_targets is not None:
            return min(self.max_targets, replicas)
        return max(1, math.floor(replicas * (self.max_percent or 0) / 100))


class Rollout(ApiModel):
    """Widen the faults step by step, checking abort conditions between steps."""

    steps: list[RolloutStep] = Field(min_length=1, description="Steps in order.")


class AbortCondition(ApiModel):
    """Stop and roll back when a probe stays out of bounds."""

    probe: Probe | str = Field(description="A probe, or the name of a steadyState probe.")
    threshold: float | None = Field(
        default=None, ge=0, description="Overrides the probe's tolerance (error rate 0..1, or latency ms).")
    for_seconds: float = Field(default=0, ge=0, description="How long the violation must last before aborting.")

    @property
    def probe_name(self) -> str:
        return self.probe if isinstance(self.probe, str) else self.probe.name


# ---------------------------------------------------------------- workload, checks, schedule

class Workload(ApiModel):
    """Client load run during the experiment; its history feeds the checks."""

    enabled: bool = Field(default=True, description="Run the workload.")
    clients: int = Field(default=8, ge=1, le=1024, description="Concurrent clients.")
    keys: int = Field(default=16, ge=1, description="Distinct keys operated on.")
    read_ratio: float = Field(default=0.5, ge=0, le=1, description="Fraction of operations that are reads.")
    cas_ratio: float = Field(default=0.1, ge=0, le=1, description="Fraction of operations that are compare-and-swaps.")
    value_bytes: int = Field(default=64, ge=1, description="Size of written values.")
    rate_limit: float | None = Field(default=None, gt=0, description="Total operations per second; unset = unlimited.")

    @model_validator(mode="after")
    def _ratios(self) -> Workload:
        if self.read_ratio + self.cas_ratio > 1:
            raise ValueError(f"readRatio + casRatio must be <= 1 (got {self.read_ratio} + {self.cas_ratio}); "
                             f"the rest are writes")
        return self


CheckName = Literal["linearizable", "noLostWrites", "converged"]
DEFAULT_CHECKS: tuple[CheckName, ...] = ("linearizable", "noLostWrites")
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")


class Window(ApiModel):
    """Time of day when scheduled runs may start."""

    start: str = Field(description="HH:MM, 24-hour.")
    end: str = Field(description="HH:MM, 24-hour; may be before start (window spans midnight).")
    timezone: str = Field(default="UTC", description="IANA time zone, e.g. Europe/Paris.")

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        if not _HHMM.match(value):
            raise ValueError(f"{value!r} is not HH:MM (24-hour), e.g. 09:30")
        return value

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as UTC or Europe/Paris") from None
        return value


class Schedule(ApiModel):
    """Run the experiment repeatedly at cron times (operator and `faultlab chaos run`)."""

    cron: str = Field(description="Cron expression (5 fields), e.g. '0 3 * * 1-5'.")
    window: Window | None = Field(default=None, description="Only start runs inside this window.")
    concurrency_policy: Literal["Forbid"] = Field(
        default="Forbid",
        description="Forbid (the only policy): a cron time that falls due while the previous run is still going "
                    "is skipped. Allow is not supported: an experiment has one journal, so its runs never overlap.")

    @field_validator("concurrency_policy", mode="before")
    @classmethod
    def _policy(cls, value: Any) -> Any:
        if value == "Allow":
            raise ValueError("Allow is not supported: an experiment has one journal (its status on Kubernetes), so "
                             "its runs cannot overlap; use Forbid (the default: a due run is skipped while the "
                             "previous one is going), or a second ChaosExperiment for a parallel schedule")
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from croniter import croniter

        if len(value.split()) != 5 or not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a 5-field cron expression (minute hour day month weekday), "
                             f"e.g. '0 3 * * 1-5'")
        return value


class SteadyState(ApiModel):
    """The hypothesis: these probes hold before, during (within tolerance) and after the faults."""

    probes: list[Probe] = Field(default_factory=list, description="Probes of the steady state.")


# ---------------------------------------------------------------- spec

class ChaosExperimentSpec(ApiModel):
    """Desired experiment."""

    target: Target = Field(description="The system to break.")
    steady_state: SteadyState = Field(default_factory=SteadyState, description="The steady-state hypothesis.")
    faults: list[Fault] = Field(min_length=1, description="The faults to inject.")
    blast_radius: BlastRadius = Field(default_factory=BlastRadius, description="Limit on members faulted at once.")
    rollout: Rollout | None = Field(default=None, description="Gradual widening of the faults.")
    paused: bool = Field(
        default=False,
        description="Stop injecting and roll back what is in effect; clearing it injects again. The clock does not "
                    "stop: durationSeconds and fault windows run on while paused (a run never outlasts its window "
                    "or its faults' TTLs), so pausing cuts fault windows short, and a run paused throughout "
                    "injects nothing and ends Inconclusive.")
    abort_conditions: list[AbortCondition] = Field(default_factory=list,
                                                   description="Stop conditions; any firing aborts and rolls back.")
    workload: Workload = Field(default_factory=Workload, description="Client load and history recording.")
    checks: list[CheckName] = Field(default_factory=lambda: list(DEFAULT_CHECKS),
                                    description="Checks of the recorded history that decide the verdict.")
    schedule: Schedule | None = Field(default=None,
                                      description="Repeat on a schedule (operator and `faultlab chaos run`).")
    duration_seconds: float = Field(
        default=30, gt=0, le=MAX_WINDOW_SECONDS,
        description=f"Observation window from the start of injection; every fault ends by then. At most "
                    f"{MAX_WINDOW_SECONDS}s: {_WINDOW_WHY}.")

    @field_validator("duration_seconds", mode="before")
    @classmethod
    def _duration_bound(cls, value: Any) -> Any:
        return _window_bound(value)
    dry_run: bool = Field(default=False, description="Resolve targets and validate, inject nothing.")

    @model_validator(mode="after")
    def _cross_fields(self) -> ChaosExperimentSpec:
        _unique("steadyState.probes", [p.name for p in self.steady_state.probes])
        _unique("faults", [f.name for f in self.faults])
        if len(set(self.checks)) != len(self.checks):
            raise ValueError(f"checks: duplicates in {self.checks}")
        probe_names = [p.name for p in self.steady_state.probes]
        for i, cond in enumerate(self.abort_conditions):
            if isinstance(cond.probe, str) and cond.probe not in probe_names:
                known = ", ".join(probe_names) or "none defined"
                raise ValueError(f"abortConditions[{i}].probe: no steadyState probe named {cond.probe!r} "
                                 f"(steadyState probes: {known}); name one or give the probe inline")
        if {"linearizable", "noLostWrites"} & set(self.checks) and not self.workload.enabled:
            raise ValueError("checks linearizable/noLostWrites need the workload's history; "
                             "set workload.enabled: true or checks: [converged]")
        limit = self.blast_radius.max_targets
        if limit is not None:
            for i, fault in enumerate(self.faults):
                fixed = (int(fault.target.value or 0) if fault.target.mode == "fixed" else
                         len(fault.target.members or []) if fault.target.mode == "all" else 0)
                if fixed > limit:
                    raise ValueError(f"faults[{i}] ({fault.name}) targets {fixed} members but blastRadius."
                                     f"maxTargets is {limit}; lower the fault's target or raise maxTargets")
        return self


def _unique(path: str, names: list[str]) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise ValueError(f"{path}[{i}].name: {name!r} is used twice; names must be unique")
        seen.add(name)


def _impaired(fault: Fault, replicas: int) -> int:
    """Members a fault can take out of the quorum at once (0 for degrading-only faults)."""
    if fault.type not in QUORUM_FAULTS:
        return 0
    k = fault.target.max_count(replicas)
    if fault.type == "partition":
        # The side without a majority is out: the smaller side (others) or the split selected set.
        return min(k, replicas - k) if fault.effective_peers == "others" else max(0, k - 1)
    return k


def _impaired_together(faults: Sequence[Fault], replicas: int, cap: int | None = None) -> int:
    """Upper bound on the members `faults`, active at once, take out of the quorum together.

    Faults aimed at explicit `target.members` stay within those members, so together they
    take out no more than the members their lists name (a crash and a kill of n3 are one
    member down, not two). Any other fault may hit members the others do not (a partition's
    minority side may be the members it did not select).
    """
    named: set[str] = set()
    named_count = 0
    free = 0
    for f in faults:
        k = _impaired(f, replicas) if cap is None else min(cap, _impaired(f, replicas))
        if not k:
            continue
        if f.target.members is not None and f.type != "partition":
            named.update(f.target.members)
            named_count += k
        else:
            free += k
    return min(len(named), named_count) + free


def check_blast_radius(spec: ChaosExperimentSpec, replicas: int,
                       members: Sequence[str] | None = None) -> list[str]:
    """Problems of `spec` against a target of `replicas` members (empty = may run).

    Checks: explicit members exist; each fault's selection fits blastRadius and rollout; faults
    that overlap in time do not together take out more members than the quorum tolerates,
    unless blastRadius.allowQuorumLoss.
    """
    problems: list[str] = []
    ids = list(members) if members is not None else member_ids(replicas)
    tolerance = fault_tolerance(replicas)
    radius = spec.blast_radius
    limit = radius.limit(replicas)
    allow = radius.allow_quorum_loss
    fix_quorum = "set blastRadius.allowQuorumLoss: true to accept losing availability"

    if not allow:
        if radius.max_targets is not None and radius.max_targets > tolerance:
            problems.append(
                f"blastRadius.maxTargets: {radius.max_targets} exceeds what {replicas} members tolerate "
                f"({tolerance} without losing quorum); lower it to {max(tolerance, 1)} or {fix_quorum}")
        if radius.max_percent is not None and math.floor(replicas * radius.max_percent / 100) > tolerance:
            problems.append(
                f"blastRadius.maxPercent: {radius.max_percent:g}% of {replicas} members exceeds what they "
                f"tolerate ({tolerance}); lower it or {fix_quorum}")
    for i, fault in enumerate(spec.faults):
        where = f"faults[{i}] ({fault.name})"
        if fault.target.members:
            unknown = [m for m in fault.target.members if m not in ids]
            if unknown:
                problems.append(f"{where}: target.members: no member {', '.join(unknown)} in the target "
                                f"(members: {', '.join(ids)})")
        if fault.target.mode == "fixed" and (fault.target.value or 0) > replicas:
            problems.append(f"{where}: target.value: {int(fault.target.value or 0)} members asked, the target "
                            f"has {replicas}")
        count = fault.target.max_count(replicas)
        if count > limit:
            problems.append(f"{where}: can hit {count} members, over the blast radius of {limit}; "
                            f"narrow target or raise blastRadius")
        if count == 0 and fault.target.role == "follower" and replicas == 1:
            problems.append(f"{where}: target.role follower: a 1-member cluster has no followers")
    rollout_cap: int | None = None
    if spec.rollout is not None:
        # One-shot faults (kill, crash) hit only the members a step adds; the members of the steps
        # before are back before it starts when a `health` probe (every member serving) gates it.
        quorum_faults = [f for f in spec.faults if f.type in QUORUM_FAULTS]
        increments = bool(quorum_faults) and all(f.type in ONE_SHOT_FAULTS for f in quorum_faults) and any(
            p.type == "health" for p in spec.steady_state.probes)
        before = 0
        rollout_cap = 0
        for i, step in enumerate(spec.rollout.steps):
            n = step.count(replicas)
            if n > limit:
                problems.append(f"rollout.steps[{i}]: {n} members is over the blast radius of {limit}")
            down = max(0, n - before) if increments else n
            before = n
            rollout_cap = max(rollout_cap, down)
            if not allow and down > tolerance and quorum_faults:
                how = (f"{down} new members at once" if increments else f"{n} members")
                problems.append(f"rollout.steps[{i}]: {how} exceeds what {replicas} members tolerate "
                                f"({tolerance}); widen by at most {max(tolerance, 1)} per step, or {fix_quorum}"
                                + ("" if increments or not all(f.type in ONE_SHOT_FAULTS for f in quorum_faults)
                                   else " (or gate the steps with a `health` steady-state probe)"))
    if not allow:
        # Worst case over time: faults active together hit distinct members.
        instants = sorted({f.start_after_seconds for f in spec.faults})
        for t in instants:
            active = [f for f in spec.faults if f.start_after_seconds <= t < f.end_seconds]
            # Under a rollout a fault reaches no more members at once than the steps let it.
            out = min(replicas, _impaired_together(active, replicas, rollout_cap))
            if out > tolerance:
                names = ", ".join(f.name for f in active if _impaired(f, replicas))
                problems.append(
                    f"faults ({names}) can take {out} of {replicas} members out of the quorum at once "
                    f"(at t={t:g}s); {replicas} members tolerate {tolerance}. Target fewer members, stagger the "
                    f"faults with startAfterSeconds, or {fix_quorum}")
                break
    return problems


# ---------------------------------------------------------------- status

ExperimentPhase = Literal["Pending", "DryRun", "SteadyStateCheck", "Injecting", "Observing", "RollingBack",
                          "Verifying", "Checking", "Completed", "Aborted", "Failed"]
Verdict = Literal["Passed", "Failed", "Aborted", "Inconclusive"]
TERMINAL_PHASES = frozenset({"Completed", "Aborted", "Failed"})


class LatencyStats(ApiModel):
    """Latency percentiles of the workload in one period."""

    p50_ms: float | None = Field(default=None, ge=0, description="Median latency (ms).")
    p99_ms: float | None = Field(default=None, ge=0, description="99th percentile latency (ms).")


class LatencySummary(ApiModel):
    """Workload latency before, during and after the faults."""

    before: LatencyStats = Field(default_factory=LatencyStats, description="Before injection (baseline).")
    during: LatencyStats = Field(default_factory=LatencyStats, description="While faults were active.")
    after: LatencyStats = Field(default_factory=LatencyStats, description="After recovery.")


class CheckResult(ApiModel):
    """Outcome of one history check."""

    name: CheckName = Field(description="Which check.")
    result: Literal["Passed", "Failed", "Unknown"] = Field(description="Unknown: the checker could not decide "
                                                                       "(e.g. search budget exhausted).")
    message: str = Field(default="", description="Why; on failure, the offending operations.")
    operations: int | None = Field(default=None, ge=0, description="Operations in the history checked.")
    duration_seconds: float | None = Field(default=None, ge=0, description="Time the check took.")


class InjectedFault(ApiModel):
    """A fault as held by one member."""

    fault: str = Field(description="Name of the fault in spec.faults.")
    fault_id: str = Field(description="Id the agent holds it under.")
    type: FaultType = Field(description="Fault type.")
    member: str = Field(description="Member id.")
    agent_started_at: float | None = Field(
        default=None, description="The member process's start time (Unix s) when injected; a change means "
                                  "it restarted and no longer holds the fault.")
    injected_at: datetime | None = Field(default=None, description="When it was injected.")
    expires_at: datetime | None = Field(default=None, description="When the agent heals it by itself (TTL).")
    recovered_at: datetime | None = Field(default=None, description="When it was healed.")
    detail: str = Field(default="", description="What the agent did.")


class TimelineEvent(ApiModel):
    """One thing that happened during the experiment."""

    time: datetime = Field(description="When.")
    type: str = Field(
        description="Kind of event: start, plan, replan, workload, phase, step, inject, recover, restart, pause, "
                    "leader, steady, breach, abort, error, rollback, verify, check, handover (the operator shut down "
                    "mid-run: faults rolled back, run left for the next operator), resume, verdict.")
    message: str = Field(default="", description="What happened.")
    member: str | None = Field(default=None, description="Member concerned, if any.")
    fault: str | None = Field(default=None, description="Fault concerned, if any.")


class ChaosExperimentStatus(ApiModel):
    """Observed progress and result of an experiment."""

    phase: ExperimentPhase = Field(default="Pending", description="Where the experiment is.")
    verdict: Verdict | None = Field(default=None, description="Result, once finished.")
    message: str = Field(default="", description="Why the experiment is in this phase/verdict.")
    started_at: datetime | None = Field(default=None, description="When it started.")
    finished_at: datetime | None = Field(default=None, description="When it finished.")
    availability: float | None = Field(default=None, ge=0, le=1,
                                       description="Fraction of workload operations that succeeded.")
    error_rate: float | None = Field(default=None, ge=0, le=1, description="Fraction of operations that failed.")
    mttr_seconds: float | None = Field(
        default=None, ge=0,
        description="Time to recover: from the first fault's injection until steady state held again (for 1s) "
                    "after its first breach; 0 if steady state never broke, unset if it was not regained.")
    time_to_detect_seconds: float | None = Field(
        default=None, ge=0,
        description="From the first fault's injection to the first steady-state breach; unset if it never broke.")
    latency: LatencySummary = Field(default_factory=LatencySummary, description="Latency per period.")
    checks: list[CheckResult] = Field(default_factory=list, description="History check results.")
    injected_faults: list[InjectedFault] = Field(default_factory=list, description="Faults injected, per member.")
    timeline: list[TimelineEvent] = Field(default_factory=list, description="Events in order.")
    observed_generation: int = Field(default=0, ge=0, description="metadata.generation last acted on.")
    last_schedule_time: datetime | None = Field(
        default=None, description="spec.schedule: the cron time last acted on (run or skipped).")
    conditions: list[Condition] = Field(default_factory=list, description="Ready, Progressing, Degraded.")


class ChaosExperiment(Resource):
    """An experiment: steady state, faults, limits, and checked verdict."""

    PLURAL: ClassVar[str] = "chaosexperiments"

    kind: Literal["ChaosExperiment"] = Field(default="ChaosExperiment", description="ChaosExperiment.")
    spec: ChaosExperimentSpec = Field(description="Desired experiment.")
    status: ChaosExperimentStatus | None = Field(default=None, description="Progress and result.")

    def warnings(self) -> list[str]:
        found: list[str] = []
        if not self.spec.steady_state.probes:
            found.append(f"ChaosExperiment {self.name}: spec.steadyState.probes is empty; the verdict rests on "
                         f"the checks alone")
        for i, fault in enumerate(self.spec.faults):
            if fault.end_seconds > self.spec.duration_seconds:
                found.append(f"ChaosExperiment {self.name}: spec.faults[{i}] ({fault.name}) ends at "
                             f"{fault.end_seconds:g}s, after durationSeconds {self.spec.duration_seconds:g}s")
        return found

    def check_blast_radius(self, replicas: int, members: Sequence[str] | None = None) -> list[str]:
        return check_blast_radius(self.spec, replicas, members)
