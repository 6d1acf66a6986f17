"""Scheduled experiments: cron times, windows (also across midnight, in a time zone), concurrency policy."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from faultlab.operator.api import Schedule
from faultlab.operator.chaos.scheduler import Scheduler, decide, in_window, next_run


def sched(cron: str, window: dict[str, str] | None = None, policy: str = "Forbid") -> Schedule:
    data: dict[str, object] = {"cron": cron, "concurrencyPolicy": policy}
    if window:
        data["window"] = window
    return Schedule.model_validate(data)


def at(h: int, m: int = 0, day: int = 1) -> datetime:
    return datetime(2026, 6, day, h, m, tzinfo=UTC)


def test_window_across_midnight_and_time_zone() -> None:
    s = sched("0 * * * *", {"start": "22:00", "end": "02:00"})
    assert in_window(s.window, at(23)) and in_window(s.window, at(1, 59))
    assert not in_window(s.window, at(2)) and not in_window(s.window, at(12))
    paris = sched("0 * * * *", {"start": "09:00", "end": "10:00", "timezone": "Europe/Paris"})
    assert in_window(paris.window, at(7, 30))  # 09:30 in Paris (UTC+2 in June)
    assert not in_window(paris.window, at(9, 30))


def test_next_run_skips_times_outside_the_window() -> None:
    s = sched("0 * * * *", {"start": "03:00", "end": "04:00"})
    assert next_run(s, at(10)) == at(3, day=2)


def test_decide_due_missed_and_forbid() -> None:
    s = sched("*/10 * * * *")
    d = decide(s, at(10, 5), last_scheduled=at(9, 55), running=False)
    assert d.run and d.scheduled_for == at(10, 0) and d.next_at == at(10, 10)
    assert not decide(s, at(10, 5), last_scheduled=at(10, 0), running=False).run
    missed = decide(s, at(11, 1), last_scheduled=at(9, 55), running=False)
    assert missed.run and missed.scheduled_for == at(11, 0), "missed times collapse into the latest"
    forbid = decide(s, at(10, 5), last_scheduled=at(9, 55), running=True)
    assert not forbid.run and "Forbid" in forbid.reason


def test_concurrency_policy_allow_is_rejected_naming_the_field() -> None:
    from faultlab.operator.api import Resource, ResourceError

    with pytest.raises(ResourceError) as info:
        Resource.parse({"kind": "ChaosExperiment", "metadata": {"name": "e"},
                        "spec": {"target": {"name": "d"}, "faults": [{"name": "f", "type": "delay"}],
                                 "schedule": {"cron": "0 3 * * *", "concurrencyPolicy": "Allow"}}})
    msg = str(info.value)
    assert "spec.schedule.concurrencyPolicy" in msg and "Allow is not supported" in msg and "use Forbid" in msg
    from faultlab.operator.api.crd import crd

    props = crd("ChaosExperiment")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert props["properties"]["schedule"]["properties"]["concurrencyPolicy"]["enum"] == ["Forbid"]


def test_scheduler_loop_honours_forbid() -> None:
    now = [at(10, 0)]
    started: list[datetime] = []
    release = asyncio.Event()

    async def start() -> None:
        started.append(now[0])
        await release.wait()

    async def main() -> None:
        sch = Scheduler(sched("* * * * *"), start, clock=lambda: now[0])
        sch.last_scheduled = at(10, 0)
        now[0] = at(10, 1)
        assert (await sch.tick()).run
        await asyncio.sleep(0)
        now[0] = at(10, 2)
        assert not (await sch.tick()).run, "the first run still goes"
        release.set()
        await asyncio.sleep(0.01)
        now[0] = at(10, 3)
        assert (await sch.tick()).run

    asyncio.run(main())
    assert started == [at(10, 1), at(10, 3)]
    assert timedelta(minutes=2) == started[1] - started[0]
