"""`faultlab chaos ...` and `faultlab demo`: run, report, list and recover experiments locally.

Each experiment keeps its files under ``<state-dir>/experiments/<name>/``: ``journal.json``
(the durable engine state), ``history.jsonl``, ``report.json`` and ``report.html``.
Progress goes to stderr; reports (or JSON with ``--json``) to stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import yaml
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from faultlab.operator.chaos.journal import Event, FileStateStore

__all__ = ["chaos_group", "demo_command", "experiment_dir"]

out = Console(highlight=False, width=None if sys.stdout.isatty() else 132)
err = Console(stderr=True, highlight=False)


def experiment_dir(state_dir: Path, name: str) -> Path:
    return Path(state_dir) / "experiments" / name


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise SystemExit(2)


class ProgressView:
    """Live one-line status plus the latest events, on stderr."""

    def __init__(self, title: str, console: Console = err) -> None:
        self.title = title
        self.console = console
        self.snapshot: dict[str, Any] = {}
        self.events: list[Event] = []
        self.live: Live | None = None

    def __enter__(self) -> ProgressView:
        if self.console.is_terminal:
            self.live = Live(self._render(), console=self.console, refresh_per_second=8, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def on_event(self, ev: Event) -> None:
        self.events.append(ev)
        line = f"[dim]{escape(self.title)}[/] {ev.kind}: {escape(ev.message)}"
        if self.live is None:
            self.console.print(line, soft_wrap=True)
        else:
            self.live.console.print(line, soft_wrap=True)
            self.live.update(self._render())

    def on_tick(self, snapshot: dict[str, Any]) -> None:
        self.snapshot = snapshot
        if self.live is not None:
            self.live.update(self._render())

    def _render(self) -> Text:
        s = self.snapshot
        if not s:
            return Text(f"{self.title}: starting…")
        parts = [f"{self.title}: {s.get('phase')}", f"{s.get('elapsed', 0):.1f}s"]
        if s.get("leader"):
            parts.append(f"leader {s['leader']}")
        if s.get("ops_per_s") is not None:
            parts.append(f"{s['ops_per_s']} ops/s, {100 * (s.get('error_rate') or 0):.0f}% errors")
        parts.append("steady ✓" if s.get("steady") else "steady ✗")
        if s.get("active_faults"):
            parts.append("faults: " + ", ".join(s["active_faults"][:6]))
        return Text(" · ".join(parts))


def _load_experiment(file: Path) -> Any:
    from faultlab.operator.api import ChaosExperiment, ResourceError, load_one

    try:
        exp = load_one(file, ChaosExperiment)
    except ResourceError as exc:
        _fail(str(exc))
    for w in exp.warnings():
        err.print(f"[yellow]warning:[/] {w}", soft_wrap=True)
    return exp


def _paused_reader(file: Path) -> Any:
    def paused() -> bool:
        try:
            docs = [d for d in yaml.safe_load_all(file.read_text()) if isinstance(d, dict)]
        except (OSError, yaml.YAMLError):
            return False
        for d in docs:
            if d.get("kind") == "ChaosExperiment":
                return bool((d.get("spec") or {}).get("paused", False))
        return False

    return paused


async def run_experiment(exp: Any, state_dir: Path, *, seed: int | None = None, runtime: Any = None,
                         paused: Any = None, progress: ProgressView | None = None,
                         engine_options: dict[str, Any] | None = None,
                         handle_sigterm: bool = True) -> dict[str, Any]:
    """Resume any interrupted run of this experiment, then run it; returns the report."""
    from faultlab.operator.chaos.engine import Engine, EngineOptions
    from faultlab.operator.runtime.local import LocalRuntime

    runtime = runtime or LocalRuntime(state_dir)
    exp_dir = experiment_dir(state_dir, exp.name)
    store = FileStateStore(exp_dir / "journal.json")
    opts = EngineOptions(out_dir=exp_dir, seed=seed, paused=paused,
                         on_event=progress.on_event if progress else None,
                         on_tick=progress.on_tick if progress else None, **(engine_options or {}))
    previous = store.load()
    if previous is not None and not previous.terminal:
        err.print(f"[yellow]experiment {exp.name}: run {previous.run_id} was interrupted in phase "
                  f"{previous.phase.value}; finishing its rollback first[/]")
        await Engine.resume(store, runtime, opts)
    # SIGTERM (Ctrl-C too) cancels the run; the engine rolls back before it exits.
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        if task is not None and handle_sigterm:
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await Engine(exp, runtime, store, opts).run()
    finally:
        if handle_sigterm:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGTERM)


def refuse_outside_window(schedule: Any, now: datetime) -> str | None:
    """--once: why a run may not start now (None: it may)."""
    from faultlab.operator.chaos.scheduler import in_window, window_opens

    w = schedule.window
    if in_window(w, now):
        return None
    return (f"outside spec.schedule.window ({w.start}-{w.end} {w.timezone}); "
            f"next allowed time: {window_opens(w, now).isoformat()}")


async def run_scheduled(exp: Any, state_dir: Path, *, progress: ProgressView | None = None,
                        **kwargs: Any) -> None:
    """spec.schedule: run the experiment at each due cron time until SIGTERM/Ctrl-C (which roll back)."""
    from faultlab.operator.chaos.scheduler import run_schedule

    async def one() -> None:
        try:
            report = await run_experiment(exp, state_dir, progress=progress, handle_sigterm=False, **kwargs)
            err.print(f"experiment {exp.name}: run finished, verdict {report.get('verdict')} "
                      f"(`faultlab chaos report {exp.name}`)", soft_wrap=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one failed run does not end the schedule
            err.print(f"[red]experiment {exp.name}: run failed:[/] {escape(str(exc))}", soft_wrap=True)

    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        if task is not None:
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
    await run_schedule(exp.spec.schedule, one,
                       say=lambda m: err.print(f"[dim]{escape(exp.name)}[/] schedule: {escape(m)}", soft_wrap=True))


def _exit_code(report: dict[str, Any]) -> int:
    return 0 if report.get("verdict") in ("Passed", None) else 1


@click.group("chaos")
def chaos_group() -> None:
    """Run chaos experiments against local clusters and read their reports."""


def _state_dir_option(fn: Any) -> Any:
    return click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".faultlab"),
                        envvar="FAULTLAB_STATE_DIR", show_default=True,
                        help="where local clusters and experiments keep their state (FAULTLAB_STATE_DIR)")(fn)


@chaos_group.command("run")
@click.option("-f", "--file", "file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML with one ChaosExperiment")
@_state_dir_option
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON on stdout")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path),
              help="also write the HTML report here")
@click.option("--seed", type=int, default=None, help="seed for target selection (printed by every run)")
@click.option("--dry-run", is_flag=True, help="resolve and print the targets, inject nothing")
@click.option("--ttl-margin", type=float, default=10.0, show_default=True,
              help="seconds added to each fault's remaining duration for the TTL its agent enforces")
@click.option("--once", is_flag=True, help="with spec.schedule: one run now (ignoring cron), inside the window")
def run_cmd(file: Path, state_dir: Path, as_json: bool, html_path: Path | None, seed: int | None,
            dry_run: bool, ttl_margin: float, once: bool) -> None:
    """Run the experiment in FILE against its local target cluster.

    With spec.schedule it runs at each cron time inside the window until interrupted
    (--once: a single run now). Example: faultlab chaos run -f examples/chaos/leader-partition.yaml
    """
    from faultlab.operator.chaos.engine import ExperimentRejected
    from faultlab.operator.runtime.base import RuntimeError_

    exp = _load_experiment(file)
    if dry_run:
        exp.spec.dry_run = True
    schedule = exp.spec.schedule
    if schedule is not None and once:
        refused = refuse_outside_window(schedule, datetime.now(UTC))
        if refused:
            _fail(f"experiment {exp.name}: {refused}")
    elif schedule is not None:
        with ProgressView(exp.name) as progress:
            try:
                asyncio.run(run_scheduled(exp, state_dir, seed=seed, paused=_paused_reader(file),
                                          progress=progress, engine_options={"ttl_margin_s": ttl_margin}))
            except (asyncio.CancelledError, KeyboardInterrupt):
                err.print(f"[yellow]experiment {exp.name}: schedule stopped; any running run was rolled back "
                          f"(journal: {experiment_dir(state_dir, exp.name) / 'journal.json'})[/]")
                raise SystemExit(130) from None
        return
    with ProgressView(exp.name) as progress:
        try:
            report = asyncio.run(run_experiment(exp, state_dir, seed=seed, paused=_paused_reader(file),
                                                progress=progress,
                                                engine_options={"ttl_margin_s": ttl_margin}))
        except (RuntimeError_, ExperimentRejected) as exc:
            _fail(str(exc))
            return
        except (asyncio.CancelledError, KeyboardInterrupt):
            err.print(f"[yellow]experiment {exp.name} interrupted: its faults were rolled back "
                      f"(journal: {experiment_dir(state_dir, exp.name) / 'journal.json'})[/]")
            raise SystemExit(130) from None
    _emit(report, as_json, html_path)
    raise SystemExit(_exit_code(report))


def _emit(report: dict[str, Any], as_json: bool, html_path: Path | None) -> None:
    from faultlab.operator.chaos.report import render_html, render_terminal

    if html_path is not None:
        html_path.write_text(render_html(report), encoding="utf-8")
        report["html_path"] = str(html_path)
    if as_json:
        click.echo(json.dumps(report, indent=1, default=str))
    else:
        render_terminal(report, out)


def _reports(state_dir: Path) -> list[tuple[str, Path]]:
    base = Path(state_dir) / "experiments"
    if not base.is_dir():
        return []
    return sorted((p.name, p) for p in base.iterdir() if p.is_dir())


@chaos_group.command("report")
@click.argument("name", required=False)
@click.option("--latest", is_flag=True, help="the most recently finished experiment")
@_state_dir_option
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), help="write the HTML here")
def report_cmd(name: str | None, latest: bool, state_dir: Path, as_json: bool, html_path: Path | None) -> None:
    """Show the report of experiment NAME (or --latest)."""
    from faultlab.operator.chaos.report import load_report

    found = [(n, p / "report.json") for n, p in _reports(state_dir) if (p / "report.json").is_file()]
    if name:
        found = [(n, p) for n, p in found if n == name]
        if not found:
            _fail(f"no report for experiment {name!r} under {state_dir}/experiments "
                  f"(run it with `faultlab chaos run -f FILE`)")
    elif not latest:
        _fail("name an experiment or pass --latest (see `faultlab chaos list`)")
    if not found:
        _fail(f"no experiment reports under {state_dir}/experiments")
    _, path = max(found, key=lambda item: item[1].stat().st_mtime)
    _emit(load_report(path), as_json, html_path)


@chaos_group.command("list")
@_state_dir_option
def list_cmd(state_dir: Path) -> None:
    """List experiments with their last run's phase and verdict."""
    from rich.table import Table

    rows = _reports(state_dir)
    if not rows:
        out.print(f"no experiments under {state_dir}/experiments")
        return
    table = Table("experiment", "run", "phase", "verdict", "started", "faults left")
    for name, path in rows:
        state = FileStateStore(path / "journal.json").load()
        if state is None:
            continue
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state.started_at))
        table.add_row(name, state.run_id, state.phase.value, state.verdict or "—", started,
                      str(len(state.outstanding())))
    out.print(table)


