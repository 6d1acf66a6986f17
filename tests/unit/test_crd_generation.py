"""CRDs generated from the models: structural, in sync with crds/, carrying the Kubernetes-only parts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from faultlab.operator.api.crd import all_crds, crd

ROOT = Path(__file__).resolve().parents[2]


def walk(node: Any, path: str = ""):  # type: ignore[no-untyped-def]
    if isinstance(node, dict):
        yield path, node
        for key in ("properties",):
            for name, sub in node.get(key, {}).items():
                yield from walk(sub, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            yield from walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            yield from walk(node["additionalProperties"], f"{path}{{}}")


def test_committed_crds_are_in_sync() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_crds.py"), "--check"], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr


def test_schemas_are_structural() -> None:
    for name, obj in all_crds().items():
        schema = obj["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for where, node in walk(schema):
            assert "$ref" not in node and "anyOf" not in node and "oneOf" not in node and "const" not in node, \
                f"{name}{where}"
            assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{name}{where}: no type"
            assert not ("properties" in node and "additionalProperties" in node), f"{name}{where}"
            assert "title" not in node
            if "exclusiveMinimum" in node:
                assert isinstance(node["exclusiveMinimum"], bool)


def test_descriptions_defaults_and_required() -> None:
    schema = crd("RaftCluster")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]
    assert schema["required"] == ["spec"]
    assert spec["required"] == ["replicas"] and "default" not in spec["properties"]["replicas"]
    assert spec["properties"]["timings"]["default"] == {"tickMs": 20, "electionTicks": 10, "heartbeatTicks": 1}
    assert spec["properties"]["timings"]["properties"]["tickMs"]["default"] == 20
    for where, node in walk(spec):
        if where and not where.endswith(("{}", "[]")):
            assert node.get("description"), f"spec{where} has no description"
    status = schema["properties"]["status"]
    assert all("default" not in node for _, node in walk(status)), "status carries no defaults"
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map" and conditions["x-kubernetes-list-map-keys"] == ["type"]
    chaos = crd("ChaosExperiment")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert chaos["properties"]["checks"]["default"]  # from a default factory


def test_names_columns_subresources() -> None:
    rc = crd("RaftCluster")["spec"]
    assert rc["names"]["shortNames"] == ["raft"] and rc["names"]["categories"] == ["faultlab"]
    version = rc["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == \
        ["Replicas", "Ready", "Leader", "Term", "Phase", "Age"]
    chaos = crd("ChaosExperiment")["spec"]
    assert chaos["names"]["shortNames"] == ["chaos"]
    assert [c["name"] for c in chaos["versions"][0]["additionalPrinterColumns"]] == \
        ["Target", "Phase", "Verdict", "Availability", "MTTR", "Age"]


def test_cel_rules_present() -> None:
    rc = crd("RaftCluster")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = rc["properties"]["timings"]["x-kubernetes-validations"]
    assert rules[0]["rule"] == "self.heartbeatTicks < self.electionTicks"
    chaos = crd("ChaosExperiment")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert any("allowQuorumLoss" in r["rule"] for r in chaos["x-kubernetes-validations"])


def test_yaml_files_parse() -> None:
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        assert doc["kind"] == "CustomResourceDefinition"
