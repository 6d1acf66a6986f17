"""An operator shut down mid-experiment (SIGTERM) rolls its faults back and leaves the run to the next operator.

On Kubernetes a pod deletion, `helm upgrade` or a node drain sends the operator SIGTERM.
These tests drive the real shutdown path without a cluster: `faultlab operator run`'s
`_run` receives a real SIGTERM; kopf is replaced by a stand-in that does what kopf does
on exit (set each daemon's stop flag with OPERATOR_EXITING, then cancel the daemon
task); the API is an in-memory fake and the members are in-memory agents.
"""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import threading
import time
from typing import Any

import kopf
import pytest

from faultlab.operator.reconcile import chaos as chaos_mod
from faultlab.operator.reconcile import commands
from faultlab.operator.reconcile.chaos import ChaosController, ExperimentRun
from faultlab.operator.reconcile.events import EventRecorder
from faultlab.operator.reconcile.handlers import FINALIZER
from faultlab.operator.reconcile.kube import Kube, path
from tests.unit.test_chaos_fakes import FakeRuntime, steady_cluster_view

NS, NAME = "chaos", "cut"
OBJECT = path("ChaosExperiment", NS, NAME)
FAST = {"warmup_s": 0.0, "settle_s": 0.1, "after_s": 0.0, "tick_s": 0.02, "probe_interval_s": 0.05, "seed": 1}


@pytest.fixture(autouse=True)
def fake_statuses(monkeypatch: pytest.MonkeyPatch) -> None:
    steady_cluster_view(monkeypatch)


def _merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            into.pop(key, None)
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


