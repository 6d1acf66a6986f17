"""CustomResourceDefinitions generated from the resource models (the one source of truth).

`crd(RaftCluster)` turns a model's JSON schema into a structural OpenAPI v3 schema
(references inlined, Optional unwrapped, defaults — including default factories —
kept on the spec, descriptions kept everywhere) and adds what only Kubernetes has:
CEL rules (`x-kubernetes-validations`) mirroring the models' cross-field
validators, the status subresource, printer columns, short names and the
`faultlab` category. `tools/gen_crds.py` writes them to `crds/`.

Deliberate differences from the models: on Kubernetes `spec.replicas` of a
RaftCluster is required (a default member count is fine for `faultlab up`, not for
a resource that owns pods and volumes), lists in a spec are bounded (MAX_ITEMS) so
CEL rules fit the API server's cost budget, and a ChaosExperiment's status also holds
`journal`, the engine's resumable state, which only the operator reads.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, get_args

from pydantic import BaseModel

from faultlab.operator.api.chaos import QUORUM_FAULTS, ChaosExperiment
from faultlab.operator.api.common import GROUP, VERSION, Resource
from faultlab.operator.api.raftcluster import RaftCluster

JSON = dict[str, Any]
CATEGORY = "faultlab"
# Lists in a spec without a bound of their own get this one: CEL rules over list items are costed by the
# longest list the API server could store, which for an unbounded list exceeds the rule budget.
MAX_ITEMS = 64

# Keys a structural schema may carry (apiextensions.k8s.io/v1 JSONSchemaProps we use).
_ALLOWED = {
    "type", "format", "description", "default", "enum", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "multipleOf", "minLength", "maxLength", "pattern", "minItems", "maxItems", "uniqueItems",
    "minProperties", "maxProperties", "required", "items", "properties", "additionalProperties", "nullable",
}


@dataclass(frozen=True)
class Rule:
    """A CEL rule placed at `at` (a dotted path of properties from the object root; `[]` steps into items)."""

    at: str
    rule: str
    message: str
    field_path: str | None = None


@dataclass(frozen=True)
class KindInfo:
    model: type[Resource]
    plural: str
    singular: str
    short_names: list[str]
    columns: list[JSON]
    rules: list[Rule] = field(default_factory=list)
    required: dict[str, list[str]] = field(default_factory=dict)  # path -> extra required properties
    status_extra: dict[str, JSON] = field(default_factory=dict)  # operator-only status fields


def _column(name: str, json_path: str, kind: str = "string", description: str = "", priority: int = 0) -> JSON:
    col: JSON = {"name": name, "type": kind, "jsonPath": json_path}
    if description:
        col["description"] = description
    if priority:
        col["priority"] = priority
    return col


AGE = _column("Age", ".metadata.creationTimestamp", "date")
_QUORUM_LIST = ", ".join(f"'{t}'" for t in sorted(QUORUM_FAULTS))

KINDS: dict[str, KindInfo] = {
    "RaftCluster": KindInfo(
        # Not `rc`: kubectl resolves that to the core ReplicationController first.
        model=RaftCluster, plural="raftclusters", singular="raftcluster", short_names=["raft"],
        columns=[
            _column("Replicas", ".spec.replicas", "integer", "Desired voting members."),
            _column("Ready", ".status.readyReplicas", "integer", "Members serving."),
            _column("Leader", ".status.leader", description="Current leader's member id."),
            _column("Term", ".status.term", "integer", "The leader's term."),
            _column("Phase", ".status.phase", description="Lifecycle phase."),
            AGE,
        ],
        rules=[
            Rule("spec.timings", "self.heartbeatTicks < self.electionTicks",
                 "heartbeatTicks must be less than electionTicks, or followers start elections between "
                 "heartbeats; typical: heartbeatTicks 1, electionTicks 10", ".heartbeatTicks"),
            Rule("spec.storage", "!has(self.storageClassName) || self.type == 'pvc'",
                 "storageClassName applies only to type: pvc; set type: pvc or remove it", ".storageClassName"),
        ],
        required={"": ["spec"], "spec": ["replicas"]},
    ),
    "ChaosExperiment": KindInfo(
        model=ChaosExperiment, plural="chaosexperiments", singular="chaosexperiment", short_names=["chaos"],
        columns=[
            _column("Target", ".spec.target.name", description="The system under test."),
            _column("Phase", ".status.phase", description="Where the experiment is."),
            _column("Verdict", ".status.verdict", description="Result, once finished."),
            _column("Availability", ".status.availability", "number", "Fraction of operations that succeeded."),
            _column("MTTR", ".status.mttrSeconds", "number", "Seconds from fault to recovered steady state."),
            AGE,
        ],
        rules=[
            Rule("spec",
                 "self.blastRadius.allowQuorumLoss || has(self.rollout) || "
                 "!self.faults.exists(f, f.type in [" + _QUORUM_LIST + "] && "
                 "(f.target.mode == 'all' || (f.target.mode == 'percent' && has(f.target.value) && "
                 "f.target.value >= 100.0)))",
                 "a fault that hits every member takes the quorum out; target fewer members, widen it step by step "
                 "with a rollout, or set blastRadius.allowQuorumLoss: true to accept losing availability",
                 ".blastRadius.allowQuorumLoss"),
            Rule("spec",
                 "self.blastRadius.allowQuorumLoss || !has(self.blastRadius.maxPercent) || "
                 "self.blastRadius.maxPercent < 100.0",
                 "blastRadius.maxPercent 100 exceeds what any cluster tolerates without losing quorum; lower it "
                 "or set blastRadius.allowQuorumLoss: true", ".blastRadius.maxPercent"),
            Rule("spec.faults[].target", "self.mode != 'fixed' || (has(self.value) && self.value >= 1.0)",
                 "mode fixed needs value, a whole number >= 1", ".value"),
            Rule("spec.faults[].target",
                 "self.mode != 'percent' || (has(self.value) && self.value > 0.0 && self.value <= 100.0)",
                 "mode percent needs value in (0, 100]", ".value"),
            Rule("spec.faults[].target", "!has(self.value) || self.mode in ['fixed', 'percent']",
                 "value applies only to mode fixed or percent; remove it", ".value"),
            Rule("spec.rollout.steps[]", "has(self.maxTargets) != has(self.maxPercent)",
                 "a rollout step needs exactly one of maxTargets or maxPercent"),
            Rule("spec.steadyState.probes[]",
                 "self.type != 'workloadErrorRate' || (has(self.tolerance) && has(self.tolerance.max) && "
                 "self.tolerance.max <= 1.0)",
                 "type workloadErrorRate needs tolerance.max, an error rate 0..1", ".tolerance"),
            Rule("spec.steadyState.probes[]",
                 "self.type != 'workloadLatency' || (has(self.tolerance) && has(self.tolerance.maxMs))",
                 "type workloadLatency needs tolerance.maxMs", ".tolerance"),
            Rule("spec.steadyState.probes[]", "(self.type == 'http') == has(self.url)",
                 "url is required for, and applies only to, type http", ".url"),
            Rule("spec.steadyState.probes[]", "(self.type == 'command') == has(self.command)",
                 "command is required for, and applies only to, type command", ".command"),
        ],
        required={"": ["spec"]},
        status_extra={"journal": {
            "type": "object", "x-kubernetes-preserve-unknown-fields": True,
            "description": "The experiment engine's journal (phase, faults and their agents, timeline), saved "
                           "before every action so a restarted operator resumes and rolls back. Operator-internal.",
        }},
    ),
}


# ---------------------------------------------------------------- schema conversion


def _models(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every model reachable from `root`, by class name (pydantic's $defs keys)."""
    found: dict[str, type[BaseModel]] = {}

    def visit(tp: Any) -> None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if tp.__name__ in found:
                return
            found[tp.__name__] = tp
            for finfo in tp.model_fields.values():
                visit(finfo.annotation)
            return
        for arg in get_args(tp):
            visit(arg)

    visit(root)
    return found


