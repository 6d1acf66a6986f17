"""What the Raft log drives: the StateMachine interface and the key-value state machine.

The node shell applies committed entries to a :class:`StateMachine`; the event
store reuses the shell with its own. :class:`KVStateMachine` holds bytes keys and
values and client sessions: a command carrying ``(client_id, sequence)`` is
applied at most once (the last sequence and its result are remembered per
client, so a retry returns the first result); a command without a session is
applied as sent.

Commands are encoded compactly (``struct``), not as protobuf:
``op u8 | sequence u64 | len u16 | client_id | len u32 | key | op fields``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Protocol

OP_PUT = 1
OP_DELETE = 2
OP_CAS = 3

_CMD = struct.Struct("<BQH")
_U32 = struct.Struct("<I")
_KV = struct.Struct("<II")
_SESSION = struct.Struct("<HQ")
SNAPSHOT_MAGIC = b"FLKV0001"


class StateMachine(Protocol):
    """A deterministic state machine fed by the Raft log."""

    def apply(self, entry_index: int, data: bytes) -> Any: ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class PutResult:
    prev_found: bool
    prev_value: bytes


@dataclass(frozen=True, slots=True)
class DeleteResult:
    deleted: bool


@dataclass(frozen=True, slots=True)
class CasResult:
    succeeded: bool
    found: bool
    current: bytes


@dataclass(frozen=True, slots=True)
class CommandError:
    """A command the state machine refused (deterministically, on every member)."""

    code: str
    message: str


Result = PutResult | DeleteResult | CasResult | CommandError


@dataclass(frozen=True, slots=True)
class Command:
    op: int
    key: bytes
    value: bytes = b""
    client_id: str = ""
    sequence: int = 0
    expect_found: bool = False
    expected: bytes = b""

    def encode(self) -> bytes:
        cid = self.client_id.encode()
        head = _CMD.pack(self.op, self.sequence, len(cid)) + cid + _U32.pack(len(self.key)) + self.key
        if self.op == OP_PUT:
            return head + self.value
        if self.op == OP_CAS:
            return head + struct.pack("<BI", self.expect_found, len(self.expected)) + self.expected + self.value
        return head


def encode_put(key: bytes, value: bytes, client_id: str = "", sequence: int = 0) -> bytes:
    cid = client_id.encode()
    return b"".join((_CMD.pack(OP_PUT, sequence, len(cid)), cid, _U32.pack(len(key)), key, value))


def decode_command(data: bytes) -> Command:
    op, seq, clen = _CMD.unpack_from(data, 0)
    off = _CMD.size
    cid = data[off:off + clen].decode()
    off += clen
    (klen,) = _U32.unpack_from(data, off)
    off += 4
    key = data[off:off + klen]
    off += klen
    if op == OP_PUT:
        return Command(op, key, data[off:], cid, seq)
    if op == OP_DELETE:
        return Command(op, key, b"", cid, seq)
    if op == OP_CAS:
        found, elen = struct.unpack_from("<BI", data, off)
        off += 5
        return Command(op, key, data[off + elen:], cid, seq, bool(found), data[off:off + elen])
    raise ValueError(f"unknown op {op}")


def _encode_result(r: Result) -> bytes:
    if isinstance(r, PutResult):
        return struct.pack("<BB", OP_PUT, r.prev_found) + r.prev_value
    if isinstance(r, DeleteResult):
        return struct.pack("<BB", OP_DELETE, r.deleted)
    if isinstance(r, CasResult):
        return struct.pack("<BBBI", OP_CAS, r.succeeded, r.found, len(r.current)) + r.current
    return b"\x00" + f"{r.code}\n{r.message}".encode()


def _decode_result(data: bytes) -> Result:
    op = data[0]
    if op == OP_PUT:
        return PutResult(bool(data[1]), data[2:])
    if op == OP_DELETE:
        return DeleteResult(bool(data[1]))
    if op == OP_CAS:
        _, ok, found, clen = struct.unpack_from("<BBBI", data, 0)
        return CasResult(bool(ok), bool(found), data[7:7 + clen])
    code, _, message = data[1:].decode().partition("\n")
    return CommandError(code, message)


class KVStateMachine:
    """Bytes -> bytes map with at-most-once client sessions."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        # client_id -> (last applied sequence, its result)
        self.sessions: dict[str, tuple[int, Result]] = {}
        self.applied_index = 0

    def apply(self, entry_index: int, data: bytes) -> Result:
        self.applied_index = entry_index
        try:
            cmd = decode_command(data)
        except (ValueError, struct.error, UnicodeDecodeError) as exc:
            return CommandError("invalid", f"undecodable command at index {entry_index}: {exc}")
        if cmd.client_id:
            last = self.sessions.get(cmd.client_id)
            if last is not None:
                if cmd.sequence == last[0]:
                    return last[1]
                if cmd.sequence < last[0]:
                    return CommandError("stale", f"session {cmd.client_id}: sequence {cmd.sequence} is older "
                                                 f"than the last applied {last[0]}")
        result = self._execute(cmd)
        if cmd.client_id:
            self.sessions[cmd.client_id] = (cmd.sequence, result)
        return result

    def _execute(self, cmd: Command) -> Result:
        data = self.data
        if cmd.op == OP_PUT:
            prev = data.get(cmd.key)
            data[cmd.key] = cmd.value
            return PutResult(prev is not None, prev or b"")
        if cmd.op == OP_DELETE:
            return DeleteResult(data.pop(cmd.key, None) is not None)
        current = data.get(cmd.key)
        ok = current == cmd.expected if cmd.expect_found else current is None
        if ok:
            data[cmd.key] = cmd.value
        return CasResult(ok, current is not None, current or b"")

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def range(self, prefix: bytes, limit: int = 0) -> tuple[list[tuple[bytes, bytes]], bool]:
        keys = sorted(k for k in self.data if k.startswith(prefix))
        more = bool(limit) and len(keys) > limit
        if more:
            keys = keys[:limit]
        return [(k, self.data[k]) for k in keys], more

    def snapshot(self) -> bytes:
        parts = [SNAPSHOT_MAGIC, struct.pack("<QQI", self.applied_index, len(self.data), len(self.sessions))]
        pack = _KV.pack
        for k, v in self.data.items():
            parts.append(pack(len(k), len(v)))
            parts.append(k)
            parts.append(v)
        for cid, (seq, result) in self.sessions.items():
            c = cid.encode()
            r = _encode_result(result)
            parts.append(_SESSION.pack(len(c), seq) + c + _U32.pack(len(r)) + r)
        return b"".join(parts)

    def restore(self, data: bytes) -> None:
        if data[:8] != SNAPSHOT_MAGIC:
            raise ValueError("not a KV state machine snapshot (bad magic)")
        applied, nkeys, nsessions = struct.unpack_from("<QQI", data, 8)
        off = 8 + 20
        kv: dict[bytes, bytes] = {}
        unpack = _KV.unpack_from
        for _ in range(nkeys):
            klen, vlen = unpack(data, off)
            off += 8
            kv[data[off:off + klen]] = data[off + klen:off + klen + vlen]
            off += klen + vlen
        sessions: dict[str, tuple[int, Result]] = {}
        for _ in range(nsessions):
            clen, seq = _SESSION.unpack_from(data, off)
            off += _SESSION.size
            cid = data[off:off + clen].decode()
            off += clen
            (rlen,) = _U32.unpack_from(data, off)
            off += 4
            sessions[cid] = (seq, _decode_result(data[off:off + rlen]))
            off += rlen
        self.data, self.sessions, self.applied_index = kv, sessions, applied
