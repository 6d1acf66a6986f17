"""Value types exchanged between the Raft core, its shell and its peers.

Everything here is plain data (slotted dataclasses and int enums) so the shell
can map it to protobuf and the simulator can pass it around without copies.
Entries and messages are treated as immutable once built: the core shares
``Entry`` objects between its log, outgoing messages and ``Ready`` batches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import IntEnum

__all__ = [
    "ConfChange",
    "ConfChangeType",
    "ConfState",
    "Entry",
    "EntryType",
    "HardState",
    "Message",
    "MsgType",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SnapshotMeta",
]


class EntryType(IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1


@dataclass(slots=True)
class Entry:
    """One log entry. The leader's no-op is a NORMAL entry with empty ``data``."""

    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


class ConfChangeType(IntEnum):
    ADD_LEARNER = 0
    PROMOTE_LEARNER = 1
    REMOVE_MEMBER = 2
    ADD_VOTER = 3


@dataclass(slots=True)
class ConfChange:
    """A single-member change, stored as the data of a CONF_CHANGE entry."""

    type: ConfChangeType
    node_id: str
    address: str = ""

    def encode(self) -> bytes:
        return json.dumps([int(self.type), self.node_id, self.address], separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        try:
            kind, node_id, address = json.loads(data)
            return cls(ConfChangeType(kind), str(node_id), str(address))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not a conf change: {data!r} ({exc})") from exc


@dataclass(slots=True)
class HardState:
    """What must be durable before any message of the same Ready is sent."""

    term: int = 0
    vote: str = ""
    commit: int = 0


@dataclass(slots=True)
class ConfState:
    voters: tuple[str, ...]
    learners: tuple[str, ...] = ()


@dataclass(slots=True)
class SnapshotMeta:
    index: int
    term: int
    conf: ConfState


@dataclass(slots=True)
class Snapshot:
    meta: SnapshotMeta
    data: bytes


class MsgType(IntEnum):
    HUP = 0
    VOTE = 1
    VOTE_RESP = 2
    PRE_VOTE = 3
    PRE_VOTE_RESP = 4
    APP = 5
    APP_RESP = 6
    HEARTBEAT = 7
    HEARTBEAT_RESP = 8
    SNAP = 9
    TIMEOUT_NOW = 10
    READ_INDEX = 11
    READ_INDEX_RESP = 12
    PROP = 13


@dataclass(slots=True)
class Message:
    """A peer-to-peer message.

    APP: ``index``/``log_term`` name the entry preceding ``entries``. APP_RESP:
    ``index`` is the last matching index, or the rejected ``index`` with the
    follower's hint in ``reject_hint``/``log_term``. HEARTBEAT/HEARTBEAT_RESP:
    ``index`` carries the leader's read-index round, echoed back. VOTE and
    PRE_VOTE: ``index``/``log_term`` describe the candidate's last entry;
    ``context`` is ``b"transfer"`` for a campaign started by TIMEOUT_NOW.
    """

    type: MsgType
    frm: str
    to: str
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: list[Entry] = field(default_factory=list)
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    context: bytes = b""


@dataclass(slots=True)
class ReadState:
    """A confirmed ReadIndex: serve the read with ``context`` once applied >= ``index``."""

    index: int
    context: bytes


class Role(IntEnum):
    """A learner is a FOLLOWER that is not among the voters."""

    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


@dataclass(slots=True)
class Ready:
    """One batch of work for the shell, handled in this order.

    1. persist ``snapshot`` (replacing the log), ``entries`` (overwriting any
       suffix from ``entries[0].index``) and ``hard_state`` atomically;
    2. send ``messages``;
    3. install ``snapshot`` into the state machine, then apply
       ``committed_entries`` in order (CONF_CHANGE entries and NORMAL entries
       with empty data carry no command);
    4. serve ``read_states`` once applied >= their index; fail the reads in
       ``dropped_reads`` (leadership was lost before they were confirmed);
    5. call ``advance(ready)``.
    """

    hard_state: HardState | None
    entries: list[Entry]
    snapshot: Snapshot | None
    messages: list[Message]
    committed_entries: list[Entry]
    read_states: list[ReadState]
    leader_id: str
    role: Role
    term: int
    dropped_reads: list[bytes] = field(default_factory=list)
