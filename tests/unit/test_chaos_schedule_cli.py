"""spec.schedule wired in: the local run loop (injected clock and sleep), --once's window refusal,
and the operator's decision glue (`schedule_step`). No cluster, no real waiting."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from faultlab.operator.api import Schedule
from faultlab.operator.chaos.commands import refuse_outside_window
from faultlab.operator.chaos.scheduler import run_schedule, window_opens
from faultlab.operator.cli import cli
from faultlab.operator.reconcile.chaos import schedule_step


def sched(cron: str, window: dict[str, str] | None = None, policy: str = "Forbid") -> Schedule:
    data: dict[str, object] = {"cron": cron, "concurrencyPolicy": policy}
    if window:
        data["window"] = window
    return Schedule.model_validate(data)


def at(h: int, m: int = 0, s: int = 0) -> datetime:
    return datetime(2026, 6, 1, h, m, s, tzinfo=UTC)


def drive(schedule: Schedule, start_at: datetime, until: datetime, run_minutes: float,
          poll_s: float = 30.0) -> tuple[list[datetime], list[str], list[str]]:
    """run_schedule on a fake clock: each run lasts `run_minutes` of fake time; cancelled at `until`."""
    now = [start_at]
    started: list[datetime] = []
    said: list[str] = []
    ends: list[str] = []

    async def start() -> None:
        started.append(now[0])
        end = now[0] + timedelta(minutes=run_minutes)
        try:
            while now[0] < end:
                await asyncio.sleep(0)
            ends.append("finished")
        except asyncio.CancelledError:
            ends.append("rolled back")
            raise

    async def sleep(seconds: float) -> None:
        if now[0] >= until:
            raise asyncio.CancelledError  # as Ctrl-C / SIGTERM cancel the loop
        await asyncio.sleep(0)  # let a just-started run take its first step at the current time
        now[0] += timedelta(seconds=seconds)
        await asyncio.sleep(0)

    async def main() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await run_schedule(schedule, start, clock=lambda: now[0], sleep=sleep, say=said.append, poll_s=poll_s)

    asyncio.run(main())
    return started, said, ends


def test_loop_runs_at_each_cron_time_and_says_the_next() -> None:
    started, said, ends = drive(sched("*/10 * * * *"), at(10, 1), at(10, 35), run_minutes=2)
    assert started == [at(10, 10), at(10, 20), at(10, 30)]
    assert ends == ["finished"] * 3
    assert said[0] == f"next run at {at(10, 10).isoformat()}"
    assert f"next run at {at(10, 40).isoformat()}" in said


def test_loop_forbid_skips_a_due_run_while_one_runs_and_interrupt_rolls_back() -> None:
    started, said, ends = drive(sched("*/10 * * * *"), at(10, 1), at(10, 22), run_minutes=15)
    assert started == [at(10, 10)], "10:20 was due while the 10:10 run still went"
    assert any("10:20" in m and "still going" in m for m in said)
    assert ends == ["rolled back"], "interrupting the loop cancels the running run (the engine rolls back)"


def test_loop_window_outside_times_are_not_run() -> None:
    s = sched("*/30 * * * *", {"start": "10:00", "end": "11:00"})
    started, said, _ = drive(s, at(9, 1), at(11, 40), run_minutes=1)
    assert started == [at(10, 0), at(10, 30)]
    assert f"next run at {(at(10, 0) + timedelta(days=1)).isoformat()}" in said


def test_once_refuses_outside_the_window_naming_it_and_the_next_allowed_time() -> None:
    s = sched("0 3 * * *", {"start": "09:00", "end": "10:00", "timezone": "Europe/Paris"})
    assert refuse_outside_window(s, at(7, 30)) is None  # 09:30 in Paris
    msg = refuse_outside_window(s, at(12))
    assert msg is not None and "spec.schedule.window" in msg and "09:00-10:00 Europe/Paris" in msg
    assert (at(7) + timedelta(days=1)).isoformat() in msg
    assert window_opens(s.window, at(12)) == at(7) + timedelta(days=1)
    assert refuse_outside_window(sched("0 3 * * *"), at(12)) is None


def test_cli_once_outside_window_fails_clearly(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    start, end = (now + timedelta(hours=2)).strftime("%H:%M"), (now + timedelta(hours=3)).strftime("%H:%M")
    f = tmp_path / "exp.yaml"
    f.write_text(f"""
