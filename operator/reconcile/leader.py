"""One active operator: a coordination.k8s.io/v1 Lease, taken before kopf starts and renewed while it runs.

A replica that cannot renew in time stops (its supervisor restarts it as a
follower); a replica that exits cleanly releases the Lease so the next one takes
over at once instead of waiting for it to expire.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from faultlab.operator.reconcile.kube import ApiError, Kube, path

log = logging.getLogger("faultlab.operator.leader")


def _micro(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(text: str | None) -> float:
    if not text:
        return 0.0
    return datetime.strptime(text.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


class LeaseElector:
    def __init__(self, kube: Kube, namespace: str, name: str = "faultlab-operator", *,
                 identity: str | None = None, duration_s: float = 15.0) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity or f"{socket.gethostname()}-{time.time_ns() % 1_000_000:06d}"
        self.duration_s = duration_s
        self.path = path("Lease", namespace, name)

    def _spec(self, acquire: bool, transitions: int, acquired: str | None) -> dict[str, Any]:
        now = time.time()
        return {"holderIdentity": self.identity, "leaseDurationSeconds": max(1, round(self.duration_s)),
                "acquireTime": _micro(now) if acquire else acquired, "renewTime": _micro(now),
                "leaseTransitions": transitions}

    def try_acquire(self) -> bool:
        """One attempt (synchronous): True when this identity holds the Lease afterwards."""
        lease = self.kube.get(self.path)
        if lease is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": self._spec(True, 0, None)}
            try:
                self.kube.create(body)
                return True
            except ApiError as exc:
                if exc.conflict:
                    return False
                raise
        spec = lease.get("spec", {})
        holder = spec.get("holderIdentity") or ""
        duration = float(spec.get("leaseDurationSeconds") or self.duration_s)
        expired = _parse(spec.get("renewTime")) + duration < time.time()
        mine = holder == self.identity
        if not (mine or not holder or expired):
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if mine else 1)
        lease["spec"] = self._spec(not mine, transitions, spec.get("acquireTime"))
        try:
            self.kube.replace(self.path, lease)  # resourceVersion in the body: optimistic concurrency
            return True
        except ApiError as exc:
            if exc.conflict:
                return False
            raise

    def release(self) -> None:
        lease = self.kube.get(self.path)
        if lease is None or lease.get("spec", {}).get("holderIdentity") != self.identity:
            return
        lease["spec"]["holderIdentity"] = ""
        lease["spec"]["renewTime"] = _micro(0)
        try:
            self.kube.replace(self.path, lease)
        except ApiError as exc:
            log.warning("could not release the lease: %s", exc)

    async def acquire(self, stop: asyncio.Event | None = None) -> bool:
        """Wait until this replica leads (True) or `stop` is set (False)."""
        announced = False
        while stop is None or not stop.is_set():
            try:
                if await asyncio.to_thread(self.try_acquire):
                    log.info("leading as %s (Lease %s/%s)", self.identity, self.namespace, self.name)
                    return True
            except ApiError as exc:
                log.warning("lease: %s", exc)
            if not announced:
                log.info("another operator holds Lease %s/%s; waiting", self.namespace, self.name)
                announced = True
            await asyncio.sleep(min(2.0, self.duration_s / 4))
        return False

    async def keep(self, on_lost: Callable[[], None]) -> None:
        """Renew every third of the duration; call `on_lost` when renewing has failed for a whole duration."""
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(self.duration_s / 3)
            try:
                if await asyncio.to_thread(self.try_acquire):
                    last_ok = time.monotonic()
                    continue
                log.error("lease %s/%s was taken by another operator", self.namespace, self.name)
                on_lost()
                return
            except Exception as exc:  # API server unreachable: keep trying until the lease would expire
                log.warning("lease renewal failed: %s", exc)
            if time.monotonic() - last_ok > self.duration_s:
                log.error("could not renew the lease for %.0fs; stopping", self.duration_s)
                on_lost()
                return
