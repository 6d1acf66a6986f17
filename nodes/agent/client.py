"""Client of a node's FaultAgent (used by the chaos engine) and `Fault` builders from plain dicts.

`fault_from_spec("delay", {"latencyMs": 100}, id="exp-1-delay", ttl_seconds=60,
match={"peers": ["n2"], "direction": "outbound"})` builds and validates a `Fault`;
errors are `FaultSpecError` (a ValueError) naming the field.
"""

from __future__ import annotations

import builtins
import math
import re
from collections.abc import Mapping
from typing import Any

import grpc

from faultlab.nodes.agent.faults import FaultError, validate_fault
from faultlab.protos.agent.v1 import agent_pb2 as pb
from faultlab.protos.agent.v1 import agent_pb2_grpc as pb_grpc

__all__ = ["SPEC_TYPES", "AgentClient", "FaultSpecError", "fault_from_spec", "match_from_spec"]


class FaultSpecError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


# YAML fault type -> (Fault oneof field, {param: (proto field, default or REQUIRED)})
REQUIRED = object()
SPEC_TYPES: dict[str, tuple[str, dict[str, tuple[str, Any]]]] = {
    "delay": ("delay", {"latency_ms": ("latency_ms", REQUIRED), "jitter_ms": ("jitter_ms", 0)}),
    "loss": ("loss", {"probability": ("probability", REQUIRED)}),
    "duplicate": ("duplicate", {"probability": ("probability", 1.0)}),
    "bandwidth": ("bandwidth", {"bytes_per_second": ("bytes_per_second", REQUIRED)}),
    "partition": ("partition", {}),
    "error": ("error", {"code": ("code", REQUIRED), "probability": ("probability", 1.0),
                        "message": ("message", "")}),
    "slowResponse": ("slow_response", {"delay_ms": ("delay_ms", REQUIRED)}),
    "crash": ("crash", {"exit_code": ("exit_code", 137)}),
    "cpuBurn": ("cpu_burn", {"threads": ("threads", 1), "duty_cycle": ("duty_cycle", 1.0)}),
    "memoryPressure": ("memory_pressure", {"megabytes": ("megabytes", REQUIRED)}),
    "diskFill": ("disk_fill", {"leave_free_bytes": ("leave_free_bytes", 0), "enospc": ("enospc", False)}),
    "clockSkew": ("clock_skew", {"offset_ms": ("offset_ms", 0), "drift_ppm": ("drift_ppm", 0.0)}),
    "corruption": ("corruption", {"target": ("target", REQUIRED), "bytes": ("bytes", 1), "seed": ("seed", 0)}),
}
_ALIASES = {t.lower(): t for t in SPEC_TYPES} | {
    "slow_response": "slowResponse", "cpu_burn": "cpuBurn", "memory_pressure": "memoryPressure",
    "disk_fill": "diskFill", "clock_skew": "clockSkew", "duplication": "duplicate",
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")
_DIRECTIONS = {"both": pb.DIRECTION_BOTH, "outbound": pb.DIRECTION_OUTBOUND, "inbound": pb.DIRECTION_INBOUND}


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower()


def _duration_ms(field: str, value: Any) -> int:
    """Milliseconds from an int (ms) or a string like '100ms', '1.5s', '2m'."""
    if isinstance(value, bool):
        raise FaultSpecError(field, f"must be a duration like '100ms' or a number of ms, got {value!r}")
    if isinstance(value, int | float):
        return int(value)
    m = _DURATION.match(str(value))
    if not m:
        raise FaultSpecError(field, f"must be a duration like '100ms', '1.5s' or '2m', got {value!r}")
    scale = {"ms": 1, None: 1, "s": 1000, "m": 60_000}[m.group(2)]
    return int(float(m.group(1)) * scale)


def _coerce(field: str, proto_field: Any, value: Any) -> Any:
    fd = proto_field
    try:
        if fd.type in (fd.TYPE_DOUBLE, fd.TYPE_FLOAT):
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if fd.type == fd.TYPE_BOOL:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if fd.type == fd.TYPE_STRING:
            return str(value)
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise TypeError
        number = int(value)
    except (TypeError, ValueError):
        raise FaultSpecError(field, f"has the wrong type: {value!r}") from None
    if fd.type in (fd.TYPE_UINT32, fd.TYPE_UINT64) and number < 0:
        raise FaultSpecError(field, f"must be >= 0, got {number}")
    if number >= 1 << (32 if fd.type in (fd.TYPE_UINT32, fd.TYPE_INT32) else 63):
        raise FaultSpecError(field, f"is too large: {number}")
    return number


def match_from_spec(match: Mapping[str, Any] | pb.TrafficMatch | None, field: str = "match") -> pb.TrafficMatch:
    """TrafficMatch from {peers, direction: both|inbound|outbound, methods, include_clients}."""
    if match is None:
        return pb.TrafficMatch()
    if isinstance(match, pb.TrafficMatch):
        return match
    out = pb.TrafficMatch()
    for key, value in match.items():
        name = _snake(key)
        if name == "peers":
            peers = [value] if isinstance(value, str) else list(value or ())
            out.peers.extend(str(p) for p in peers)
        elif name == "methods":
            methods = [value] if isinstance(value, str) else list(value or ())
            out.methods.extend(str(m) for m in methods)
        elif name == "direction":
            direction = _DIRECTIONS.get(str(value).lower())
            if direction is None:
                raise FaultSpecError(f"{field}.direction", f"must be one of both, inbound, outbound; got {value!r}")
            out.direction = direction
        elif name == "include_clients":
            if not isinstance(value, bool):
                raise FaultSpecError(f"{field}.includeClients", f"must be true or false, got {value!r}")
            out.include_clients = value
        else:
            raise FaultSpecError(f"{field}.{key}", "unknown key; use peers, direction, methods, includeClients")
    return out


def fault_from_spec(type: str, params: Mapping[str, Any] | None = None, *, id: str, ttl_seconds: int,
                    match: Mapping[str, Any] | pb.TrafficMatch | None = None) -> pb.Fault:
    """A validated `Fault` from a fault type (see SPEC_TYPES) and its parameters.

    Parameter keys may be camelCase or snake_case; `latency`, `jitter` and `delay` also take
    durations ('100ms', '1s'). Raises FaultSpecError naming the bad field.
    """
    canonical = _ALIASES.get(type.lower()) if isinstance(type, str) else None
    if canonical is None:
        raise FaultSpecError("type", f"unknown fault type {type!r}; use one of {', '.join(SPEC_TYPES)}")
    oneof, spec = SPEC_TYPES[canonical]
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int | float):
        raise FaultSpecError("ttlSeconds", f"must be a number of seconds, got {ttl_seconds!r}")
    if ttl_seconds <= 0:
        raise FaultSpecError("ttlSeconds", "must be > 0: every fault heals itself when its TTL ends")
    if ttl_seconds >= 1 << 32:
        raise FaultSpecError("ttlSeconds", f"is too large: {ttl_seconds}")
    fault = pb.Fault(id=id, ttl_seconds=math.ceil(ttl_seconds))
    fault.match.CopyFrom(match_from_spec(match))
    body = getattr(fault, oneof)
    body.SetInParent()
    given: dict[str, Any] = {}
    for key, value in (params or {}).items():
        name = _snake(str(key))
        if name in ("latency", "jitter", "delay") and f"{name}_ms" in spec:
            given[f"{name}_ms"] = _duration_ms(f"{canonical}.{key}", value)
        elif name in spec:
            given[name] = value
        else:
            known = ", ".join(spec) or "no parameters"
            raise FaultSpecError(f"{canonical}.{key}", f"unknown parameter; {canonical} takes {known}")
    for name, (proto_name, default) in spec.items():
        if name not in given:
            if default is REQUIRED:
                raise FaultSpecError(f"{canonical}.{name}", "required")
            value = default
        else:
            value = given[name]
        fd = body.DESCRIPTOR.fields_by_name[proto_name]
        if canonical == "error" and name == "code":
            value = str(value).upper()
        setattr(body, proto_name, _coerce(f"{canonical}.{name}", fd, value))
    try:
        validate_fault(fault)
    except FaultError as exc:
        field, _, message = exc.message.partition(": ")
        field = field.replace(f"fault.{oneof}.", f"{canonical}.").replace("fault.ttl_seconds", "ttlSeconds")
        raise FaultSpecError(field.removeprefix("fault."), message) from None
    return fault


