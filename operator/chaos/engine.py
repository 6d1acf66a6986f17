"""The experiment engine: one lifecycle for every runtime.

validate -> steady state -> inject -> observe (abort conditions, pause, rollout) ->
roll back (recover every fault, confirmed with the agents' List) -> verify steady state
-> checks -> report. The engine sees the cluster only through a :class:`Runtime`
(members, agent token, kill/pause/resume) and the members' FaultAgents, so the local
and Kubernetes runtimes share it.

Every transition is saved in a :class:`StateStore` *before* the engine acts, each fault
id with its member and the agent's process start time before the Inject call, so a
killed engine is resumed with :meth:`Engine.resume`, which rolls back whatever the
journal says may still be in effect. Every agent fault also carries a TTL (its end plus
a margin): it heals even if no engine ever comes back.

Injection is a reconciliation: each tick computes the faults that should be in effect
now (fault windows, rollout step, paused, aborted) and injects or recovers the
difference, so pausing, resuming, widening and ending are the same code path.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc

from faultlab.operator.api.chaos import (
    AGENT_MAX_TTL_SECONDS,
    FAULT_TTL_MARGIN_SECONDS,
    NETWORK_FAULTS,
    AbortCondition,
    ChaosExperiment,
    Probe,
)
from faultlab.operator.api.chaos import check_blast_radius as api_check_blast_radius
from faultlab.operator.chaos import report as report_mod
from faultlab.operator.chaos.history import History
from faultlab.operator.chaos.journal import (
    Event,
    ExperimentState,
    FaultRecord,
    FaultStatus,
    Phase,
    StateStore,
)
from faultlab.operator.chaos.probes import (
    ClusterView,
    MemberStatus,
    ProbeContext,
    ProbeResult,
    ProbeSpec,
    agreed_leader,
    evaluate,
)
from faultlab.operator.chaos.selection import (
    ONE_SHOT_FAULTS,
    BlastRadius,
    Candidate,
    PlannedFault,
    SelectionError,
    StepPlan,
    check_blast_radius,
    eligible_members,
    target_count,
)
from faultlab.operator.chaos.workload import Workload, WorkloadConfig
from faultlab.operator.runtime.base import (
    Member,
    Runtime,
    RuntimeError_,
    TargetRef,
    refused_fault,
    unsupported_fault,
)
from faultlab.protos.agent.v1 import agent_pb2 as pb

__all__ = ["AgentLike", "Engine", "EngineOptions", "ExperimentRejected"]

_NETWORK_MATCH_PARAMS = ("methods", "includeClients")
_MIRROR = {"both": "both", "inbound": "outbound", "outbound": "inbound"}


class AgentLike(Protocol):
    """What the engine uses of `faultlab.nodes.agent.client.AgentClient`."""

    async def inject(self, fault: pb.Fault, *, timeout: float | None = None) -> pb.InjectResponse: ...

    async def recover(self, fault_id: str, *, timeout: float | None = None) -> bool: ...

    async def list(self, *, timeout: float | None = None) -> pb.ListResponse: ...

    async def close(self) -> None: ...


AgentFactory = Callable[[str, str], AgentLike]


def _default_agent_factory(address: str, token: str) -> AgentLike:
    from faultlab.nodes.agent.client import AgentClient

    return AgentClient(address, token, timeout=3.0)


def _build_fault(fault_type: str, params: dict[str, Any], *, id: str, ttl_seconds: int,
                 match: dict[str, Any] | None) -> pb.Fault:
    from faultlab.nodes.agent.client import fault_from_spec

    return fault_from_spec(fault_type, params, id=id, ttl_seconds=ttl_seconds, match=match)


class ExperimentRejected(Exception):
    """The experiment cannot run as written; nothing was injected."""


@dataclass
class EngineOptions:
    out_dir: Path | None = None  # history.jsonl, report.json, report.html
    seed: int | None = None
    ttl_margin_s: float = FAULT_TTL_MARGIN_SECONDS
    tick_s: float = 0.1
    probe_interval_s: float = 0.25
    warmup_s: float = 2.0
    steady_before_timeout_s: float = 15.0
    settle_s: float = 1.0  # steady state must hold this long to count as regained
    recovery_timeout_s: float = 20.0
    after_s: float = 2.0
    rollback_timeout_s: float = 30.0
    restart_timeout_s: float = 30.0
    check_timeout_s: float = 30.0
    html: bool = True
    watchdogs: bool = True
    on_event: Callable[[Event], None] | None = None
    on_tick: Callable[[dict[str, Any]], None] | None = None
    paused: Callable[[], bool] | None = None
    agent_factory: AgentFactory = _default_agent_factory


@dataclass(frozen=True)
class _Slot:
    fault: int
    member: str
    primary: bool
    peers: tuple[str, ...]
    direction: str


@dataclass
class _Abort:
    reason: str
    breach_at: float
    at: float


@dataclass
class _CondState:
    cond: AbortCondition
    spec: ProbeSpec
    breach_since: float | None = None


@dataclass
class RunData:
    """What the engine observed, for the report (kept out of the journal: too big, not needed to resume)."""

    steady: list[tuple[float, bool, list[str]]] = field(default_factory=list)
    workload: Workload | None = None
    final_reads: dict[str, str | None] | None = None
    checks: list[dict[str, Any]] = field(default_factory=list)
    steady_after: bool | None = None
    steady_regained_at: float | None = None


def probe_spec(probe: Probe, threshold: float | None = None) -> ProbeSpec:
    """The engine's view of an API probe (optionally with an abort condition's threshold)."""
    params: dict[str, Any] = {"timeoutSeconds": probe.timeout_seconds,
                              "windowSeconds": max(1.0, probe.every_seconds)}
    tol = probe.tolerance
    if probe.type == "workloadErrorRate":
        params["max"] = threshold if threshold is not None else (tol.max_value if tol else 0.05)
    elif probe.type == "workloadLatency":
        params["maxMs"] = threshold if threshold is not None else (tol.max_ms if tol else 500)
        params["percentile"] = float((tol.percentile if tol else "p99").lstrip("p"))
    elif probe.type == "http":
        params["url"] = probe.url
        params["expectStatus"] = probe.expect_status
    elif probe.type == "command":
        params["command"] = list(probe.command or [])
    return ProbeSpec(probe.name, probe.type, params)


class Engine:
    """Runs one ChaosExperiment against one target through a Runtime."""

    def __init__(self, experiment: ChaosExperiment, runtime: Runtime, store: StateStore,
                 options: EngineOptions | None = None) -> None:
        self.exp = experiment
        self.spec = experiment.spec
        self.runtime = runtime
        self.store = store
        self.opts = options or EngineOptions()
        t = self.spec.target
        self.target = TargetRef(t.kind, t.name, t.namespace or experiment.namespace)
        self.state: ExperimentState | None = None
        self.data = RunData()
        self.members: dict[str, Member] = {}
        self.view: ClusterView | None = None
        self._token = ""
        self._agents: dict[str, AgentLike] = {}
        self._statuses: dict[str, MemberStatus | None] = {}
        self._leader: tuple[str, int] | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._restart_tasks: dict[str, asyncio.Task[None]] = {}
        self._abort: _Abort | None = None
        self._paused = False
        self._paused_checked = 0.0
        self._pause_began: float | None = None
        self._ran_unpaused = False  # some observation tick ran unpaused (injection was allowed)
        self._steady_ok = False
        self._latest: dict[str, ProbeResult] = {}
        self._latest_started: dict[str, float] = {}  # when each probe's latest evaluation began
        self._evidence: list[tuple[float, bool]] = []  # (oldest evaluation start behind a sample, steady?)
        self._gen: dict[tuple[int, str, bool], int] = {}
        self._done_one_shot: set[tuple[int, str]] = set()
        self._refused: set[tuple[int, str, bool]] = set()  # slots refused in their current window: no retry
        self._step: StepPlan | None = None
        self._t0: float | None = None
        self._stopping = False
        self._handover: str | None = None

    # ------------------------------------------------------------------ small helpers

    @property
    def st(self) -> ExperimentState:
        assert self.state is not None
        return self.state

    def _event(self, kind: str, message: str, at: float | None = None, **data: Any) -> Event:
        ev = self.st.event(kind, message, at=at, **data)
        if self.opts.on_event is not None:
            with contextlib.suppress(Exception):
                self.opts.on_event(ev)
        return ev

    def _save(self) -> None:
        self.store.save(self.st)

    def _phase(self, phase: Phase, message: str = "") -> None:
        self.st.phase = phase
        self._event("phase", f"{phase.value}" + (f": {message}" if message else ""), phase=phase.value)
        self._save()

    def _agent(self, member: str) -> AgentLike:
        agent = self._agents.get(member)
        if agent is None:
            address = self.st.agents.get(member) or self.st.members.get(member) or self.members[member].agent_address
            agent = self.opts.agent_factory(address, self._token)
            self._agents[member] = agent
        return agent

    async def _agent_list(self, member: str) -> pb.ListResponse | None:
        try:
            return await self._agent(member).list(timeout=1.0)
        except (grpc.aio.AioRpcError, TimeoutError, OSError):
            return None

    def _member(self, member_id: str) -> Member:
        m = self.members.get(member_id)
        if m is None:
            m = Member(member_id, self.st.members.get(member_id, ""),
                       agent_address=self.st.agents.get(member_id, ""))
        return m

    # ------------------------------------------------------------------ entry points

    async def run(self) -> dict[str, Any]:
        """Run the experiment to its end and return the report (also saved under out_dir)."""
        seed = self.opts.seed if self.opts.seed is not None else random.SystemRandom().randrange(2**31)
        self.state = ExperimentState(name=self.exp.name, run_id=secrets.token_hex(4),
                                     spec=self.exp.to_dict(), seed=seed)
        self._event("start", f"experiment {self.exp.name} run {self.st.run_id} seed {seed} "
                             f"(replay with --seed {seed})", seed=seed)
        self._save()
        try:
            await self._run()
        except ExperimentRejected as exc:
            self.st.verdict = "Failed"
            self.st.message = f"rejected, nothing injected: {exc}"
            self._phase(Phase.FAILED, self.st.message)
        except BaseException:
            # Anything unexpected (including cancellation): never leave faults behind.
            await asyncio.shield(self._interrupted_rollback())
            raise
        finally:
            await self._shutdown()
        return self._finish()

    def hand_over(self, reason: str) -> None:
        """Make the next cancellation a hand-over to a successor engine (the operator is shutting down).

        The engine still rolls back every fault before it exits (safety first), but leaves its journal
        non-terminal, so the next engine resumes it (:meth:`resume`) and finishes the run with a verdict
        that says it was interrupted. Without this, cancelling closes the run as Aborted.
        """
        self._handover = reason

    @classmethod
    def from_journal(cls, store: StateStore, runtime: Runtime, options: EngineOptions | None = None,
                     *, force: bool = False) -> Engine | None:
        """An engine for the interrupted run in `store` (see :meth:`finish_interrupted`); None if nothing to do.

        ``force`` also takes a finished run whose journal still lists faults not confirmed recovered.
        """
        state = store.load()
        if state is None or (state.terminal and not (force and state.outstanding())):
            return None
        engine = cls(ChaosExperiment.model_validate(state.spec), runtime, store, options)
        engine.state = state
        return engine

    @classmethod
    async def resume(cls, store: StateStore, runtime: Runtime, options: EngineOptions | None = None,
                     *, force: bool = False) -> dict[str, Any] | None:
        """Finish an interrupted run from its journal: roll back, verify, report. None if nothing to do."""
        engine = cls.from_journal(store, runtime, options, force=force)
        return None if engine is None else await engine.finish_interrupted()

    async def finish_interrupted(self) -> dict[str, Any]:
        """Roll back what the journal says may still be in effect, verify, report (Inconclusive: interrupted)."""
        state = self.st
        state.interrupted = True
        state.resumes += 1
        self._event("resume", f"engine resumed in phase {state.phase.value}: rolling back "
                              f"{len(state.outstanding())} fault(s) that may still be in effect")
        self._save()
        try:
            await self._connect()
            await self._start_observers()
            await self._rollback()
            await self._verify_resumed()
            self.st.message = (f"interrupted by {state.interruption}; finished by a resumed engine"
                               if state.interruption else
                               "interrupted: the engine stopped mid-run; rolled back on resume")
            self.data.checks = [{"name": c, "result": "Unknown",
                                 "message": "the run was interrupted; its history is incomplete"}
                                for c in self.spec.checks]
            self._phase(Phase.COMPLETED, "resumed run rolled back")
        except BaseException:
            if self._handover is not None:  # shut down again mid-resume: roll back, stay resumable
                await asyncio.shield(self._interrupted_rollback())
            raise
        finally:
            await self._shutdown()
        return self._finish()

    # ------------------------------------------------------------------ lifecycle

    async def _connect(self) -> None:
        members = await self.runtime.members(self.target)
        if not members:
            raise ExperimentRejected(f"target {self.target}: no members; is it running? "
                                     f"(faultlab up -f <cluster.yaml>)")
        self.members = {m.id: m for m in members}
        for m in members:
            self.st.members.setdefault(m.id, m.address)
            self.st.agents.setdefault(m.id, m.agent_address)
        self.view = ClusterView({m.id: m.address for m in members})
        self._token = await self.runtime.agent_token(self.target)

    async def _run(self) -> None:
        self._phase(Phase.PENDING, "validating")
        await self._validate_runtime()
        await self._connect()
        ids = sorted(self.members)
        problems = api_check_blast_radius(self.spec, len(ids), ids)
        if problems:
            raise ExperimentRejected("; ".join(problems))
        self._validate_faults()
        assert self.view is not None
        self._statuses = await self.view.statuses()
        plan = self._plan_all(self._candidates())
        self._record_plan(plan)
        if self.spec.dry_run:
            self.st.message = "dry run: nothing injected"
            self._phase(Phase.DRY_RUN, self.st.message)
            return

        await self._start_observers()
        await self._start_workload(f"faultlab/{self.exp.name}/{self.st.run_id}")

        self._phase(Phase.STEADY_STATE_CHECK)
        warm_until = time.time() + self.opts.warmup_s
        if not await self._wait_steady(self.opts.steady_before_timeout_s + self.opts.warmup_s, not_before=warm_until):
            failing = ", ".join(f"{r.name}: {r.detail}" for r in self._latest.values() if not r.ok)
            self.st.verdict = "Failed"
            self.st.message = f"steady state did not hold before injection ({failing}); nothing injected"
            self._phase(Phase.FAILED, self.st.message)
            await self._stop_workload()
            return

        # Roles may have moved while steady state was checked (an election): target who holds them now.
        self._statuses = await self.view.statuses()
        replanned = self._plan_all(self._candidates())
        if [_step_dict(s) for s in replanned] != self.st.plan:
            self._event("replan", "roles changed before injection; targets resolved again")
            self._record_plan(replanned)
            plan = replanned

        self._t0 = time.time()
        self.st.injection_started_at = self._t0
        self._phase(Phase.INJECTING)
        await self._observe(plan)
        await self._rollback()
        await self._verify()
        await self._stop_workload()
        await self._checks()
        self._phase(Phase.COMPLETED)

    async def _start_workload(self, key_prefix: str, why: str = "") -> None:
        if not self.spec.workload.enabled:
            return
        wl = self.spec.workload
        rate = (wl.rate_limit / wl.clients) if wl.rate_limit else 0.0
        cfg = WorkloadConfig(clients=wl.clients, keys=wl.keys, rate_per_client=rate,
                             read_fraction=wl.read_ratio, cas_fraction=wl.cas_ratio,
                             value_bytes=wl.value_bytes, seed=self.st.seed, key_prefix=key_prefix)
        self.data.workload = Workload({m: a.address for m, a in self.members.items()}, cfg,
                                      History(clock=time.time))
        await self.data.workload.start()
        self._event("workload", f"workload started{why}: {wl.clients} client(s) on {wl.keys} key(s), "
                                f"one pinned reader per member")

    def _record_plan(self, plan: list[StepPlan]) -> None:
        self.st.plan = [_step_dict(s) for s in plan]
        for step in plan:
            self._event("plan", f"step {step.step}: " + "; ".join(
                f"{f.name} ({f.type}) -> {', '.join(f.targets) or 'nobody'}" for f in step.faults),
                step=step.step, targets={f.name: f.targets for f in step.faults})
        self._save()

    async def _validate_runtime(self) -> None:
        """Fault types this runtime cannot do (here, or on this target) are rejected now, not discovered
        at injection."""
        for i, f in enumerate(self.spec.faults):
            why = (unsupported_fault(self.runtime, f.type)
                   or await refused_fault(self.runtime, self.target, f.type, f.params))
            if why:
                raise ExperimentRejected(f"spec.faults[{i}].type ({f.name}): {why}")

    def _validate_faults(self) -> None:
        for i, f in enumerate(self.spec.faults):
            if f.type in ("kill", "pause"):
                continue
            params = {k: v for k, v in f.params.items() if k not in _NETWORK_MATCH_PARAMS}
            try:
                _build_fault(f.type, params, id="validate", ttl_seconds=1, match=None)
            except ValueError as exc:
                raise ExperimentRejected(f"spec.faults[{i}] ({f.name}).params: {exc}") from None

    def _candidates(self) -> list[Candidate]:
        out = []
        for mid, m in sorted(self.members.items()):
            st = self._statuses.get(mid)
            role = "leader" if st is not None and st.role == "leader" else (
                "follower" if st is not None else "unknown")
            out.append(Candidate(mid, m.address, role, m.process))
        return out

    def _pool(self, fault_index: int, candidates: list[Candidate]) -> list[Candidate]:
        f = self.spec.faults[fault_index]
        sel = self.spec.target.selector or {}
        pool = [c for c in candidates if all(self.members[c.id].labels.get(k) == v for k, v in sel.items())]
        if f.target.members is not None:
            pool = [c for c in pool if c.id in f.target.members]
        return eligible_members(pool, f.target.role)

    def _resolve_step(self, k: int, candidates: list[Candidate], prev: StepPlan | None) -> StepPlan:
        steps = self.spec.rollout.steps if self.spec.rollout else []
        cap = steps[k].count(len(self.members)) if steps else None
        faults: list[PlannedFault] = []
        for i, f in enumerate(self.spec.faults):
            pool = sorted(self._pool(i, candidates), key=lambda c: c.id)
            want = target_count(f.target.mode, f.target.value, len(pool))
            if f.target.mode == "one" and not pool:
                raise SelectionError(f"spec.faults[{i}] ({f.name}): no member with role {f.target.role} "
                                     f"(roles: {', '.join(f'{c.id}={c.role}' for c in candidates)})")
            if f.target.mode == "fixed" and want > len(pool):
                raise SelectionError(f"spec.faults[{i}] ({f.name}).target.value: {want} member(s) asked, only "
                                     f"{len(pool)} with role {f.target.role}")
            want = min(want, len(pool))
            if cap is not None:
                want = min(want, cap)
            order = list(pool)
            random.Random(f"{self.st.seed}/{f.name}").shuffle(order)
            before: list[str] = next((p.targets for p in (prev.faults if prev else []) if p.index == i), [])
            chosen = list(before)
            for c in order:
                if len(chosen) >= want:
                    break
                if c.id not in chosen:
                    chosen.append(c.id)
            faults.append(PlannedFault(i, f.name, f.type, sorted(chosen),
                                       new=sorted(set(chosen) - set(before)), peers=f.effective_peers))
        hold = steps[k].hold_seconds if steps else 0.0
        return StepPlan(k, faults, hold)

    def _plan_all(self, candidates: list[Candidate]) -> list[StepPlan]:
        n_steps = len(self.spec.rollout.steps) if self.spec.rollout else 1
        radius = BlastRadius(self.spec.blast_radius.max_targets, self.spec.blast_radius.max_percent,
                             self.spec.blast_radius.allow_quorum_loss)
        plan: list[StepPlan] = []
        prev = None
        for k in range(n_steps):
            try:
                step = self._resolve_step(k, candidates, prev)
            except SelectionError as exc:
                raise ExperimentRejected(str(exc)) from None
            problems = check_blast_radius(step, sorted(self.members), radius)
            if problems:
                raise ExperimentRejected("; ".join(problems))
            plan.append(step)
            prev = step
        return plan

    # ------------------------------------------------------------------ observers

    async def _start_observers(self) -> None:
        self._tasks.append(asyncio.create_task(self._status_loop(), name="chaos-status"))
        self._tasks.append(asyncio.create_task(self._probe_loop(), name="chaos-probes"))

    async def _status_loop(self) -> None:
        assert self.view is not None
        while not self._stopping:
            self._statuses = await self.view.statuses()
            found = agreed_leader(self._statuses)
            if found is not None and (self._leader is None or found[0] != self._leader[0]):
                before = self._leader[0] if self._leader else None
                msg = (f"leader {before} -> {found[0]} (term {found[1]})" if before
                       else f"leader is {found[0]} (term {found[1]})")
                self._event("leader", msg, leader=found[0], previous=before, term=found[1])
                self._leader = found
            await asyncio.sleep(0.25)

    def _steady_specs(self) -> list[ProbeSpec]:
        return [probe_spec(p) for p in self.spec.steady_state.probes]

    async def _cached_statuses(self) -> dict[str, MemberStatus | None]:
        return dict(self._statuses)

    async def _probe_loop(self) -> None:
        assert self.view is not None
        ctx = ProbeContext(self.view, self.data.workload,
                           targets=lambda: {f.member for f in self.st.outstanding()},
                           statuses=self._cached_statuses)
        steady = self._steady_specs()
        intervals = {p.name: (p.every_seconds if p.type in ("http", "command")
                              else min(p.every_seconds, self.opts.probe_interval_s))
                     for p in self.spec.steady_state.probes}
        by_name = {p.name: p for p in self.spec.steady_state.probes}
        conds = []
        for c in self.spec.abort_conditions:
            probe = by_name[c.probe] if isinstance(c.probe, str) else c.probe
            conds.append(_CondState(c, probe_spec(probe, c.threshold)))
        due: dict[str, float] = {}
        was_ok: bool | None = None
        while not self._stopping:
            now = started = time.time()
            ctx.stats = self.data.workload
            run = [s for s in steady if due.get(s.name, 0.0) <= now]
            results = await asyncio.gather(*(evaluate(s, ctx) for s in run),
                                           *(evaluate(c.spec, ctx) for c in conds))
            now = time.time()
            for s, r in zip(run, results[:len(run)], strict=True):
                self._latest[s.name] = r
                self._latest_started[s.name] = started
                due[s.name] = now + intervals[s.name]
            failing = sorted(n for n, r in self._latest.items() if not r.ok)
            ok = not failing and len(self._latest) == len(steady)
            self._steady_ok = ok
            self.data.steady.append((now, ok, failing))
            self._evidence.append((min(self._latest_started.values(), default=now), ok))
            if self._t0 is not None and was_ok is not None and ok != was_ok:
                if ok:
                    self._event("steady", "steady state holds again")
                else:
                    self._event("breach", "steady state breached: " + "; ".join(
                        f"{n}: {self._latest[n].detail}" for n in failing), probes=failing)
            was_ok = ok
            for c, r in zip(conds, results[len(run):], strict=True):
                self._check_abort(c, r, now)
            self._tick_progress()
            await asyncio.sleep(max(0.0, self.opts.probe_interval_s - (time.time() - now)))

    def _check_abort(self, c: _CondState, r: ProbeResult, now: float) -> None:
        if r.ok:
            c.breach_since = None
            return
        if c.breach_since is None:
            c.breach_since = now
        active = self.st.phase in (Phase.INJECTING, Phase.OBSERVING)
        if active and self._abort is None and now - c.breach_since >= c.cond.for_seconds:
            reason = f"abort condition {c.cond.probe_name}: {r.detail}"
            self._abort = _Abort(reason, c.breach_since, now)
            self.st.aborted = reason
            self._event("abort", f"{reason} (breached since {now - c.breach_since:.2f}s); rolling back now",
                        breach_at=c.breach_since, probe=c.cond.probe_name)

    def _tick_progress(self) -> None:
        if self.opts.on_tick is None:
            return
        wl = self.data.workload
        w = wl.window(1.0) if wl else None
        snapshot = {
            "phase": self.st.phase.value,
            "elapsed": time.time() - self.st.started_at,
            "since_injection": (time.time() - self._t0) if self._t0 else None,
            "leader": self._leader[0] if self._leader else None,
            "ops_per_s": w.ops if w else None,
            "error_rate": w.error_rate if w else None,
            "steady": self._steady_ok,
            "active_faults": [f"{f.fault_name}@{f.member}" for f in self.st.outstanding()],
            "step": self.st.step,
        }
        with contextlib.suppress(Exception):
            self.opts.on_tick(snapshot)

    async def _wait_steady(self, timeout_s: float, not_before: float = 0.0) -> bool:
        """Wait until steady-state probes have held for settle_s (and not before `not_before`)."""
        deadline = time.time() + timeout_s
        since: float | None = None
        seen = len(self.data.steady)
        while time.time() < deadline:
            for t, ok, _ in self.data.steady[seen:]:
                since = (since or t) if ok else None
            seen = len(self.data.steady)
            now = time.time()
            if since is not None and now - since >= self.opts.settle_s and now >= not_before:
                return True
            await asyncio.sleep(0.05)
        return False

    # ------------------------------------------------------------------ observe + inject

    async def _observe(self, plan: list[StepPlan]) -> None:
        assert self._t0 is not None
        t0 = self._t0
        end = t0 + self.spec.duration_seconds
        k = 0
        self._step = plan[0]
        self.st.step = 0
        self._event("step", f"rollout step 0: {', '.join(sorted(plan[0].targets())) or 'nobody'}", step=0)
        step_started: float | None = None  # once the step's faults are in: only samples after count
        observing = False
        while True:
            now = time.time()
            if self._abort is not None or now >= end:
                break
            was_paused = self._paused
            self._poll_paused(now)
            if was_paused and not self._paused:
                step_started = None  # steady while rolled back says nothing about the step's faults
            self._ran_unpaused = self._ran_unpaused or not self._paused
            await self._reconcile(now)
            if step_started is None:
                step_started = time.time()
            if not observing:
                observing = True
                self._phase(Phase.OBSERVING)
            if self.spec.rollout and k + 1 < len(self.spec.rollout.steps):
                hold = self.spec.rollout.steps[k].hold_seconds
                held = self._held_since(step_started)
                if not self._paused and held is not None and held >= hold:
                    k += 1
                    nxt = await self._next_step(k)
                    if nxt is None:
                        k = len(self.spec.rollout.steps)
                    else:
                        self._step = nxt
                        step_started = None
            await self._check_restarts()
            await asyncio.sleep(self.opts.tick_s)
        if self._pause_began is not None:
            self.st.paused_seconds += max(0.0, min(time.time(), end) - self._pause_began)
            self._pause_began = None

    def _held_since(self, step_started: float) -> float | None:
        """How long steady state has held without a break within the step; None without a good sample yet.

        A step widens only on evidence: at least one good steady-state sample whose every probe was
        evaluated after the step's faults went in, and holdSeconds of unbroken holding when set.
        """
        start: float | None = None
        for t, ok in self._evidence:
            if t < step_started:
                continue
            start = (start or t) if ok else None
        return None if start is None else time.time() - start

    async def _next_step(self, k: int) -> StepPlan | None:
        assert self._step is not None
        radius = BlastRadius(self.spec.blast_radius.max_targets, self.spec.blast_radius.max_percent,
                             self.spec.blast_radius.allow_quorum_loss)
        try:
            step = self._resolve_step(k, self._candidates(), self._step)
        except SelectionError as exc:
            self._event("step", f"rollout stopped before step {k}: {exc}")
            return None
        problems = check_blast_radius(step, sorted(self.members), radius)
        if problems:
            self._event("step", f"rollout stopped before step {k}: {'; '.join(problems)}")
            return None
        self.st.step = k
        if k < len(self.st.plan):
            self.st.plan[k] = _step_dict(step)  # targets resolved now, which the verdict holds the run to
        hold = self.spec.rollout.steps[k - 1].hold_seconds if self.spec.rollout else 0.0
        self._event("step", f"rollout step {k}: steady state held {hold:g}s; widening to "
                            f"{', '.join(sorted(step.targets()))}", step=k)
        self._save()
        return step

    def _poll_paused(self, now: float) -> None:
        """spec.paused, as the caller reads it now (the file, the resource) or else as the run started.

        The clock does not stop while paused: fault windows and durationSeconds stay wall-clock
        from the start of injection, so a run never outlasts its window or its faults' TTLs.
        """
        if now - self._paused_checked < 0.5:
            return
        self._paused_checked = now
        try:
            paused = bool(self.opts.paused()) if self.opts.paused is not None else self.spec.paused
        except Exception:
            return
        if paused != self._paused:
            self._paused = paused
            if paused:
                self._pause_began = now
            elif self._pause_began is not None:
                self.st.paused_seconds += now - self._pause_began
                self._pause_began = None
            self._event("pause", "paused: stopping injection and rolling back" if paused
                        else "unpaused: injecting again")
            self._save()

    def _desired(self, now: float) -> set[_Slot]:
        assert self._t0 is not None and self._step is not None
        if self._paused or self._abort is not None:
            return set()
        out: set[_Slot] = set()
        everyone = sorted(self.members)
        for pf in self._step.faults:
            f = self.spec.faults[pf.index]
            if not (self._t0 + f.start_after_seconds <= now < self._t0 + f.end_seconds):
                continue
            direction = f.direction or "both"
            selected = list(pf.targets)
            if f.type in NETWORK_FAULTS:
                if pf.peers == "others":
                    others = [m for m in everyone if m not in selected]
                    for m in selected:
                        out.add(_Slot(pf.index, m, True, tuple(others), direction))
                    if f.type == "partition":
                        for o in others:
                            out.add(_Slot(pf.index, o, False, tuple(selected), _MIRROR[direction]))
                elif pf.peers == "selected":
                    for m in selected:
                        out.add(_Slot(pf.index, m, True, tuple(x for x in selected if x != m), direction))
                else:
                    for m in selected:
                        out.add(_Slot(pf.index, m, True, (), direction))
            else:
                for m in selected:
                    out.add(_Slot(pf.index, m, True, (), direction))
        return out

    async def _reconcile(self, now: float) -> None:
        desired = self._desired(now)
        active: dict[tuple[int, str, bool], FaultRecord] = {}
        for rec in self.st.outstanding():
            if rec.type in ONE_SHOT_FAULTS:
                continue
            active[(rec.fault_index, rec.member, rec.primary)] = rec
        want = {(s.fault, s.member, s.primary): s for s in desired}
        self._refused &= set(want)
        removals = []
        for key, rec in active.items():
            slot = want.get(key)
            if slot is None or tuple(rec.peers) != slot.peers:
                removals.append(rec)
        if removals:
            await asyncio.gather(*(self._recover(r) for r in removals))
        for key, slot in sorted(want.items(), key=lambda kv: (kv[0][0], kv[0][1], not kv[0][2])):
            rec = active.get(key)
            if (rec is not None and rec not in removals) or key in self._refused:
                continue
            f = self.spec.faults[slot.fault]
            if f.type in ONE_SHOT_FAULTS:
                if (slot.fault, slot.member) in self._done_one_shot:
                    continue
                self._done_one_shot.add((slot.fault, slot.member))
            await self._inject(slot, now)

    async def _inject(self, slot: _Slot, now: float) -> None:
        assert self._t0 is not None
        f = self.spec.faults[slot.fault]
        gen = self._gen.get((slot.fault, slot.member, slot.primary), 0) + 1
        self._gen[(slot.fault, slot.member, slot.primary)] = gen
        side = "" if slot.primary else "m"
        fid = f"fl-{self.st.run_id}-{slot.fault}{side}-{slot.member}-{gen}"[:128]
        remaining = max(1.0, self._t0 + min(f.end_seconds, self.spec.duration_seconds) - now)
        ttl = min(AGENT_MAX_TTL_SECONDS, math.ceil(remaining + self.opts.ttl_margin_s))  # the agent's maximum
        mechanism = f.type if f.type in ("kill", "pause") else "agent"
        member = self._member(slot.member)
        listing = await self._agent_list(slot.member)
        rec = FaultRecord(
            id=fid, member=slot.member, address=member.address, type=f.type, mechanism=mechanism,
            step=self.st.step, fault_index=slot.fault, fault_name=f.name, ttl_seconds=ttl,
            params=dict(f.params), peers=list(slot.peers), primary=slot.primary, process=member.process,
            agent_started_at=listing.started_at if listing is not None else None,
        )
        self.st.faults.append(rec)
        self._save()  # durable before acting
        what = f"{f.name} ({f.type}) on {slot.member}" + (
            f" against {', '.join(slot.peers)} [{slot.direction}]" if slot.peers else "")
        try:
            if mechanism == "kill":
                await self.runtime.kill(self.target, member)
                self._restart_tasks[fid] = asyncio.create_task(self._await_restart(rec))
            elif mechanism == "pause":
                if self.opts.watchdogs:
                    self._spawn_watchdog(rec)
                await self.runtime.pause(self.target, member)
            else:
                params = {k: v for k, v in f.params.items() if k not in _NETWORK_MATCH_PARAMS}
                match: dict[str, Any] | None = None
                if f.type in NETWORK_FAULTS:
                    match = {"peers": list(slot.peers), "direction": slot.direction,
                             "methods": list(f.params.get("methods") or []),
                             "includeClients": bool(f.params.get("includeClients", False))}
                fault = _build_fault(f.type, params, id=fid, ttl_seconds=ttl, match=match)
                try:
                    resp = await self._agent(slot.member).inject(fault, timeout=3.0)
                    rec.detail = resp.detail
                except grpc.aio.AioRpcError:
                    if f.type != "crash":
                        raise
                    rec.detail = "the process exited while answering (crash)"
                if f.type == "crash":
                    self._restart_tasks[fid] = asyncio.create_task(self._await_restart(rec))
        except (grpc.aio.AioRpcError, OSError, Exception) as exc:
            refused = isinstance(exc, grpc.aio.AioRpcError) and exc.code() in (
                grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED)
            # A runtime that refuses a kill (no running process: the member is restarting) did nothing. A
            # refused pause stays INJECTING: the signal may have gone out, and rollback's resume is harmless.
            refused = refused or (mechanism == "kill" and isinstance(exc, RuntimeError_))
            detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            if refused:
                rec.status = FaultStatus.FAILED
                self._refused.add((slot.fault, slot.member, slot.primary))
            rec.detail = f"inject failed: {detail}"
            self._event("error", f"could not inject {what}: {detail}" + (
                " (refused; not retried in this window)" if refused else " (outcome unknown)"),
                fault=fid, member=slot.member)
            self._save()
            return
        rec.status = FaultStatus.ACTIVE
        rec.injected_at = time.time()
        self._event("inject", f"injected {what}, ttl {ttl}s", fault=fid, member=slot.member, type=f.type,
                    name=f.name, primary=slot.primary)
        self._save()

    def _spawn_watchdog(self, rec: FaultRecord) -> None:
        """A detached `kill -CONT` after the TTL: a paused process cannot heal itself."""
        if not rec.process.isdigit() or self.runtime.name != "local" or shutil.which("sh") is None:
            return
        proc = subprocess.Popen(
            ["sh", "-c", f"sleep {rec.ttl_seconds}; kill -CONT {int(rec.process)} 2>/dev/null"],
            start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.st.watchdogs.append(proc.pid)
        rec.detail = f"watchdog pid {proc.pid} resumes the process after {rec.ttl_seconds}s"

    async def _await_restart(self, rec: FaultRecord) -> None:
        """A killed/crashed member is back when its process start time changed and it answers."""
        started = time.time()
        deadline = started + self.opts.restart_timeout_s
        with contextlib.suppress(Exception):
            await self.runtime.wait_running(self.target, self._member(rec.member), self.opts.restart_timeout_s)
        while time.time() < deadline:
            listing = await self._agent_list(rec.member)
            if listing is not None and (rec.agent_started_at is None or listing.started_at != rec.agent_started_at):
                rec.status = FaultStatus.RECOVERED
                rec.recovered_at = time.time()
                self._event("restart", f"{rec.member} is back after {rec.fault_name} ({rec.type}): restarted in "
                                       f"{rec.recovered_at - started:.1f}s", member=rec.member, fault=rec.id)
                self._save()
                return
            await asyncio.sleep(0.1)

    async def _recover(self, rec: FaultRecord) -> None:
        """Undo one fault; RECOVERED only once confirmed (agent List no longer holds it)."""
        if rec.status in (FaultStatus.RECOVERED, FaultStatus.FAILED):
            return
        if rec.type in ONE_SHOT_FAULTS:
            return
        rec.status = FaultStatus.RECOVERING
        self._save()
        try:
            if rec.mechanism == "pause":
                await self.runtime.resume(self.target, self._member(rec.member))
                self._stop_watchdogs(rec)
                rec.status = FaultStatus.RECOVERED
                rec.recovered_at = time.time()
                self._event("recover", f"resumed {rec.member} ({rec.fault_name})", fault=rec.id, member=rec.member)
            else:
                await self._agent(rec.member).recover(rec.id, timeout=2.0)
                listing = await self._agent_list(rec.member)
                if listing is not None and rec.id not in {a.fault.id for a in listing.faults}:
                    rec.status = FaultStatus.RECOVERED
                    rec.recovered_at = time.time()
                    self._event("recover", f"recovered {rec.fault_name} ({rec.type}) on {rec.member}",
                                fault=rec.id, member=rec.member, primary=rec.primary)
        except (grpc.aio.AioRpcError, OSError, Exception) as exc:
            detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            self._event("error", f"could not recover {rec.id} on {rec.member}: {detail}", fault=rec.id)
        self._save()

    def _stop_watchdogs(self, rec: FaultRecord) -> None:
        if "watchdog pid" not in rec.detail:
            return
        with contextlib.suppress(ValueError, IndexError):
            pid = int(rec.detail.split("watchdog pid ")[1].split()[0])
            if pid in self.st.watchdogs:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGTERM)
                self.st.watchdogs.remove(pid)

    async def _check_restarts(self) -> None:
        """Record members whose process restarted while holding our agent faults (they lost them)."""
        now = time.time()
        if now - getattr(self, "_restarts_checked", 0.0) < 1.0:
            return
        self._restarts_checked = now
        by_member: dict[str, list[FaultRecord]] = {}
        for rec in self.st.outstanding():
            if rec.mechanism == "agent" and rec.type not in ONE_SHOT_FAULTS and rec.status in (
                    FaultStatus.ACTIVE, FaultStatus.INJECTING):
                by_member.setdefault(rec.member, []).append(rec)
        for member, recs in by_member.items():
            listing = await self._agent_list(member)
            if listing is None:
                continue
            held = {a.fault.id for a in listing.faults}
            for rec in recs:
                if rec.status == FaultStatus.INJECTING:
                    # Inject failed with an unknown outcome: the agent's List tells whether it took effect.
                    if rec.id in held and rec.agent_started_at in (None, listing.started_at):
                        rec.status = FaultStatus.ACTIVE
                        rec.injected_at = now
                        self._event("inject", f"{rec.fault_name} ({rec.type}) on {member} is in effect after all "
                                              f"(the agent lists it)", fault=rec.id, member=member, type=rec.type,
                                    name=rec.fault_name, primary=rec.primary)
                    continue
                if rec.agent_started_at is not None and listing.started_at != rec.agent_started_at:
                    rec.status = FaultStatus.RECOVERED
                    rec.recovered_at = now
                    rec.detail = "lost: the member's process restarted"
                    self._event("restart", f"{member} restarted while holding {rec.fault_name} ({rec.type}); "
                                           f"the fault was lost with the process", member=member, fault=rec.id)
                elif rec.id not in held:
                    rec.status = FaultStatus.RECOVERED
                    rec.recovered_at = now
                    rec.detail = "gone from the agent (TTL ended)"
                    self._event("recover", f"{rec.fault_name} on {member} healed by the agent (TTL)", fault=rec.id,
                                member=member)
        if by_member:
            self._save()

    # ------------------------------------------------------------------ rollback, verify, checks

    async def _rollback(self) -> None:
        self._phase(Phase.ROLLING_BACK, self._abort.reason if self._abort else "")
        deadline = time.time() + self.opts.rollback_timeout_s
        outstanding = self.st.outstanding()
        await asyncio.gather(*(self._recover(r) for r in outstanding if r.type not in ONE_SHOT_FAULTS))
        while time.time() < deadline:
            pending = self.st.outstanding()
            if not pending:
                break
            for rec in pending:
                if rec.type in ONE_SHOT_FAULTS:
                    task = self._restart_tasks.get(rec.id)
                    if task is None or task.done():
                        if task is not None and rec.status != FaultStatus.RECOVERED:
                            self._event("error", f"{rec.member} did not come back after {rec.type} within "
                                                 f"{self.opts.restart_timeout_s:g}s")
                        self._restart_tasks[rec.id] = asyncio.create_task(self._await_restart(rec))
                    continue
                await self._confirm(rec)
            await asyncio.sleep(0.2)
        # Sweep: no fault of this run may remain on any reachable member.
        clean = True
        prefix = f"fl-{self.st.run_id}-"
        for member in sorted(self.st.members):
            listing = await self._agent_list(member)
            if listing is None:
                if any(r.member == member for r in self.st.outstanding()):
                    clean = False
                continue
            for a in listing.faults:
                if a.fault.id.startswith(prefix):
                    with contextlib.suppress(Exception):
                        await self._agent(member).recover(a.fault.id, timeout=2.0)
                    self._event("recover", f"swept leftover fault {a.fault.id} on {member}", member=member)
                    clean = False
        leftover = self.st.outstanding()
        self.st.rollback_confirmed = clean and not leftover
        if self.st.rollback_confirmed:
            self._event("rollback", f"rollback confirmed: {len(self.st.faults)} fault record(s), none active "
                                    f"(agents' List checked)")
        else:
            self._event("rollback", "rollback NOT confirmed: " + (
                ", ".join(f"{r.id}@{r.member} ({r.status.value})" for r in leftover) or "leftover faults swept")
                + "; the agents heal them when their TTL ends")
        for pid in list(self.st.watchdogs):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
            self.st.watchdogs.remove(pid)
        self._save()

    async def _confirm(self, rec: FaultRecord) -> None:
        if rec.mechanism == "pause":
            await self._recover(rec)
            return
        if rec.status != FaultStatus.RECOVERED:
            await self._recover(rec)
        if rec.status == FaultStatus.RECOVERED:
            return
        listing = await self._agent_list(rec.member)
        if listing is None:
            return
        if rec.agent_started_at is not None and listing.started_at != rec.agent_started_at:
            rec.status = FaultStatus.RECOVERED
            rec.recovered_at = time.time()
            rec.detail = "lost: the member's process restarted"
            self._event("restart", f"{rec.member} restarted; {rec.id} was lost with the process", member=rec.member)
        elif rec.id not in {a.fault.id for a in listing.faults}:
            rec.status = FaultStatus.RECOVERED
            rec.recovered_at = time.time()
            self._event("recover", f"confirmed {rec.id} gone from {rec.member}", fault=rec.id, member=rec.member)
        self._save()

    async def _verify(self, after: bool = True) -> None:
        self._phase(Phase.VERIFYING)
        if not self.spec.steady_state.probes:
            self.data.steady_after = True
            return
        ok = await self._wait_steady(self.opts.recovery_timeout_s)
        self.data.steady_after = ok
        if ok:
            self.data.steady_regained_at = time.time()
            self._event("verify", "steady state verified after rollback")
            if self.data.workload is not None and after:
                await asyncio.sleep(self.opts.after_s)  # the workload's "after" period, for the report
        else:
            failing = ", ".join(f"{r.name}: {r.detail}" for r in self._latest.values() if not r.ok)
            self._event("verify", f"steady state NOT regained within {self.opts.recovery_timeout_s:g}s ({failing})")
        self._save()

    async def _verify_resumed(self) -> None:
        """A resumed run verifies the whole steady state again, workload probes included.

        The interrupted run's workload died with its engine, so a fresh one (on keys of its own)
        runs for the verification only: it measures the cluster after the rollback, and is then
        dropped, so the report claims no availability or latency for a run whose history is lost.
        """
        await self._start_workload(f"faultlab/{self.exp.name}/{self.st.run_id}-resume{self.st.resumes}",
                                   " to verify the steady state after the rollback")
        try:
            await self._verify(after=False)
        finally:
            wl = self.data.workload
            if wl is not None:
                await wl.stop()
                ok = sum(1 for x in wl.samples if x.ok)
                self._event("workload", f"verification workload stopped: {ok} of {len(wl.samples)} operation(s) "
                                        f"succeeded")
                await wl.close()
                self.data.workload = None

    async def _stop_workload(self) -> None:
        wl = self.data.workload
        if wl is None or wl.stopped_at is not None:
            return
        await wl.stop()
        self._event("workload", f"workload stopped: {len(wl.samples)} operation(s), "
                                f"{len(wl.history)} history record(s)")
        if {"noLostWrites"} & set(self.spec.checks):
            self.data.final_reads = await wl.final_reads()

    async def _checks(self) -> None:
        self._phase(Phase.CHECKING)
        wl = self.data.workload
        results: list[dict[str, Any]] = []
        if wl is None:
            self.data.checks = [{"name": c, "result": "Unknown", "message": "no workload history"}
                                for c in self.spec.checks]
            return
        ops = wl.history.operations()
        for name in self.spec.checks:
            if name == "linearizable":
                from faultlab.operator.chaos.checks import check_linearizable

                res = await asyncio.to_thread(check_linearizable, ops, timeout_s=self.opts.check_timeout_s)
                result = {"linearizable": "Passed", "not_linearizable": "Failed"}.get(res.verdict, "Unknown")
                results.append({"name": name, "result": result, "verdict": res.verdict,
                                "message": res.summary(), "operations": res.ops_checked,
                                "duration_seconds": round(res.elapsed_s, 3)})
            elif name == "noLostWrites":
                from faultlab.operator.chaos.checks import check_no_lost_writes

                reads = self.data.final_reads or {}
                started = time.monotonic()
                lw = check_no_lost_writes(ops, reads)
                missing = [k for k in wl.keys if k not in reads]
                verdict = lw.verdict if not missing else ("violated" if lw.verdict == "violated" else "unknown")
                result = {"ok": "Passed", "violated": "Failed"}.get(verdict, "Unknown")
                lines = [f"{lw.acknowledged} acknowledged write(s), {len(lw.lost)} lost, "
                         f"{len(reads)}/{len(wl.keys)} key(s) read back"]
                lines += [f"lost: {w.op} ({w.reason})" for w in lw.lost[:10]]
                lines += [f"key {k!r} holds {v!r}, never written" for k, v in list(lw.unexplained.items())[:10]]
                if missing:
                    lines.append(f"could not read back: {', '.join(missing)}")
                results.append({"name": name, "result": result, "verdict": verdict, "message": "\n".join(lines),
                                "operations": lw.acknowledged,
                                "duration_seconds": round(time.monotonic() - started, 3)})
            else:
                results.append({"name": name, "result": "Unknown",
                                "message": f"check {name} does not apply to {self.spec.target.kind}"})
        self.data.checks = results
        for r in results:
            self._event("check", f"{r['name']}: {r['result']}", check=r["name"], result=r["result"])
        self._save()

    # ------------------------------------------------------------------ teardown and report

    async def _interrupted_rollback(self) -> None:
        if self._handover is not None:
            await self._handover_rollback(self._handover)
        else:
            await self._emergency_rollback()

    def _cut_short(self, phase: Phase) -> str:
        """What an interruption in `phase` did to the run, for its verdict."""
        if phase in (Phase.PENDING, Phase.STEADY_STATE_CHECK) or self.st.injection_started_at is None:
            return "before any fault was injected"
        if phase in (Phase.INJECTING, Phase.OBSERVING):
            elapsed = time.time() - self.st.injection_started_at
            return (f"fault windows were cut short at {elapsed:.1f}s of the {self.spec.duration_seconds:g}s "
                    f"window")
        return "after the fault windows ended; the workload history was lost with the engine, so the checks " \
               "could not run"

    async def _handover_rollback(self, reason: str) -> None:
        """Hand-over (operator shutdown): roll back every fault now, leave the journal resumable."""
        if self.state is None or self.st.terminal:
            return
        with contextlib.suppress(Exception):
            phase = self.st.phase
            self.st.interrupted = True
            if not self.st.interruption:  # the first interruption is the one that cut the run short
                self.st.interruption = f"{reason} in phase {phase.value} ({self._cut_short(phase)})"
            self._event("handover", f"{reason}: rolling back {len(self.st.outstanding())} fault(s) before exit; "
                                    f"the journal stays open for the next engine to resume")
            self._save()
            if self.st.outstanding():
                await self._rollback()
            self._save()

    async def _emergency_rollback(self) -> None:
        """Interrupted (signal, cancellation, bug): roll back, then close the journal as interrupted."""
        if self.state is None or self.st.terminal:
            return
        with contextlib.suppress(Exception):
            if self.st.outstanding():
                self._event("error", "engine interrupted: rolling back before exit")
                await self._rollback()
            self.st.interrupted = True
            self.st.message = "interrupted before the end (signal, cancellation or error); faults rolled back"
            self._phase(Phase.ABORTED, self.st.message)
            await self._shutdown()
            self._finish()

    async def _stop_observers(self) -> None:
        self._stopping = True
        tasks = self._tasks + list(self._restart_tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []

    async def _shutdown(self) -> None:
        await self._stop_observers()
        if self.data.workload is not None:
            await self.data.workload.close()
        for agent in self._agents.values():
            with contextlib.suppress(Exception):
                await agent.close()
        self._agents = {}
        if self.view is not None:
            await self.view.close()

    def _not_in_effect(self) -> list[str]:
        """Planned faults that never became active on a member they were aimed at, each saying why.

        Planned means: a target of a rollout step the run reached (or the mirror side of a partition it
        tried). A fault that was active at any moment counts as in effect, even if a pause or a restart
        later cut it short.
        """
        st = self.st
        if st.injection_started_at is None:
            return []
        names = [f.name for f in self.spec.faults]
        records: dict[tuple[int, str, bool], list[FaultRecord]] = {}
        for rec in st.faults:
            records.setdefault((rec.fault_index, rec.member, rec.primary), []).append(rec)
        planned: dict[tuple[int, str, bool], None] = {}
        for step in st.plan[: max(st.step, 0) + 1]:
            for pf in step.get("faults", []):
                if pf.get("name") in names:
                    for member in pf.get("targets", []):
                        planned[(names.index(pf["name"]), member, True)] = None
        out = []
        for key in sorted({**planned, **dict.fromkeys(records)}, key=lambda k: (k[0], k[1], not k[2])):
            recs = records.get(key, [])
            if any(r.injected_at is not None for r in recs):
                continue
            index, member, primary = key
            fault = self.spec.faults[index]
            if recs:
                last = recs[-1]
                why = last.detail or "no answer from the agent"
                if last.status == FaultStatus.FAILED:
                    why = f"refused: {why.removeprefix('inject failed: ')}"
                else:
                    why = f"not confirmed active ({why})"
            else:
                why = self._why_not_attempted(fault)
            side = "" if primary else " (the mirror side of the partition)"
            out.append(f"{fault.name} ({fault.type}) on {member}{side} never became active: {why}")
        return out

    def _why_not_attempted(self, fault: Any) -> str:
        if fault.start_after_seconds >= self.spec.duration_seconds:
            return (f"its window opens at startAfterSeconds {fault.start_after_seconds:g}, after durationSeconds "
                    f"{self.spec.duration_seconds:g}")
        if self.st.aborted:
            return "the run aborted before its window"
        if self.st.paused_seconds > 0:
            return "the run was paused during its window"
        return "never injected"

    def _verdict(self) -> tuple[str | None, str]:
        """The run's verdict and why.

        Evidence against the system (a failed check, steady state not regained, a rollback not confirmed)
        makes it Failed. A planned fault that never became active (the agent refused it, the runtime could
        not do it, the outcome stayed unknown) makes it Inconclusive, never Passed: the hypothesis was not
        tested under that fault, so "Passed" would claim a resilience nobody observed, and "Failed" would
        blame the system for what the tool could not do. Inconclusive, with the fault, the member and the
        reason in the message, is what a user can act on (fix the experiment) and what a gate that requires
        Passed stops on.
        """
        st = self.st
        if st.phase == Phase.DRY_RUN:
            return None, st.message
        if st.verdict:  # rejected or steady state did not hold before
            return st.verdict, st.message
        reasons: list[str] = []
        failed = [c["name"] for c in self.data.checks if c["result"] == "Failed"]
        unknown = [c["name"] for c in self.data.checks if c["result"] == "Unknown"]
        if st.rollback_confirmed is not True:
            reasons.append("rollback not confirmed")
        if self.data.steady_after is False:
            reasons.append("steady state not regained after rollback")
        if failed:
            reasons.append("check(s) failed: " + ", ".join(failed))
        if st.interrupted:
            return "Inconclusive", (st.message or "interrupted") + (f"; {'; '.join(reasons)}" if reasons else "")
        if self._abort is not None or st.aborted:
            return "Aborted", f"aborted: {st.aborted}" + (f"; {'; '.join(reasons)}" if reasons else "")
        if reasons:
            return "Failed", "; ".join(reasons)
        if (st.injection_started_at is not None and not self._ran_unpaused
                and not any(f.injected_at is not None for f in st.faults)):
            return "Inconclusive", "paused for the whole run; nothing was injected"
        not_in_effect = self._not_in_effect()
        if not_in_effect:
            return "Inconclusive", "the hypothesis was not tested as planned: " + "; ".join(not_in_effect)
        if unknown:
            return "Inconclusive", "check(s) could not decide (unknown is never a pass): " + ", ".join(unknown)
        paused = (f"; paused for {st.paused_seconds:.1f}s of the {self.spec.duration_seconds:g}s window, so "
                  f"fault windows were cut short" if st.paused_seconds > 0 else "")
        return "Passed", "all checks passed, rollback confirmed, steady state regained" + paused

    def _finish(self) -> dict[str, Any]:
        verdict, message = self._verdict()
        self.st.verdict = verdict
        self.st.message = message
        self.st.finished_at = time.time()
        self._event("verdict", f"verdict: {verdict or 'none (dry run)'} — {message}", verdict=verdict)
        self._save()
        rep = report_mod.build_report(self.st, self.data)
        if self.opts.out_dir is not None:
            report_mod.save(rep, self.opts.out_dir, history=self.data.workload.history
                            if self.data.workload else None, html=self.opts.html)
        return rep


def _step_dict(step: StepPlan) -> dict[str, Any]:
    return {"step": step.step, "holdSeconds": step.hold_seconds,
            "faults": [{"name": f.name, "type": f.type, "targets": f.targets, "new": f.new,
                        "peers": f.peers} for f in step.faults]}