def _factory_default(model: type[BaseModel], prop: str) -> tuple[bool, Any]:
    """(True, value) when field `prop` (alias) of `model` has a default factory worth writing into the CRD."""
    for fname, finfo in model.model_fields.items():
        if prop not in (fname, finfo.alias) or finfo.default_factory is None:
            continue
        value = finfo.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):  # written out whole: CEL rules validate defaults as they stand
            return True, value.model_dump(mode="json", by_alias=True, exclude_none=True)
        if value in ([], {}):
            return False, None
        if isinstance(value, list | dict):
            return True, copy.deepcopy(value)
    return False, None


class _Converter:
    def __init__(self, root: type[BaseModel]) -> None:
        self.schema = root.model_json_schema(by_alias=True)
        self.defs: dict[str, JSON] = self.schema.get("$defs", {})
        self.models = _models(root)

    def convert(self, node: JSON, model: type[BaseModel] | None = None, *, defaults: bool = True) -> JSON:
        node = dict(node)
        if "$ref" in node:
            name = node.pop("$ref").rsplit("/", 1)[-1]
            target = self.convert(self.defs[name], self.models.get(name), defaults=defaults)
            if node.get("description"):
                target["description"] = node["description"]
            if defaults and "default" in node and node["default"] is not None:
                target["default"] = node["default"]
            return target
        for key in ("anyOf", "oneOf"):
            if key in node:
                branches = [b for b in node.pop(key) if b.get("type") != "null"]
                extra = {k: v for k, v in node.items() if k in ("description", "default") or k.startswith("x-kub")}
                if len(branches) == 1:
                    return self.convert({**branches[0], **extra}, defaults=defaults)
                # A union of unlike types (e.g. a probe or a probe's name) is not structural: accept any value.
                out: JSON = {"x-kubernetes-preserve-unknown-fields": True}
                if "description" in extra:
                    out["description"] = extra["description"]
                return out
        if "const" in node:
            node["enum"] = [node.pop("const")]
        out = {k: v for k, v in node.items() if k in _ALLOWED or k.startswith("x-kubernetes-")}
        if "exclusiveMinimum" in out and not isinstance(out["exclusiveMinimum"], bool):
            out["minimum"], out["exclusiveMinimum"] = out["exclusiveMinimum"], True
        if "exclusiveMaximum" in out and not isinstance(out["exclusiveMaximum"], bool):
            out["maximum"], out["exclusiveMaximum"] = out["exclusiveMaximum"], True
        if out.get("default", 0) is None or not defaults:
            out.pop("default", None)
        if "properties" in node:
            out["type"] = "object"
            out.pop("additionalProperties", None)  # structural schemas prune unknown fields instead
            props: JSON = {}
            for prop, sub in node["properties"].items():
                converted = self.convert(sub, defaults=defaults)
                if defaults and model is not None and "default" not in converted:
                    has, value = _factory_default(model, prop)
                    if has:
                        converted["default"] = value
                props[prop] = converted
            out["properties"] = props
        elif out.get("type") == "object":
            extra_props = out.pop("additionalProperties", None)
            if isinstance(extra_props, dict) and extra_props:
                out["additionalProperties"] = self.convert(extra_props, defaults=defaults)
            else:
                out["x-kubernetes-preserve-unknown-fields"] = True
        if "items" in node:
            out["items"] = self.convert(node["items"], defaults=defaults)
        if "type" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["x-kubernetes-preserve-unknown-fields"] = True
        return out


