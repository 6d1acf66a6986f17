"""The FaultAgent gRPC service: token check, then Inject/Recover/List/RecoverAll on the agent.

`Agent` turns each fault kind into an action on this process (network rules, CPU,
memory, disk, clock, data files) plus the undo that reverts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os

import grpc

from faultlab.nodes.agent import resources
from faultlab.nodes.agent.faults import NETWORK_KINDS, FaultError, FaultRegistry, Undo, fault_kind
from faultlab.nodes.agent.network import NetworkFaults
from faultlab.nodes.common import faults as process_faults
from faultlab.nodes.common.node import NodeContext
from faultlab.protos.agent.v1 import agent_pb2 as pb
from faultlab.protos.agent.v1 import agent_pb2_grpc as pb_grpc

log = logging.getLogger("faultlab.agent")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["FaultAgent"].full_name
CRASH_DELAY_S = 0.05


class Agent:
    """The fault agent of one node process."""

    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.network = NetworkFaults()
        self.registry = FaultRegistry(self._apply, on_change=self._hook)
        self._clock_owner = ""
        self._enospc: set[str] = set()
        self.disk_floor = resources.DiskFloor.parse(ctx.disk_fill_floor)

    def client_interceptors(self, peer_id: str) -> list[grpc.aio.ClientInterceptor]:
        return self.network.client_interceptors(self.ctx.node_id, peer_id)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Serves the FaultAgent on `server`: `ctx.agent_host()`, its own server under --agent-listen."""
        pb_grpc.add_FaultAgentServicer_to_server(FaultAgentServicer(self), server)
        self.ctx.add_service_name(SERVICE_NAME, server)

    async def close(self) -> None:
        """Recovers every fault (on graceful shutdown)."""
        await self.registry.recover_all()

    def _hook(self, name: str, fault: pb.Fault) -> None:
        hook = self.ctx.hooks.get(name)
        if hook is not None:
            try:
                hook(fault)
            except Exception:
                log.exception("hook %s failed", name)

    async def _apply(self, fault: pb.Fault) -> tuple[str, Undo]:
        kind = fault_kind(fault)
        if kind in NETWORK_KINDS:
            detail = self.network.add(fault)
            return detail, lambda: self.network.remove(fault.id)
        if kind == "crash":
            code = fault.crash.exit_code
            asyncio.get_running_loop().call_later(CRASH_DELAY_S, os._exit, code)
            log.warning("fault %s: crashing with exit code %d", fault.id, code)
            return f"process {os.getpid()} exits with code {code} in {int(CRASH_DELAY_S * 1000)} ms", _noop
        if kind == "cpu_burn":
            burner = resources.CpuBurner(fault.cpu_burn.threads, fault.cpu_burn.duty_cycle).start()
            detail = f"{fault.cpu_burn.threads} thread(s) burning {fault.cpu_burn.duty_cycle:.0%} of each 100 ms"
            return detail, lambda: asyncio.to_thread(burner.stop)
        if kind == "memory_pressure":
            mb = fault.memory_pressure.megabytes
            try:
                hog = await asyncio.to_thread(resources.MemoryHog, mb)
            except MemoryError:
                raise FaultError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                 f"fault.memory_pressure.megabytes: cannot allocate {mb} MiB") from None
            return f"holding {mb} MiB resident", hog.release
        if kind == "disk_fill":
            return await self._disk_fill(fault)
        if kind == "clock_skew":
            if self._clock_owner:
                raise FaultError(grpc.StatusCode.FAILED_PRECONDITION,
                                 f"fault.clock_skew: clock skew fault {self._clock_owner!r} is already active "
                                 f"on node {self.ctx.node_id}; recover it first")
            skew = fault.clock_skew
            self.ctx.clock.set_skew(skew.offset_ms / 1000.0, skew.drift_ppm)
            self._clock_owner = fault.id

            def reset_clock() -> None:
                self._clock_owner = ""
                self.ctx.clock.reset()

            return f"clock offset {skew.offset_ms} ms, drift {skew.drift_ppm} ppm", reset_clock
        if kind == "corruption":
            c = fault.corruption
            corruption = await asyncio.to_thread(resources.Corruption.apply, self.ctx.data_dir, c.target, c.bytes,
                                                 c.seed, fault.id)
            return corruption.detail, lambda: asyncio.to_thread(corruption.restore)
        raise FaultError(grpc.StatusCode.UNIMPLEMENTED, f"fault.kind: {kind!r} is not supported by this agent")

    async def _disk_fill(self, fault: pb.Fault) -> tuple[str, Undo]:
        if fault.disk_fill.enospc:
            self._enospc.add(fault.id)
            process_faults.DISK.enospc = True

            def clear() -> None:
                self._enospc.discard(fault.id)
                process_faults.DISK.enospc = bool(self._enospc)

            return "storage writes fail with ENOSPC", clear
        leave = fault.disk_fill.leave_free_bytes
        try:
            self.ctx.data_dir.mkdir(parents=True, exist_ok=True)
            floor = self.disk_floor.bytes_for(self.ctx.data_dir)
            ballast = await asyncio.to_thread(resources.Ballast.fill, self.ctx.data_dir, leave, floor)
        except OSError as exc:
            raise FaultError(grpc.StatusCode.FAILED_PRECONDITION,
                             f"fault.disk_fill: cannot write ballast in {self.ctx.data_dir}: {exc}") from None
        free = resources.free_bytes(self.ctx.data_dir)
        bounded = f"the safe floor of {floor} bytes" if floor >= leave else f"leaveFreeBytes={leave}"
        detail = (f"wrote {ballast.written} ballast bytes in {ballast.directory}; {free} bytes free "
                  f"(filled down to {bounded}; the floor is {self.disk_floor})")
        guard = asyncio.create_task(self._guard_floor(fault.id, ballast, floor)) if floor else None

        async def remove() -> None:
            if guard is not None:
                guard.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await guard
            await asyncio.to_thread(ballast.remove)

        return detail, remove

    @staticmethod
    async def _guard_floor(fault_id: str, ballast: resources.Ballast, floor: int) -> None:
        """While the ballast is held, gives space back whenever free space drops below the floor."""
        while True:
            await asyncio.sleep(resources.FLOOR_GUARD_S)
            try:
                released = await asyncio.to_thread(ballast.trim, floor)
            except OSError:
                log.exception("fault %s: could not trim the ballast", fault_id)
                continue
            if released:
                log.warning("fault %s: free space fell below the safe floor of %d bytes; released %d ballast "
                            "bytes (%d held)", fault_id, floor, released, ballast.written)


