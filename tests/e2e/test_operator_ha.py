"""Two live operators against one control plane: the one holding the leader Lease works, the other
waits (serving nothing) for as long as the Lease is renewed, takes over once its holder dies without
releasing it, and hands it back on SIGTERM.

With the local operator (the default) every step runs. Against an installed operator
(FAULTLAB_E2E_OPERATOR=installed) the standby is a local process with the admin credentials and only
the first step runs: the cluster's own Deployment would race the standby for the Lease after a kill.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from faultlab.operator.reconcile.kube import Kube, path
from tests.e2e.conftest import E2E_NS, OPERATOR_NS
from tests.e2e.harness import InstalledOperator, OperatorProcess, chart_operator, wait_for
from tests.support.k8s_control_plane import ControlPlane

LEASE = "faultlab-operator"


def _holder(admin: Kube, namespace: str) -> str:
    lease: dict[str, Any] | None = admin.get(path("Lease", namespace, LEASE))
    return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")


def test_a_standby_operator_waits_then_takes_over_a_crashed_one(admin: Kube, operator: OperatorProcess,
                                                                control_plane: ControlPlane,
                                                                tmp_path: Path) -> None:
    installed = isinstance(operator, InstalledOperator)
    namespace = operator.namespace if isinstance(operator, InstalledOperator) else OPERATOR_NS
    if installed:
        standby = OperatorProcess(control_plane.admin_kubeconfig, chart_operator(namespace, [E2E_NS]),
                                  tmp_path / "standby.log", lease_duration=15.0)
        renew_window = 35.0
    else:
        standby = OperatorProcess(operator.kubeconfig, operator.chart, tmp_path / "standby.log",
                                  lease_duration=operator.lease_duration)
        renew_window = 4 * operator.lease_duration
    incumbent = _holder(admin, namespace)
    assert incumbent, "the running operator holds no Lease"
    standby.start()
    try:
        wait_for(lambda: "another operator holds Lease" in standby.logs(), timeout=60,
                 what="the standby to find the Lease taken", describe=standby.logs)
        # While the Lease is renewed (the incumbent renews every third of its duration) it stays put,
        # and the standby serves nothing, for several Lease durations.
        until = time.monotonic() + renew_window
        while time.monotonic() < until:
            assert _holder(admin, namespace) == incumbent, "the standby took a Lease that was being renewed"
            assert not standby.healthy(), "a standby operator serves /healthz as if it worked"
            time.sleep(0.5)  # observation period, not synchronisation
        if installed:
            return
        operator.crash()  # SIGKILL: the Lease is never released, it has to expire
        crashed_at = time.monotonic()
        wait_for(lambda: _holder(admin, namespace) not in ("", incumbent), timeout=30,
                 what="the standby to take the dead operator's Lease", describe=standby.logs)
        took = time.monotonic() - crashed_at
        assert took < 3 * operator.lease_duration + 5, f"takeover took {took:.1f}s"
        standby.wait_healthy()
        successor = _holder(admin, namespace)
        # Hand back: the old operator returns as the standby, the successor leaves on SIGTERM and
        # releases the Lease, and the old one leads again at once (no expiry to wait for).
        operator.start()
        wait_for(lambda: "another operator holds Lease" in operator.logs(), timeout=60,
                 what="the restarted operator to wait for the Lease", describe=operator.logs)
        standby.kill()
        assert "exited 0" in standby.last_stop, standby.last_stop
        wait_for(lambda: _holder(admin, namespace) not in ("", successor), timeout=30,
                 what="the restarted operator to take the released Lease", describe=operator.logs)
        operator.wait_healthy()
    finally:
        standby.stop()
        if not installed and (operator.proc is None or operator.proc.poll() is not None):
            operator.start()
            operator.wait_healthy()


