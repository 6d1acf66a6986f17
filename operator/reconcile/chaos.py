"""ChaosExperiment on Kubernetes: the chaos engine with the Kubernetes runtime, its journal in status.

The engine (`faultlab.operator.chaos.engine`) is runtime-agnostic and saves its
journal through a StateStore before every action; here that store is the
resource's `status.journal`, so an operator killed at any point is resumed by the
next one, which rolls back whatever the journal says may still be in effect and
completes the run. The engine runs on its own thread and event loop (its
workload is busy; kopf's loop stays responsive) and is stopped through flags:
`cancel` (the experiment is deleted: roll back, close the run) or `handover`
(the operator shuts down — SIGTERM on a pod deletion, a helm upgrade, a drain —
or loses its Lease: roll back, but leave the journal open for the next operator,
see :func:`hand_over_all`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from faultlab.operator.api import ChaosExperiment, Schedule
from faultlab.operator.chaos.engine import Engine, EngineOptions
from faultlab.operator.chaos.journal import Event, ExperimentState, FaultStatus
from faultlab.operator.chaos.scheduler import decide, in_window
from faultlab.operator.reconcile import builders as b
from faultlab.operator.reconcile.events import EventRecorder
from faultlab.operator.reconcile.kube import JSON, ApiError, Kube, path
from faultlab.operator.runtime.base import TargetRef
from faultlab.operator.runtime.kubernetes import KubernetesRuntime

log = logging.getLogger("faultlab.operator.chaos")
TIMELINE_IN_STATUS = 100  # the newest events shown in status.timeline (the journal keeps all)
TERMINAL = {"Completed", "Aborted", "Failed", "DryRun"}
PHASE_REASONS = {"SteadyStateCheck": "CheckingSteadyState", "Injecting": "Injecting", "Observing": "Observing",
                 "RollingBack": "RollingBack", "Verifying": "Verifying", "Checking": "CheckingHistory",
                 "Completed": "Completed", "Aborted": "Aborted", "Failed": "Failed", "DryRun": "DryRun",
                 "Pending": "Validating"}
SCHEDULE_EVERY_S = 5.0  # how often a scheduled experiment's daemon asks decide()
SHUTDOWN_REASON = "an operator shutdown (restart, upgrade, drain or lost leadership)"

_live: set[ExperimentRun] = set()  # engine runs of this process, for hand_over_all at shutdown
_live_lock = threading.Lock()


def hand_over_all(timeout_s: float, reason: str = SHUTDOWN_REASON) -> list[str]:
    """Operator shutdown: every running engine rolls back its faults and leaves its journal resumable.

    Waits up to `timeout_s` for them; returns the experiments (namespace/name) still rolling back
    (their journals still list the faults: the next operator finishes the rollback, and every fault's
    TTL heals it regardless).
    """
    with _live_lock:
        runs = list(_live)
    for run in runs:
        run.stop_for_handover(reason)
    deadline = time.monotonic() + timeout_s
    for run in runs:
        run.done.wait(max(0.0, deadline - time.monotonic()))
    return [f"{r.namespace}/{r.name}" for r in runs if not r.done.is_set()]


def _operator_stopping(stopped: Any) -> bool:
    """A kopf daemon stopped for anything but its resource's deletion: the operator is going away."""
    import kopf

    reason = getattr(stopped, "reason", None)
    return not (reason is not None and kopf.DaemonStoppingReason.RESOURCE_DELETED in reason)


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class StatusStateStore:
    """The engine's StateStore on the resource: `status.journal` plus the status fields users read."""

    def __init__(self, kube: Kube, namespace: str, name: str, generation: int = 0,
                 on_save: Callable[[ExperimentState], None] | None = None) -> None:
        self.kube = kube
        self.path = path("ChaosExperiment", namespace, name, "status")
        self.object_path = path("ChaosExperiment", namespace, name)
        self.generation = generation
        self.on_save = on_save

    def load(self) -> ExperimentState | None:
        body = self.kube.get(self.object_path)
        journal = ((body or {}).get("status") or {}).get("journal")
        return ExperimentState.from_dict(journal) if journal else None

    def save(self, state: ExperimentState) -> None:
        status = status_from_state(state)
        status["journal"] = state.to_dict()
        status["observedGeneration"] = self.generation
        deadline = time.monotonic() + 30
        while True:  # the journal must be durable before the engine acts: retry through API hiccups
            try:
                self.kube.patch(self.path, {"status": status})
                break
            except ApiError as exc:
                if exc.not_found:
                    raise
                if time.monotonic() > deadline:
                    raise
                log.warning("saving the experiment journal failed (%s); retrying", exc)
                time.sleep(0.5)
        if self.on_save is not None:
            self.on_save(state)


