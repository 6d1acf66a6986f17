"""Resource and data faults: CPU burn, memory pressure, disk ballast, byte corruption.

Each applier returns an object whose `undo()` reverts it. CPU burn hashes large
buffers (hashlib releases the GIL there), so N threads burn N cores of this
process without starving the event loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from faultlab.nodes.agent.faults import FaultError

PERIOD_S = 0.1
BALLAST_DIR = ".faultlab-ballast"
CORRUPTION_DIR = ".faultlab-corruption"
BALLAST_FILE_BYTES = 256 << 20
DEFAULT_FLOOR_BYTES = 1 << 30
DEFAULT_FLOOR_PERCENT = 5.0
FLOOR_GUARD_S = 0.5
_CHUNK = 1 << 20


class CpuBurner:
    """`threads` threads, each busy for `duty_cycle` of every 100 ms period until stopped."""

    def __init__(self, threads: int, duty_cycle: float) -> None:
        self.duty_cycle = duty_cycle
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, name=f"faultlab-cpu-burn-{i}", daemon=True)
                         for i in range(threads)]

    def start(self) -> CpuBurner:
        for t in self._threads:
            t.start()
        return self

    def _run(self) -> None:
        block = os.urandom(64 * 1024)
        busy = PERIOD_S * self.duty_cycle
        while not self._stop.is_set():
            period_start = time.monotonic()
            while time.monotonic() - period_start < busy and not self._stop.is_set():
                hashlib.sha256(block).digest()
            rest = PERIOD_S - (time.monotonic() - period_start)
            if rest > 0:
                self._stop.wait(rest)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2.0)


class MemoryHog:
    """Holds `megabytes` MiB of touched (resident) memory until released."""

    def __init__(self, megabytes: int) -> None:
        self._blocks: list[bytearray] = []
        page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        for _ in range(megabytes):
            block = bytearray(_CHUNK)
            block[::page] = b"\x01" * len(range(0, _CHUNK, page))
            self._blocks.append(block)

    def release(self) -> None:
        self._blocks.clear()


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%|b|k|kb|kib|m|mb|mib|g|gb|gib|t|tb|tib)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}


@dataclass(frozen=True)
class DiskFloor:
    """Free space disk-fill ballast never goes below: the larger of `min_bytes` and `percent` of the filesystem.

    The default (`auto`: 1 GiB or 5 %, whichever is larger) protects a filesystem the member
    shares with others: every member of a local cluster and the host itself, or a Kubernetes
    node's disk under an emptyDir. A member on a volume of its own can set `0` to fill it up.
    """

    min_bytes: int = DEFAULT_FLOOR_BYTES
    percent: float = DEFAULT_FLOOR_PERCENT

    @classmethod
    def parse(cls, text: str) -> DiskFloor:
        """`auto` (or empty), `0`, a size (`512MiB`, `2G`, bytes) or a percentage of the filesystem (`10%`)."""
        if text.strip().lower() in ("", "auto"):
            return cls()
        m = _SIZE.match(text)
        if not m:
            raise ValueError(f"disk fill floor {text!r}: use auto, 0, a size like 2GiB or 512MiB, or a percentage "
                             f"of the filesystem like 10%")
        value, unit = float(m.group(1)), (m.group(2) or "").lower()
        if unit == "%":
            if value > 100:
                raise ValueError(f"disk fill floor {text!r}: a percentage is at most 100%")
            return cls(0, value)
        return cls(int(value * _UNITS[unit]), 0.0)

    def bytes_for(self, path: Path) -> int:
        st = os.statvfs(path)
        return max(self.min_bytes, int(st.f_blocks * st.f_frsize * self.percent / 100))

    def __str__(self) -> str:
        if self.percent and self.min_bytes:
            return f"{self.min_bytes >> 20} MiB or {self.percent:g}% of the filesystem, whichever is larger"
        return f"{self.percent:g}% of the filesystem" if self.percent else f"{self.min_bytes} bytes"


@dataclass
class Ballast:
    """Files in `<data_dir>/.faultlab-ballast` that fill the filesystem down to a target of free bytes.

    The target is `leave_free` but never below the node's `DiskFloor`; `trim` gives space back
    when others (the node's own writes, members sharing the disk) take free space below the floor.
    """

    directory: Path
    written: int = 0
    files: list[Path] = field(default_factory=list)
    target: int = 0

    @classmethod
    def fill(cls, data_dir: Path, leave_free: int, floor: int = 0) -> Ballast:
        data_dir.mkdir(parents=True, exist_ok=True)
        target = max(leave_free, floor)
        free = free_bytes(data_dir)
        if free <= target:
            bound = (f"the node's safe floor of {floor} bytes (--disk-fill-floor, FAULTLAB_DISK_FILL_FLOOR)"
                     if floor >= leave_free else f"leaveFreeBytes={leave_free}")
            raise FaultError(grpc.StatusCode.FAILED_PRECONDITION,
                             f"fault.disk_fill: {free} bytes are free on the filesystem of {data_dir}, already "
                             f"at or below {bound}; no ballast written. Use enospc: true to make the member's "
                             f"disk full without filling a shared filesystem")
        ballast = cls(data_dir / BALLAST_DIR, target=target)
        ballast.directory.mkdir(exist_ok=True)
        try:
            while (need := free_bytes(data_dir) - target) > 0:
                size = min(need, BALLAST_FILE_BYTES)
                path = ballast.directory / f"ballast-{os.getpid()}-{len(ballast.files)}"
                ballast.files.append(path)
                ballast.written += _write_file(path, size)
                if free_bytes(data_dir) - target >= need:  # no progress: give up rather than spin
                    break
            ballast.trim(floor)  # members filling the same disk at once may overshoot together
        except BaseException:
            ballast.remove()
            raise
        return ballast

    def trim(self, floor: int) -> int:
        """Shrinks the ballast until `floor` bytes are free again (or it is gone); returns bytes released."""
        released = 0
        while self.files and (deficit := floor - free_bytes(self.directory)) > 0:
            path = self.files[-1]
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size <= deficit:
                path.unlink(missing_ok=True)
                self.files.pop()
                released += size
            else:
                os.truncate(path, size - deficit)
                released += deficit
                if free_bytes(self.directory) < floor:  # truncating freed no blocks: drop the file
                    path.unlink(missing_ok=True)
                    self.files.pop()
                    released += size - deficit
        self.written = max(0, self.written - released)
        return released

    def remove(self) -> None:
        for path in self.files:
            path.unlink(missing_ok=True)
        self.files.clear()
        try:
            self.directory.rmdir()
        except OSError:
            pass


def _write_file(path: Path, size: int) -> int:
    """Allocates `size` bytes in a new file (fallocate when possible); stops quietly at ENOSPC."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            os.posix_fallocate(fd, 0, size)
            return size
        except OSError:
            pass
        written, zeros = 0, bytes(_CHUNK)
        try:
            while written < size:
                written += os.write(fd, zeros[: min(_CHUNK, size - written)])
            os.fsync(fd)
        except OSError:
            pass
        return written
    finally:
        os.close(fd)


@dataclass
class Corruption:
    """Bytes flipped in one file, with the originals kept so the corruption can be undone.

    The originals are also written to a record in `<data_dir>/.faultlab-corruption/`
    (fsynced before any byte is flipped), because the damage outlives the process that
    made it: a member killed while the fault holds restarts on the flipped bytes, and the
    node must detect them (Raft storage refuses to start, naming the file and offset).
    That stopped process, or the next one that does start, puts the originals back with
    `heal_leftover_corruption`, so the fault heals even though its agent died with it.
    """

    path: Path
    seed: int
    original: dict[int, int]
    flipped: dict[int, int]
    fault_id: str = ""
    record: Path | None = None
    pid: int = 0
    inode: int = 0  # a file replaced since (an atomic rewrite) holds other bytes: left alone

    @classmethod
    def apply(cls, data_dir: Path, target: str, nbytes: int, seed: int, fault_id: str = "") -> Corruption:
        folder, pattern = ("wal", "*.wal") if target == "wal" else ("snap", "*.snap")
        candidates = [p for p in (data_dir / folder).glob(pattern) if p.is_file() and p.stat().st_size > 0]
        if not candidates:
            raise FaultError(grpc.StatusCode.FAILED_PRECONDITION,
                             f"fault.corruption.target: no non-empty {folder}/{pattern} file in {data_dir} "
                             f"to corrupt (has this node written its {target} yet?)")
        path = max(candidates, key=lambda p: (p.stat().st_mtime_ns, p.name))
        rng = random.Random(seed)
        with open(path, "r+b") as f:
            size = os.fstat(f.fileno()).st_size
            positions = sorted(rng.sample(range(size), min(nbytes, size)))
            original = {pos: os.pread(f.fileno(), 1, pos)[0] for pos in positions}
            flipped = {pos: old ^ rng.randrange(1, 256) for pos, old in original.items()}
            corruption = cls(path=path, seed=seed, original=original, flipped=flipped, fault_id=fault_id,
                             pid=os.getpid(), inode=os.fstat(f.fileno()).st_ino)
            corruption.record = corruption._write_record(data_dir)
            for pos, new in flipped.items():
                os.pwrite(f.fileno(), bytes([new]), pos)
            os.fsync(f.fileno())
        return corruption

    @property
    def detail(self) -> str:
        offsets = ",".join(str(p) for p in self.original)
        return (f"flipped {len(self.original)} byte(s) in {self.path} seed={self.seed} offsets=[{offsets}]; "
                f"they stay flipped until the fault ends, and a restart meanwhile must detect them")

    def _write_record(self, data_dir: Path) -> Path:
        folder = data_dir / CORRUPTION_DIR
        folder.mkdir(exist_ok=True)
        name = hashlib.sha256(f"{self.fault_id}\0{self.path}".encode()).hexdigest()[:24] + ".json"
        text = json.dumps({"fault": self.fault_id, "path": str(self.path), "seed": self.seed, "pid": self.pid,
                           "inode": self.inode,
                           "original": {str(k): v for k, v in self.original.items()},
                           "flipped": {str(k): v for k, v in self.flipped.items()}})
        tmp = folder / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, folder / name)
        _fsync_dir(folder)
        return folder / name

    @classmethod
    def load(cls, record: Path) -> Corruption:
        """The corruption a record describes; ValueError when the record is unreadable."""
        try:
            raw = json.loads(record.read_text())
            return cls(path=Path(raw["path"]), seed=int(raw["seed"]), fault_id=str(raw["fault"]),
                       original={int(k): int(v) for k, v in raw["original"].items()},
                       flipped={int(k): int(v) for k, v in raw["flipped"].items()},
                       record=record, pid=int(raw.get("pid") or 0), inode=int(raw.get("inode") or 0))
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{record}: unreadable corruption record ({exc})") from None

    def restore(self) -> int:
        """Puts the original bytes back where the file still holds the flipped ones; returns how many.

        Then drops the record: the fault is over.
        """
        restored = 0
        try:
            with open(self.path, "r+b") as f:
                st = os.fstat(f.fileno())
                size = st.st_size if not self.inode or st.st_ino == self.inode else 0
                for pos, old in self.original.items():
                    if pos < size and os.pread(f.fileno(), 1, pos)[0] == self.flipped[pos]:
                        os.pwrite(f.fileno(), bytes([old]), pos)
                        restored += 1
                os.fsync(f.fileno())
        except FileNotFoundError:
            pass
        if self.record is not None:
            self.record.unlink(missing_ok=True)
            _fsync_dir(self.record.parent)
            with contextlib.suppress(OSError):
                self.record.parent.rmdir()
        return restored


def heal_leftover_corruption(data_dir: Path) -> list[str]:
    """Restores every corruption recorded in `data_dir` whose agent can no longer undo it.

    Called when a node process stops without serving (it refused to start on the damage)
    and when the agent of a process that did start attaches. Returns one line per record.
    """
    folder = data_dir / CORRUPTION_DIR
    if not folder.is_dir():
        return []
    notes: list[str] = []
    for record in sorted(folder.glob("*.json")):
        try:
            corruption = Corruption.load(record)
        except ValueError as exc:
            notes.append(f"{exc}; removed")
            record.unlink(missing_ok=True)
            continue
        restored = corruption.restore()
        notes.append(f"corruption fault {corruption.fault_id!r} (made by process {corruption.pid}): restored "
                     f"{restored} of {len(corruption.original)} flipped byte(s) in {corruption.path}"
                     + ("" if restored == len(corruption.original) else
                        " (the others were rewritten or truncated away since)"))
    for tmp in folder.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()
    return notes


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_ballast(data_dir: Path) -> None:
    """Ballast left by a crashed process (whose fault can no longer be recovered) is removed at start."""
    shutil.rmtree(data_dir / BALLAST_DIR, ignore_errors=True)
