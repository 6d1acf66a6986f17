"""The `faultlab` and `faultlab-node` commands: help lists the groups, nothing is a placeholder."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from faultlab.operator.cli import cli

GROUPS = ("up", "down", "status", "chaos", "demo", "operator", "version")


def test_help_lists_every_group() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in GROUPS:
        assert f"  {name} " in result.output, f"`faultlab --help` does not list {name}"


def test_no_command_is_a_placeholder() -> None:
    for name in GROUPS:
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0, result.output
        assert "not implemented" not in result.output.lower()


def test_version() -> None:
    result = CliRunner().invoke(cli, ["version"])
    assert result.exit_code == 0 and result.output.startswith("faultlab ")


def test_node_command_help_and_bad_peers() -> None:
    out = subprocess.run([sys.executable, "-m", "faultlab.nodes.common.main", "raft", "--help"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "--data-dir" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "faultlab.nodes.common.main", "raft", "--id", "n1",
                          "--data-dir", "/tmp/x", "--peers", "n1"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--peers" in bad.stderr