def _timeline(events: list[Event]) -> list[JSON]:
    out = []
    for ev in events[-TIMELINE_IN_STATUS:]:
        entry: JSON = {"time": iso(ev.at), "type": ev.kind, "message": ev.message[:500]}
        if ev.data.get("member"):
            entry["member"] = str(ev.data["member"])
        if ev.data.get("fault"):
            entry["fault"] = str(ev.data["fault"])
        out.append(entry)
    return out


def status_from_state(state: ExperimentState) -> JSON:
    """What users read in status, from the journal (the report adds metrics at the end)."""
    faults = []
    for f in state.faults:
        entry: JSON = {"fault": f.fault_name, "faultId": f.id, "type": f.type, "member": f.member,
                       "detail": f.detail[:500]}
        if f.agent_started_at is not None:
            entry["agentStartedAt"] = f.agent_started_at
        if f.injected_at is not None:
            entry["injectedAt"] = iso(f.injected_at)
            entry["expiresAt"] = iso(f.injected_at + f.ttl_seconds)
        if f.recovered_at is not None:
            entry["recoveredAt"] = iso(f.recovered_at)
        faults.append(entry)
    status: JSON = {"phase": state.phase.value, "message": state.message[:1000], "startedAt": iso(state.started_at),
                    "injectedFaults": faults, "timeline": _timeline(state.timeline)}
    if state.finished_at is not None:
        status["finishedAt"] = iso(state.finished_at)
    if state.verdict:
        status["verdict"] = state.verdict
    status["conditions"] = _conditions(state)
    return status


def _conditions(state: ExperimentState) -> list[JSON]:
    """Ready: finished with a verdict; Progressing: running; Degraded: aborted, failed or not rolled back."""
    phase = state.phase.value
    running = phase not in TERMINAL
    left = [f.id for f in state.outstanding()]
    since = iso(state.finished_at or state.started_at)
    degraded = phase in ("Aborted", "Failed") or (not running and bool(left))
    return [
        {"type": "Ready", "status": "False" if running else "True", "lastTransitionTime": since,
         "reason": "Running" if running else (state.verdict or phase),
         "message": state.message[:500] or phase},
        {"type": "Progressing", "status": "True" if running else "False", "lastTransitionTime": since,
         "reason": phase, "message": f"phase {phase}"},
        {"type": "Degraded", "status": "True" if degraded else "False", "lastTransitionTime": since,
         "reason": "FaultsLeft" if left and not running else (phase if degraded else "AsPlanned"),
         "message": f"faults not confirmed recovered: {', '.join(left)}" if left and not running else
         (state.message[:500] if degraded else "no problem")},
    ]


def status_from_report(report: JSON) -> JSON:
    metrics = report.get("metrics", {})
    out: JSON = {
        "availability": (metrics.get("availability") or {}).get("overall"),
        "errorRate": (metrics.get("error_rate") or {}).get("overall"),
        "mttrSeconds": metrics.get("mttr_s"),
        "timeToDetectSeconds": metrics.get("time_to_detect_s"),
        "latency": {period: {k: v for k, v in (metrics.get("latency", {}).get(period) or {}).items()
                             if k in ("p50_ms", "p99_ms") and v is not None}
                    for period in ("before", "during", "after")},
        "checks": [{k: v for k, v in {
            "name": c.get("name"), "result": c.get("result", "Unknown"), "message": str(c.get("message", ""))[:1000],
            "operations": c.get("operations"), "durationSeconds": c.get("duration_seconds"),
        }.items() if v is not None} for c in report.get("checks", [])],
    }
    out["latency"] = {p: {("p50Ms" if k == "p50_ms" else "p99Ms"): v for k, v in stats.items()}
                      for p, stats in out["latency"].items()}
    return {k: v for k, v in out.items() if v is not None}


def parse_time(value: Any) -> datetime | None:
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None


@dataclass(frozen=True)
class ScheduleStep:
    """What a scheduled experiment's reconcile does now: start a run or not, the Event, what to record."""

    start: bool
    reason: str | None  # Event reason: Scheduled, SkippedOutsideWindow, SkippedConcurrent (None: nothing due)
    message: str
    record: datetime | None  # new status.lastScheduleTime (None: unchanged)