@chaos_group.command("recover")
@click.argument("name")
@_state_dir_option
@click.option("--json", "as_json", is_flag=True, help="print the resulting report as JSON")
def recover_cmd(name: str, state_dir: Path, as_json: bool) -> None:
    """Force the rollback of experiment NAME's journal (after the engine died)."""
    from faultlab.operator.chaos.engine import Engine, EngineOptions
    from faultlab.operator.runtime.local import LocalRuntime

    exp_dir = experiment_dir(state_dir, name)
    store = FileStateStore(exp_dir / "journal.json")
    state = store.load()
    if state is None:
        _fail(f"no journal for experiment {name!r} at {exp_dir / 'journal.json'}")
        return
    with ProgressView(name) as progress:
        report = asyncio.run(Engine.resume(store, LocalRuntime(state_dir),
                                           EngineOptions(out_dir=exp_dir, on_event=progress.on_event,
                                                         on_tick=progress.on_tick), force=True))
    if report is None:
        err.print(f"experiment {name}: run {state.run_id} is {state.phase.value} with nothing to roll back")
        return
    _emit(report, as_json, None)


# ---------------------------------------------------------------- demo

DEMO_CLUSTER = """
apiVersion: faultlab.dev/v1alpha1
kind: RaftCluster
metadata: {name: demo}
spec:
  replicas: 3
"""

