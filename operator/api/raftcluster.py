"""RaftCluster: a Raft-replicated key-value store of N members (spec, status, defaults, validation)."""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from faultlab.operator.api.common import PRESERVE_UNKNOWN, ApiModel, Condition, Resource


def _package_version() -> str:
    try:
        return version("faultlab")
    except PackageNotFoundError:
        return "latest"


DEFAULT_IMAGE = f"ghcr.io/faultlab/faultlab:{_package_version()}"
MAX_REPLICAS = 9
MAX_VALUE_BYTES_LIMIT = 16 * 1024 * 1024  # well under the 64 MiB gRPC message limit
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


def member_ids(replicas: int) -> list[str]:
    """Member ids of a cluster of `replicas` members: n1..nN (the same on every runtime)."""
    return [f"n{i}" for i in range(1, replicas + 1)]


def quorum(replicas: int) -> int:
    """Members needed to elect a leader and commit: a majority."""
    return replicas // 2 + 1


def fault_tolerance(replicas: int) -> int:
    """Members that can fail while the cluster stays available."""
    return replicas - quorum(replicas)


class ResourceRequirements(ApiModel):
    """CPU and memory per member, as in a Kubernetes container (quantities such as `500m`, `256Mi`)."""

    requests: dict[str, str] = Field(default_factory=dict, description="Resources reserved, e.g. {cpu: 100m}.")
    limits: dict[str, str] = Field(default_factory=dict, description="Resource caps, e.g. {memory: 512Mi}.")

    @field_validator("requests", "limits", mode="before")
    @classmethod
    def _quantities(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out: dict[str, Any] = {}
        for key, qty in value.items():
            text = str(qty) if isinstance(qty, int | float) and not isinstance(qty, bool) else qty
            if isinstance(text, str) and not _QUANTITY.match(text):
                raise ValueError(f"{key}: {qty!r} is not a Kubernetes quantity (examples: 500m, 2, 256Mi, 1Gi)")
            out[key] = text
        return out


class Storage(ApiModel):
    """Where each member keeps its WAL and snapshots."""

    type: Literal["emptyDir", "pvc"] = Field(
        default="emptyDir",
        description="emptyDir: lost with the pod (fine for tests); pvc: a PersistentVolumeClaim per member.")
    size: str = Field(default="1Gi", description="Volume size (Kubernetes quantity, e.g. 1Gi).")
    storage_class_name: str | None = Field(
        default=None, description="StorageClass for type pvc; empty uses the cluster default.")

    @field_validator("size")
    @classmethod
    def _size(cls, value: str) -> str:
        if not _QUANTITY.match(value):
            raise ValueError(f"{value!r} is not a Kubernetes quantity (examples: 512Mi, 1Gi)")
        return value

    @model_validator(mode="after")
    def _class_needs_pvc(self) -> Storage:
        if self.storage_class_name and self.type != "pvc":
            raise ValueError("storageClassName applies only to type: pvc; set type: pvc or remove it")
        return self


class Timings(ApiModel):
    """Raft timing: a tick is the unit; elections and heartbeats are counted in ticks."""

    tick_ms: int = Field(default=20, ge=1, le=10_000, description="Length of one tick in milliseconds.")
    election_ticks: int = Field(
        default=10, ge=1, le=10_000,
        description="Ticks without a leader before a follower starts an election (randomised up to 2x).")
    heartbeat_ticks: int = Field(default=1, ge=1, le=10_000,
                                 description="Ticks between the leader's heartbeats; must be < electionTicks.")

    @model_validator(mode="after")
    def _heartbeat_before_election(self) -> Timings:
        if self.heartbeat_ticks >= self.election_ticks:
            raise ValueError(
                f"heartbeatTicks ({self.heartbeat_ticks}) must be less than electionTicks "
                f"({self.election_ticks}), or followers start elections between heartbeats; "
                f"typical: heartbeatTicks 1, electionTicks 10")
        return self

    @property
    def election_timeout_ms(self) -> int:
        return self.tick_ms * self.election_ticks


class Scheduling(ApiModel):
    """Pod placement on Kubernetes, passed through to each member's pod as written."""

    affinity: dict[str, Any] | None = Field(
        default=None, description="Pod affinity/anti-affinity (Kubernetes Affinity).",
        json_schema_extra=PRESERVE_UNKNOWN)
    topology_spread_constraints: list[dict[str, Any]] = Field(
        default_factory=list, description="Kubernetes TopologySpreadConstraints.",
        json_schema_extra={"items": PRESERVE_UNKNOWN})
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list, description="Kubernetes Tolerations.", json_schema_extra={"items": PRESERVE_UNKNOWN})
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the pods must match.")


