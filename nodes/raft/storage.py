"""Durable Raft state: a checksummed write-ahead log in segment files, snapshots, hard state.

Layout under the data directory::

    wal/NNNNNNNNNNNNNNNN.wal   segments, numbered in order (decimal, 16 digits)
    snap/TTTTTTTTTTTTTTTT-IIIIIIIIIIIIIIII.snap   snapshots (term-index, hex)
    bootstrap.json             the configuration this member started with

A WAL record is ``crc32c u32 | length u32 | type u8 | payload`` (little endian);
the CRC covers length, type and payload. Records: ENTRIES (a Ready's entries,
overwriting any suffix from the first one's index), HARD_STATE (term, vote,
commit; the last one wins; every segment opens with one) and SNAPSHOT (a
snapshot installed from the leader: the log restarts after it).

Recovery: a bad record at the end of the last segment is a torn write from a
crash and is truncated away. A bad record followed by a valid one, or in any
segment but the last, is corruption: :class:`CorruptionError` names the file and
offset and the node refuses to start. Snapshots are written atomically (temp
file, fsync, rename, fsync of the directory) and carry a CRC32C verified on load.

Every write first asks :data:`faultlab.nodes.common.faults.DISK` (ENOSPC faults).
Methods block (they fsync): the node calls them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import google_crc32c

from faultlab.nodes.common.faults import DISK
from faultlab.nodes.raft.messages import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMeta

log = logging.getLogger("faultlab.raft.storage")

REC_ENTRIES = 1
REC_HARD_STATE = 2
REC_SNAPSHOT = 3
_REC_TYPES = (REC_ENTRIES, REC_HARD_STATE, REC_SNAPSHOT)

_HDR = struct.Struct("<IIB")
_ENTRY = struct.Struct("<QQBI")
_HARD = struct.Struct("<QQH")
_SNAPREC = struct.Struct("<QQ")
_SNAP_HDR = struct.Struct("<8sIIQ")
SNAP_MAGIC = b"FLSNAP01"
MAX_RECORD = 1 << 30
SEGMENT_BYTES = 64 * 1024 * 1024
KEEP_SNAPSHOTS = 2

_SEGMENT_RE = re.compile(r"^(\d{16})\.wal$")
_SNAP_RE = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.snap$")


class CorruptionError(Exception):
    """Durable state is damaged in a way recovery must not paper over."""


def crc32c(data: bytes | memoryview) -> int:
    return google_crc32c.value(bytes(data)) if isinstance(data, memoryview) else google_crc32c.value(data)


def encode_record(rtype: int, payload: bytes) -> bytes:
    tail = struct.pack("<IB", len(payload), rtype)
    crc = google_crc32c.extend(google_crc32c.value(tail), payload)
    return struct.pack("<I", crc) + tail + payload


def encode_entries(entries: list[Entry]) -> bytes:
    pack = _ENTRY.pack
    parts: list[bytes] = []
    for e in entries:
        parts.append(pack(e.term, e.index, e.type, len(e.data)))
        parts.append(e.data)
    return b"".join(parts)


def decode_entries(payload: bytes | memoryview) -> list[Entry]:
    out: list[Entry] = []
    off, n = 0, len(payload)
    unpack = _ENTRY.unpack_from
    size = _ENTRY.size
    while off < n:
        term, index, etype, length = unpack(payload, off)
        off += size
        out.append(Entry(term, index, EntryType(etype), bytes(payload[off:off + length])))
        off += length
    return out


def encode_hard_state(hs: HardState) -> bytes:
    vote = hs.vote.encode()
    return _HARD.pack(hs.term, hs.commit, len(vote)) + vote


def decode_hard_state(payload: bytes | memoryview) -> HardState:
    term, commit, vlen = _HARD.unpack_from(payload, 0)
    return HardState(term=term, vote=bytes(payload[_HARD.size:_HARD.size + vlen]).decode(), commit=commit)


def _parse_at(buf: memoryview, off: int) -> tuple[int, int] | None:
    """(type, payload length) of a valid record at ``off``, or None."""
    if off + _HDR.size > len(buf):
        return None
    crc, length, rtype = _HDR.unpack_from(buf, off)
    if rtype not in _REC_TYPES or length > MAX_RECORD or off + _HDR.size + length > len(buf):
        return None
    start = off + _HDR.size
    got = google_crc32c.extend(google_crc32c.value(bytes(buf[off + 4:start])), bytes(buf[start:start + length]))
    return (rtype, length) if got == crc else None


def _next_valid(buf: memoryview, start: int) -> int | None:
    """Offset of the first valid record at or after ``start`` (a corruption witness)."""
    last = len(buf) - _HDR.size
    for off in range(start, last + 1):
        if buf[off + 8] in _REC_TYPES and _parse_at(buf, off) is not None:
            return off
    return None


@dataclass
class SegmentInfo:
    seq: int
    path: Path
    max_index: int = 0


@dataclass
class LoadedState:
    """What a restarting member recovers: feed it to the core's constructor."""

    hard_state: HardState
    snapshot: Snapshot | None
    entries: list[Entry]
    bootstrap: dict[str, object] | None
    torn_tail: str = ""
    warnings: list[str] = field(default_factory=list)


