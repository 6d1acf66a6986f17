"""The Helm chart's static checks (what chart-testing's `ct lint` does, without helm or a cluster).

Chart.yaml's required fields and semver version, yamllint on Chart.yaml and values.yaml
(ct's lint rules), values.schema.json covering every value with `additionalProperties:
false`, the README table listing every value, templates using only values that exist,
the chart's copies of crds/ and deploy/rbac/ in sync, and the NetworkPolicy matching
the labels and ports the operator gives node pods. `helm lint`/`helm template` run in
tests/k8s/test_helm.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "faultlab"
SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
# chart-testing's default lintconf.yaml.
YAMLLINT_CONFIG = """
rules:
  braces: {min-spaces-inside: 0, max-spaces-inside: 0, min-spaces-inside-empty: -1, max-spaces-inside-empty: -1}
  brackets: {min-spaces-inside: 0, max-spaces-inside: 0, min-spaces-inside-empty: -1, max-spaces-inside-empty: -1}
  colons: {max-spaces-before: 0, max-spaces-after: 1}
  commas: {max-spaces-before: 0, min-spaces-after: 1, max-spaces-after: 1}
  comments: {require-starting-space: true, min-spaces-from-content: 2}
  document-end: disable
  document-start: disable
  empty-lines: {max: 2, max-start: 0, max-end: 0}
  hyphens: {max-spaces-after: 1}
  indentation: {spaces: consistent, indent-sequences: whatever, check-multi-line-strings: false}
  key-duplicates: enable
  line-length: disable
  new-line-at-end-of-file: enable
  new-lines: {type: unix}
  trailing-spaces: enable
  truthy: {level: warning}