class AgentSpec(ApiModel):
    """The fault agent each member hosts (chaos experiments need it)."""

    enabled: bool = Field(default=True, description="Serve the FaultAgent; disable to refuse all fault injection.")


class RaftClusterSpec(ApiModel):
    """Desired state of a RaftCluster."""

    replicas: int = Field(default=3, ge=1, le=MAX_REPLICAS,
                          description="Number of voting members, 1..9; odd numbers tolerate the most failures.")
    image: str = Field(default=DEFAULT_IMAGE, min_length=1, description="Container image of the members.")
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements,
                                            description="CPU/memory requests and limits per member.")
    storage: Storage = Field(default_factory=Storage, description="Data volume per member.")
    timings: Timings = Field(default_factory=Timings, description="Tick length, election and heartbeat ticks.")
    snapshot_threshold: int = Field(default=10_000, ge=1,
                                    description="Applied entries after which a member snapshots and compacts its log.")
    max_value_bytes: int = Field(default=1_048_576, ge=1, le=MAX_VALUE_BYTES_LIMIT,
                                 description="Largest value a Put or CompareAndSwap accepts, in bytes.")
    scheduling: Scheduling = Field(default_factory=Scheduling, description="Pod placement (Kubernetes only).")
    agent: AgentSpec = Field(default_factory=AgentSpec, description="The fault agent.")


RaftPhase = Literal["Pending", "Bootstrapping", "Running", "Degraded", "Failed", "Stopped"]
RaftRole = Literal["Leader", "Follower", "Candidate", "PreCandidate", "Learner", "Unknown", "Down"]


class RaftMemberStatus(ApiModel):
    """One member as last observed."""

    id: str = Field(description="Member id (n1, n2, ...).")
    address: str = Field(default="", description="host:port of its gRPC server.")
    role: RaftRole = Field(default="Unknown", description="Raft role, or Down when unreachable.")
    ready: bool = Field(default=False, description="Serving and health-checked.")
    voter: bool = Field(default=True, description="Voting member (false for a learner).")
    term: int = Field(default=0, ge=0, description="Its current term.")
    commit_index: int = Field(default=0, ge=0, description="Highest log index it knows committed.")
    applied_index: int = Field(default=0, ge=0, description="Highest log index applied to its state machine.")
    pod: str = Field(default="", description="Pod name (Kubernetes) or pid (local).")


class RaftClusterStatus(ApiModel):
    """Observed state of a RaftCluster, written by the controller."""

    phase: RaftPhase = Field(default="Pending", description="Lifecycle phase.")
    replicas: int = Field(default=0, ge=0, description="Members that exist.")
    ready_replicas: int = Field(default=0, ge=0, description="Members serving.")
    leader: str | None = Field(default=None, description="Id of the current leader, if any.")
    term: int = Field(default=0, ge=0, description="The leader's term (highest term seen).")
    commit_index: int = Field(default=0, ge=0, description="The leader's commit index.")
    members: list[RaftMemberStatus] = Field(default_factory=list, description="Each member's view.")
    conditions: list[Condition] = Field(default_factory=list, description="Ready, Progressing, Degraded.")
    observed_generation: int = Field(default=0, ge=0, description="metadata.generation last reconciled.")


class RaftCluster(Resource):
    """A Raft-replicated key-value store."""

    PLURAL: ClassVar[str] = "raftclusters"

    kind: Literal["RaftCluster"] = Field(default="RaftCluster", description="RaftCluster.")
    spec: RaftClusterSpec = Field(default_factory=RaftClusterSpec, description="Desired state.")
    status: RaftClusterStatus | None = Field(default=None, description="Observed state.")

    def warnings(self) -> list[str]:
        found: list[str] = []
        n = self.spec.replicas
        if n % 2 == 0:
            found.append(
                f"RaftCluster {self.name}: spec.replicas: {n} members tolerate {fault_tolerance(n)} failure(s), "
                f"as many as {n - 1} do; use an odd number ({n - 1} or {n + 1})")
        return found

    def member_ids(self) -> list[str]:
        return member_ids(self.spec.replicas)
