"""One active operator: a coordination.k8s.io/v1 Lease, taken before kopf starts and renewed while it runs.

A replica that cannot renew in time stops (its supervisor restarts it as a
follower); a replica that exits cleanly releases the Lease so the next one takes
over at once instead of waiting for it to expire.

Expiry is judged as client-go's leader election judges it: by how long this
replica has seen the Lease record unchanged on its own monotonic clock, never
by comparing the holder's ``renewTime`` with this machine's wall clock. Two
operators on nodes whose clocks disagree by more than the Lease duration would
otherwise both lead (one reading a live Lease as expired), and two operators
running one experiment would inject its faults twice. A record first seen
counts from when it was seen, so a newly started replica waits one duration
before it takes over a Lease whose holder stopped renewing.
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


class LeaseElector:
    def __init__(self, kube: Kube, namespace: str, name: str = "faultlab-operator", *,
                 identity: str | None = None, duration_s: float = 15.0,
                 monotonic: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity or f"{socket.gethostname()}-{time.time_ns() % 1_000_000:06d}"
        self.duration_s = duration_s
        self.path = path("Lease", namespace, name)
        self._monotonic = monotonic
        self._wall = wall  # only for the timestamps written into the Lease (read by people and kubectl)
        # The Lease record as last seen (holder, renewTime, resourceVersion) and when, on our clock.
        self._observed: tuple[str, str, str] | None = None
        self._observed_at = 0.0

    def _spec(self, acquire: bool, transitions: int, acquired: str | None) -> dict[str, Any]:
        now = self._wall()
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
        record = (holder, str(spec.get("renewTime") or ""), str(lease.get("metadata", {}).get("resourceVersion", "")))
        now = self._monotonic()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        expired = now - self._observed_at > duration
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