async def _noop() -> None:
    return None


class FaultAgentServicer(pb_grpc.FaultAgentServicer):
    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._token = agent.ctx.agent_token.encode()

    async def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        value = ""
        for key, v in context.invocation_metadata() or ():
            if key == "authorization":
                value = v if isinstance(v, str) else v.decode(errors="replace")
        if not value:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "FaultAgent: missing 'authorization: Bearer <token>' metadata; "
                                "pass the cluster's agent token")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._token):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                f"FaultAgent: agent token rejected by node {self._agent.ctx.node_id}; "
                                f"use 'authorization: Bearer <token>' with the cluster's agent token")

    async def Inject(self, request: pb.InjectRequest, context: grpc.aio.ServicerContext) -> pb.InjectResponse:
        await self._authorize(context)
        if not request.HasField("fault"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "fault: required")
        try:
            entry, created = await self._agent.registry.inject(request.fault)
        except FaultError as exc:
            await context.abort(exc.code, exc.message)
        except OSError as exc:
            await context.abort(grpc.StatusCode.INTERNAL, f"fault {request.fault.id!r}: {exc}")
        return pb.InjectResponse(id=entry.fault.id, created=created, detail=entry.detail)

    async def Recover(self, request: pb.RecoverRequest, context: grpc.aio.ServicerContext) -> pb.RecoverResponse:
        await self._authorize(context)
        if not request.id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "id: required (the id the fault was injected with)")
        return pb.RecoverResponse(recovered=await self._agent.registry.recover(request.id))

    async def List(self, request: pb.ListRequest, context: grpc.aio.ServicerContext) -> pb.ListResponse:
        await self._authorize(context)
        ctx = self._agent.ctx
        return pb.ListResponse(faults=[e.to_proto() for e in self._agent.registry.active()],
                               node_id=ctx.node_id, started_at=ctx.started_at)

    async def RecoverAll(self, request: pb.RecoverAllRequest,
                         context: grpc.aio.ServicerContext) -> pb.RecoverAllResponse:
        await self._authorize(context)
        return pb.RecoverAllResponse(recovered=await self._agent.registry.recover_all())
