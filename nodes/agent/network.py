"""Network faults, applied by gRPC interceptors per peer and direction.

Outbound: client interceptors on every peer channel (built per peer id) stamp each
call with `faultlab-from: <node id>` (unless the caller set it, e.g. to `<id>=<host:port>`)
and drop, fail, delay, throttle or duplicate it.
Inbound: one server interceptor reads `faultlab-from` to learn the sending peer (no
header = client traffic, faulted only with `include_clients`). The FaultAgent,
Health and reflection services are never faulted, so faults can always be recovered.
"""

from __future__ import annotations

import asyncio
import inspect
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from faultlab.nodes.agent.faults import fault_kind
from faultlab.protos.agent.v1 import agent_pb2 as pb

FROM_METADATA = "faultlab-from"
EXEMPT_PREFIXES = ("/faultlab.agent.v1.FaultAgent/", "/grpc.health.v1.Health/", "/grpc.reflection.")


def exempt(method: str) -> bool:
    return method.startswith(EXEMPT_PREFIXES)


def matches(match: pb.TrafficMatch, *, inbound: bool, peer: str | None, method: str) -> bool:
    """Whether a call is subject to a rule. `peer` None = inbound client traffic (no faultlab-from)."""
    if exempt(method):
        return False
    wanted = pb.DIRECTION_INBOUND if inbound else pb.DIRECTION_OUTBOUND
    if match.direction not in (pb.DIRECTION_BOTH, wanted):
        return False
    if match.methods and not any(method.startswith(m) for m in match.methods):
        return False
    if peer is None:
        return inbound and match.include_clients
    return not match.peers or peer in match.peers


def sender_id(value: str | bytes) -> str:
    """The peer id in a `faultlab-from` value: `<id>` or `<id>=<host:port>`."""
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    return text.partition("=")[0]


def message_size(message: Any) -> int:
    if isinstance(message, bytes | bytearray | memoryview):
        return len(message)
    byte_size = getattr(message, "ByteSize", None)
    return byte_size() if byte_size else 0


class TokenBucket:
    """A link of fixed bandwidth: each message leaves when the link has carried the ones before it."""

    def __init__(self, bytes_per_second: int) -> None:
        self.rate = float(bytes_per_second)
        self._free_at = 0.0

    def reserve(self, nbytes: int, now: float) -> float:
        """Seconds the caller must wait before its `nbytes` have gone through."""
        start = max(now, self._free_at)
        self._free_at = start + nbytes / self.rate
        return self._free_at - now


@dataclass
class Rule:
    fault: pb.Fault
    kind: str
    rng: random.Random
    buckets: dict[bool, TokenBucket] = field(default_factory=dict)


@dataclass
class Plan:
    """What the matching rules do to one call."""

    drop: str = ""
    error: tuple[grpc.StatusCode, str] | None = None
    delay: float = 0.0
    duplicate: bool = False
    slow: float = 0.0
    buckets: list[TokenBucket] = field(default_factory=list)

    def throttle(self, nbytes: int) -> float:
        if not self.buckets:
            return 0.0
        now = asyncio.get_running_loop().time()
        return max(b.reserve(nbytes, now) for b in self.buckets)


class NetworkFaults:
    """The active network rules, shared by the server interceptor and every channel's interceptors."""

    def __init__(self, seed: int | None = None) -> None:
        self._rules: dict[str, Rule] = {}
        self._seed = seed
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def active(self) -> bool:
        return bool(self._rules)

    def add(self, fault: pb.Fault) -> str:
        seed = self._seed if self._seed is not None else None
        rule = Rule(fault=fault, kind=fault_kind(fault), rng=random.Random(seed))
        if rule.kind == "bandwidth":
            rule.buckets = {d: TokenBucket(fault.bandwidth.bytes_per_second) for d in (False, True)}
        self._rules[fault.id] = rule
        return describe(fault)

    def remove(self, fault_id: str) -> None:
        self._rules.pop(fault_id, None)

    def shapes(self, *, inbound: bool, peer: str | None, method: str) -> bool:
        """Whether any active rule matches this traffic (no random draw, unlike :meth:`plan`)."""
        return bool(self._rules) and any(matches(r.fault.match, inbound=inbound, peer=peer, method=method)
                                         for r in list(self._rules.values()))

    def plan(self, *, inbound: bool, peer: str | None, method: str) -> Plan | None:
        if not self._rules or exempt(method):
            return None
        plan: Plan | None = None
        for rule in list(self._rules.values()):
            if not matches(rule.fault.match, inbound=inbound, peer=peer, method=method):
                continue
            plan = plan or Plan()
            f, rng = rule.fault, rule.rng
            tag = f"faultlab agent: {method} {'from' if inbound else 'to'} {peer or 'client'} dropped by fault"
            if rule.kind == "partition":
                plan.drop = plan.drop or f"{tag} {f.id!r} (partition)"
            elif rule.kind == "loss":
                if rng.random() < f.loss.probability:
                    plan.drop = plan.drop or f"{tag} {f.id!r} (loss)"
            elif rule.kind == "error":
                if plan.error is None and rng.random() < f.error.probability:
                    message = f.error.message or f"faultlab agent: injected {f.error.code} by fault {f.id!r}"
                    plan.error = (grpc.StatusCode[f.error.code], message)
            elif rule.kind == "delay":
                jitter = f.delay.jitter_ms
                plan.delay += max(0.0, f.delay.latency_ms + rng.uniform(-jitter, jitter)) / 1000.0
            elif rule.kind == "bandwidth":
                plan.buckets.append(rule.buckets[inbound])
            elif rule.kind == "duplicate":
                plan.duplicate = plan.duplicate or rng.random() < f.duplicate.probability
            elif rule.kind == "slow_response" and inbound:
                plan.slow += f.slow_response.delay_ms / 1000.0
        return plan

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def server_interceptor(self) -> grpc.aio.ServerInterceptor:
        return InboundInterceptor(self)

    def client_interceptors(self, node_id: str, peer_id: str) -> list[grpc.aio.ClientInterceptor]:
        return [
            _OutboundUnaryUnary(self, node_id, peer_id),
            _OutboundStreamUnary(self, node_id, peer_id),
            _OutboundUnaryStream(self, node_id, peer_id),
            _OutboundStreamStream(self, node_id, peer_id),
        ]


