"""The in-memory Raft log of one node: entries after a snapshot offset.

``entries[k]`` holds index ``snap_index + 1 + k``; ``snap_index``/``snap_term``
name the last entry folded into the snapshot (0/0 for none). Besides the
entries the log tracks three cursors: ``committed``, ``applying`` (the last
committed entry handed to the shell) and ``applied``, plus the first index not
yet handed to the shell for persistence.
"""

from __future__ import annotations

from collections.abc import Iterable

from faultlab.nodes.raft.messages import Entry, Snapshot

__all__ = ["RaftLog"]


class RaftLog:
    __slots__ = (
        "applied",
        "applying",
        "committed",
        "entries",
        "pending_snapshot",
        "snap_index",
        "snap_term",
        "unstable",
    )

    def __init__(self, snap_index: int = 0, snap_term: int = 0, entries: Iterable[Entry] = ()) -> None:
        self.snap_index = snap_index
        self.snap_term = snap_term
        self.entries: list[Entry] = []
        expected = snap_index + 1
        for e in entries:
            if e.index <= snap_index:
                continue
            if e.index != expected:
                raise ValueError(f"log entries are not contiguous: expected index {expected}, got {e.index}")
            self.entries.append(e)
            expected += 1
        self.committed = snap_index
        self.applying = snap_index
        self.applied = snap_index
        self.unstable = self.last_index() + 1
        self.pending_snapshot: Snapshot | None = None

    def first_index(self) -> int:
        return self.snap_index + 1

    def last_index(self) -> int:
        return self.snap_index + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snap_term

    def term(self, index: int) -> int | None:
        """Term of the entry at ``index``; None if compacted away or past the end."""
        k = index - self.snap_index - 1
        if k < 0:
            return self.snap_term if k == -1 else None
        if k >= len(self.entries):
            return None
        return self.entries[k].term

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """Whether a log ending at (``last_index``, ``term``) is at least as up to date as this one."""
        our = self.last_term()
        return term > our or (term == our and last_index >= self.last_index())

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """The largest index <= ``index`` whose term is <= ``term`` (``index`` itself when unknown)."""
        if index > self.last_index() or index < self.snap_index:
            return index
        entries = self.entries
        base = self.snap_index + 1
        while index >= base and entries[index - base].term > term:
            index -= 1
        return index

    def maybe_append(self, index: int, log_term: int, entries: list[Entry]) -> int | None:
        """Append ``entries`` following (``index``, ``log_term``); the last new index, or None on mismatch."""
        if self.term(index) != log_term:
            return None
        if entries:
            ours = self.entries
            base = self.snap_index + 1
            n = len(ours)
            for i, e in enumerate(entries):
                k = e.index - base
                if k >= n or ours[k].term != e.term:
                    if e.index <= self.committed:
                        raise AssertionError(
                            f"entry {e.index} conflicts with a committed entry (commit {self.committed})"
                        )
                    self.append(entries[i:] if i else entries)
                    break
        return index + len(entries)

    def append(self, entries: list[Entry]) -> None:
        """Append ``entries``, overwriting any suffix from ``entries[0].index``."""
        first = entries[0].index
        k = first - self.snap_index - 1
        if k < len(self.entries):
            del self.entries[k:]
            if first < self.unstable:
                self.unstable = first
        self.entries.extend(entries)

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries in [lo, hi); both bounds must lie within the log."""
        base = self.snap_index + 1
        return self.entries[lo - base : hi - base]

    def entries_from(self, lo: int, max_count: int, max_bytes: int) -> list[Entry]:
        """At most ``max_count`` entries from ``lo`` totalling about ``max_bytes`` (at least one)."""
        base = self.snap_index + 1
        k = lo - base
        out = self.entries[k : k + max_count]
        size = 0
        for i, e in enumerate(out):
            size += len(e.data)
            if size > max_bytes and i > 0:
                del out[i:]
                break
        return out

    def has_unstable(self) -> bool:
        return self.unstable <= self.last_index()

    def take_unstable(self) -> list[Entry]:
        last = self.last_index()
        if self.unstable > last:
            return []
        out = self.entries[self.unstable - self.snap_index - 1 :]
        self.unstable = last + 1
        return out

    def has_next_committed(self) -> bool:
        return self.committed > self.applying

    def take_next_committed(self, max_count: int) -> list[Entry]:
        if self.committed <= self.applying:
            return []
        hi = min(self.committed, self.applying + max_count)
        out = self.slice(self.applying + 1, hi + 1)
        self.applying = hi
        return out

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log by ``snapshot`` (a follower installing the leader's snapshot)."""
        meta = snapshot.meta
        self.entries = []
        self.snap_index = meta.index
        self.snap_term = meta.term
        self.committed = meta.index
        self.applying = meta.index
        self.unstable = meta.index + 1
        self.pending_snapshot = snapshot

    def compact(self, index: int) -> None:
        """Drop entries up to and including ``index`` (which must be in the log)."""
        term = self.term(index)
        if term is None:
            raise ValueError(f"cannot compact to index {index}: log holds {self.snap_index}..{self.last_index()}")
        del self.entries[: index - self.snap_index]
        self.snap_index = index
        self.snap_term = term
