"""The node's clock: every lease, timeout and timestamp in a node reads time here.

The fault agent skews it (offset and drift) to inject clock faults; nothing in a
node calls `time.monotonic()`/`time.time()` directly.
"""

from __future__ import annotations

import threading
import time


class Clock:
    """Monotonic and wall time with an injectable offset and drift (clock-skew faults)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._offset = 0.0
        self._drift = 0.0
        self._anchor = time.monotonic()

    def _skew(self, now: float) -> float:
        return self._offset + (now - self._anchor) * self._drift

    def monotonic(self) -> float:
        now = time.monotonic()
        return now + self._skew(now)

    def time(self) -> float:
        return time.time() + self._skew(time.monotonic())

    def rate(self) -> float:
        """How fast this clock runs relative to real time (1.0 unskewed)."""
        return 1.0 + self._drift

    def set_skew(self, offset_s: float, drift_ppm: float) -> None:
        with self._lock:
            now = time.monotonic()
            self._anchor = now
            self._offset = offset_s
            self._drift = drift_ppm / 1e6

    def reset(self) -> None:
        self.set_skew(0.0, 0.0)

    @property
    def skewed(self) -> bool:
        return self._offset != 0.0 or self._drift != 0.0


CLOCK = Clock()
