"""In-memory stand-ins (no tests here) for the pure chaos-engine tests: a Runtime and FaultAgents in dicts.

Only the unit tests of planning, journaling/resume and reporting use these; the
integration tests run real nodes and real agents.
"""

from __future__ import annotations

import time
from typing import Any

from faultlab.operator.runtime.base import Member, TargetRef
from faultlab.protos.agent.v1 import agent_pb2 as pb


class FakeAgent:
    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.started_at = time.time()
        self.active: dict[str, pb.Fault] = {}
        self.calls: list[tuple[str, str]] = []
        self.reachable = True

    def _check(self) -> None:
        if not self.reachable:
            raise OSError(f"{self.node_id} unreachable")

    async def inject(self, fault: pb.Fault, *, timeout: float | None = None) -> pb.InjectResponse:
        self._check()
        self.calls.append(("inject", fault.id))
        created = fault.id not in self.active
        self.active[fault.id] = fault
        return pb.InjectResponse(id=fault.id, created=created, detail="fake")

    async def recover(self, fault_id: str, *, timeout: float | None = None) -> bool:
        self._check()
        self.calls.append(("recover", fault_id))
        return self.active.pop(fault_id, None) is not None

    async def list(self, *, timeout: float | None = None) -> pb.ListResponse:
        self._check()
        return pb.ListResponse(node_id=self.node_id, started_at=self.started_at,
                               faults=[pb.ActiveFault(fault=f) for f in self.active.values()])

    async def close(self) -> None:
        pass


class FakeRuntime:
    name = "fake"

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids
        self.agents = {i: FakeAgent(i) for i in ids}
        self.paused: set[str] = set()
        self.killed: list[str] = []

    def agent_factory(self, address: str, token: str) -> Any:
        member = next((i for i in self.ids if self.agent_address(i) == address), None)
        assert member is not None, f"{address} is no member's agent address (a data address?)"
        return self.agents[member]

    def address(self, member_id: str) -> str:
        return f"127.0.0.1:{1 + self.ids.index(member_id)}"

    def agent_address(self, member_id: str) -> str:
        """Each member's agent listens apart from its data services, as on Kubernetes and locally."""
        return f"127.0.0.1:{101 + self.ids.index(member_id)}"

    async def members(self, target: TargetRef) -> list[Member]:
        return [Member(i, self.address(i), process="", agent_address=self.agent_address(i)) for i in self.ids]

    async def agent_token(self, target: TargetRef) -> str:
        return "token"

    async def kill(self, target: TargetRef, member: Member) -> None:
        self.killed.append(member.id)
        self.agents[member.id].active.clear()
        self.agents[member.id].started_at += 1

    async def pause(self, target: TargetRef, member: Member) -> None:
        self.paused.add(member.id)

    async def resume(self, target: TargetRef, member: Member) -> None:
        self.paused.discard(member.id)

    async def wait_running(self, target: TargetRef, member: Member, timeout_s: float) -> bool:
        return True


def steady_cluster_view(monkeypatch: Any) -> None:
    """Makes every ClusterView see n1 leading a healthy cluster (no gRPC to members)."""
    from faultlab.operator.chaos.probes import ClusterView, MemberStatus

    async def statuses(self: ClusterView) -> dict[str, MemberStatus | None]:
        return {m: MemberStatus(m, "leader" if m == "n1" else "follower", 1, "n1") for m in sorted(self.members)}

    async def healthy(self: ClusterView, member: str) -> bool:
        return True

    monkeypatch.setattr(ClusterView, "statuses", statuses)
    monkeypatch.setattr(ClusterView, "healthy", healthy)