DEMO_EXPERIMENTS = {
    "leader-partition": """
apiVersion: faultlab.dev/v1alpha1
kind: ChaosExperiment
metadata: {name: leader-partition}
spec:
  target: {kind: RaftCluster, name: demo}
  steadyState:
    probes:
      - {name: leader, type: leaderExists, everySeconds: 0.25}
      - {name: errors, type: workloadErrorRate, tolerance: {max: 0.2}, everySeconds: 0.25}
  faults:
    - name: cut-leader
      type: partition
      target: {role: leader, mode: one}
      durationSeconds: 6
  workload: {clients: 4, keys: 16, rateLimit: 120}
  durationSeconds: 6
""",
    "leader-kill": """
apiVersion: faultlab.dev/v1alpha1
kind: ChaosExperiment
metadata: {name: leader-kill}
spec:
  target: {kind: RaftCluster, name: demo}
  steadyState:
    probes:
      - {name: leader, type: leaderExists, everySeconds: 0.25}
      - {name: errors, type: workloadErrorRate, tolerance: {max: 0.2}, everySeconds: 0.25}
  faults:
    - name: kill-leader
      type: kill
      target: {role: leader, mode: one}
      durationSeconds: 5
  workload: {clients: 4, keys: 16, rateLimit: 120}
  durationSeconds: 5
""",
}


