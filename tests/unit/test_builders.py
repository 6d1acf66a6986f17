"""The pure builders: RaftCluster spec -> the Kubernetes objects the operator keeps in place."""

from __future__ import annotations

from typing import Any

import pytest

from faultlab.operator.api import RaftCluster
from faultlab.operator.reconcile import builders as b

OWNER = b.Owner(name="demo", namespace="lab", uid="1234")


def cluster(**spec: Any) -> RaftCluster:
    return RaftCluster.model_validate({"metadata": {"name": "demo", "namespace": "lab"}, "spec": spec})


def env_of(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["spec"]["containers"][0]["env"]}


def test_pod_identity_and_dns_names() -> None:
    pod = b.member_pod(cluster(replicas=3), OWNER, "n2", ["n1", "n2", "n3"], join=False)
    assert pod["metadata"]["name"] == "demo-2"
    assert pod["spec"]["hostname"] == "demo-2" and pod["spec"]["subdomain"] == "demo-peers"
    env = env_of(pod)
    assert env["FAULTLAB_ID"] == "n2"
    assert env["FAULTLAB_PEERS"] == ("n1=demo-1.demo-peers.lab.svc:7000,n2=demo-2.demo-peers.lab.svc:7000,"
                                     "n3=demo-3.demo-peers.lab.svc:7000")
    assert env["FAULTLAB_ADVERTISE"] == "demo-2.demo-peers.lab.svc:7000"
    assert env["FAULTLAB_LISTEN"] == "0.0.0.0:7000"  # kubelet probes and port-forward both reach it
    assert env["FAULTLAB_DATA_DIR"] == b.DATA_DIR
    assert env["FAULTLAB_AGENT_TOKEN"] == {"secretKeyRef": {"name": "demo-agent-token", "key": "token"}}
    assert env["FAULTLAB_AGENT_LISTEN"] == "0.0.0.0:7001"  # the agent on a port of its own, for the operator
    assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert "FAULTLAB_JOIN" not in env
    assert pod["metadata"]["labels"][b.L_MEMBER] == "n2"
    assert pod["metadata"]["ownerReferences"] == [{
        "apiVersion": "faultlab.dev/v1alpha1", "kind": "RaftCluster", "name": "demo", "uid": "1234",
        "controller": True, "blockOwnerDeletion": True}]


def test_join_pod_and_no_agent() -> None:
    pod = b.member_pod(cluster(agent={"enabled": False}), OWNER, "n4", ["n1", "n2", "n3", "n4"], join=True)
    env = env_of(pod)
    assert env["FAULTLAB_JOIN"] == "true"
    assert "FAULTLAB_AGENT_TOKEN" not in env and "FAULTLAB_AGENT_LISTEN" not in env
    assert pod["metadata"]["annotations"][b.A_JOIN] == "true"
    ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    assert ports == {"grpc": b.GRPC_PORT, "metrics": b.METRICS_PORT}, "no agent, no agent port"
    assert b.agent_port(pod) == b.GRPC_PORT


def test_the_agent_has_a_container_port_of_its_own_and_no_service_port() -> None:
    pod = b.member_pod(cluster(), OWNER, "n1", ["n1"], join=False)
    ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    assert ports == {"grpc": 7000, "agent": 7001, "metrics": 9090}
    assert b.agent_port(pod) == b.AGENT_PORT == 7001 != b.GRPC_PORT
    assert env_of(pod)["FAULTLAB_AGENT_LISTEN"] == f"0.0.0.0:{b.AGENT_PORT}"
    for service in (b.peers_service(OWNER), b.client_service(OWNER)):  # only the operator dials agents
        assert b.AGENT_PORT not in {p["port"] for p in service["spec"]["ports"]}
    assert b.template_hash(cluster(), OWNER) != b.template_hash(cluster(agent={"enabled": False}), OWNER)


def test_pod_is_hardened_and_probed() -> None:
    pod = b.member_pod(cluster(), OWNER, "n1", ["n1"], join=False)
    spec = pod["spec"]
    container = spec["containers"][0]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["securityContext"]["runAsUser"] != 0
    assert container["readinessProbe"]["grpc"] == {"port": b.GRPC_PORT}
    assert container["livenessProbe"]["grpc"] == {"port": b.GRPC_PORT}
    assert spec["automountServiceAccountToken"] is False
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/tmp", b.DATA_MOUNT} <= mounts  # a read-only root still has somewhere to write
    assert container["command"] == ["faultlab-node", "raft"]