apiVersion: faultlab.dev/v1alpha1
kind: ChaosExperiment
metadata: {{name: sched}}
spec:
  target: {{kind: RaftCluster, name: demo}}
  faults: [{{name: k, type: kill, target: {{role: leader, mode: one}}, durationSeconds: 1}}]
  checks: [converged]
  workload: {{enabled: false}}
  schedule: {{cron: "0 3 * * *", window: {{start: "{start}", end: "{end}"}}}}
""")
    result = CliRunner().invoke(cli, ["chaos", "run", "-f", str(f), "--once", "--state-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "spec.schedule.window" in result.output and "next allowed time" in result.output


def test_operator_schedule_step() -> None:
    s = sched("*/10 * * * *")
    due = schedule_step(s, at(10, 5), at(9, 55), running=False, created=None)
    assert due.start and due.reason == "Scheduled" and due.record == at(10, 0)
    assert "10:10" in due.message
    idle = schedule_step(s, at(10, 5), at(10, 0), running=False, created=None)
    assert not idle.start and idle.reason is None and idle.record is None
    busy = schedule_step(s, at(10, 5), at(9, 55), running=True, created=None)
    assert not busy.start and busy.reason == "SkippedConcurrent" and busy.record == at(10, 0)
    assert "one run at a time" in busy.message, "one journal: never two runs at once"
    windowed = sched("*/10 * * * *", {"start": "12:00", "end": "13:00"})
    out = schedule_step(windowed, at(10, 5), at(9, 55), running=False, created=None)
    assert not out.start and out.reason == "SkippedOutsideWindow" and out.record == at(10, 0)
    assert "spec.schedule.window" in out.message
    first = schedule_step(s, at(10, 5), None, running=False, created=at(10, 1))
    assert not first.start, "a new experiment waits for its first cron time after creation"


def test_operator_daemon_starts_a_due_run_with_a_fresh_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scheduled daemon loop with a fake API: records lastScheduleTime, resets the journal, posts Scheduled."""
    from faultlab.operator.reconcile import chaos as c

    patches: list[object] = []
    posted: list[str] = []
    runs: list[bool] = []

    class Kube:
        def patch(self, p: str, body: object) -> None:
            patches.append(body)

        def list(self, *a: object, **k: object) -> list[object]:
            return []

    class Events:
        async def post(self, obj: object, reason: str, message: str, warning: bool = False) -> None:
            posted.append(reason)

    class Stopped:
        def __bool__(self) -> bool:
            return bool(runs)  # stop once a run was started

        async def wait(self, timeout: float) -> None:
            await asyncio.sleep(0)

    def fake_run(self: c.ExperimentRun, resume_only: bool = False) -> None:
        runs.append(resume_only)
        self.done.set()

    monkeypatch.setattr(c.ExperimentRun, "run", fake_run)
    created = (datetime.now(UTC) - timedelta(minutes=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {"apiVersion": "faultlab.dev/v1alpha1", "kind": "ChaosExperiment",
            "metadata": {"name": "x", "namespace": "d", "creationTimestamp": created, "finalizers": ["f"]},
            "spec": {"schedule": {"cron": "* * * * *"}, "target": {"name": "t"}}, "status": {}}
    ctl = c.ChaosController(Kube(), Events(), "f")  # type: ignore[arg-type]
    asyncio.run(ctl.daemon(body, "d", "x", Stopped()))
    assert runs == [False] and posted == ["Scheduled"]
    assert len(patches) == 1
    status = patches[0]["status"]  # type: ignore[index]
    assert status["journal"] is None and status["lastScheduleTime"].endswith(":00Z")