class RaftStorage:
    """WAL + snapshots of one member. Not thread-safe: callers serialize calls."""

    def __init__(self, data_dir: str | os.PathLike[str], segment_bytes: int = SEGMENT_BYTES,
                 fsync: bool = True, on_fsync: Callable[[float], None] | None = None) -> None:
        self.dir = Path(data_dir)
        self.wal_dir = self.dir / "wal"
        self.snap_dir = self.dir / "snap"
        self.segment_bytes = segment_bytes
        self.fsync_enabled = fsync
        self.on_fsync = on_fsync
        self.segments: list[SegmentInfo] = []
        self.hard_state = HardState()
        self._fd: int | None = None
        self._size = 0
        self._need_header = False
        self.fsyncs = 0
        self.snapshot_index = 0

    # ------------------------------------------------------------------ bootstrap

    @property
    def bootstrap_path(self) -> Path:
        return self.dir / "bootstrap.json"

    def write_bootstrap(self, info: dict[str, object]) -> None:
        self._atomic_write(self.bootstrap_path, json.dumps(info, sort_keys=True).encode())

    # ------------------------------------------------------------------ load

    def load(self) -> LoadedState:
        """Recovers the durable state; raises CorruptionError when it is damaged."""
        for d in (self.dir, self.wal_dir, self.snap_dir):
            d.mkdir(parents=True, exist_ok=True)
        bootstrap = None
        if self.bootstrap_path.exists():
            try:
                bootstrap = json.loads(self.bootstrap_path.read_bytes())
            except ValueError as exc:
                raise CorruptionError(f"{self.bootstrap_path}: not valid JSON ({exc})") from exc
        for tmp in self.snap_dir.glob(".tmp-*"):
            tmp.unlink()

        hard = HardState()
        entries: list[Entry] = []
        base_index = 0
        torn = ""
        names = sorted(p.name for p in self.wal_dir.iterdir() if _SEGMENT_RE.match(p.name))
        seqs = [int(n[:16]) for n in names]
        for a, b in itertools.pairwise(seqs):
            if b != a + 1:
                raise CorruptionError(f"{self.wal_dir}: segment {a + 1:016d}.wal is missing "
                                      f"(have {a:016d}.wal and {b:016d}.wal)")
        for pos, name in enumerate(names):
            path = self.wal_dir / name
            last_segment = pos == len(names) - 1
            data = path.read_bytes()
            buf = memoryview(data)
            info = SegmentInfo(int(name[:16]), path)
            off = 0
            while off < len(buf):
                parsed = _parse_at(buf, off)
                if parsed is None:
                    witness = _next_valid(buf, off + 1)
                    if not last_segment or witness is not None:
                        where = f"valid record follows at offset {witness}" if witness is not None else \
                            "in a segment that is not the last"
                        raise CorruptionError(
                            f"WAL corruption in {path} at offset {off}: bad record ({where}); "
                            f"refusing to start. Restore this member from a peer (wipe its data dir and "
                            f"re-add it) or repair the file.")
                    torn = f"{path}: torn tail truncated at offset {off} ({len(buf) - off} bytes dropped)"
                    log.warning("%s", torn)
                    with open(path, "r+b") as f:
                        f.truncate(off)
                        f.flush()
                        os.fsync(f.fileno())
                    break
                rtype, length = parsed
                payload = buf[off + _HDR.size:off + _HDR.size + length]
                if rtype == REC_ENTRIES:
                    batch = decode_entries(payload)
                    if batch:
                        first = batch[0].index
                        if entries and first <= entries[-1].index:
                            del entries[max(0, first - entries[0].index):]
                        if entries and first != entries[-1].index + 1:
                            raise CorruptionError(f"WAL gap in {path} at offset {off}: entry {first} follows "
                                                  f"entry {entries[-1].index}")
                        entries.extend(batch)
                        info.max_index = max(info.max_index, batch[-1].index)
                elif rtype == REC_HARD_STATE:
                    hard = decode_hard_state(payload)
                elif rtype == REC_SNAPSHOT:
                    base_index, _term = _SNAPREC.unpack_from(payload, 0)
                    entries = []
                    info.max_index = max(info.max_index, base_index)
                off += _HDR.size + length
            self.segments.append(info)

        snapshot, warnings = self._load_snapshot(base_index, entries)
        if snapshot is not None:
            self.snapshot_index = snapshot.meta.index
            entries = [e for e in entries if e.index > snapshot.meta.index]
        if entries and entries[0].index != self.snapshot_index + 1:
            raise CorruptionError(
                f"{self.wal_dir}: the log starts at index {entries[0].index} but the newest valid snapshot "
                f"ends at {self.snapshot_index}; entries in between are lost. {' '.join(warnings)}")
        self.hard_state = hard
        self._open_tail()
        return LoadedState(hard, snapshot, entries, bootstrap, torn, warnings)

    def _snapshot_files(self) -> list[tuple[int, int, Path]]:
        out = []
        for p in self.snap_dir.iterdir():
            m = _SNAP_RE.match(p.name)
            if m:
                out.append((int(m.group(2), 16), int(m.group(1), 16), p))
        return sorted(out, reverse=True)

    def _load_snapshot(self, base_index: int, entries: list[Entry]) -> tuple[Snapshot | None, list[str]]:
        warnings: list[str] = []
        for _index, _term, path in self._snapshot_files():
            try:
                snap = read_snapshot_file(path)
            except CorruptionError as exc:
                warnings.append(str(exc))
                log.error("%s; trying an older snapshot", exc)
                continue
            if snap.meta.index < base_index:
                break
            return snap, warnings
        if base_index > 0:
            raise CorruptionError(
                f"{self.snap_dir}: the WAL says a snapshot at index {base_index} was installed but no valid "
                f"snapshot file covers it. {' '.join(warnings)}")
        if warnings and entries and entries[0].index != 1:
            raise CorruptionError(" ".join(warnings) + "; no older snapshot plus WAL covers the log")
        return None, warnings

    def _open_tail(self) -> None:
        if not self.segments:
            self._new_segment(1)
            return
        tail = self.segments[-1]
        self._fd = os.open(tail.path, os.O_WRONLY | os.O_APPEND)
        self._size = os.fstat(self._fd).st_size

    def _new_segment(self, seq: int) -> None:
        path = self.wal_dir / f"{seq:016d}.wal"
        DISK.check_write(path)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
        self._size = 0
        self.segments.append(SegmentInfo(seq, path))
        self._need_header = True

    # ------------------------------------------------------------------ append

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        DISK.check_write(self.segments[-1].path)
        start = self._size
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError:
            try:
                os.ftruncate(self._fd, start)
            except OSError:
                pass
            raise
        self._size = start + len(data)

    def _sync(self) -> None:
        if not self.fsync_enabled:
            return
        assert self._fd is not None
        t = time.perf_counter()
        os.fdatasync(self._fd)
        self.fsyncs += 1
        if self.on_fsync is not None:
            self.on_fsync(time.perf_counter() - t)

    def save(self, hard_state: HardState | None, entries: list[Entry], snapshot: Snapshot | None = None,
             sync: bool = True) -> None:
        """Makes a Ready durable with one fsync: snapshot (if any) first, then entries, then hard state.

        ``sync=False`` writes without fsync (a commit-index-only change: recoverable, so it
        rides along with the next fsync).
        """
        if snapshot is not None:
            self.save_snapshot(snapshot)
        if self._size >= self.segment_bytes:
            self._new_segment(self.segments[-1].seq + 1)
        parts: list[bytes] = []
        new_segment = self._need_header
        if new_segment:
            parts.append(encode_record(REC_HARD_STATE, encode_hard_state(self.hard_state)))
        if snapshot is not None:
            parts.append(encode_record(REC_SNAPSHOT, _SNAPREC.pack(snapshot.meta.index, snapshot.meta.term)))
        if entries:
            parts.append(encode_record(REC_ENTRIES, encode_entries(entries)))
        if hard_state is not None and hard_state != self.hard_state:
            parts.append(encode_record(REC_HARD_STATE, encode_hard_state(hard_state)))
        if len(parts) == int(new_segment):
            return
        self._write(b"".join(parts))
        if sync or new_segment:
            self._sync()
        if new_segment:
            if self.fsync_enabled:
                _fsync_dir(self.wal_dir)
            self._need_header = False
        if hard_state is not None:
            self.hard_state = HardState(hard_state.term, hard_state.vote, hard_state.commit)
        tail = self.segments[-1]
        if entries:
            tail.max_index = max(tail.max_index, entries[-1].index)
        if snapshot is not None:
            tail.max_index = max(tail.max_index, snapshot.meta.index)

    # ------------------------------------------------------------------ snapshots

    def snapshot_path(self, meta: SnapshotMeta) -> Path:
        return self.snap_dir / f"{meta.term:016x}-{meta.index:016x}.snap"

    def save_snapshot(self, snapshot: Snapshot) -> Path:
        """Writes a snapshot file atomically, then drops snapshots and WAL segments it makes obsolete."""
        path = self.snapshot_path(snapshot.meta)
        if not path.exists():
            self._atomic_write(path, encode_snapshot(snapshot))
        self.snapshot_index = max(self.snapshot_index, snapshot.meta.index)
        self._release()
        return path

    def _atomic_write(self, path: Path, data: bytes) -> None:
        DISK.check_write(path)
        tmp = path.with_name(".tmp-" + path.name)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                if self.fsync_enabled:
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise
        if self.fsync_enabled:
            _fsync_dir(path.parent)

    def _release(self) -> None:
        snaps = self._snapshot_files()
        for _index, _term, path in snaps[KEEP_SNAPSHOTS:]:
            path.unlink(missing_ok=True)
        keep = snaps[:KEEP_SNAPSHOTS]
        if not keep:
            return
        floor = keep[-1][0]
        while len(self.segments) > 1 and self.segments[0].max_index <= floor:
            self.segments.pop(0).path.unlink(missing_ok=True)

    def latest_snapshot(self) -> Snapshot | None:
        for _index, _term, path in self._snapshot_files():
            try:
                return read_snapshot_file(path)
            except CorruptionError as exc:
                log.error("%s", exc)
        return None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def encode_snapshot(snapshot: Snapshot) -> bytes:
    meta = json.dumps({"index": snapshot.meta.index, "term": snapshot.meta.term,
                       "voters": list(snapshot.meta.conf.voters),
                       "learners": list(snapshot.meta.conf.learners)}).encode()
    lens = struct.pack("<IQ", len(meta), len(snapshot.data))
    crc = google_crc32c.extend(google_crc32c.extend(google_crc32c.value(lens), meta), snapshot.data)
    return _SNAP_HDR.pack(SNAP_MAGIC, crc, len(meta), len(snapshot.data)) + meta + snapshot.data


def read_snapshot_file(path: Path) -> Snapshot:
    """Reads and verifies a snapshot file; raises CorruptionError naming the file."""
    data = path.read_bytes()
    if len(data) < _SNAP_HDR.size:
        raise CorruptionError(f"snapshot {path} is truncated ({len(data)} bytes)")
    magic, crc, mlen, dlen = _SNAP_HDR.unpack_from(data, 0)
    if magic != SNAP_MAGIC or _SNAP_HDR.size + mlen + dlen != len(data):
        raise CorruptionError(f"snapshot {path}: bad header at offset 0 (not a faultlab snapshot or truncated)")
    body = memoryview(data)[_SNAP_HDR.size:]
    got = google_crc32c.extend(google_crc32c.value(struct.pack("<IQ", mlen, dlen)), bytes(body))
    if got != crc:
        raise CorruptionError(f"snapshot {path}: checksum mismatch (stored {crc:08x}, computed {got:08x})")
    meta = json.loads(bytes(body[:mlen]))
    conf = ConfState(tuple(meta["voters"]), tuple(meta["learners"]))
    return Snapshot(SnapshotMeta(meta["index"], meta["term"], conf), bytes(body[mlen:]))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