def schedule_step(schedule: Schedule, now: datetime, last_scheduled: datetime | None, running: bool,
                  created: datetime | None) -> ScheduleStep:
    """The decision glue: :func:`decide` plus the operator's rule of one run at a time per experiment.

    Every due cron time is recorded as lastScheduleTime whether it ran or was skipped, so it is acted on once.
    A due time while a run is going is skipped (Forbid, the only policy: the experiment's status holds one journal).
    """
    d = decide(schedule, now, last_scheduled, running, created=created)
    nxt = f"; next run at {d.next_at.isoformat()}" if d.next_at else ""
    if d.scheduled_for is None:
        return ScheduleStep(False, None, d.reason + nxt, None)
    due = d.scheduled_for.isoformat()
    if not in_window(schedule.window, d.scheduled_for):
        w = schedule.window
        where = f"{w.start}-{w.end} {w.timezone}" if w else ""
        return ScheduleStep(False, "SkippedOutsideWindow", f"{due} is outside spec.schedule.window ({where}){nxt}",
                            d.scheduled_for)
    if running:
        return ScheduleStep(False, "SkippedConcurrent", f"{due} skipped: the previous run is still going "
                            f"(concurrencyPolicy {schedule.concurrency_policy}; one run at a time){nxt}",
                            d.scheduled_for)
    return ScheduleStep(True, "Scheduled", f"run for {due} started{nxt}", d.scheduled_for)


