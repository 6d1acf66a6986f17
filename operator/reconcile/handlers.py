"""kopf registration: what the operator watches and which code reacts.

RaftCluster needs no finalizer (owner references let garbage collection remove
its pods, Services and PVCs), so it is not run by a kopf daemon (daemons add
one): watch events of RaftClusters and of their pods wake one reconcile worker
per cluster. ChaosExperiment does need one — deleting a running experiment must
roll it back first — so it runs as a kopf daemon with an on-delete handler.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf
from prometheus_client import Counter, Gauge, Histogram

from faultlab.operator.api import GROUP, VERSION
from faultlab.operator.reconcile import builders as b
from faultlab.operator.reconcile.chaos import ChaosController
from faultlab.operator.reconcile.events import EventRecorder
from faultlab.operator.reconcile.kube import Kube
from faultlab.operator.reconcile.raftcluster import STEADY_S, RaftClusterReconciler

log = logging.getLogger("faultlab.operator")
FINALIZER = "faultlab.dev/finalizer"

RECONCILES = Counter("faultlab_operator_reconciles_total", "RaftCluster reconcile passes", ["result"])
RECONCILE_SECONDS = Histogram("faultlab_operator_reconcile_seconds", "Duration of one RaftCluster pass")
CLUSTERS = Gauge("faultlab_operator_raftclusters", "RaftClusters with a running reconcile worker")
EXPERIMENTS = Gauge("faultlab_operator_experiments_running", "ChaosExperiments with a running engine")


class Workers:
    """One reconcile loop per RaftCluster, woken by watch events, re-run after the delay each pass asks for."""

    def __init__(self, kube: Kube, events: EventRecorder) -> None:
        self.kube = kube
        self.events = events
        self.tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.wakeups: dict[tuple[str, str], asyncio.Event] = {}

    def poke(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        wake = self.wakeups.setdefault(key, asyncio.Event())
        wake.set()
        task = self.tasks.get(key)
        if task is None or task.done():
            self.tasks[key] = asyncio.get_running_loop().create_task(self._loop(key), name=f"raftcluster-{name}")
            CLUSTERS.set(len(self.tasks))

    def forget(self, namespace: str, name: str) -> None:
        task = self.tasks.pop((namespace, name), None)
        if task is not None:
            task.cancel()
        self.wakeups.pop((namespace, name), None)
        CLUSTERS.set(len(self.tasks))

    async def _loop(self, key: tuple[str, str]) -> None:
        reconciler = RaftClusterReconciler(self.kube, self.events, *key)
        failures = 0
        while True:
            wake = self.wakeups.setdefault(key, asyncio.Event())
            wake.clear()
            started = time.monotonic()
            try:
                delay = await reconciler.reconcile()
                RECONCILES.labels("ok").inc()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                RECONCILES.labels("error").inc()
                failures += 1
                delay = min(0.5 * 2 ** failures, 15.0)
                log.warning("RaftCluster %s/%s: pass failed (%s); retrying in %.1fs", *key, exc, delay,
                            exc_info=failures == 1)
            finally:
                RECONCILE_SECONDS.observe(time.monotonic() - started)
            if delay is None:
                self.tasks.pop(key, None)
                self.wakeups.pop(key, None)
                CLUSTERS.set(len(self.tasks))
                return
            try:
                await asyncio.wait_for(wake.wait(), timeout=delay)
                await asyncio.sleep(0.05)  # let a burst of events coalesce into one pass
            except TimeoutError:
                pass

    async def stop(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks.clear()


def register(registry: kopf.OperatorRegistry, kube: Kube, events: EventRecorder) -> Workers:
    """Adds faultlab's handlers to `registry`; returns the RaftCluster workers (for shutdown)."""
    workers = Workers(kube, events)
    chaos = ChaosController(kube, events, FINALIZER)

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="faultlab.dev")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="faultlab.dev", key="last-handled-configuration")
        settings.scanning.disabled = True  # no cluster-wide CRD/namespace watching: less RBAC
        settings.posting.level = logging.WARNING
        settings.watching.server_timeout = 60
        settings.watching.client_timeout = 90
        settings.networking.request_timeout = 30

    @kopf.on.event(GROUP, VERSION, "raftclusters", registry=registry)
    async def raftcluster_event(type: str, namespace: str | None, name: str, **_: Any) -> None:
        if namespace is None:
            return
        if type == "DELETED":
            workers.forget(namespace, name)
        else:
            workers.poke(namespace, name)

    @kopf.on.event("", "v1", "pods", labels={b.L_MANAGED_BY: b.MANAGED_BY}, registry=registry)
    async def pod_event(namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
        cluster = labels.get(b.L_CLUSTER)
        if cluster and namespace:
            workers.poke(namespace, cluster)

    @kopf.daemon(GROUP, VERSION, "chaosexperiments", cancellation_timeout=120.0, registry=registry)
    async def chaos_daemon(body: kopf.Body, namespace: str | None, name: str, stopped: kopf.DaemonStopped,
                           **_: Any) -> None:
        EXPERIMENTS.inc()
        try:
            await chaos.daemon(body, namespace or "default", name, stopped)
        finally:
            EXPERIMENTS.dec()

    @kopf.on.delete(GROUP, VERSION, "chaosexperiments", registry=registry)
    async def chaos_delete(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> None:
        await chaos.on_delete(dict(body), namespace or "default", name)

    @kopf.on.cleanup(registry=registry)
    async def shutdown(**_: Any) -> None:
        await workers.stop()

    @kopf.on.probe(id="raftclusters", registry=registry)
    async def probe_workers(**_: Any) -> int:
        return len(workers.tasks)

    return workers


__all__ = ["FINALIZER", "STEADY_S", "Workers", "register"]
