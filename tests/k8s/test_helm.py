"""The Helm chart against helm and a real kube-apiserver.

`helm lint --strict`, schema violations rejected with a readable message, both RBAC
modes rendered with `--include-crds` and accepted by `kubectl apply --dry-run=server`
(CRDs applied for real first), the granted permissions checked with `kubectl auth can-i`,
and the operator's pod admitted by a namespace enforcing the `restricted` Pod Security
Standard.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from faultlab.operator.api.common import load_resources
from tests.support import chart_rbac
from tests.support.chart_rbac import CHART, HelmError, render, run_helm, template
from tests.support.k8s_control_plane import BuildError, ControlPlane, wait_for
from tests.support.k8s_pytest import in_ci

Obj = dict[str, Any]

# Just enough of the Prometheus Operator's CRD for a server-side dry run of the ServiceMonitor.
SERVICE_MONITOR_CRD: Obj = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {"kind": "ServiceMonitor", "listKind": "ServiceMonitorList", "plural": "servicemonitors",
                  "singular": "servicemonitor"},
        "versions": [{"name": "v1", "served": True, "storage": True,
                      "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}],
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def helm() -> Path:
    try:
        return chart_rbac.helm_binary()
    except BuildError as exc:
        if in_ci():
            pytest.fail(f"CI=true: helm cannot be built: {exc}", pytrace=False)
        pytest.skip(f"helm cannot be built: {exc}")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def by_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o.get("kind") == kind]


def write_values(tmp_path: Path, values: Obj) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


# ---------------------------------------------------------------- helm alone


@pytest.mark.parametrize("mode", ["cluster", "namespaced"])
def test_helm_lint_strict(helm: Path, tmp_path: Path, mode: str) -> None:
    values = {} if mode == "cluster" else {"watchNamespaces": ["team-a", "team-b"]}
    proc = run_helm("lint", "--strict", str(CHART), "--values", str(write_values(tmp_path, values)), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout, proc.stdout


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"imagee": {"repository": "x"}}, "additional properties 'imagee' not allowed"),
        ({"health": {"port": "8080"}}, "at '/health/port': got string, want integer"),
        ({"watchNamespaces": ["Not_A_Namespace"]}, "at '/watchNamespaces/0': 'Not_A_Namespace' does not match"),
        ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy'"),
        ({"metrics": {"serviceMonitor": {"enabled": True, "extra": 1}}}, "properties 'extra' not allowed"),
    ],
)
def test_values_violating_the_schema_are_rejected(helm: Path, tmp_path: Path, values: Obj, expected: str) -> None:
    values_file = str(write_values(tmp_path, values))
    for command in (["template", "faultlab", str(CHART)], ["lint", "--strict", str(CHART)]):
        proc = run_helm(*command, "--values", values_file, check=False)
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0, f"helm {command[0]} accepted {values}:\n{output[:2000]}"
        assert "values don't meet the specifications of the schema" in output, output
        assert expected in output, f"helm {command[0]} does not name {expected!r}:\n{output}"


@pytest.mark.parametrize("watch", [[], ["team-a", "team-b"]])
def test_notes_tell_what_to_apply_next(helm: Path, watch: list[str]) -> None:
    values = ["--set", f"watchNamespaces={{{','.join(watch)}}}"] if watch else []
    out = run_helm("install", "faultlab", str(CHART), "--namespace", "faultlab-system", "--dry-run=client",
                   *values).stdout
    notes = out.split("NOTES:", 1)[1]
    namespace_flag = " -n team-a" if watch else ""
    assert "rollout status deployment/faultlab-operator" in notes
    assert notes.count(f"kubectl apply{namespace_flag} -f - <<'EOF'") == 2
    assert "kubectl delete crd raftclusters.faultlab.dev chaosexperiments.faultlab.dev" in notes
    # The manifests are in the notes themselves (a chart user has no checkout to point into), as
    # heredocs that paste into a shell: each ends at a line that is exactly EOF.
    cluster, experiment = notes_manifests(notes)
    assert [type(r).__name__ for r in load_resources(cluster)] == ["RaftCluster"]
    (exp,) = load_resources(experiment)
    assert type(exp).__name__ == "ChaosExperiment" and exp.spec.target.name == "demo"  # type: ignore[attr-defined]


def notes_manifests(notes: str) -> list[str]:
    docs: list[str] = []
    lines = iter(notes.splitlines())
    for line in lines:
        if line.rstrip().endswith("<<'EOF'"):
            body = []
            for inner in lines:
                if inner == "EOF":
                    break
                body.append(inner)
            else:
                raise AssertionError("a heredoc in NOTES.txt has no closing EOF line")
            docs.append("\n".join(body) + "\n")
    return docs


def test_notes_manifests_are_accepted_by_the_apiserver(crds_applied: ControlPlane, namespaces: list[str]) -> None:
    out = run_helm("install", "faultlab", str(CHART), "--namespace", "faultlab-system", "--dry-run=client").stdout
    for manifest in notes_manifests(out.split("NOTES:", 1)[1]):
        proc = crds_applied.kubectl("apply", "-n", namespaces[1], "--dry-run=server", "-f", "-", input=manifest,
                                    check=False)
        assert proc.returncode == 0, f"kube-apiserver rejected a manifest of NOTES.txt:\n{proc.stderr}"


def test_service_monitor_needs_metrics(helm: Path) -> None:
    with pytest.raises(HelmError, match=r"serviceMonitor\.enabled needs metrics\.enabled"):
        template({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}})


def test_operator_deployment_is_hardened(helm: Path) -> None:
    deploy = chart_rbac.deployment(render())
    spec = deploy["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["faultlab"]
    assert container["args"][:2] == ["operator", "run"] and "--all-namespaces" in container["args"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert "--health-listen=0.0.0.0:8080" in container["args"] and "--metrics-listen=0.0.0.0:9090" in container["args"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"health": 8080, "metrics": 9090}
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_namespaced_mode_renders_roles_and_namespace_flags(helm: Path) -> None:
    objects = render({"watchNamespaces": ["team-a", "team-b"]})
    roles = by_kind(objects, "Role")
    bindings = by_kind(objects, "RoleBinding")
    watched = {r["metadata"]["namespace"] for r in roles if not r["metadata"]["name"].endswith("-leader-election")}
    assert watched == {"team-a", "team-b"}
    assert {b["metadata"]["namespace"] for b in bindings} >= {"team-a", "team-b"}
    assert not by_kind(objects, "ClusterRoleBinding"), "namespaced mode grants nothing cluster-wide"
    args = chart_rbac.deployment(objects)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args and "--all-namespaces" not in args
    policies = by_kind(objects, "NetworkPolicy")
    assert {p["metadata"]["namespace"] for p in policies} == {"faultlab-system", "team-a", "team-b"}


def test_node_policy_admits_only_the_operator_to_the_agent_port(helm: Path) -> None:
    from faultlab.operator.reconcile import builders as b

    client = {"podSelector": {"matchLabels": {"app": "shop"}}}
    objects = render({"networkPolicy": {"clients": [client]}, "watchNamespaces": ["team-a"]})
    (nodes,) = [p for p in by_kind(objects, "NetworkPolicy") if p["metadata"]["namespace"] == "team-a"]
    labels = chart_rbac.deployment(objects)["spec"]["template"]["metadata"]["labels"]
    operator = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "faultlab-system"}},
                "podSelector": {"matchLabels": {k: labels[k] for k in ("app.kubernetes.io/name",
                                                                      "app.kubernetes.io/instance",
                                                                      "app.kubernetes.io/component")}}}
    members = {"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "faultlab",
                                               "app.kubernetes.io/managed-by": "faultlab-operator"}}}
    assert members["podSelector"]["matchLabels"].items() <= b.common_labels("any").items()
    rules = {tuple(p["port"] for p in rule["ports"]): rule.get("from") for rule in nodes["spec"]["ingress"]}
    assert rules == {(b.GRPC_PORT,): [operator, members, client], (b.AGENT_PORT,): [operator],
                     (b.METRICS_PORT,): None}, "the agent port admits the operator only; the data port "\
                                                "the operator, the members and the listed clients"


def test_an_agent_port_equal_to_the_data_port_is_refused(helm: Path) -> None:
    with pytest.raises(HelmError, match=r"networkPolicy\.nodePorts\.agent \(7000\) must differ"):
        template({"networkPolicy": {"nodePorts": {"grpc": 7000, "agent": 7000, "metrics": 9090}}})


def test_pod_labels_cannot_override_the_selector(helm: Path) -> None:
    with pytest.raises(HelmError, match=r"podLabels\.app\.kubernetes\.io/instance: the chart sets this label"):
        template({"podLabels": {"app.kubernetes.io/instance": "other", "team": "sre"}})
    objects = [o for o in yaml.safe_load_all(template({"podLabels": {"team": "sre"}})) if o]
    assert chart_rbac.deployment(objects)["spec"]["template"]["metadata"]["labels"]["team"] == "sre"


def test_rbac_rules_are_exactly_those_of_deploy_rbac(helm: Path) -> None:
    rules = yaml.safe_load((CHART / "files" / "rbac-rules.yaml").read_text())
    (cluster_role,) = by_kind(render(), "ClusterRole")
    assert cluster_role["rules"] == rules["watched"] + rules["cluster"]
    for role in by_kind(render({"watchNamespaces": ["team-a"]}), "Role"):
        expected = rules["ownNamespace"] if role["metadata"]["name"].endswith("-leader-election") else rules["watched"]
        assert role["rules"] == expected


# ---------------------------------------------------------------- against kube-apiserver


@pytest.fixture(scope="module")
def crds_applied(control_plane: ControlPlane, helm: Path) -> ControlPlane:
    """The chart's CRDs (and a stand-in ServiceMonitor CRD) installed for real and Established."""
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(SERVICE_MONITOR_CRD))
    names = [yaml.safe_load(p.read_text())["metadata"]["name"] for p in sorted((CHART / "crds").glob("*.yaml"))]
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                          *[f"crd/{n}" for n in [*names, SERVICE_MONITOR_CRD["metadata"]["name"]]])
    return control_plane


