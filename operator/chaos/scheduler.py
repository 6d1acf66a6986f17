"""Scheduled experiments: cron times (croniter), a time-of-day window and a concurrency policy.

:func:`decide` is the pure rule (the operator calls it on every reconcile with the last
scheduled time it recorded in status); :class:`Scheduler` is a small asyncio loop around it
for long-running local use.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter

from faultlab.operator.api.chaos import Schedule, Window

__all__ = ["Decision", "Scheduler", "decide", "in_window", "next_run", "run_schedule", "window_opens"]


def _hhmm(value: str) -> time:
    h, m = value.split(":")
    return time(int(h), int(m))


def in_window(window: Window | None, at: datetime) -> bool:
    """Whether `at` (aware) falls inside the window, in the window's time zone; end exclusive."""
    if window is None:
        return True
    local = at.astimezone(ZoneInfo(window.timezone)).time().replace(second=0, microsecond=0)
    start, end = _hhmm(window.start), _hhmm(window.end)
    if start == end:
        return True
    if start < end:
        return start <= local < end
    return local >= start or local < end  # spans midnight


def next_run(schedule: Schedule, after: datetime, limit: int = 10_000) -> datetime | None:
    """The first cron time strictly after `after` that lies inside the window (None if none soon)."""
    it = croniter(schedule.cron, after.astimezone(UTC))
    for _ in range(limit):
        candidate: datetime = it.get_next(datetime)
        if in_window(schedule.window, candidate):
            return candidate
    return None


def window_opens(window: Window | None, after: datetime) -> datetime:
    """`after` if it is inside the window, else the first minute after it that is."""
    if in_window(window, after):
        return after
    t = after.replace(second=0, microsecond=0)
    for _ in range(2 * 24 * 60):
        t += timedelta(minutes=1)
        if in_window(window, t):
            return t
    return t  # unreachable: every window is open at some minute of the day


@dataclass(frozen=True)
class Decision:
    run: bool
    reason: str
    scheduled_for: datetime | None  # the cron time this decision is about
    next_at: datetime | None


def decide(schedule: Schedule, now: datetime, last_scheduled: datetime | None, running: bool,
           *, created: datetime | None = None) -> Decision:
    """Is a run due now? Missed cron times collapse into one run (the latest), as Kubernetes CronJobs do."""
    since = last_scheduled or created or (now - timedelta(minutes=1))
    due: datetime | None = None
    it = croniter(schedule.cron, since.astimezone(UTC))
    while True:
        t: datetime = it.get_next(datetime)
        if t > now:
            break
        due = t
    following = next_run(schedule, now)
    if due is None:
        return Decision(False, "not due", None, following)
    if not in_window(schedule.window, due):
        return Decision(False, f"{due.isoformat()} is outside the window", due, following)
    if running and schedule.concurrency_policy == "Forbid":
        return Decision(False, f"{due.isoformat()} skipped: the previous run is still going (Forbid)", due,
                        following)
    return Decision(True, f"scheduled for {due.isoformat()}", due, following)


class Scheduler:
    """Runs `start()` for every due cron time until `stop()`; honours the concurrency policy."""

    def __init__(self, schedule: Schedule, start: Callable[[], Awaitable[object]],
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 on_decision: Callable[[Decision], None] | None = None) -> None:
        self.schedule = schedule
        self._start = start
        self._clock = clock
        self._on_decision = on_decision
        self._stop = asyncio.Event()
        self._runs: set[asyncio.Task[object]] = set()
        self.last_scheduled: datetime | None = None

    def stop(self) -> None:
        self._stop.set()

    async def tick(self) -> Decision:
        now = self._clock()
        d = decide(self.schedule, now, self.last_scheduled, bool(self._runs), created=self.last_scheduled or now)
        if d.scheduled_for is not None:
            self.last_scheduled = d.scheduled_for
        if d.run:
            task: asyncio.Task[object] = asyncio.ensure_future(self._start())
            self._runs.add(task)
            task.add_done_callback(self._runs.discard)
        if self._on_decision is not None:
            self._on_decision(d)
        return d

    async def run(self, poll_s: float = 1.0) -> None:
        self.last_scheduled = self._clock()
        while not self._stop.is_set():
            await self.tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), poll_s)
        if self._runs:
            await asyncio.gather(*self._runs, return_exceptions=True)


async def run_schedule(schedule: Schedule, start: Callable[[], Awaitable[object]], *,
                       clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                       sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
                       say: Callable[[str], None] = print, poll_s: float = 1.0) -> None:
    """Start a run at each due cron time until cancelled; cancelling cancels (rolls back) the running run.

    One run at a time: a due time while a run is going is skipped (and said), whatever the policy,
    because an experiment has one journal; missed times collapse into one run, as in :func:`decide`.
    """
    last = clock()
    running: asyncio.Task[object] | None = None
    told: datetime | None = None
    try:
        while True:
            now = clock()
            busy = running is not None and not running.done()
            d = decide(schedule, now, last, busy, created=last)
            if d.scheduled_for is not None:
                last = d.scheduled_for
                if d.run and not busy:
                    say(f"run {d.reason}")
                    running = asyncio.ensure_future(start())
                elif d.run:
                    say(f"{d.scheduled_for.isoformat()} skipped: the previous run is still going "
                        f"(one run at a time per experiment)")
                else:
                    say(d.reason)
            if d.next_at != told:
                told = d.next_at
                say(f"next run at {told.isoformat()}" if told else "no further run time in the window")
            wait = poll_s if d.next_at is None else min(poll_s, max(0.0, (d.next_at - now).total_seconds()))
            await sleep(wait)
    finally:
        if running is not None and not running.done():
            running.cancel()
            with contextlib.suppress(BaseException):
                await running
