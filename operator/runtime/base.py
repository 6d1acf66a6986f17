"""Where nodes run, behind one interface: the chaos engine and the CLI see only this.

Two implementations: `local` (node processes on loopback, state under `.faultlab/`)
and `kubernetes` (the target resource's pods). They differ in how members are found
and how a process is killed or paused; faults themselves always go to each member's
FaultAgent over gRPC, at `Member.agent_address` (a port apart from the data services).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class TargetRef:
    """The system an experiment targets: a resource kind and name (namespace on Kubernetes)."""

    kind: str
    name: str
    namespace: str = "default"

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Member:
    """One node of a target system as a runtime sees it."""

    id: str
    address: str  # host:port of its data services (Raft KV/Cluster/Peer, health): peers and clients dial it
    process: str = ""  # pid locally, pod name on Kubernetes
    labels: dict[str, str] = field(default_factory=dict)
    # host:port of its FaultAgent (its own listener, --agent-listen); empty means `address`,
    # for a node that serves the agent on its data server.
    agent_address: str = ""

    def __post_init__(self) -> None:
        if not self.agent_address:
            object.__setattr__(self, "agent_address", self.address)


class RuntimeError_(Exception):
    """A runtime could not do what was asked; the message says what and what to do."""


class Runtime(Protocol):
    """What the experiment engine needs from wherever the nodes run.

    A runtime that cannot do some fault type says so in an ``unsupported_faults`` mapping
    (fault type -> why, and what to use instead), read with :func:`unsupported_fault`; the
    engine rejects such an experiment before it injects anything.
    """

    name: str

    async def members(self, target: TargetRef) -> list[Member]:
        """Current members of the target, running or not."""
        ...

    async def agent_token(self, target: TargetRef) -> str:
        """The token each member's FaultAgent requires."""
        ...

    async def kill(self, target: TargetRef, member: Member) -> None:
        """Kill the member's process at once (SIGKILL / pod delete with grace 0); it is restarted by its supervisor."""
        ...

    async def pause(self, target: TargetRef, member: Member) -> None:
        """Freeze the member's process (SIGSTOP)."""
        ...

    async def resume(self, target: TargetRef, member: Member) -> None:
        """Unfreeze the member's process (SIGCONT). Must be safe to call on a running process."""
        ...

    async def wait_running(self, target: TargetRef, member: Member, timeout_s: float) -> bool:
        """Wait until the member's process runs (restarted after a kill); False on timeout."""
        ...


def unsupported_fault(runtime: object, fault_type: str) -> str | None:
    """Why `runtime` cannot inject `fault_type` (None: it can), from its optional ``unsupported_faults``."""
    table: Mapping[str, str] = getattr(runtime, "unsupported_faults", None) or {}
    return table.get(fault_type)


async def refused_fault(runtime: object, target: TargetRef, fault_type: str,
                        params: Mapping[str, Any]) -> str | None:
    """Why `runtime` refuses this fault on this target (None: it does not), from its optional
    ``refuse_fault(target, fault_type, params)``: for limits that depend on how the target is built."""
    refuse = getattr(runtime, "refuse_fault", None)
    if refuse is None:
        return None
    why: str | None = await refuse(target, fault_type, params)
    return why