@pytest.fixture
def namespaces(crds_applied: ControlPlane) -> Iterator[list[str]]:
    """Three fresh namespaces: the operator's and two to watch."""
    names = [unique("faultlab-system"), unique("team-a"), unique("team-b")]
    for name in names:
        crds_applied.kubectl("create", "namespace", name)
    yield names
    crds_applied.kubectl("delete", "namespace", *names, "--wait=false", check=False)


def dry_run(cp: ControlPlane, manifest: str) -> str:
    proc = cp.kubectl("apply", "--dry-run=server", "-f", "-", input=manifest, check=False)
    assert proc.returncode == 0, f"kube-apiserver rejected the rendered chart:\n{proc.stderr}"
    return proc.stdout


@pytest.mark.parametrize("mode", ["cluster", "namespaced"])
def test_rendered_chart_is_accepted_by_the_apiserver(crds_applied: ControlPlane, namespaces: list[str],
                                                     mode: str) -> None:
    operator_ns, *watched = namespaces
    values: Obj = {"metrics": {"serviceMonitor": {"enabled": True}}}
    if mode == "namespaced":
        values["watchNamespaces"] = watched
    manifest = template(values, namespace=operator_ns, include_crds=True)
    out = dry_run(crds_applied, manifest)
    kinds = {o["kind"] for o in yaml.safe_load_all(manifest) if o}
    expected = {"CustomResourceDefinition", "ServiceAccount", "Deployment", "Service", "ServiceMonitor",
                "NetworkPolicy", "Role", "RoleBinding"}
    expected |= {"ClusterRole", "ClusterRoleBinding"} if mode == "cluster" else set()
    assert expected <= kinds, f"rendered kinds: {sorted(kinds)}"
    assert "(server dry run)" in out