def test_storage_pvc_vs_empty_dir() -> None:
    rc = cluster(storage={"type": "pvc", "size": "2Gi", "storageClassName": "fast"})
    pod = b.member_pod(rc, OWNER, "n3", ["n1", "n2", "n3"], join=False)
    data = next(v for v in pod["spec"]["volumes"] if v["name"] == "data")
    assert data == {"name": "data", "persistentVolumeClaim": {"claimName": "demo-data-3"}}
    pvc = b.persistent_volume_claim(rc, OWNER, "n3")
    assert pvc["metadata"]["name"] == "demo-data-3"
    assert pvc["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}},
                           "storageClassName": "fast"}
    empty = b.member_pod(cluster(), OWNER, "n1", ["n1"], join=False)
    assert "emptyDir" in next(v for v in empty["spec"]["volumes"] if v["name"] == "data")
    # diskFill may fill a member's own volume; a shared node disk keeps the agent's safe floor.
    assert env_of(pod)["FAULTLAB_DISK_FILL_FLOOR"] == "0"
    assert "FAULTLAB_DISK_FILL_FLOOR" not in env_of(empty)


def test_services_pdb_config() -> None:
    rc = cluster(replicas=5, timings={"tickMs": 10, "electionTicks": 8, "heartbeatTicks": 2})
    peers = b.peers_service(OWNER)
    assert peers["metadata"]["name"] == "demo-peers"
    assert peers["spec"]["clusterIP"] == "None" and peers["spec"]["publishNotReadyAddresses"] is True
    client = b.client_service(OWNER)
    assert client["metadata"]["name"] == "demo" and client["spec"]["selector"] == b.selector_labels("demo")
    pdb = b.pod_disruption_budget(rc, OWNER)
    assert pdb["spec"]["maxUnavailable"] == 2
    assert b.pod_disruption_budget(cluster(replicas=3), OWNER)["spec"]["maxUnavailable"] == 1
    data = b.config_map(rc, OWNER)["data"]
    assert data["FAULTLAB_TICK_MS"] == "10" and data["FAULTLAB_ELECTION_TICKS"] == "8"
    assert data["FAULTLAB_HEARTBEAT_TICKS"] == "2"
    secret = b.agent_secret(OWNER, "s3cret")
    assert secret["stringData"] == {"token": "s3cret"}
    assert [o["kind"] for o in b.static_objects(rc, OWNER)] == ["ConfigMap", "Service", "Service",
                                                                  "PodDisruptionBudget"]


@pytest.mark.parametrize(("change", "restarts"), [
    ({"image": "faultlab:2"}, True),
    ({"resources": {"limits": {"memory": "256Mi"}}}, True),
    ({"timings": {"tickMs": 50}}, True),
    ({"replicas": 5}, False),
])
def test_template_hash_tracks_what_needs_a_restart(change: dict[str, Any], restarts: bool) -> None:
    before = b.template_hash(cluster(replicas=3), OWNER)
    after = b.template_hash(cluster(**{"replicas": 3, **change}), OWNER)
    assert (before != after) is restarts


def test_hash_is_the_same_for_every_member_and_mode() -> None:
    rc = cluster()
    hashes = {b.member_pod(rc, OWNER, m, ["n1", "n2", "n3"], join=j)["metadata"]["annotations"][b.A_TEMPLATE_HASH]
              for m in ("n1", "n2", "n3") for j in (True, False)}
    assert len(hashes) == 1


def test_member_index_rejects_bad_ids() -> None:
    assert b.member_index("n12") == 12
    with pytest.raises(ValueError, match="n<number>"):
        b.member_index("x1")


def test_scheduling_passes_through() -> None:
    rc = cluster(scheduling={"nodeSelector": {"disk": "ssd"},
                             "tolerations": [{"key": "k", "operator": "Exists"}]})
    spec = b.member_pod(rc, OWNER, "n1", ["n1"], join=False)["spec"]
    assert spec["nodeSelector"] == {"disk": "ssd"}
    assert spec["tolerations"] == [{"key": "k", "operator": "Exists"}]


def test_example_spread_constraint_selects_the_pods_it_spreads() -> None:
    import pathlib

    import yaml

    doc = yaml.safe_load((pathlib.Path(__file__).parents[2] / "examples" / "raft-cluster.yaml").read_text())
    rc = RaftCluster.model_validate(doc)
    owner = b.Owner(name=doc["metadata"]["name"], namespace="default", uid="1")
    labels = b.member_pod(rc, owner, "n1", ["n1", "n2", "n3"], join=False)["metadata"]["labels"]
    for c in doc["spec"]["scheduling"]["topologySpreadConstraints"]:
        wanted = c["labelSelector"]["matchLabels"]
        assert wanted.items() <= labels.items(), f"{wanted} matches no member pod (labels {labels})"
