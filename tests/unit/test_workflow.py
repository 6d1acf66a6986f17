"""The kind e2e workflow: actionlint accepts it, and it does the steps the release depends on.

It cannot run here (no Docker engine); tools/actionlint.sh builds actionlint once from the
Go module proxy (cached in ~/.cache/faultlab/bin) and lints it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "e2e-kind.yml"


def steps() -> list[dict[str, Any]]:
    doc = yaml.safe_load(WORKFLOW.read_text())
    return list(doc["jobs"]["e2e"]["steps"])


def run_text() -> str:
    return "\n".join(str(step.get("run", "")) for step in steps())


def test_actionlint_accepts_the_workflows() -> None:
    if shutil.which("go") is None and not any((Path.home() / ".cache" / "faultlab" / "bin").glob("actionlint-*")):
        pytest.skip("actionlint is built with Go, which is not on PATH")
    proc = subprocess.run(["bash", str(ROOT / "tools" / "actionlint.sh")], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"actionlint:\n{proc.stdout}\n{proc.stderr}"


def test_workflow_builds_loads_installs_and_tests() -> None:
    text = run_text()
    uses = [str(step.get("uses", "")) for step in steps()]
    assert any(u.startswith("actions/checkout@") for u in uses)
    assert any(u.startswith("actions/setup-python@") for u in uses)
    assert any(u.startswith("actions/setup-go@") for u in uses)
    for needle in ("kind create cluster", "docker build -t", "kind load docker-image", "helm install",
                   "--set image.repository=", "--set image.tag=", "--wait", "tests/e2e"):
        assert needle in text, f"the workflow lacks `{needle}`"


def test_workflow_keeps_diagnostics_on_failure() -> None:
    on_failure = [step for step in steps() if step.get("if") == "failure()"]
    text = "\n".join(str(step.get("run", "")) for step in on_failure)
    for needle in ("logs", "get events -A", "describe raftclusters,chaosexperiments"):
        assert needle in text, f"on failure the workflow must collect `{needle}`"
    assert any(str(step.get("uses", "")).startswith("actions/upload-artifact@") for step in on_failure)
    cleanup = [step for step in steps() if step.get("if") == "always()"]
    assert any("kind delete cluster" in str(step.get("run", "")) for step in cleanup)