def summary(report: dict[str, Any]) -> dict[str, Any]:
    m = report.get("metrics", {})
    return {
        "name": report.get("name"),
        "verdict": report.get("verdict"),
        "message": report.get("message"),
        "seed": report.get("seed"),
        "checks": {c["name"]: c.get("verdict", c["result"]) for c in report.get("checks", [])},
        "availability": m.get("availability"),
        "error_rate": m.get("error_rate"),
        "mttr_s": m.get("mttr_s"),
        "mttr_note": m.get("mttr_note"),
        "time_to_detect_s": m.get("time_to_detect_s"),
        "latency": m.get("latency"),
        "rollback_confirmed": report.get("rollback_confirmed"),
        "html": report.get("html_path"),
        "report": report.get("report_path"),
    }


@click.command("demo")
@click.option("--json", "as_json", is_flag=True, help="print the reports as JSON on stdout (nothing else)")
@click.option("--keep", is_flag=True, help="leave the cluster running afterwards")
@click.option("--seed", type=int, default=None, help="seed for target selection")
def demo_command(as_json: bool, keep: bool, seed: int | None) -> None:
    """Start a 3-node Raft cluster, partition then kill its leader under load, print checked verdicts."""
    from faultlab.operator.api import ChaosExperiment, RaftCluster, load_one
    from faultlab.operator.runtime.local import LocalRuntime

    started = time.monotonic()
    state_dir = Path(tempfile.mkdtemp(prefix="faultlab-demo-"))
    runtime = LocalRuntime(state_dir)
    cluster = load_one(DEMO_CLUSTER, RaftCluster)
    reports: list[dict[str, Any]] = []

    async def main() -> None:
        with err.status("starting a 3-node Raft cluster…"):
            members = await runtime.up(cluster)
        err.print(f"cluster demo up: {', '.join(f'{m.id}={m.address}' for m in members)} (state in {state_dir})")
        try:
            for name, text in DEMO_EXPERIMENTS.items():
                exp = load_one(text, ChaosExperiment)
                with ProgressView(name) as progress:
                    reports.append(await run_experiment(exp, state_dir, seed=seed, runtime=runtime,
                                                        progress=progress))
                if not as_json:
                    from faultlab.operator.chaos.report import render_terminal

                    render_terminal(reports[-1], out)
        finally:
            if not keep:
                with err.status("stopping the cluster…"):
                    await runtime.down(cluster.name)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        _fail("interrupted")
    elapsed = time.monotonic() - started
    if as_json:
        click.echo(json.dumps({"duration_s": round(elapsed, 1), "state_dir": str(state_dir),
                               "experiments": [summary(r) for r in reports]}, indent=1, default=str))
    else:
        out.print()
        for r in reports:
            s = summary(r)
            checks = ", ".join(f"{k}: {v}" for k, v in s["checks"].items())
            out.print(f"[bold]{s['name']}[/]: {s['verdict']} ({checks}); availability "
                      f"{(s['availability'] or {}).get('overall')}, MTTR {s['mttr_s']}s — HTML {s['html']}")
        out.print(f"demo finished in {elapsed:.0f}s; files under {state_dir}")
    if any(r.get("verdict") != "Passed" for r in reports):
        raise SystemExit(1)
