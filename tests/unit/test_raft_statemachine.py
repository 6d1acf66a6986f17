"""The KV state machine: commands, at-most-once sessions, snapshots."""

from __future__ import annotations

from faultlab.nodes.raft.statemachine import (
    OP_CAS,
    OP_DELETE,
    OP_PUT,
    CasResult,
    Command,
    CommandError,
    DeleteResult,
    KVStateMachine,
    PutResult,
    decode_command,
    encode_put,
)


def test_commands_roundtrip() -> None:
    for cmd in (Command(OP_PUT, b"k", b"v", "c1", 7), Command(OP_DELETE, b"k"),
                Command(OP_CAS, b"k", b"new", "c", 2, True, b"old"), Command(OP_CAS, b"", b"", "", 0, False, b"")):
        assert decode_command(cmd.encode()) == cmd
    assert encode_put(b"k", b"v", "c1", 7) == Command(OP_PUT, b"k", b"v", "c1", 7).encode()


def test_put_get_delete_cas_range() -> None:
    sm = KVStateMachine()
    assert sm.apply(1, Command(OP_PUT, b"a/1", b"x").encode()) == PutResult(False, b"")
    assert sm.apply(2, Command(OP_PUT, b"a/1", b"y").encode()) == PutResult(True, b"x")
    sm.apply(3, Command(OP_PUT, b"a/2", b"z").encode())
    sm.apply(4, Command(OP_PUT, b"b", b"w").encode())
    assert sm.get(b"a/1") == b"y"
    assert sm.range(b"a/") == ([(b"a/1", b"y"), (b"a/2", b"z")], False)
    assert sm.range(b"", 2) == ([(b"a/1", b"y"), (b"a/2", b"z")], True)
    assert sm.apply(5, Command(OP_CAS, b"a/1", b"q", expect_found=True, expected=b"nope").encode()) == \
        CasResult(False, True, b"y")
    assert sm.apply(6, Command(OP_CAS, b"a/1", b"q", expect_found=True, expected=b"y").encode()) == \
        CasResult(True, True, b"y")
    assert sm.apply(7, Command(OP_CAS, b"new", b"1", expect_found=False).encode()).succeeded
    assert sm.apply(8, Command(OP_DELETE, b"a/2").encode()) == DeleteResult(True)
    assert sm.apply(9, Command(OP_DELETE, b"a/2").encode()) == DeleteResult(False)
    assert sm.applied_index == 9


def test_session_applies_once_and_returns_cached_result() -> None:
    sm = KVStateMachine()
    sm.apply(1, Command(OP_PUT, b"k", b"v0").encode())
    put = Command(OP_PUT, b"k", b"v1", "client-a", 1).encode()
    first = sm.apply(2, put)
    sm.apply(3, Command(OP_PUT, b"k", b"other").encode())
    assert sm.apply(4, put) == first == PutResult(True, b"v0")
    assert sm.get(b"k") == b"other", "the retried put must not apply again"
    cas = Command(OP_CAS, b"n", b"1", "client-a", 2, False, b"").encode()
    assert sm.apply(5, cas).succeeded
    assert sm.apply(6, cas).succeeded, "the retry returns the first (successful) result"
    stale = sm.apply(7, put)
    assert isinstance(stale, CommandError) and stale.code == "stale"


def test_no_session_applies_as_sent() -> None:
    sm = KVStateMachine()
    cas = Command(OP_CAS, b"k", b"1", expect_found=False).encode()
    assert sm.apply(1, cas).succeeded
    assert not sm.apply(2, cas).succeeded


def test_snapshot_restore_keeps_data_and_sessions() -> None:
    sm = KVStateMachine()
    for i in range(50):
        sm.apply(i + 1, Command(OP_PUT, f"k{i}".encode(), bytes(i), f"c{i % 5}", i + 1).encode())
    sm.apply(51, Command(OP_CAS, b"k1", b"x", "cas", 1, True, b"\x00").encode())
    other = KVStateMachine()
    other.restore(sm.snapshot())
    assert other.data == sm.data and other.sessions == sm.sessions and other.applied_index == 51
    assert other.apply(52, Command(OP_PUT, b"k3", b"again", "c4", 50).encode()) == sm.sessions["c4"][1]


def test_garbage_command_is_an_error_not_a_crash() -> None:
    assert isinstance(KVStateMachine().apply(1, b"\x09"), CommandError)
