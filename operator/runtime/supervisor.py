"""A tiny process supervisor: runs one node command, restarts it when it exits, stops on SIGTERM.

`python -m faultlab.operator.runtime.supervisor --state FILE --log FILE -- CMD...`

The local runtime starts one per member. The node's current pid, its restart count
and start time are written (atomically) as JSON to `--state`, so `kill` hits the node,
not the supervisor, and the supervisor brings it back with exponential backoff (reset
after the node has run for a while), as a kubelet would with restartPolicy Always.
On SIGTERM/SIGINT it resumes and terminates the node, SIGKILLs it after `--grace`
seconds, records `stopped` and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

POLL_S = 0.05
MIN_BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0
STABLE_AFTER_S = 10.0


def write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def read_state(path: Path) -> dict[str, Any] | None:
    """The state a supervisor wrote, or None if there is none (yet)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _log(log_file: Any, message: str) -> None:
    log_file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [supervisor] {message}\n")
    log_file.flush()


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def supervise(cmd: list[str], state_path: Path, log_path: Path, grace_s: float) -> int:
    stop = threading.Event()

    def on_stop(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    restarts = 0
    backoff = MIN_BACKOFF_S
    with open(log_path, "a", buffering=1) as log_file:
        while not stop.is_set():
            started = time.time()
            child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
            write_state(state_path, {"pid": child.pid, "supervisor": os.getpid(), "restarts": restarts,
                                     "startedAt": started, "stopped": False})
            while child.poll() is None and not stop.wait(POLL_S):
                pass
            if stop.is_set():
                _signal(child.pid, signal.SIGCONT)  # a paused node cannot handle SIGTERM
                _signal(child.pid, signal.SIGTERM)
                try:
                    child.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    _log(log_file, f"node {child.pid} did not stop within {grace_s:g}s; SIGKILL")
                    child.kill()
                    child.wait()
                break
            ran = time.time() - started
            if ran >= STABLE_AFTER_S:
                backoff = MIN_BACKOFF_S
            code = child.returncode
            how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
            _log(log_file, f"node {child.pid} {how} after {ran:.1f}s; restarting in {backoff:.1f}s")
            restarts += 1
            if stop.wait(backoff):
                break
            backoff = min(backoff * 2, MAX_BACKOFF_S)
        write_state(state_path, {"pid": None, "supervisor": os.getpid(), "restarts": restarts,
                                 "startedAt": None, "stopped": True})
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="faultlab-supervisor", description=__doc__.splitlines()[0])
    parser.add_argument("--state", required=True, type=Path, help="JSON file with the node's current pid")
    parser.add_argument("--log", required=True, type=Path, help="the node's log (appended)")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds between SIGTERM and SIGKILL on stop")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- the node command")
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("no command given after --")
    sys.exit(supervise(cmd, args.state, args.log, args.grace))


if __name__ == "__main__":
    main()