"""


def chart_meta() -> dict[str, Any]:
    return dict(yaml.safe_load((CHART / "Chart.yaml").read_text()))


def values() -> dict[str, Any]:
    return dict(yaml.safe_load((CHART / "values.yaml").read_text()))


def schema() -> dict[str, Any]:
    return dict(json.loads((CHART / "values.schema.json").read_text()))


# ---------------------------------------------------------------- Chart.yaml


def test_chart_yaml_has_required_fields() -> None:
    meta = chart_meta()
    assert meta.get("apiVersion") == "v2", "Chart.yaml: apiVersion must be v2 (Helm 3+)"
    assert meta.get("name") == CHART.name, f"Chart.yaml: name must be the folder's name {CHART.name!r}"
    assert meta.get("type", "application") == "application"
    for key in ("version", "appVersion", "description"):
        assert meta.get(key), f"Chart.yaml: {key} is required"
    assert isinstance(meta["appVersion"], str), "Chart.yaml: quote appVersion so YAML keeps it a string"


def test_chart_version_is_semver() -> None:
    version = str(chart_meta()["version"])
    assert SEMVER.match(version), f"Chart.yaml: version {version!r} is not SemVer 2 (MAJOR.MINOR.PATCH)"


def test_app_version_is_the_package_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert chart_meta()["appVersion"] == project, "Chart.yaml appVersion must equal pyproject's version"


def test_semver_pattern_rejects_what_helm_rejects() -> None:
    assert SEMVER.match("1.2.3-rc.1+build.5")
    for bad in ("1.2", "v1.2.3", "01.2.3", "1.2.3-"):
        assert not SEMVER.match(bad), bad


# ---------------------------------------------------------------- yamllint


@pytest.mark.parametrize("name", ["Chart.yaml", "values.yaml"])
def test_yamllint(name: str) -> None:
    yamllint = pytest.importorskip("yamllint", reason="yamllint is a dev dependency: pip install -e '.[dev]'")
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    assert yamllint
    problems = list(linter.run((CHART / name).read_text(), YamlLintConfig(YAMLLINT_CONFIG), str(CHART / name)))
    errors = [f"{name}:{p.line}:{p.column}: {p.message} ({p.rule})" for p in problems if p.level == "error"]
    assert not errors, "\n".join(errors)


# ---------------------------------------------------------------- values.schema.json


def resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), f"only local $refs are used: {ref}"
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        node = target
    return node


def object_schemas(node: Any, where: str = "$") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if node.get("type") == "object" or "properties" in node:
            yield where, node
        for key, child in node.items():
            yield from object_schemas(child, f"{where}.{key}")
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from object_schemas(child, f"{where}[{i}]")


def test_every_object_in_the_schema_closes_its_properties() -> None:
    open_ok = {"valueFrom", "nodeAffinity", "podAffinity", "podAntiAffinity"}  # Kubernetes objects, passed through
    for where, node in object_schemas(schema()):
        if where.rsplit(".", 1)[-1] in open_ok:
            continue
        assert "additionalProperties" in node, f"values.schema.json {where}: set additionalProperties"
        assert node["additionalProperties"] is not True, f"values.schema.json {where}: additionalProperties true"


TYPES: dict[str, type | tuple[type, ...]] = {
    "object": dict, "array": list, "string": str, "boolean": bool, "integer": int, "number": (int, float),
}


def check_value(value: Any, node: dict[str, Any], root: dict[str, Any], path: str) -> Iterator[str]:
    """Yields what is wrong with ``value`` under ``node`` (types, enums, patterns, unknown keys)."""
    node = resolve(node, root)
    if "anyOf" in node:
        if not any(not list(check_value(value, alt, root, path)) for alt in node["anyOf"]):
            yield f"{path}: {value!r} matches none of anyOf"
        return
    if "const" in node and value != node["const"]:
        yield f"{path}: {value!r} is not {node['const']!r}"
    kinds = node.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        ok = any(isinstance(value, TYPES[k]) and not (k in {"integer", "number"} and isinstance(value, bool))
                 for k in kinds)
        if not ok:
            yield f"{path}: {value!r} is not of type {kinds}"
            return
    if "enum" in node and value not in node["enum"]:
        yield f"{path}: {value!r} is not one of {node['enum']}"
    if "pattern" in node and isinstance(value, str) and not re.search(node["pattern"], value):
        yield f"{path}: {value!r} does not match {node['pattern']}"
    if isinstance(value, dict):
        props = node.get("properties", {})
        for key in node.get("required", []):
            if key not in value:
                yield f"{path}: {key} is required"
        for key, child in value.items():
            if key in props:
                yield from check_value(child, props[key], root, f"{path}.{key}")
            elif isinstance(node.get("additionalProperties"), dict):
                yield from check_value(child, node["additionalProperties"], root, f"{path}.{key}")
            elif node.get("additionalProperties") is False:
                yield f"{path}: {key} is not a known value"
    if isinstance(value, list) and "items" in node:
        for i, item in enumerate(value):
            yield from check_value(item, node["items"], root, f"{path}[{i}]")


def test_default_values_satisfy_the_schema() -> None:
    problems = list(check_value(values(), schema(), schema(), "values"))
    assert not problems, "\n".join(problems)


def test_schema_check_catches_unknown_keys_and_bad_types() -> None:
    bad = {**values(), "imagee": {}, "health": {"port": "8080"}, "watchNamespaces": ["Not_A_Name"]}
    problems = list(check_value(bad, schema(), schema(), "values"))
    assert any("imagee is not a known value" in p for p in problems), problems
    assert any("values.health.port" in p for p in problems), problems
    assert any("Not_A_Name" in p for p in problems), problems


def schema_leaves(node: dict[str, Any], root: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Dotted paths of the schema's own (non-$ref) properties: each is a value a user can set."""
    for key, child in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        if "$ref" not in child and child.get("type") == "object" and "properties" in child:
            yield from schema_leaves(child, root, path + ".")
        else:
            yield path


