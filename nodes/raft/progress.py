"""The leader's view of each follower: match/next indices, flow state and inflight window.

Modeled on etcd-io/raft's tracker: PROBE sends one append at a time until the
follower's match is found, REPLICATE pipelines appends up to ``max_inflight``
unacknowledged messages, SNAPSHOT waits for a snapshot to be installed.
"""

from __future__ import annotations

from collections import deque
from enum import IntEnum

__all__ = ["Progress", "ProgressState"]


class ProgressState(IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


class Progress:
    """Replication progress of one peer, kept by the leader."""

    __slots__ = (
        "inflights",
        "is_learner",
        "match",
        "max_inflight",
        "next",
        "pending_snapshot",
        "probe_sent",
        "recent_active",
        "snapshot_stale",
        "state",
    )

    def __init__(self, next_index: int, max_inflight: int, *, is_learner: bool = False) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_stale = False
        self.recent_active = False
        self.is_learner = is_learner
        self.max_inflight = max_inflight
        self.inflights: deque[int] = deque()

    def is_paused(self) -> bool:
        state = self.state
        if state == ProgressState.REPLICATE:
            return len(self.inflights) >= self.max_inflight
        if state == ProgressState.PROBE:
            return self.probe_sent
        return True

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflights.clear()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflights.clear()

    def become_snapshot(self, index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = index
        self.snapshot_stale = False
        self.probe_sent = False
        self.inflights.clear()

    def maybe_update(self, index: int) -> bool:
        """Record an acknowledgement up to ``index``; True if ``match`` moved."""
        updated = False
        if self.match < index:
            self.match = index
            updated = True
            self.probe_sent = False
        if self.next < index + 1:
            self.next = index + 1
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """Back off after a rejection of the append after ``rejected``; False if stale."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def sent(self, last: int) -> None:
        """Entries up to ``last`` were just sent."""
        if self.state == ProgressState.REPLICATE:
            self.next = last + 1
            self.inflights.append(last)
        elif self.state == ProgressState.PROBE:
            self.probe_sent = True

    def free_le(self, index: int) -> None:
        inflights = self.inflights
        while inflights and inflights[0] <= index:
            inflights.popleft()

    def free_first(self) -> None:
        if self.inflights:
            self.inflights.popleft()
