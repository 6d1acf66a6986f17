"""Pure builders: a RaftCluster spec in, the Kubernetes objects it needs out (plain dicts).

No I/O here: the handlers compare these with what exists and converge. Names are
stable — pod `<name>-<i>` runs member `n<i>`, the headless Service `<name>-peers`
gives each pod the DNS name `<pod>.<name>-peers.<ns>.svc` its peers dial.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from faultlab.operator.api import API_VERSION, RaftCluster, fault_tolerance

GRPC_PORT = 7000  # data services: Raft KV/Cluster/Peer and health (peers, clients, the operator)
AGENT_PORT = 7001  # the FaultAgent and health (the operator only); on no Service
METRICS_PORT = 9090
DATA_MOUNT = "/var/lib/faultlab"
DATA_DIR = f"{DATA_MOUNT}/data"
RUN_AS = 65532  # the distroless "nonroot" user

# Labels and annotations (the `faultlab.dev/` ones are ours).
L_NAME = "app.kubernetes.io/name"
L_INSTANCE = "app.kubernetes.io/instance"
L_COMPONENT = "app.kubernetes.io/component"
L_MANAGED_BY = "app.kubernetes.io/managed-by"
L_PART_OF = "app.kubernetes.io/part-of"
L_CLUSTER = "faultlab.dev/raftcluster"
L_MEMBER = "faultlab.dev/member"
MANAGED_BY = "faultlab-operator"
COMPONENT = "raft-member"
A_TEMPLATE_HASH = "faultlab.dev/template-hash"
A_JOIN = "faultlab.dev/join"  # "true": the pod started empty and waits to be added as a learner
A_CONDEMNED = "faultlab.dev/condemned"  # set before RemoveMember: the pod is leaving and is deleted next
TOKEN_KEY = "token"


@dataclass(frozen=True)
class Owner:
    """The object that owns what a builder makes (for ownerReferences)."""

    name: str
    namespace: str
    uid: str
    kind: str = "RaftCluster"
    api_version: str = API_VERSION

    def reference(self) -> dict[str, Any]:
        return {"apiVersion": self.api_version, "kind": self.kind, "name": self.name, "uid": self.uid,
                "controller": True, "blockOwnerDeletion": True}


# ---------------------------------------------------------------- names


def member_index(member_id: str) -> int:
    """`n3` -> 3."""
    if not member_id.startswith("n") or not member_id[1:].isdigit():
        raise ValueError(f"member id {member_id!r} is not n<number>")
    return int(member_id[1:])


def pod_name(cluster: str, member_id: str) -> str:
    return f"{cluster}-{member_index(member_id)}"


def peers_service_name(cluster: str) -> str:
    return f"{cluster}-peers"


def client_service_name(cluster: str) -> str:
    return cluster


def config_map_name(cluster: str) -> str:
    return f"{cluster}-config"


def secret_name(cluster: str) -> str:
    return f"{cluster}-agent-token"


def pdb_name(cluster: str) -> str:
    return cluster


def pvc_name(cluster: str, member_id: str) -> str:
    return f"{cluster}-data-{member_index(member_id)}"


def member_host(cluster: str, namespace: str, member_id: str) -> str:
    """The DNS name peers dial: `<pod>.<name>-peers.<ns>.svc`."""
    return f"{pod_name(cluster, member_id)}.{peers_service_name(cluster)}.{namespace}.svc"


def member_address(cluster: str, namespace: str, member_id: str) -> str:
    return f"{member_host(cluster, namespace, member_id)}:{GRPC_PORT}"


def agent_port(pod: dict[str, Any]) -> int:
    """The port a member pod's FaultAgent listens on: its `agent` container port, else the data port
    (a pod made before agents had a port of their own, whose agent shares the data server)."""
    for container in pod.get("spec", {}).get("containers", []):
        for port in container.get("ports", []):
            if port.get("name") == "agent":
                return int(port["containerPort"])
    return GRPC_PORT


def peers_value(cluster: str, namespace: str, member_ids: list[str]) -> str:
    """FAULTLAB_PEERS for these members: `n1=<host>:7000,...`."""
    return ",".join(f"{m}={member_address(cluster, namespace, m)}" for m in sorted(member_ids, key=member_index))


# ---------------------------------------------------------------- labels


def selector_labels(cluster: str) -> dict[str, str]:
    """What selects a cluster's member pods (Services, PDB)."""
    return {L_CLUSTER: cluster, L_COMPONENT: COMPONENT}