def value_leaves(node: Any, schema_node: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Dotted paths of values.yaml, descending where the schema has properties of its own (as schema_leaves)."""
    props = schema_node.get("properties", {}) if "$ref" not in schema_node else {}
    if isinstance(node, dict) and props:
        for key, child in node.items():
            yield from value_leaves(child, props.get(key, {}), f"{prefix}{key}.")
    else:
        yield prefix.rstrip(".")


def test_schema_and_values_name_the_same_keys() -> None:
    in_schema = set(schema_leaves(schema(), schema()))
    in_values = set(value_leaves(values(), schema()))
    assert in_values == in_schema, (
        f"values.yaml only: {sorted(in_values - in_schema)}; values.schema.json only: {sorted(in_schema - in_values)}"
    )


# ---------------------------------------------------------------- README and templates


def readme_keys() -> set[str]:
    return set(re.findall(r"^\| `([^`]+)` \|", (CHART / "README.md").read_text(), re.M))


def test_readme_table_lists_every_value() -> None:
    documented = readme_keys()
    keys = set(value_leaves(values(), schema()))
    assert keys <= documented, f"helm/faultlab/README.md lacks rows for {sorted(keys - documented)}"
    extra = sorted(documented - keys)
    assert not extra, f"helm/faultlab/README.md documents values that do not exist: {extra}"


def test_templates_use_only_existing_values() -> None:
    vals = values()
    for template in sorted((CHART / "templates").glob("*")):
        for ref in sorted(set(re.findall(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", template.read_text()))):
            node: Any = vals
            for part in ref.strip(".").split("."):
                assert isinstance(node, dict) and part in node, f"{template.name} uses .Values{ref}: not in values.yaml"
                node = node[part]


# ---------------------------------------------------------------- copies and coordination


def test_chart_copies_are_in_sync() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "sync_chart.py"), "--check"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_chart_crds_are_the_generated_ones() -> None:
    generated = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    in_chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert generated, "crds/ is empty"
    assert in_chart == generated, "helm/faultlab/crds differs from crds/: run `python tools/sync_chart.py`"


def test_sync_splits_cluster_scoped_resources() -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from sync_chart import split_rule
    finally:
        sys.path.remove(str(ROOT / "tools"))
    ns, cl = split_rule({"apiGroups": [""], "resources": ["pods", "nodes", "namespaces/status"], "verbs": ["get"]})
    assert ns == {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}
    assert cl == {"apiGroups": [""], "resources": ["nodes", "namespaces/status"], "verbs": ["get"]}
    assert split_rule({"nonResourceURLs": ["/metrics"], "verbs": ["get"]}) == (
        None, {"nonResourceURLs": ["/metrics"], "verbs": ["get"]})


def test_network_policy_selects_node_pods_as_the_operator_labels_them() -> None:
    from faultlab.operator.reconcile.builders import AGENT_PORT, GRPC_PORT, METRICS_PORT, common_labels

    text = (CHART / "templates" / "networkpolicy.yaml").read_text()
    selector = dict(re.findall(r"^ {6}(app\.kubernetes\.io/[a-z-]+): ([\w-]+)$", text, re.M))
    assert selector, "networkpolicy.yaml: no node pod selector found"
    labels = common_labels("any")
    assert selector.items() <= labels.items(), f"node pods carry {labels}; the policy selects {selector}"
    ports = values()["networkPolicy"]["nodePorts"]
    assert ports == {"grpc": GRPC_PORT, "agent": AGENT_PORT, "metrics": METRICS_PORT}, \
        "nodePorts must match reconcile/builders.py"


def test_default_image_is_the_one_raft_clusters_default_to() -> None:
    from faultlab.operator.api.raftcluster import DEFAULT_IMAGE

    image = values()["image"]
    chart_image = f"{image['repository']}:{image['tag'] or chart_meta()['appVersion']}"
    assert chart_image == DEFAULT_IMAGE, "the operator and the node pods it makes must default to one image"


def test_deployment_passes_only_flags_the_operator_command_has() -> None:
    from faultlab.operator.reconcile.commands import run_cmd

    known = {opt for param in run_cmd.params for opt in param.opts}
    text = (CHART / "templates" / "deployment.yaml").read_text()
    used = set(re.findall(r"^\s+- (--[a-z][a-z-]*)", text, re.M))
    assert used, "deployment.yaml passes no flags?"
    assert used <= known, f"`faultlab operator run` has no {sorted(used - known)} (it has {sorted(known)})"
