"""Process-wide switches the fault agent flips and the storage layer obeys.

Kept here (not in the agent) so storage code depends on a tiny flag holder,
never on the agent itself.
"""

from __future__ import annotations

import errno
import os


class DiskFaults:
    """Fails the storage layer's writes with ENOSPC while `enospc` is set."""

    def __init__(self) -> None:
        self.enospc = False

    def check_write(self, path: str | os.PathLike[str]) -> None:
        if self.enospc:
            raise OSError(errno.ENOSPC, "No space left on device (injected by the fault agent)", str(path))


DISK = DiskFaults()