class ExperimentRun:
    """One engine run (or resume) on a thread of its own, cancellable from kopf's loop."""

    def __init__(self, kube: Kube, events: EventRecorder, body: JSON, *,
                 runtime_factory: Callable[[Kube], Any] = KubernetesRuntime,
                 engine_options: dict[str, Any] | None = None) -> None:
        self.kube = kube
        self.events = events
        self.body = body
        self.runtime_factory = runtime_factory  # tests pass a fake runtime and fast engine timings
        self.engine_options = dict(engine_options or {})
        meta = body["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.cancel = threading.Event()
        self.handover = threading.Event()
        self.handover_reason = SHUTDOWN_REASON
        self.done = threading.Event()
        self.paused = bool((body.get("spec") or {}).get("paused", False))  # read before the first injection
        self.report: JSON | None = None
        self.error: BaseException | None = None
        self._last_phase = ""

    def _on_save(self, state: ExperimentState) -> None:
        phase = state.phase.value
        if phase != self._last_phase:
            self._last_phase = phase
            warning = phase in ("Aborted", "Failed")
            message = f"phase {phase}" + (f": {state.message}" if state.message else "")
            self.events.post_sync(self.body, PHASE_REASONS.get(phase, phase), message, warning=warning)

    def _store(self) -> StatusStateStore:
        return StatusStateStore(self.kube, self.namespace, self.name, self.body["metadata"].get("generation", 0),
                                on_save=self._on_save)

    def _options(self, runtime: Any) -> EngineOptions:
        return EngineOptions(paused=lambda: self.paused, html=False, agent_factory=runtime.agent_factory,
                             **self.engine_options)

    def stop_for_handover(self, reason: str = SHUTDOWN_REASON) -> None:
        """The operator is going away: roll back, leave the journal for the next operator."""
        self.handover_reason = reason
        self.handover.set()

    def run(self, resume_only: bool = False) -> None:
        with _live_lock:
            _live.add(self)
        try:
            asyncio.run(self._main(resume_only))
        except BaseException as exc:
            self.error = exc
            log.exception("experiment %s/%s: engine failed", self.namespace, self.name)
        finally:
            self.done.set()
            with _live_lock:
                _live.discard(self)

    async def _main(self, resume_only: bool) -> None:
        runtime = self.runtime_factory(self.kube)
        store = self._store()
        state = await asyncio.to_thread(store.load)
        if state is not None and hasattr(runtime, "remember"):
            target = (state.spec.get("spec") or {}).get("target") or {}
            runtime.remember(TargetRef(target.get("kind", "RaftCluster"), target.get("name", ""),
                                       target.get("namespace") or self.namespace),
                             {**state.members, **state.agents})
        engine: Engine | None
        if state is not None and not state.terminal and not state.faults and not resume_only:
            # Stopped before it journaled any fault (faults are journaled before they are injected):
            # nothing to roll back and nothing observed, so the run starts over instead of ending Inconclusive.
            self.events.post_sync(self.body, "Restarting", f"the previous engine stopped in phase "
                                  f"{state.phase.value} before injecting anything; starting the run again")
            state = None
        if state is not None and not state.terminal:
            self.events.post_sync(self.body, "Resuming", f"resuming an interrupted run in phase {state.phase.value}: "
                                  "rolling back what may still be in effect", warning=True)
            engine = Engine.from_journal(store, runtime, self._options(runtime))
        elif state is not None and state.outstanding():
            engine = Engine.from_journal(store, runtime, self._options(runtime), force=True)
        elif resume_only or state is not None:
            return
        else:
            experiment = ChaosExperiment.model_validate(
                {k: self.body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in self.body})
            engine = Engine(experiment, runtime, store, self._options(runtime))
        if engine is None:
            return
        task = asyncio.ensure_future(engine.run() if engine.state is None else engine.finish_interrupted())
        while not task.done():
            if self.handover.is_set():
                engine.hand_over(self.handover_reason)
                task.cancel()
                break
            if self.cancel.is_set():
                task.cancel()
                break
            await asyncio.wait({task}, timeout=0.2)
        try:
            self.report = await task
        except asyncio.CancelledError:
            if self.handover.is_set():
                log.info("experiment %s/%s: handed over (%s): faults rolled back, journal left for the next "
                         "operator", self.namespace, self.name, self.handover_reason)
            else:
                log.info("experiment %s/%s: engine cancelled (rolled back what it had injected)", self.namespace,
                         self.name)
            return
        if self.report:
            extra = status_from_report(self.report)
            await asyncio.to_thread(self.kube.patch, path("ChaosExperiment", self.namespace, self.name, "status"),
                                    {"status": extra})


class ChaosController:
    """Glue between kopf's daemon/delete handlers and engine runs, one run per experiment at a time."""

    def __init__(self, kube: Kube, events: EventRecorder, finalizer: str, *,
                 runtime_factory: Callable[[Kube], Any] = KubernetesRuntime,
                 engine_options: dict[str, Any] | None = None) -> None:
        self.kube = kube
        self.events = events
        self.finalizer = finalizer
        self._run_args: dict[str, Any] = {"runtime_factory": runtime_factory, "engine_options": engine_options}
        self.runs: dict[tuple[str, str], tuple[ExperimentRun, threading.Thread]] = {}

    async def _wait_finalizer(self, body: Any, stopped: Any, timeout_s: float = 30.0) -> bool:
        """No fault before the finalizer is on the object: a deletion must come through us to roll back."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not stopped:
            if self.finalizer in (body.get("metadata", {}).get("finalizers") or []):
                return True
            await stopped.wait(0.1)
        return False

    async def daemon(self, body: Any, namespace: str, name: str, stopped: Any) -> None:
        status = body.get("status") or {}
        journal = status.get("journal") or {}
        finished = status.get("phase") in TERMINAL and journal.get("phase", status.get("phase")) in TERMINAL
        outstanding = [f for f in journal.get("faults", []) if f.get("status") not in
                       (FaultStatus.RECOVERED.value, FaultStatus.FAILED.value)]
        scheduled = bool((body.get("spec") or {}).get("schedule"))
        if finished and not outstanding and not scheduled:
            return
        if not await self._wait_finalizer(body, stopped):
            if not stopped:
                await self.events.post(dict(body), "NoFinalizer", "the finalizer did not appear within 30s; not "
                                       "injecting anything", warning=True)
            return
        if scheduled:
            await self._scheduled(body, namespace, name, stopped, resume=bool(journal) and
                                  (not finished or bool(outstanding)))
            return
        run, restarts = self._start(body, namespace, name, resume_only=finished)
        try:
            while not run.done.is_set():
                if not await self._watch(run, restarts, body, stopped):
                    break
            await asyncio.to_thread(run.done.wait)
        except asyncio.CancelledError:
            self._stop(run, stopped)  # kopf cancels daemons soon after stopping them; the run rolls back anyway
            raise
        finally:
            self.runs.pop((namespace, name), None)

    @staticmethod
    def _stop(run: ExperimentRun, stopped: Any) -> None:
        """Deleted: cancel (roll back, close the run). Operator going away: hand over (roll back, resumable)."""
        if run.done.is_set() or run.cancel.is_set():
            return
        if _operator_stopping(stopped):
            run.stop_for_handover()
        else:
            run.cancel.set()

    def _start(self, body: Any, namespace: str, name: str, resume_only: bool) -> tuple[ExperimentRun, _PodRestarts]:
        snapshot = {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
                    "metadata": dict(body["metadata"]), "spec": dict(body.get("spec") or {})}
        run = ExperimentRun(self.kube, self.events, snapshot, **self._run_args)
        thread = threading.Thread(target=run.run, kwargs={"resume_only": resume_only}, daemon=True,
                                  name=f"chaos-{namespace}-{name}")
        self.runs[(namespace, name)] = (run, thread)
        thread.start()
        return run, _PodRestarts(self.kube, namespace, snapshot)

    async def _watch(self, run: ExperimentRun, restarts: _PodRestarts, body: Any, stopped: Any) -> bool:
        """One half-second of watching a run (pause flag, pod restarts); False once the daemon is stopped."""
        run.paused = bool((body.get("spec") or {}).get("paused", False))
        if stopped:
            self._stop(run, stopped)
            return False
        await restarts.check(self.events)
        await stopped.wait(0.5)
        return True

    async def _scheduled(self, body: Any, namespace: str, name: str, stopped: Any, resume: bool) -> None:
        """spec.schedule: every SCHEDULE_EVERY_S ask schedule_step(); start a fresh run (journal reset) when due."""
        meta = body["metadata"]
        last = parse_time((body.get("status") or {}).get("lastScheduleTime"))
        created = parse_time(meta.get("creationTimestamp"))
        status_path = path("ChaosExperiment", namespace, name, "status")
        run: tuple[ExperimentRun, _PodRestarts] | None = None
        if resume:  # an interrupted run (operator restart) is finished first
            run = self._start(body, namespace, name, resume_only=True)
        next_check = 0.0
        try:
            while not stopped and (body.get("spec") or {}).get("schedule"):
                running = run is not None and not run[0].done.is_set()
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + SCHEDULE_EVERY_S
                    schedule = Schedule.model_validate(body["spec"]["schedule"])
                    step = schedule_step(schedule, datetime.now(UTC), last, running, created)
                    if step.record is not None:
                        last = step.record
                        patch: JSON = {"lastScheduleTime": step.record.strftime("%Y-%m-%dT%H:%M:%SZ")}
                        if step.start:
                            patch["journal"] = None  # a new run; the last result stays until it finishes
                        await asyncio.to_thread(self.kube.patch, status_path, {"status": patch})
                    if step.reason:
                        await self.events.post(dict(body), step.reason, step.message,
                                               warning=step.reason != "Scheduled")
                    if step.start:
                        run = self._start(body, namespace, name, resume_only=False)
                        running = True
                if running and run is not None:
                    await self._watch(run[0], run[1], body, stopped)
                else:
                    await stopped.wait(0.5)
            if run is not None:
                if stopped:
                    self._stop(run[0], stopped)
                await asyncio.to_thread(run[0].done.wait)
        except asyncio.CancelledError:
            if run is not None:
                self._stop(run[0], stopped)
            raise
        finally:
            self.runs.pop((namespace, name), None)

    async def on_delete(self, body: Any, namespace: str, name: str) -> None:
        """Deleting a running experiment rolls it back first (the finalizer holds the object until then)."""
        entry = self.runs.get((namespace, name))
        if entry is not None:
            entry[0].cancel.set()
            await asyncio.to_thread(entry[0].done.wait, 120)
        run = ExperimentRun(self.kube, self.events, {"apiVersion": body.get("apiVersion"),
                                                     "kind": body.get("kind"), "metadata": dict(body["metadata"])},
                            **self._run_args)
        await asyncio.to_thread(run.run, True)
        if run.error is not None:
            raise run.error
        await self.events.post(run.body, "RolledBack", "experiment deleted: nothing it injected remains")


class _PodRestarts:
    """Records target pods that restart (or are replaced) while an experiment runs."""

    def __init__(self, kube: Kube, namespace: str, body: JSON) -> None:
        self.kube = kube
        self.body = body
        target = (body.get("spec") or {}).get("target") or {}
        self.target = target.get("name", "")
        self.target_ns = target.get("namespace") or namespace
        self.seen: dict[str, tuple[str, int]] = {}
        self.last = 0.0

    async def check(self, events: EventRecorder) -> None:
        if time.monotonic() - self.last < 1.0 or not self.target:
            return
        self.last = time.monotonic()
        try:
            pods = await asyncio.to_thread(self.kube.list, path("Pod", self.target_ns),
                                           labels=b.selector_labels(self.target))
        except ApiError:
            return
        for pod in pods:
            name = pod["metadata"]["name"]
            uid = pod["metadata"]["uid"]
            restarts = sum(c.get("restartCount", 0) for c in pod.get("status", {}).get("containerStatuses", []))
            before = self.seen.get(name)
            self.seen[name] = (uid, restarts)
            if before is None:
                continue
            if before[0] != uid:
                await events.post(self.body, "TargetPodReplaced", f"target pod {name} was replaced during the "
                                  "experiment (its faults went with it)", warning=True)
            elif restarts > before[1]:
                await events.post(self.body, "TargetPodRestarted", f"target pod {name} restarted during the "
                                  f"experiment (restart count {restarts})", warning=True)