class FakeKube:
    """Objects by path, merge patches (status too), Events; remembers what the journal was when it was closed."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.journal_at_close: dict[str, Any] | None = None
        self.closed = False

    def get(self, url: str) -> dict[str, Any] | None:
        with self.lock:
            obj = self.objects.get(url)
            return copy.deepcopy(obj) if obj is not None else None

    def patch(self, url: str, body: dict[str, Any], content_type: str = "") -> dict[str, Any]:
        assert not self.closed, "the API client was closed while an engine still saved its journal"
        with self.lock:
            obj = self.objects[url.removesuffix("/status")]
            _merge(obj, body)
            return copy.deepcopy(obj)

    def list(self, url: str, **_: Any) -> list[dict[str, Any]]:
        return []

    def create_at(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.events.append(body)
        return body

    def close(self) -> None:
        self.journal_at_close = (self.get(OBJECT) or {}).get("status", {}).get("journal")
        self.closed = True

    def reasons(self) -> list[str]:
        return [e["reason"] for e in self.events]


class Stopped:
    """A kopf DaemonStopped: falsy until set, with a reason flag, awaitable wait(timeout)."""

    def __init__(self) -> None:
        self.reason: kopf.DaemonStoppingReason | None = None
        self._event = asyncio.Event()

    def __bool__(self) -> bool:
        return self.reason is not None

    def set(self, reason: kopf.DaemonStoppingReason) -> None:
        self.reason = reason if self.reason is None else self.reason | reason
        self._event.set()

    async def wait(self, timeout: float | None = None) -> Stopped:
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            pass
        return self


def experiment_object() -> dict[str, Any]:
    return {"apiVersion": "faultlab.dev/v1alpha1", "kind": "ChaosExperiment",
            "metadata": {"name": NAME, "namespace": NS, "uid": "u1", "generation": 1, "finalizers": [FINALIZER]},
            "spec": {"target": {"name": "c"}, "workload": {"enabled": False}, "checks": [], "durationSeconds": 30,
                     "faults": [{"name": "cut", "type": "partition", "target": {"role": "leader"},
                                 "durationSeconds": 30}]}}


def wait_for(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def active(rt: FakeRuntime) -> int:
    return sum(len(a.active) for a in rt.agents.values())


def test_sigterm_rolls_back_leaves_the_run_resumable_and_the_next_operator_finishes_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    kube = FakeKube()
    kube.objects[OBJECT] = experiment_object()
    rt = FakeRuntime(["n1", "n2", "n3"])

    def controller() -> ChaosController:
        return ChaosController(kube, EventRecorder(kube), FINALIZER,  # type: ignore[arg-type]
                               runtime_factory=lambda _: rt, engine_options=FAST)

    async def kopf_operator(*, stop_flag: asyncio.Event, **_: Any) -> None:
        """What kopf does with our daemon: run it; on exit, stop it (OPERATOR_EXITING), then cancel it."""
        stopped = Stopped()
        daemon = asyncio.create_task(controller().daemon(kube.get(OBJECT), NS, NAME, stopped))
        await stop_flag.wait()
        stopped.set(kopf.DaemonStoppingReason.OPERATOR_EXITING)
        for _ in range(10):  # kopf's "instant exit" allowance: a few zero-time cycles
            await asyncio.sleep(0)
        daemon.cancel()
        await asyncio.gather(daemon, return_exceptions=True)

    monkeypatch.setattr(kopf, "operator", kopf_operator)
    monkeypatch.setattr(Kube, "load", staticmethod(lambda *_: kube))

    def sigterm_once_injected() -> None:
        wait_for(lambda: active(rt) == 3, 20, "the partition to be injected on both sides")
        os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=sigterm_once_injected, daemon=True)
    sender.start()
    code = asyncio.run(commands._run([NS], False, True, None, "ops", 15.0, None, shutdown_timeout=20))
    sender.join(5)
    assert code == 0

    assert active(rt) == 0, "the operator rolled its faults back before it exited"
    journal = kube.journal_at_close
    assert journal is not None, "the journal was read back when the API client closed"
    assert journal["phase"] not in chaos_mod.TERMINAL, "left open for the next operator, not Aborted"
    assert journal["faults"] and all(f["status"] == "recovered" for f in journal["faults"])
    assert journal["interrupted"] and "operator shutdown" in journal["interruption"]
    assert "fault windows were cut short" in journal["interruption"]
    assert any(e["kind"] == "handover" for e in journal["timeline"])
    assert not kube.get(OBJECT)["status"].get("verdict")
    assert not chaos_mod._live, "no engine thread outlived the operator"

    # The next operator starts and resumes the run.
    kube.closed = False
    asyncio.run(controller().daemon(kube.get(OBJECT), NS, NAME, Stopped()))
    status = kube.get(OBJECT)["status"]
    assert status["phase"] == "Completed" and status["verdict"] == "Inconclusive"
    assert "interrupted by an operator shutdown" in status["message"]
    assert "fault windows were cut short" in status["message"]
    assert all(f.get("recoveredAt") for f in status["injectedFaults"])
    assert status["journal"]["resumes"] == 1
    assert "Resuming" in kube.reasons() and "Aborted" not in kube.reasons()
    assert active(rt) == 0


def test_deleting_an_experiment_still_closes_its_run() -> None:
    """The daemon stopped because its resource is deleted: cancel (the run ends), not a hand-over."""
    kube = FakeKube()
    kube.objects[OBJECT] = experiment_object()
    rt = FakeRuntime(["n1", "n2", "n3"])
    ctl = ChaosController(kube, EventRecorder(kube), FINALIZER,  # type: ignore[arg-type]
                          runtime_factory=lambda _: rt, engine_options=FAST)

    async def main() -> None:
        stopped = Stopped()
        daemon = asyncio.create_task(ctl.daemon(kube.get(OBJECT), NS, NAME, stopped))
        deadline = time.monotonic() + 20
        while active(rt) < 3:
            assert time.monotonic() < deadline, "the partition was not injected"
            await asyncio.sleep(0.02)
        stopped.set(kopf.DaemonStoppingReason.RESOURCE_DELETED)
        await asyncio.wait_for(daemon, 30)

    asyncio.run(main())
    status = kube.get(OBJECT)["status"]
    assert active(rt) == 0
    assert status["phase"] == "Aborted" and status["journal"]["interruption"] == ""


def test_an_engine_stopped_before_injecting_anything_starts_over() -> None:
    kube = FakeKube()
    obj = experiment_object()
    obj["spec"]["durationSeconds"] = 0.5
    obj["spec"]["faults"][0]["durationSeconds"] = 0.5
    obj["status"] = {"phase": "SteadyStateCheck", "journal": {
        "name": NAME, "run_id": "old", "spec": {k: obj[k] for k in ("apiVersion", "kind", "metadata", "spec")},
        "seed": 1, "phase": "SteadyStateCheck", "interrupted": True}}
    kube.objects[OBJECT] = obj
    rt = FakeRuntime(["n1", "n2", "n3"])
    run = ExperimentRun(kube, EventRecorder(kube), kube.get(OBJECT),  # type: ignore[arg-type]
                        runtime_factory=lambda _: rt, engine_options=FAST)
    run.run()
    status = kube.get(OBJECT)["status"]
    assert run.error is None
    assert "Restarting" in kube.reasons()
    assert status["journal"]["run_id"] != "old" and status["verdict"] == "Passed", status["message"]