def can_i(cp: ControlPlane, sa: str, verb: str, resource: str, namespace: str) -> bool:
    proc = cp.kubectl("auth", "can-i", verb, resource, "-n", namespace, f"--as={sa}", check=False)
    return proc.stdout.strip() == "yes"


def wait_granted(cp: ControlPlane, sa: str, verb: str, resource: str, namespace: str) -> None:
    """The RBAC authorizer sees new bindings through an informer: wait until this grant is visible."""
    wait_for(lambda: can_i(cp, sa, verb, resource, namespace), timeout=30,
             what=f"{sa} to be allowed to {verb} {resource} in {namespace}")


def test_namespaced_rbac_grants_only_the_watched_namespaces(crds_applied: ControlPlane,
                                                            namespaces: list[str]) -> None:
    operator_ns, team_a, team_b = namespaces
    objects = chart_rbac.rbac_objects(operator_ns, watch_namespaces=[team_a])
    chart_rbac.apply(crds_applied, objects)
    sa = f"system:serviceaccount:{operator_ns}:{chart_rbac.service_account_name(objects)}"
    wait_granted(crds_applied, sa, "create", "pods", team_a)
    wait_granted(crds_applied, sa, "create", "leases.coordination.k8s.io", operator_ns)
    assert can_i(crds_applied, sa, "patch", "raftclusters.faultlab.dev/status", team_a)
    assert can_i(crds_applied, sa, "delete", "persistentvolumeclaims", team_a), "scale-down deletes a member's PVC"
    assert can_i(crds_applied, sa, "create", "leases.coordination.k8s.io", operator_ns)
    assert not can_i(crds_applied, sa, "create", "pods", team_b), "an unwatched namespace must be out of reach"
    assert not can_i(crds_applied, sa, "list", "secrets", team_a), "secrets: get and create only"
    assert not can_i(crds_applied, sa, "list", "nodes", "default")