def common_labels(cluster: str) -> dict[str, str]:
    return {L_NAME: "faultlab", L_INSTANCE: cluster, L_MANAGED_BY: MANAGED_BY, L_PART_OF: "faultlab",
            **selector_labels(cluster)}


def _meta(name: str, owner: Owner, labels: dict[str, str] | None = None,
          annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": owner.namespace,
                            "labels": labels or common_labels(owner.name), "ownerReferences": [owner.reference()]}
    if annotations:
        meta["annotations"] = annotations
    return meta


# ---------------------------------------------------------------- objects


def config_map(rc: RaftCluster, owner: Owner) -> dict[str, Any]:
    """Raft settings every member reads as FAULTLAB_* environment variables."""
    spec = rc.spec
    data = {
        "FAULTLAB_TICK_MS": str(spec.timings.tick_ms),
        "FAULTLAB_ELECTION_TICKS": str(spec.timings.election_ticks),
        "FAULTLAB_HEARTBEAT_TICKS": str(spec.timings.heartbeat_ticks),
        "FAULTLAB_SNAPSHOT_THRESHOLD": str(spec.snapshot_threshold),
        "FAULTLAB_MAX_VALUE_BYTES": str(spec.max_value_bytes),
        "FAULTLAB_LOG_LEVEL": "INFO",
    }
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(config_map_name(owner.name), owner),
            "data": data}


