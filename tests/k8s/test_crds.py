"""The generated CRDs and the builders' objects against a real kube-apiserver."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from faultlab.operator.api import RaftCluster
from faultlab.operator.reconcile import builders as b
from faultlab.operator.reconcile.kube import ApiError, Kube, path
from tests.e2e.harness import apply, ensure_namespace, install_crds, rbac_objects
from tests.support.k8s_control_plane import ControlPlane

NS = "faultlab-crd-test"


@pytest.fixture(scope="module")
def kube(control_plane: ControlPlane) -> Iterator[Kube]:
    k = Kube.load(control_plane.admin_kubeconfig)
    install_crds(k)
    ensure_namespace(k, NS)
    yield k
    k.close()


def rc(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "faultlab.dev/v1alpha1", "kind": "RaftCluster", "metadata": {"name": name, "namespace": NS},
            "spec": spec}


def chaos(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    base = {"target": {"name": "demo"}, "faults": [{"name": "f", "type": "partition"}]}
    return {"apiVersion": "faultlab.dev/v1alpha1", "kind": "ChaosExperiment",
            "metadata": {"name": name, "namespace": NS}, "spec": {**base, **spec}}


def rejected(kube: Kube, obj: dict[str, Any]) -> str:
    with pytest.raises(ApiError) as info:
        kube.create(obj, dry_run=True)
    assert info.value.status == 422, info.value
    return str(info.value)


@pytest.mark.parametrize(("obj", "field", "words"), [
    (rc("no-replicas", {"image": "x"}), "spec.replicas", "Required value"),
    (rc("too-many", {"replicas": 12}), "spec.replicas", "less than or equal to 9"),
    (rc("neg-tick", {"replicas": 3, "timings": {"tickMs": -5}}), "spec.timings.tickMs", "greater than or equal to 1"),
    (rc("slow-hb", {"replicas": 3, "timings": {"electionTicks": 5, "heartbeatTicks": 5}}),
     "spec.timings.heartbeatTicks", "less than electionTicks"),
    (rc("class", {"replicas": 3, "storage": {"storageClassName": "fast"}}), "spec.storage.storageClassName",
     "type: pvc"),
    (rc("typo", {"replicas": 3, "storage": {"type": "disk"}}), "spec.storage.type", "Unsupported value"),
    (chaos("all-members", {"faults": [{"name": "f", "type": "kill", "target": {"mode": "all"}}]}),
     "spec.blastRadius.allowQuorumLoss", "allowQuorumLoss: true"),
    (chaos("full-radius", {"blastRadius": {"maxPercent": 100}}), "spec.blastRadius.maxPercent", "allowQuorumLoss"),
    (chaos("fixed", {"faults": [{"name": "f", "type": "delay", "target": {"mode": "fixed"}}]}),
     "spec.faults[0].target.value", "mode fixed needs value"),
    (chaos("no-faults", {"faults": []}), "spec.faults", "at least 1"),
    (chaos("bad-type", {"faults": [{"name": "f", "type": "explode"}]}), "spec.faults[0].type", "Unsupported value"),
])
def test_bad_resources_are_rejected_naming_the_field(kube: Kube, obj: dict[str, Any], field: str,
                                                     words: str) -> None:
    message = rejected(kube, obj)
    assert field in message and words in message, message


def test_quorum_loss_allowed_when_asked(kube: Kube) -> None:
    ok = chaos("allowed", {"faults": [{"name": "f", "type": "kill", "target": {"mode": "all"}}],
                           "blastRadius": {"allowQuorumLoss": True}})
    kube.create(ok, dry_run=True)


def test_defaults_come_from_the_models(kube: Kube) -> None:
    created = kube.create(rc("defaults", {"replicas": 3}))
    try:
        spec = created["spec"]
        model = RaftCluster.model_validate({"metadata": {"name": "x"}, "spec": {"replicas": 3}}).spec.to_dict()
        assert spec["timings"] == model["timings"]
        assert spec["storage"] == model["storage"]
        assert spec["image"] == model["image"] and spec["agent"] == {"enabled": True}
        again = RaftCluster.model_validate({k: created[k] for k in ("apiVersion", "kind", "metadata", "spec")})
        assert again.spec.replicas == 3
    finally:
        kube.delete(path("RaftCluster", NS, "defaults"))


def test_unknown_fields_are_refused_by_strict_validation(control_plane: ControlPlane, kube: Kube) -> None:
    manifest = ("apiVersion: faultlab.dev/v1alpha1\nkind: RaftCluster\n"
                f"metadata: {{name: strict, namespace: {NS}}}\nspec: {{replicas: 3, replica: 5}}\n")
    out = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=manifest, check=False)
    assert out.returncode != 0 and 'unknown field "spec.replica"' in out.stderr, out.stderr


def test_kubectl_explain_short_names_category_and_columns(control_plane: ControlPlane, kube: Kube) -> None:
    explain = control_plane.kubectl("explain", "raftcluster.spec").stdout
    assert "replicas" in explain and "Number of voting members" in explain and "timings" in explain
    assert "heartbeatTicks" in control_plane.kubectl("explain", "raft.spec.timings").stdout
    assert "blastRadius" in control_plane.kubectl("explain", "chaos.spec").stdout
    kube.create(rc("shown", {"replicas": 3}))
    try:
        table = control_plane.kubectl("get", "faultlab", "-n", NS).stdout
        header = table.splitlines()[0].split()
        assert header == ["NAME", "REPLICAS", "READY", "LEADER", "TERM", "PHASE", "AGE"], table
        kube.create(chaos("listed", {}))
        chaos_table = control_plane.kubectl("get", "chaos", "-n", NS).stdout.splitlines()[0].split()
        assert chaos_table == ["NAME", "TARGET", "PHASE", "VERDICT", "AVAILABILITY", "MTTR", "AGE"]
    finally:
        kube.delete(path("RaftCluster", NS, "shown"))
        kube.delete(path("ChaosExperiment", NS, "listed"))


def test_status_subresource_keeps_spec_and_status_apart(kube: Kube) -> None:
    kube.create(rc("sub", {"replicas": 3}))
    try:
        kube.patch(path("RaftCluster", NS, "sub", "status"), {"status": {"phase": "Running", "leader": "n1"}})
        kube.patch(path("RaftCluster", NS, "sub"), {"status": {"phase": "Failed"}})  # ignored on the main resource
        obj = kube.get(path("RaftCluster", NS, "sub"))
        assert obj is not None and obj["status"]["phase"] == "Running" and obj["status"]["leader"] == "n1"
    finally:
        kube.delete(path("RaftCluster", NS, "sub"))


def test_builder_output_passes_server_side_dry_run(kube: Kube) -> None:
    model = RaftCluster.model_validate({"metadata": {"name": "dry", "namespace": NS},
                                        "spec": {"replicas": 3, "storage": {"type": "pvc", "size": "2Gi"},
                                                 "resources": {"limits": {"memory": "256Mi"}}}})
    owner = b.Owner(name="dry", namespace=NS, uid="00000000-0000-0000-0000-000000000001")
    objects = [*b.static_objects(model, owner), b.agent_secret(owner, "token"),
               b.persistent_volume_claim(model, owner, "n1"),
               b.member_pod(model, owner, "n1", ["n1", "n2", "n3"], join=False),
               b.member_pod(model, owner, "n4", ["n1", "n2", "n3", "n4"], join=True)]
    for obj in objects:
        kube.create(obj, dry_run=True)


def test_rbac_grants_only_what_the_operator_uses(control_plane: ControlPlane, kube: Kube) -> None:
    for obj in rbac_objects(NS, [NS]):
        apply(kube, obj)
    sa = f"system:serviceaccount:{NS}:faultlab-operator"

    def can(verb: str, resource: str, namespace: str | None = NS) -> bool:
        args = ["auth", "can-i", verb, resource, f"--as={sa}"]
        args += [f"--namespace={namespace}"] if namespace else []
        return control_plane.kubectl(*args, check=False).stdout.strip() == "yes"

    for verb, resource in [("watch", "raftclusters.faultlab.dev"), ("patch", "raftclusters.faultlab.dev/status"),
                           ("patch", "chaosexperiments.faultlab.dev"), ("create", "pods"), ("delete", "pods"),
                           ("create", "services"), ("get", "secrets"), ("create", "events"),
                           ("create", "poddisruptionbudgets.policy"), ("update", "leases.coordination.k8s.io")]:
        assert can(verb, resource), f"the operator cannot {verb} {resource}"
    for verb, resource in [("delete", "secrets"), ("list", "secrets"), ("delete", "raftclusters.faultlab.dev"),
                           ("create", "raftclusters.faultlab.dev"), ("delete", "services"), ("*", "*"),
                           ("create", "deployments.apps"), ("update", "pods")]:
        assert not can(verb, resource), f"the operator may {verb} {resource}, which it never does"
    assert not can("list", "nodes", None) and not can("list", "pods", "kube-system")
