"""`faultlab operator run`: the Kubernetes operator (kopf) for RaftCluster and ChaosExperiment."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

DEFAULT_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _own_namespace() -> str:
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return DEFAULT_NAMESPACE_FILE.read_text().strip()
    except OSError:
        return "faultlab-system"


def _split(address: str, flag: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise click.BadParameter(f"{address!r} is not host:port (example: 0.0.0.0:8080)", param_hint=flag)
    return host or "0.0.0.0", int(port)


@click.group("operator")
def operator_group() -> None:
    """Run the Kubernetes operator that reconciles RaftClusters and runs ChaosExperiments."""


@operator_group.command("run")
@click.option("--namespace", "-n", "namespaces", multiple=True, metavar="NS",
              help="Watch this namespace (repeatable). Default: the operator's own namespace.")
@click.option("--all-namespaces", "-A", is_flag=True, help="Watch every namespace (needs the ClusterRoleBinding).")
@click.option("--standalone", is_flag=True,
              help="Do not take the leader Lease (one replica only; for development and tests).")
@click.option("--kubeconfig", type=click.Path(dir_okay=False, path_type=Path), envvar="KUBECONFIG",
              help="Kubeconfig to use; default: $KUBECONFIG, ~/.kube/config, then the in-cluster service account.")
@click.option("--lease-namespace", default=None, metavar="NS",
              help="Namespace of the leader Lease (default: the operator's own namespace).")
@click.option("--lease-duration", type=float, default=15.0, show_default=True,
              help="Seconds a leader holds the Lease without renewing it.")
@click.option("--metrics-listen", default="0.0.0.0:9090", show_default=True,
              help="host:port of the Prometheus metrics endpoint; empty disables it.")
@click.option("--health-listen", default="0.0.0.0:8080", show_default=True,
              help="host:port of the liveness endpoint (GET /healthz); empty disables it.")
@click.option("--shutdown-timeout", type=float, default=25.0, show_default=True,
              help="On SIGTERM/SIGINT, seconds to wait for running experiments to roll their faults back before "
                   "exiting (keep it under the pod's terminationGracePeriodSeconds).")
@click.option("--verbose", "-v", is_flag=True, help="Debug logging.")
def run_cmd(namespaces: tuple[str, ...], all_namespaces: bool, standalone: bool, kubeconfig: Path | None,
            lease_namespace: str | None, lease_duration: float, metrics_listen: str, health_listen: str,
            shutdown_timeout: float, verbose: bool) -> None:
    """Run the operator until interrupted (SIGINT/SIGTERM).

    On shutdown every running ChaosExperiment rolls its faults back, but its run stays open (not
    Aborted): the next operator resumes it and finishes it with a verdict saying it was interrupted.
    """
    if all_namespaces and namespaces:
        raise click.UsageError("use either --namespace or --all-namespaces, not both")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("kopf.objects", "kopf.activities.probe", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if kubeconfig:
        os.environ["KUBECONFIG"] = str(kubeconfig)  # kopf's own login reads it too
    watched = [] if all_namespaces else list(namespaces or [_own_namespace()])
    liveness = None
    if health_listen:
        host, port = _split(health_listen, "--health-listen")
        liveness = f"http://{host}:{port}/healthz"
    if metrics_listen:
        from prometheus_client import start_http_server

        host, port = _split(metrics_listen, "--metrics-listen")
        start_http_server(port, addr=host)
    code = asyncio.run(_run(watched, all_namespaces, standalone, kubeconfig, lease_namespace or _own_namespace(),
                            lease_duration, liveness, shutdown_timeout))
    sys.exit(code)


async def _run(namespaces: list[str], clusterwide: bool, standalone: bool, kubeconfig: Path | None,
               lease_namespace: str, lease_duration: float, liveness: str | None,
               shutdown_timeout: float = 25.0) -> int:
    import kopf

    from faultlab.operator.reconcile.chaos import hand_over_all
    from faultlab.operator.reconcile.events import EventRecorder
    from faultlab.operator.reconcile.handlers import register
    from faultlab.operator.reconcile.kube import Kube
    from faultlab.operator.reconcile.leader import LeaseElector

    log = logging.getLogger("faultlab.operator")
    kube = await asyncio.to_thread(Kube.load, kubeconfig)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    elector = None if standalone else LeaseElector(kube, lease_namespace, duration_s=lease_duration)
    lost = threading.Event()
    if elector is not None and not await elector.acquire(stop):
        return 0
    registry = kopf.OperatorRegistry()
    register(registry, kube, EventRecorder(kube))

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        if kubeconfig or os.environ.get("KUBECONFIG"):
            return kopf.login_with_kubeconfig(**kwargs)
        return kopf.login_with_service_account(**kwargs)

    keeper = None
    if elector is not None:
        def on_lost() -> None:
            lost.set()
            stop.set()

        keeper = loop.create_task(elector.keep(on_lost))
    log.info("faultlab operator: watching %s%s", "all namespaces" if clusterwide else ", ".join(namespaces),
             "" if elector is None else f"; leader Lease {lease_namespace}/{elector.name}")
    try:
        await kopf.operator(registry=registry, clusterwide=clusterwide, namespaces=namespaces, standalone=True,
                            liveness_endpoint=liveness, stop_flag=stop)
    finally:
        # kopf stops (and soon cancels) its daemons, but the engines run on threads of their own: wait for
        # them to roll back, with the Lease still held and the API client still open, before exiting.
        left = await asyncio.to_thread(hand_over_all, shutdown_timeout)
        if left:
            log.warning("exiting while experiment(s) %s still roll back; the next operator finishes the rollback "
                        "(and every fault's TTL heals it)", ", ".join(left))
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        if elector is not None and not lost.is_set():
            await asyncio.to_thread(elector.release)
        kube.close()
    return 1 if lost.is_set() else 0


if __name__ == "__main__":
    operator_group(prog_name="faultlab operator")
