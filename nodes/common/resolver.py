"""Peer resolver: turns the host names a node is given into addresses it dials.

On Kubernetes, DNS does this. Where there is no DNS for pod names (local runtime,
the test kubelet), `FAULTLAB_HOSTS_FILE` names a hosts-format file
(`<ip> <name> [<name>...]` per line) that is re-read when it changes.
"""

from __future__ import annotations

import os
from pathlib import Path

HOSTS_FILE_ENV = "FAULTLAB_HOSTS_FILE"


class PeerResolver:
    def __init__(self, hosts_file: str | None = None) -> None:
        path = hosts_file if hosts_file is not None else os.environ.get(HOSTS_FILE_ENV, "")
        self._path = Path(path) if path else None
        self._mtime = -1.0
        self._hosts: dict[str, str] = {}

    def _reload(self) -> None:
        if self._path is None:
            return
        try:
            mtime = self._path.stat().st_mtime
        except FileNotFoundError:
            return
        if mtime == self._mtime:
            return
        hosts: dict[str, str] = {}
        for line in self._path.read_text().splitlines():
            fields = line.split("#", 1)[0].split()
            for name in fields[1:]:
                hosts[name] = fields[0]
        self._hosts, self._mtime = hosts, mtime

    def resolve(self, address: str) -> str:
        """`host:port` with the host replaced by its override, if the hosts file has one."""
        host, sep, port = address.rpartition(":")
        if not sep:
            return address
        self._reload()
        return f"{self._hosts.get(host, host)}:{port}"


def parse_peers(spec: str) -> dict[str, str]:
    """Parses `id=host:port,id=host:port` into {id: address}; raises ValueError naming the bad part."""
    peers: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        node_id, sep, address = part.partition("=")
        if not sep or not node_id or ":" not in address:
            raise ValueError(f"--peers: {part!r} is not id=host:port (example: n1=127.0.0.1:7001)")
        peers[node_id] = address
    return peers
