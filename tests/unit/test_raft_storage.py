"""WAL, snapshots and hard state: reload, fsync points, torn tails, corruption, atomic snapshots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from faultlab.nodes.common.faults import DISK
from faultlab.nodes.raft.messages import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from faultlab.nodes.raft.storage import CorruptionError, RaftStorage, read_snapshot_file


def entries(first: int, last: int, term: int = 1) -> list[Entry]:
    return [Entry(term, i, data=f"v{i}".encode()) for i in range(first, last + 1)]


def snap(index: int, term: int = 1, data: bytes = b"state") -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, ConfState(("n1", "n2"), ("n3",))), data)


def reopen(d: Path, **kw) -> RaftStorage:
    return RaftStorage(d, **kw)


def test_append_and_reload(tmp_path: Path) -> None:
    st = RaftStorage(tmp_path)
    st.load()
    st.save(HardState(1, "n1", 0), entries(1, 5))
    st.save(HardState(1, "n1", 3), entries(6, 8))
    st.close()
    loaded = reopen(tmp_path).load()
    assert [e.index for e in loaded.entries] == list(range(1, 9))
    assert loaded.entries[4].data == b"v5"
    assert loaded.hard_state == HardState(1, "n1", 3)
    assert loaded.torn_tail == ""
    assert (tmp_path / "wal" / "0000000000000001.wal").exists()


def test_overwrite_suffix_on_conflict(tmp_path: Path) -> None:
    st = RaftStorage(tmp_path)
    st.load()
    st.save(HardState(1, "n1", 0), entries(1, 5, term=1))
    st.save(HardState(2, "n2", 0), entries(3, 4, term=2))
    st.close()
    loaded = reopen(tmp_path).load()
    assert [(e.index, e.term) for e in loaded.entries] == [(1, 1), (2, 1), (3, 2), (4, 2)]


def test_one_fsync_per_save_and_hard_state_only_save_fsyncs(tmp_path: Path) -> None:
    synced: list[float] = []
    st = RaftStorage(tmp_path, on_fsync=synced.append)
    st.load()
    st.save(HardState(1, "", 0), entries(1, 100))
    assert len(synced) == 1
    st.save(HardState(2, "n2", 0), [])
    assert len(synced) == 2
    st.save(HardState(2, "n2", 0), [])
    assert len(synced) == 2, "an unchanged hard state needs no write"


def test_segments_rotate_and_reload(tmp_path: Path) -> None:
    st = RaftStorage(tmp_path, segment_bytes=512)
    st.load()
    for i in range(1, 60):
        st.save(HardState(1, "n1", i - 1), entries(i, i))
    st.close()
    assert len(list((tmp_path / "wal").glob("*.wal"))) > 3
    loaded = reopen(tmp_path, segment_bytes=512).load()
    assert [e.index for e in loaded.entries] == list(range(1, 60))
    assert loaded.hard_state.commit == 58


def test_torn_tail_is_truncated(tmp_path: Path) -> None:
    st = RaftStorage(tmp_path)
    st.load()
    st.save(HardState(1, "n1", 0), entries(1, 3))
    st.save(HardState(1, "n1", 0), entries(4, 6))
    st.close()
    seg = tmp_path / "wal" / "0000000000000001.wal"
    size = seg.stat().st_size
    with open(seg, "r+b") as f:
        f.truncate(size - 5)
    loaded = reopen(tmp_path).load()
    assert [e.index for e in loaded.entries] == [1, 2, 3]
    assert "torn tail" in loaded.torn_tail
    assert seg.stat().st_size < size - 5
    # appending after recovery works and survives another reload
    st2 = reopen(tmp_path)
    st2.load()
    st2.save(None, entries(4, 4, term=2))
    st2.close()
    assert [e.index for e in reopen(tmp_path).load().entries] == [1, 2, 3, 4]


def test_garbage_tail_is_truncated(tmp_path: Path) -> None:
    st = RaftStorage(tmp_path)
    st.load()
    st.save(HardState(1, "n1", 0), entries(1, 3))
    st.close()
    seg = tmp_path / "wal" / "0000000000000001.wal"
    with open(seg, "ab") as f:
        f.write(b"\x00" * 100)
    assert [e.index for e in reopen(tmp_path).load().entries] == [1, 2, 3]


def test_mid_log_corruption_names_file_and_offset(tmp_path: Path) -> None:
    st = RaftStorage(tmp_path)
    st.load()
    st.save(HardState(1, "n1", 0), entries(1, 3))
    offset = (tmp_path / "wal" / "0000000000000001.wal").stat().st_size
    st.save(HardState(1, "n1", 1), entries(4, 6))
    st.save(HardState(1, "n1", 2), entries(7, 9))
    st.close()
    seg = tmp_path / "wal" / "0000000000000001.wal"
    with open(seg, "r+b") as f:
        f.seek(offset + 20)
        b = f.read(1)
        f.seek(offset + 20)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(CorruptionError) as err:
        reopen(tmp_path).load()
    msg = str(err.value)
    assert str(seg) in msg and f"offset {offset}" in msg


def test_corruption_in_non_last_segment_is_an_error(tmp_path: Path) -> None:
    st = RaftStorage(tmp_path, segment_bytes=256)
    st.load()
    for i in range(1, 30):
        st.save(HardState(1, "n1", 0), entries(i, i))
    st.close()
    first = tmp_path / "wal" / "0000000000000001.wal"
    with open(first, "r+b") as f:
        f.truncate(first.stat().st_size - 3)
    with pytest.raises(CorruptionError, match=r"0000000000000001\.wal"):
        reopen(tmp_path, segment_bytes=256).load()


def test_snapshot_atomic_checksum_and_compaction(tmp_path: Path) -> None:
    st = RaftStorage(tmp_path, segment_bytes=256)
    st.load()
    for i in range(1, 40):
        st.save(HardState(1, "n1", i), entries(i, i))
    before = len(list((tmp_path / "wal").glob("*.wal")))
    path = st.save_snapshot(snap(20, data=b"sm@20"))
    st.save_snapshot(snap(30, data=b"sm@30"))
    st.close()
    assert not list((tmp_path / "snap").glob(".tmp-*"))
    assert read_snapshot_file(path).data == b"sm@20"
    assert len(list((tmp_path / "wal").glob("*.wal"))) < before
    loaded = reopen(tmp_path, segment_bytes=256).load()
    assert loaded.snapshot is not None and loaded.snapshot.meta.index == 30
    assert loaded.snapshot.meta.conf == ConfState(("n1", "n2"), ("n3",))
    assert [e.index for e in loaded.entries] == list(range(31, 40))


def test_corrupt_snapshot_detected_and_older_one_used(tmp_path: Path) -> None:
    st = RaftStorage(tmp_path)
    st.load()
    st.save(HardState(1, "n1", 10), entries(1, 10))
    st.save_snapshot(snap(5, data=b"five"))
    newest = st.save_snapshot(snap(8, data=b"eight"))
    st.close()
    raw = bytearray(newest.read_bytes())
    raw[-2] ^= 0x01
    newest.write_bytes(bytes(raw))
    with pytest.raises(CorruptionError, match="checksum"):
        read_snapshot_file(newest)
    loaded = reopen(tmp_path).load()
    assert loaded.snapshot is not None and loaded.snapshot.meta.index == 5
    assert [e.index for e in loaded.entries] == list(range(6, 11))
    assert any("checksum" in w for w in loaded.warnings)


def test_installed_snapshot_resets_log(tmp_path: Path) -> None:
    st = RaftStorage(tmp_path)
    st.load()
    st.save(HardState(1, "n1", 2), entries(1, 5, term=1))
    st.save(HardState(3, "", 50), [], snap(50, term=3))
    st.save(None, [Entry(3, 51, data=b"x")])
    st.close()
    loaded = reopen(tmp_path).load()
    assert loaded.snapshot is not None and loaded.snapshot.meta.index == 50
    assert [e.index for e in loaded.entries] == [51]
    assert loaded.hard_state.commit == 50


def test_enospc_refuses_write_then_recovers(tmp_path: Path) -> None:
    st = RaftStorage(tmp_path)
    st.load()
    st.save(HardState(1, "n1", 0), entries(1, 2))
    DISK.enospc = True
    try:
        with pytest.raises(OSError) as err:
            st.save(HardState(1, "n1", 1), entries(3, 4))
        assert err.value.errno == 28
    finally:
        DISK.enospc = False
    st.save(HardState(1, "n1", 1), entries(3, 4))
    st.close()
    assert [e.index for e in reopen(tmp_path).load().entries] == [1, 2, 3, 4]


def test_missing_middle_segment_is_an_error(tmp_path: Path) -> None:
    st = RaftStorage(tmp_path, segment_bytes=200)
    st.load()
    for i in range(1, 20):
        st.save(HardState(1, "n1", 0), entries(i, i))
    st.close()
    os.unlink(tmp_path / "wal" / "0000000000000002.wal")
    with pytest.raises(CorruptionError, match="missing"):
        reopen(tmp_path, segment_bytes=200).load()