class AgentClient:
    """Async client of one node's FaultAgent, authenticated with the cluster's agent token."""

    def __init__(self, address: str, token: str, *, timeout: float = 10.0,
                 channel: grpc.aio.Channel | None = None) -> None:
        self.address = address
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._channel = channel or grpc.aio.insecure_channel(address)
        self._stub = pb_grpc.FaultAgentStub(self._channel)

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def inject(self, fault: pb.Fault, *, timeout: float | None = None) -> pb.InjectResponse:
        return await self._stub.Inject(pb.InjectRequest(fault=fault), metadata=self._metadata,
                                       timeout=timeout or self.timeout)

    async def recover(self, fault_id: str, *, timeout: float | None = None) -> bool:
        response = await self._stub.Recover(pb.RecoverRequest(id=fault_id), metadata=self._metadata,
                                            timeout=timeout or self.timeout)
        return response.recovered

    async def list(self, *, timeout: float | None = None) -> pb.ListResponse:
        return await self._stub.List(pb.ListRequest(), metadata=self._metadata, timeout=timeout or self.timeout)

    async def recover_all(self, *, timeout: float | None = None) -> builtins.list[str]:
        response = await self._stub.RecoverAll(pb.RecoverAllRequest(), metadata=self._metadata,
                                               timeout=timeout or self.timeout)
        return list(response.recovered)
