"""Resource and data faults: CPU burn, memory pressure, disk ballast, byte corruption.

Each applier returns an object whose `undo()` reverts it. CPU burn hashes large
buffers (hashlib releases the GIL there), so N threads burn N cores of this
process without starving the event loop.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from faultlab.nodes.agent.faults import FaultError

PERIOD_S = 0.1
BALLAST_DIR = ".faultlab-ballast"
BALLAST_FILE_BYTES = 1 << 30
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


@dataclass
class Ballast:
    """Files in `<data_dir>/.faultlab-ballast` that fill the filesystem down to `leave_free` bytes."""

    directory: Path
    written: int = 0
    files: list[Path] = field(default_factory=list)

    @classmethod
    def fill(cls, data_dir: Path, leave_free: int) -> Ballast:
        data_dir.mkdir(parents=True, exist_ok=True)
        ballast = cls(data_dir / BALLAST_DIR)
        ballast.directory.mkdir(exist_ok=True)
        try:
            while (need := free_bytes(data_dir) - leave_free) > 0:
                size = min(need, BALLAST_FILE_BYTES)
                path = ballast.directory / f"ballast-{os.getpid()}-{len(ballast.files)}"
                ballast.files.append(path)
                ballast.written += _write_file(path, size)
                if free_bytes(data_dir) - leave_free >= need:  # no progress: give up rather than spin
                    break
        except BaseException:
            ballast.remove()
            raise
        return ballast

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
    """Bytes flipped in one file, with the originals kept so the corruption can be undone."""

    path: Path
    seed: int
    original: dict[int, int]
    flipped: dict[int, int]

    @classmethod
    def apply(cls, data_dir: Path, target: str, nbytes: int, seed: int) -> Corruption:
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
            original: dict[int, int] = {}
            flipped: dict[int, int] = {}
            for pos in positions:
                old = os.pread(f.fileno(), 1, pos)[0]
                new = old ^ rng.randrange(1, 256)
                os.pwrite(f.fileno(), bytes([new]), pos)
                original[pos], flipped[pos] = old, new
            os.fsync(f.fileno())
        return cls(path=path, seed=seed, original=original, flipped=flipped)

    @property
    def detail(self) -> str:
        offsets = ",".join(str(p) for p in self.original)
        return f"flipped {len(self.original)} byte(s) in {self.path} seed={self.seed} offsets=[{offsets}]"

    def restore(self) -> int:
        """Puts the original bytes back where the file still holds the flipped ones; returns how many."""
        restored = 0
        try:
            with open(self.path, "r+b") as f:
                size = os.fstat(f.fileno()).st_size
                for pos, old in self.original.items():
                    if pos < size and os.pread(f.fileno(), 1, pos)[0] == self.flipped[pos]:
                        os.pwrite(f.fileno(), bytes([old]), pos)
                        restored += 1
                os.fsync(f.fileno())
        except FileNotFoundError:
            pass
        return restored


def remove_stale_ballast(data_dir: Path) -> None:
    """Ballast left by a crashed process (whose fault can no longer be recovered) is removed at start."""
    shutil.rmtree(data_dir / BALLAST_DIR, ignore_errors=True)