def test_cluster_rbac_and_service_account_token(crds_applied: ControlPlane, namespaces: list[str],
                                                tmp_path: Path) -> None:
    operator_ns, team_a, _ = namespaces
    objects = chart_rbac.rbac_objects(operator_ns)
    chart_rbac.apply(crds_applied, objects)
    try:
        config = chart_rbac.service_account_kubeconfig(
            crds_applied, operator_ns, chart_rbac.service_account_name(objects), tmp_path / "operator.kubeconfig")
        base = [str(crds_applied.kubectl_path), f"--kubeconfig={config}"]
        sa = f"system:serviceaccount:{operator_ns}:{chart_rbac.service_account_name(objects)}"
        wait_granted(crds_applied, sa, "list", "raftclusters.faultlab.dev", team_a)
        ok = subprocess.run([*base, "get", "raftclusters", "-n", team_a], capture_output=True, text=True, check=False)
        assert ok.returncode == 0, ok.stderr
        denied = subprocess.run([*base, "get", "nodes"], capture_output=True, text=True, check=False)
        assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()
    finally:
        cluster_scoped = [o for o in objects if o["kind"] in {"ClusterRole", "ClusterRoleBinding"}]
        for obj in cluster_scoped:
            crds_applied.kubectl("delete", obj["kind"].lower(), obj["metadata"]["name"], check=False)


def test_operator_pod_passes_restricted_pod_security(crds_applied: ControlPlane, namespaces: list[str]) -> None:
    operator_ns = namespaces[0]
    crds_applied.kubectl("label", "namespace", operator_ns, "pod-security.kubernetes.io/enforce=restricted",
                         "pod-security.kubernetes.io/enforce-version=latest")
    deploy = chart_rbac.deployment(render(namespace=operator_ns))
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "faultlab-operator-psa", "namespace": operator_ns,
                        "labels": deploy["spec"]["template"]["metadata"]["labels"]},
           "spec": deploy["spec"]["template"]["spec"]}  # fmt: skip
    proc = crds_applied.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
    assert proc.returncode == 0, f"the restricted Pod Security Standard refuses the operator pod:\n{proc.stderr}"
    assert "Warning" not in proc.stderr, proc.stderr
    privileged = json.loads(json.dumps(pod))
    privileged["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    refused = crds_applied.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(privileged), check=False)
    assert refused.returncode != 0 and "allowPrivilegeEscalation" in refused.stderr, "the namespace must enforce"