def describe(fault: pb.Fault) -> str:
    m = fault.match
    scope = (f"peers={','.join(m.peers) or '*'} direction={pb.Direction.Name(m.direction)[10:].lower()}"
             f"{' methods=' + ','.join(m.methods) if m.methods else ''}"
             f"{' +clients' if m.include_clients else ''}")
    kind = fault_kind(fault)
    body = getattr(fault, kind)
    params = " ".join(f"{fd.name}={value}" for fd, value in body.ListFields())
    return f"{kind} {params} {scope}".replace("  ", " ")


async def _call_behavior(behavior: Callable[..., Any], request: Any, context: Any) -> Any:
    result = behavior(request, context)
    if inspect.isawaitable(result):
        result = await result
    return result


async def _iterate_behavior(behavior: Callable[..., Any], request: Any, context: Any) -> AsyncIterator[Any]:
    result = behavior(request, context)
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    elif inspect.isawaitable(result):
        await result
    else:
        for item in result or ():
            yield item


async def _aiter(iterator: Any) -> AsyncIterator[Any]:
    if hasattr(iterator, "__aiter__"):
        async for message in iterator:
            yield message
    else:
        for message in iterator:
            yield message


async def _meter(iterator: Any, plan: Plan) -> AsyncIterator[Any]:
    if hasattr(iterator, "__aiter__"):
        async for message in iterator:
            await asyncio.sleep(plan.throttle(message_size(message)))
            yield message
    else:
        for message in iterator:
            await asyncio.sleep(plan.throttle(message_size(message)))
            yield message


class InboundInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, faults: NetworkFaults) -> None:
        self._faults = faults

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method  # type: ignore[attr-defined]
        if handler is None or exempt(method):
            return handler
        # A stream of requests (KV.Pipeline) may open before a fault starts and outlive it:
        # it is always wrapped, and faults are applied to each message as it arrives.
        streaming = bool(handler.stream_unary or handler.stream_stream)
        if not self._faults.active and not streaming:
            return handler
        peer: str | None = None
        for key, value in details.invocation_metadata or ():  # type: ignore[attr-defined]
            if key == FROM_METADATA:
                peer = sender_id(value)
        faults = self._faults

        async def before(context: grpc.aio.ServicerContext, nbytes: int) -> Plan | None:
            plan = faults.plan(inbound=True, peer=peer, method=method)
            if plan is None:
                return None
            if plan.drop:
                await context.abort(grpc.StatusCode.UNAVAILABLE, plan.drop)
            if plan.error:
                await context.abort(*plan.error)
            wait = plan.delay + plan.throttle(nbytes)
            if wait > 0:
                await asyncio.sleep(wait)
            return plan

        kwargs = {"request_deserializer": handler.request_deserializer,
                  "response_serializer": handler.response_serializer}
        if handler.unary_unary:
            behavior = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                plan = await before(context, message_size(request))
                response = await _call_behavior(behavior, request, context)
                if plan and plan.duplicate:
                    response = await _call_behavior(behavior, request, context)
                if plan and plan.slow:
                    await asyncio.sleep(plan.slow)
                return response

            return grpc.unary_unary_rpc_method_handler(unary_unary, **kwargs)
        async def opened(context: grpc.aio.ServicerContext) -> Plan | None:
            """At a stream's start only a drop or an error applies (it refuses the stream)."""
            plan = faults.plan(inbound=True, peer=peer, method=method)
            if plan is not None and plan.drop:
                await context.abort(grpc.StatusCode.UNAVAILABLE, plan.drop)
            if plan is not None and plan.error:
                await context.abort(*plan.error)
            return plan

        async def each(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            """The stream's messages under the faults active when each arrives.

            A dropped or failed message ends the stream with UNAVAILABLE or the injected code, taking
            what is in flight on it down, as a broken connection would. A delayed or throttled message
            is handed on at its arrival plus the delay, in order; once one is held back, the rest are
            read ahead so each keeps its own arrival time (latency adds to each message, not up).
            """
            loop = asyncio.get_running_loop()
            source = _aiter(requests)
            ahead: asyncio.Queue[tuple[float, Any] | None] | None = None
            reader: asyncio.Task[None] | None = None
            last_due = 0.0

            async def read_ahead(queue: asyncio.Queue[tuple[float, Any] | None]) -> None:
                try:
                    async for m in source:
                        queue.put_nowait((loop.time(), m))
                finally:
                    queue.put_nowait(None)

            try:
                while True:
                    if ahead is None:
                        try:
                            message = await source.__anext__()
                        except StopAsyncIteration:
                            return
                        arrived = loop.time()
                    else:
                        item = await ahead.get()
                        if item is None:
                            return
                        arrived, message = item
                    plan = faults.plan(inbound=True, peer=peer, method=method) if faults.active else None
                    if plan is not None:
                        if plan.drop:
                            await context.abort(grpc.StatusCode.UNAVAILABLE, plan.drop)
                        if plan.error:
                            await context.abort(*plan.error)
                        due = max(arrived + plan.delay + plan.throttle(message_size(message)), last_due)
                        last_due = due
                        if due > loop.time():
                            if ahead is None:
                                ahead = asyncio.Queue()
                                reader = loop.create_task(read_ahead(ahead))
                            await asyncio.sleep(due - loop.time())
                    yield message
            finally:
                if reader is not None:
                    reader.cancel()

        if handler.stream_unary:
            behavior = handler.stream_unary

            async def stream_unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                plan = await opened(context)
                response = await _call_behavior(behavior, each(requests, context), context)
                if plan and plan.slow:
                    await asyncio.sleep(plan.slow)
                return response

            return grpc.stream_unary_rpc_method_handler(stream_unary, **kwargs)
        if handler.unary_stream:
            behavior = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                plan = await before(context, message_size(request))
                if plan and plan.slow:
                    await asyncio.sleep(plan.slow)
                async for item in _iterate_behavior(behavior, request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(unary_stream, **kwargs)
        behavior = handler.stream_stream

        async def stream_stream(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await opened(context)
            async for item in _iterate_behavior(behavior, each(requests, context), context):
                yield item

        return grpc.stream_stream_rpc_method_handler(stream_stream, **kwargs)


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


class _Outbound:
    def __init__(self, faults: NetworkFaults, node_id: str, peer_id: str) -> None:
        self._faults = faults
        self._node_id = node_id
        self._peer_id = peer_id

    def _stamp(self, details: grpc.aio.ClientCallDetails) -> tuple[grpc.aio.ClientCallDetails, str]:
        pairs: list[tuple[str, Any]] = list(details.metadata or ())
        metadata = grpc.aio.Metadata(*pairs)
        if not any(k == FROM_METADATA for k, _ in pairs):  # a caller's own `id=address` value is kept
            metadata.add(FROM_METADATA, self._node_id)
        method = details.method
        name = method.decode() if isinstance(method, bytes) else str(method)
        return details._replace(metadata=metadata), name  # type: ignore[attr-defined]

    async def _before(self, method: str, nbytes: int) -> Plan | None:
        plan = self._faults.plan(inbound=False, peer=self._peer_id, method=method)
        if plan is None:
            return None
        if plan.drop:
            raise _rpc_error(grpc.StatusCode.UNAVAILABLE, plan.drop)
        if plan.error:
            raise _rpc_error(*plan.error)
        wait = plan.delay + plan.throttle(nbytes)
        if wait > 0:
            await asyncio.sleep(wait)
        return plan


async def _drain(call: Any) -> None:
    try:
        await call
    except Exception:
        pass


class _OutboundUnaryUnary(_Outbound, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        details, method = self._stamp(client_call_details)
        plan = await self._before(method, message_size(request))
        call = await continuation(details, request)
        if plan and plan.duplicate:
            self._faults.spawn(_drain(await continuation(details, request)))
        return call


class _OutboundStreamUnary(_Outbound, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any,
                                     request_iterator: Any) -> Any:
        details, method = self._stamp(client_call_details)
        plan = await self._before(method, 0)
        if plan and plan.buckets and request_iterator is not None:
            request_iterator = _meter(request_iterator, plan)
        return await continuation(details, request_iterator)


class _OutboundUnaryStream(_Outbound, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        details, method = self._stamp(client_call_details)
        await self._before(method, message_size(request))
        return await continuation(details, request)


class _OutboundStreamStream(_Outbound, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any,
                                      request_iterator: Any) -> Any:
        details, method = self._stamp(client_call_details)
        plan = await self._before(method, 0)
        if plan and plan.buckets and request_iterator is not None:
            request_iterator = _meter(request_iterator, plan)
        return await continuation(details, request_iterator)