def agent_secret(owner: Owner, token: str) -> dict[str, Any]:
    """The agent token Secret; created once, never rewritten (the token is the caller's)."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": _meta(secret_name(owner.name), owner), "stringData": {TOKEN_KEY: token}}


def peers_service(owner: Owner) -> dict[str, Any]:
    """Headless Service giving every member a DNS name, published before it is ready (peers must find it)."""
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": _meta(peers_service_name(owner.name), owner),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector_labels(owner.name),
            "ports": [{"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"}],
        },
    }


def client_service(owner: Owner) -> dict[str, Any]:
    """ClusterIP Service clients use; followers redirect them to the leader."""
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": _meta(client_service_name(owner.name), owner),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(owner.name),
            "ports": [{"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
                      {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}],
        },
    }


def pod_disruption_budget(rc: RaftCluster, owner: Owner) -> dict[str, Any]:
    """Voluntary disruptions never take out more members than the quorum tolerates."""
    return {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(pdb_name(owner.name), owner),
        "spec": {"maxUnavailable": fault_tolerance(rc.spec.replicas),
                 "selector": {"matchLabels": selector_labels(owner.name)}},
    }


def persistent_volume_claim(rc: RaftCluster, owner: Owner, member_id: str) -> dict[str, Any]:
    storage = rc.spec.storage
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": storage.size}}}
    if storage.storage_class_name:
        spec["storageClassName"] = storage.storage_class_name
    labels = {**common_labels(owner.name), L_MEMBER: member_id}
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": _meta(pvc_name(owner.name, member_id), owner, labels), "spec": spec}


def _grpc_probe(period: int, failures: int, initial_delay: int = 0) -> dict[str, Any]:
    return {"grpc": {"port": GRPC_PORT}, "initialDelaySeconds": initial_delay, "periodSeconds": period,
            "timeoutSeconds": 1, "failureThreshold": failures, "successThreshold": 1}


def pod_template(rc: RaftCluster, owner: Owner) -> dict[str, Any]:
    """The member-independent part of every pod's spec; its hash decides rolling restarts."""
    spec = rc.spec
    container: dict[str, Any] = {
        "name": "raft",
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["faultlab-node", "raft"],
        "envFrom": [{"configMapRef": {"name": config_map_name(owner.name)}}],
        "ports": [{"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
                  *([{"name": "agent", "containerPort": AGENT_PORT, "protocol": "TCP"}] if spec.agent.enabled else []),
                  {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "readinessProbe": _grpc_probe(period=1, failures=2),
        "livenessProbe": _grpc_probe(period=5, failures=12, initial_delay=5),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": "data", "mountPath": DATA_MOUNT}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    resources = {k: v for k, v in (("requests", spec.resources.requests), ("limits", spec.resources.limits)) if v}
    if resources:
        container["resources"] = resources
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "subdomain": peers_service_name(owner.name),
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 10,
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS,
                            "seccompProfile": {"type": "RuntimeDefault"}},
    }
    sched = spec.scheduling
    if sched.affinity:
        pod_spec["affinity"] = sched.affinity
    if sched.tolerations:
        pod_spec["tolerations"] = sched.tolerations
    if sched.node_selector:
        pod_spec["nodeSelector"] = sched.node_selector
    if sched.topology_spread_constraints:
        pod_spec["topologySpreadConstraints"] = sched.topology_spread_constraints
    return pod_spec


def template_hash(rc: RaftCluster, owner: Owner) -> str:
    """Changes when a member must restart: image, resources, placement, Raft settings, agent, storage."""
    basis = {"pod": pod_template(rc, owner), "config": config_map(rc, owner)["data"],
             "agent": rc.spec.agent.enabled, "storage": rc.spec.storage.type}
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:16]


def member_pod(rc: RaftCluster, owner: Owner, member_id: str, peers: list[str], *, join: bool) -> dict[str, Any]:
    """Pod of one member.

    `peers` are the member ids it is told about (itself included). `join` starts it
    empty, waiting to be added as a learner; otherwise it bootstraps with `peers` as
    the initial voters (a brand-new cluster) or restarts from its own data (pvc).
    """
    name = pod_name(owner.name, member_id)
    spec = pod_template(rc, owner)
    container = spec["containers"][0]
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "FAULTLAB_ID", "value": member_id},
        {"name": "FAULTLAB_LISTEN", "value": f"0.0.0.0:{GRPC_PORT}"},
        {"name": "FAULTLAB_ADVERTISE", "value": member_address(owner.name, owner.namespace, member_id)},
        {"name": "FAULTLAB_PEERS", "value": peers_value(owner.name, owner.namespace, peers)},
        {"name": "FAULTLAB_DATA_DIR", "value": DATA_DIR},
        {"name": "FAULTLAB_METRICS_LISTEN", "value": f"0.0.0.0:{METRICS_PORT}"},
    ]
    if rc.spec.agent.enabled:
        # The agent listens apart from the data port, so a NetworkPolicy can admit only the operator to it.
        env.append({"name": "FAULTLAB_AGENT_LISTEN", "value": f"0.0.0.0:{AGENT_PORT}"})
        env.append({"name": "FAULTLAB_AGENT_TOKEN",
                    "valueFrom": {"secretKeyRef": {"name": secret_name(owner.name), "key": TOKEN_KEY}}})
    if join:
        env.append({"name": "FAULTLAB_JOIN", "value": "true"})
    if rc.spec.storage.type == "pvc":
        # The volume is this member's own: a diskFill may take it to full. On an emptyDir the
        # node's disk is shared with other pods, so the agent keeps its default safe floor.
        env.append({"name": "FAULTLAB_DISK_FILL_FLOOR", "value": "0"})
    container["env"] = env
    spec["hostname"] = name
    if rc.spec.storage.type == "pvc":
        data_volume: dict[str, Any] = {"name": "data",
                                       "persistentVolumeClaim": {"claimName": pvc_name(owner.name, member_id)}}
    else:
        data_volume = {"name": "data", "emptyDir": {"sizeLimit": rc.spec.storage.size}}
    spec["volumes"] = [data_volume, {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}]
    labels = {**common_labels(owner.name), L_MEMBER: member_id}
    annotations = {A_TEMPLATE_HASH: template_hash(rc, owner), A_JOIN: "true" if join else "false"}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": _meta(name, owner, labels, annotations), "spec": spec}


def static_objects(rc: RaftCluster, owner: Owner) -> list[dict[str, Any]]:
    """Everything but pods, PVCs and the Secret (whose token is made once): kept equal to these."""
    return [config_map(rc, owner), peers_service(owner), client_service(owner), pod_disruption_budget(rc, owner)]


def owner_of(body: dict[str, Any]) -> Owner:
    meta = body["metadata"]
    return Owner(name=meta["name"], namespace=meta.get("namespace") or "default", uid=meta.get("uid", ""),
                 kind=body.get("kind", "RaftCluster"), api_version=body.get("apiVersion", API_VERSION))
