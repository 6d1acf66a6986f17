"""`faultlab-node` flags: where the agent token comes from (never needed on the command line)."""

from __future__ import annotations

from pathlib import Path

import pytest

from faultlab.nodes.common.main import agent_token, build_parser


def test_token_file_is_read_and_stripped(tmp_path: Path) -> None:
    path = tmp_path / "agent-token"
    path.write_text("s3cret\n")
    assert agent_token("", str(path)) == "s3cret"


def test_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAULTLAB_AGENT_TOKEN", "from-env")
    args = build_parser().parse_args(["raft", "--id", "n1", "--data-dir", "/tmp/x"])
    assert agent_token(args.agent_token, args.agent_token_file) == "from-env"


@pytest.mark.parametrize(("content", "message"), [(None, "cannot read it"), ("\n", "is empty")])
def test_bad_token_file_is_an_error_naming_it(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "agent-token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exc:
        agent_token("", str(path))
    assert str(path) in str(exc.value) and message in str(exc.value)


def test_token_and_token_file_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="not both"):
        agent_token("a", str(tmp_path / "agent-token"))


def test_bad_disk_fill_floor_is_refused_at_start(tmp_path: Path) -> None:
    from faultlab.nodes.common.main import main

    with pytest.raises(SystemExit) as exc:
        main(["echo", "--id", "n1", "--data-dir", str(tmp_path), "--peers", "n1=127.0.0.1:1",
              "--disk-fill-floor", "lots"])
    assert "--disk-fill-floor" in str(exc.value) and "2GiB" in str(exc.value)


def test_disk_fill_floor_defaults_to_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAULTLAB_DISK_FILL_FLOOR", raising=False)
    assert build_parser().parse_args(["raft", "--id", "n1"]).disk_fill_floor == "auto"
    monkeypatch.setenv("FAULTLAB_DISK_FILL_FLOOR", "0")
    assert build_parser().parse_args(["raft", "--id", "n1"]).disk_fill_floor == "0"


def test_agent_listen_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAULTLAB_AGENT_LISTEN", raising=False)
    assert build_parser().parse_args(["raft", "--id", "n1"]).agent_listen == ""
    monkeypatch.setenv("FAULTLAB_AGENT_LISTEN", "0.0.0.0:7001")
    assert build_parser().parse_args(["raft", "--id", "n1"]).agent_listen == "0.0.0.0:7001"


@pytest.mark.parametrize(("agent_listen", "message"), [
    ("7001", "host:port"), ("0.0.0.0:http", "host:port"), ("0.0.0.0:70000", "host:port"),
    ("0.0.0.0:7000", "a port of its own"), ("127.0.0.1:7000", "a port of its own"),
])
def test_a_bad_agent_listen_is_refused_at_start(tmp_path: Path, agent_listen: str, message: str) -> None:
    from faultlab.nodes.common.main import main

    with pytest.raises(SystemExit) as exc:
        main(["echo", "--id", "n1", "--data-dir", str(tmp_path), "--listen", "0.0.0.0:7000",
              "--peers", "n1=127.0.0.1:7000", "--agent-listen", agent_listen])
    assert f"--agent-listen {agent_listen}" in str(exc.value) and message in str(exc.value)
