"""Packaging: the folder -> import-name mapping works in place, as a wheel, and never shadows `operator`."""

from __future__ import annotations

import operator
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("faultlab.operator", "faultlab.nodes", "faultlab.protos")


def test_stdlib_operator_wins_inside_pytest() -> None:
    assert Path(operator.__file__).parent == Path(sysconfig.get_paths()["stdlib"])
    assert operator.itemgetter(1)("ab") == "b"


def test_stdlib_operator_wins_from_repository_root() -> None:
    code = "import operator, faultlab.operator.cli; print(operator.__file__)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert Path(result.stdout.strip()).parent == Path(sysconfig.get_paths()["stdlib"])


def test_operator_folder_has_no_init() -> None:
    assert not (ROOT / "operator" / "__init__.py").exists(), "operator/__init__.py would shadow the stdlib"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(ROOT)], check=True, cwd=ROOT)
    return next(out.glob("faultlab-*.whl"))


def test_wheel_contains_every_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    for folder in ("faultlab/operator/cli.py", "faultlab/nodes/common/main.py", "faultlab/protos/raft/v1/raft_pb2.py",
                   "faultlab/protos/raft/v1/raft_pb2.pyi"):
        assert folder in names
    assert not any(n.startswith(("operator/", "nodes/", "tests/")) for n in names)


def test_wheel_imports_outside_source_tree(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    deps = sysconfig.get_paths()["purelib"]  # this venv's dependencies; its editable .pth is not processed
    code = ("import faultlab.operator.cli, faultlab.nodes.common.main, faultlab.protos.raft.v1.raft_pb2 as p;"
            "import faultlab.operator as o; print(list(o.__path__)[0])")
    out = subprocess.run([str(python), "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": deps, "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(site), f"imported from {out.stdout!r}, not the wheel"
