"""The operator's leader Lease against a real kube-apiserver: of replicas racing for it exactly one
wins (the apiserver's resourceVersion check, not a fake's), it changes hands on release, and a
replica whose wall clock is an hour off neither steals a renewed Lease nor waits forever for a
dead one."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from faultlab.operator.reconcile.kube import Kube, path
from faultlab.operator.reconcile.leader import LeaseElector
from tests.support.k8s_control_plane import ControlPlane

NS = "default"


@pytest.fixture
def kube(control_plane: ControlPlane) -> Iterator[Kube]:
    k = Kube.load(control_plane.kubeconfig)
    yield k
    k.close()


def test_racing_replicas_elect_exactly_one(kube: Kube) -> None:
    name = f"lease-race-{uuid.uuid4().hex[:6]}"
    electors = [LeaseElector(kube, NS, name, identity=f"r{i}", duration_s=30) for i in range(4)]
    start = threading.Barrier(len(electors))
    won: list[str] = []

    def race(e: LeaseElector) -> None:
        start.wait(10)
        if e.try_acquire():
            won.append(e.identity)

    threads = [threading.Thread(target=race, args=(e,)) for e in electors]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(won) == 1, f"replicas that believe they lead: {won}"
    winner = next(e for e in electors if e.identity == won[0])
    others = [e for e in electors if e is not winner]
    assert winner.try_acquire() and not any(e.try_acquire() for e in others)
    winner.release()
    assert others[0].try_acquire() and not winner.try_acquire()
    lease = kube.get(path("Lease", NS, name))
    assert lease is not None and lease["spec"]["holderIdentity"] == others[0].identity
    assert lease["spec"]["leaseTransitions"] == 1
    kube.delete(path("Lease", NS, name))


def test_a_replica_an_hour_ahead_does_not_steal_a_renewed_lease(kube: Kube) -> None:
    name = f"lease-skew-{uuid.uuid4().hex[:6]}"
    holder = LeaseElector(kube, NS, name, identity="holder", duration_s=1)
    ahead = LeaseElector(kube, NS, name, identity="ahead", duration_s=1, wall=lambda: time.time() + 3600)
    assert holder.try_acquire()
    deadline = time.monotonic() + 3.0  # three Lease durations, renewed every 0.2 s
    while time.monotonic() < deadline:
        assert not ahead.try_acquire(), "a replica whose clock is ahead took a Lease that is being renewed"
        assert holder.try_acquire()
        time.sleep(0.2)  # the holder's renewal period; not synchronisation
    # The holder stops renewing: within a little more than one duration the other replica leads.
    took_over = time.monotonic() + 10
    while not ahead.try_acquire():
        assert time.monotonic() < took_over, "the Lease of a stopped holder was never taken over"
        time.sleep(0.1)
    lease = kube.get(path("Lease", NS, name))
    assert lease is not None and lease["spec"]["holderIdentity"] == "ahead"
    kube.delete(path("Lease", NS, name))
