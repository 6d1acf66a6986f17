"""`faultlab`: the user's command — local clusters, chaos experiments, the demo, the operator."""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Coroutine
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.table import Table

T = TypeVar("T")
STATE_DIR_HELP = "where local clusters keep their state (FAULTLAB_STATE_DIR)"


def package_version() -> str:
    try:
        return version("faultlab")
    except PackageNotFoundError:
        return "0+unknown"


# Piped output (CI logs, tests) gets room for the member table instead of rich's 80 columns.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 132)
err_console = Console(stderr=True, highlight=False)


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    raise SystemExit(code)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine; runtime and resource errors become a readable message and exit 1."""
    from faultlab.operator.api import ResourceError
    from faultlab.operator.runtime.base import RuntimeError_

    try:
        return asyncio.run(coro)
    except (ResourceError, RuntimeError_) as exc:
        fail(str(exc))


def state_dir_option(fn: Any) -> Any:
    return click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".faultlab"),
                        envvar="FAULTLAB_STATE_DIR", show_default=True, help=STATE_DIR_HELP)(fn)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_version(), prog_name="faultlab")
def cli() -> None:
    """faultlab runs replicated systems (Raft, CRDT stores, event stores, collaborative docs)
    and breaks them on purpose, with checked verdicts: linearizable? converged? writes lost?"""


@cli.command("version")
def version_cmd() -> None:
    """Print faultlab's version and the versions of its wire contracts."""
    click.echo(f"faultlab {package_version()}")
    click.echo("protocols: faultlab.raft.v1, faultlab.agent.v1")


# ---------------------------------------------------------------- local clusters

@cli.command("up")
@click.option("-f", "--file", "file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML with one or more RaftCluster resources")
@state_dir_option
@click.option("--timeout", type=float, default=30.0, show_default=True, help="seconds to wait for a leader")
def up_cmd(file: Path, state_dir: Path, timeout: float) -> None:
    """Start the clusters in FILE as local processes and wait until each has a leader.

    Example: faultlab up -f examples/raft-cluster.yaml
    """
    from faultlab.operator.api import RaftCluster, ResourceError, load_resources
    from faultlab.operator.runtime.local import LocalRuntime

    try:
        resources = load_resources(file)
    except ResourceError as exc:
        fail(str(exc))
    clusters = [r for r in resources if isinstance(r, RaftCluster)]
    for other in resources:
        if not isinstance(other, RaftCluster):
            err_console.print(f"[yellow]note:[/] skipping {other.kind} {other.name}: `faultlab up` starts "
                              f"clusters (run experiments with `faultlab chaos run -f`)")
    if not clusters:
        fail(f"{file}: no RaftCluster resource in it")
    runtime = LocalRuntime(state_dir)
    for cluster in clusters:
        for warning in cluster.warnings():
            err_console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)
        with console.status(f"starting {cluster.name} ({cluster.spec.replicas} members)..."):
            run(runtime.up(cluster, timeout_s=timeout))
        _print_cluster(runtime, cluster.name, title=f"RaftCluster {cluster.name} is up")
        ignored = runtime.load(cluster.name).ignored_settings
        if ignored:
            err_console.print(f"[yellow]note:[/] this node build ignores: {', '.join(ignored)}")
    console.print(f"state: {runtime.state_dir}   next: [bold]faultlab status[/], [bold]faultlab down[/]")


def _print_cluster(runtime: Any, name: str, title: str | None = None) -> bool:
    """Prints the member table of one cluster; True if it has a leader."""
    from faultlab.operator.runtime.local import LocalRuntime

    views = run(runtime.inspect(name))
    leader = LocalRuntime.leader_of(views)
    table = Table(title=title or f"RaftCluster {name}", title_justify="left")
    for col in ("member", "address", "agent", "pid", "restarts", "role", "term", "commit/applied", "health"):
        table.add_column(col, justify="right" if col in {"term", "pid", "restarts"} else "left",
                         no_wrap=col != "health")
    for v in views:
        role = f"[bold green]{v.role}[/]" if v.id == leader else v.role
        health = {"SERVING": "[green]SERVING[/]"}.get(v.health, f"[red]{v.health}[/]")
        if v.process == "paused":
            health = "[yellow]paused[/]"
        if v.error:
            health += f" [red]{v.error}[/]"
        table.add_row(v.id, v.address, v.agent_address or "-", str(v.pid or "-"), str(v.restarts), role, str(v.term),
                      f"{v.commit_index}/{v.applied_index}", health)
    console.print(table)
    if leader:
        console.print(f"leader: [bold green]{leader}[/]")
    else:
        console.print("[bold red]no leader[/] (a quorum of members does not agree on one)")
    return leader is not None


@cli.command("status")
@click.argument("name", required=False)
@state_dir_option
def status_cmd(name: str | None, state_dir: Path) -> None:
    """Show each member of local cluster NAME (all clusters if omitted): role, term, indexes, health.

    Exits 1 when a cluster has no leader.
    """
    from faultlab.operator.runtime.local import LocalRuntime

    runtime = LocalRuntime(state_dir)
    names = [name] if name else runtime.clusters()
    if not names:
        fail(f"no local clusters under {runtime.state_dir}; start one with `faultlab up -f cluster.yaml`")
    healthy = True
    for n in names:
        try:
            runtime.load(n)
        except Exception as exc:
            fail(str(exc))
        healthy = _print_cluster(runtime, n) and healthy
    if not healthy:
        raise SystemExit(1)


@cli.command("down")
@click.argument("name", required=False)
@click.option("--all", "all_", is_flag=True, help="stop every local cluster")
@state_dir_option
def down_cmd(name: str | None, all_: bool, state_dir: Path) -> None:
    """Stop local cluster NAME (or --all): its processes end and its data is removed; logs stay."""
    from faultlab.operator.runtime.local import LocalRuntime

    runtime = LocalRuntime(state_dir)
    known = runtime.clusters()
    if all_ and name:
        fail("give a NAME or --all, not both")
    if all_:
        names = known
    elif name:
        names = [name]
    elif len(known) == 1:
        names = known
    else:
        fail(f"which cluster? give a NAME or --all (clusters: {', '.join(known) or 'none'})")
    if not names:
        console.print(f"no local clusters under {runtime.state_dir}")
        return
    for n in names:
        with console.status(f"stopping {n}..."):
            run(runtime.down(n))
        console.print(f"RaftCluster {n} is down (logs kept in {runtime.cluster_dir(n)})")


# ---------------------------------------------------------------- commands other modules own

def _optional(module: str) -> Any:
    """The module if it exists; a missing module (not a broken one) is None."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            return None
        raise


from faultlab.operator.chaos.commands import chaos_group, demo_command  # noqa: E402

cli.add_command(chaos_group, "chaos")
cli.add_command(demo_command, "demo")
# `faultlab operator` arrives with the reconciler; until its module exists the command is absent.
_reconcile = _optional("faultlab.operator.reconcile.commands")
if _reconcile is not None:
    cli.add_command(_reconcile.operator_group, "operator")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
