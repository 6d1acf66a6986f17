"""docs/chaos-reference.md is generated from the ChaosExperiment models and names every field and param."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from faultlab.operator.api import chaos

ROOT = Path(__file__).resolve().parents[2]


def test_committed_reference_is_in_sync() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_docs.py"), "--check"], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr


def test_reference_documents_every_fault_type_and_param() -> None:
    text = (ROOT / "docs" / "chaos-reference.md").read_text()
    for fault_type, params in chaos.FAULT_PARAMS.items():
        section = text.split(f"### `{fault_type}`\n", 1)[1].split("\n### ", 1)[0]
        assert chaos.FAULT_SUMMARIES.get(fault_type), f"{fault_type} has no summary"
        for key, p in params.items():
            assert f"| `{key}` |" in section, f"{fault_type}.{key} missing from the reference"
            assert p.doc, f"{fault_type}.{key} has no doc text"
    for field in ("spec.paused", "spec.dryRun", "spec.steadyState.probes[].type", "spec.rollout.steps[].holdSeconds"):
        assert f"| `{field}` |" in text