def _at(schema: JSON, dotted: str) -> JSON:
    node = schema
    for part in filter(None, dotted.split(".")):
        items = part.endswith("[]")
        node = node["properties"][part.removesuffix("[]")]
        if items:
            node = node["items"]
    return node


def _bound_lists(node: JSON) -> None:
    if node.get("type") == "array":
        node.setdefault("maxItems", MAX_ITEMS)
    for sub in node.get("properties", {}).values():
        _bound_lists(sub)
    if isinstance(node.get("items"), dict):
        _bound_lists(node["items"])
    if isinstance(node.get("additionalProperties"), dict):
        _bound_lists(node["additionalProperties"])


def _conditions_as_map(node: JSON) -> None:
    node["x-kubernetes-list-type"] = "map"
    node["x-kubernetes-list-map-keys"] = ["type"]


def openapi_schema(info: KindInfo) -> JSON:
    """The structural schema of one kind."""
    conv = _Converter(info.model)
    root = conv.schema
    model_fields = info.model.model_fields
    spec_model = model_fields["spec"].annotation
    status_model = next(a for a in (model_fields["status"].annotation, *get_args(model_fields["status"].annotation))
                        if isinstance(a, type) and issubclass(a, BaseModel))
    spec = conv.convert(root["properties"]["spec"], defaults=True)
    spec.pop("default", None)
    _bound_lists(spec)
    status = conv.convert({"$ref": f"#/$defs/{status_model.__name__}"}, defaults=False)
    status["description"] = root["properties"]["status"].get("description", status.get("description", ""))
    assert isinstance(spec_model, type)
    schema: JSON = {
        "type": "object",
        "description": (info.model.__doc__ or "").strip(),
        "properties": {
            "apiVersion": {"type": "string", "description": "faultlab.dev/v1alpha1."},
            "kind": {"type": "string", "description": f"{info.model.__name__}."},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    status.setdefault("properties", {}).update(copy.deepcopy(info.status_extra))
    if "conditions" in status.get("properties", {}):
        _conditions_as_map(status["properties"]["conditions"])
    for where, names in info.required.items():
        node = _at(schema, where)
        node["required"] = sorted(set(node.get("required", [])) | set(names))
        for name in names:
            node["properties"][name].pop("default", None)
    for rule in info.rules:
        node = _at(schema, rule.at)
        entry: JSON = {"rule": rule.rule, "message": rule.message}
        if rule.field_path:
            entry["fieldPath"] = rule.field_path
        node.setdefault("x-kubernetes-validations", []).append(entry)
    return schema


def crd(kind: str) -> JSON:
    """The CustomResourceDefinition of `kind` (RaftCluster, ChaosExperiment)."""
    info = KINDS[kind]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{info.plural}.{GROUP}",
                     "labels": {"app.kubernetes.io/name": "faultlab", "app.kubernetes.io/part-of": "faultlab"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": info.plural, "singular": info.singular,
                      "shortNames": info.short_names, "categories": [CATEGORY]},
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": info.columns,
                "schema": {"openAPIV3Schema": openapi_schema(info)},
            }],
        },
    }


def all_crds() -> dict[str, JSON]:
    """File name (`<plural>.yaml`) -> CRD, for every kind."""
    return {f"{info.plural}.yaml": crd(kind) for kind, info in KINDS.items()}
