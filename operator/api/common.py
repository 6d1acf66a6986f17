"""Shared pieces of every faultlab resource: the model base, metadata, conditions, YAML loading.

Each kind is a `Resource` subclass; `load_resources` parses (multi-document) YAML,
dispatches on `kind` and turns validation failures into `ResourceError`s whose
message names the resource, the field path and what to do.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

GROUP = "faultlab.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# DNS-1123 label: resource names become pod names, directory names and label values.
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Marks free-form objects in the generated CRD schema (Kubernetes prunes unknown fields otherwise).
PRESERVE_UNKNOWN: dict[str, Any] = {"x-kubernetes-preserve-unknown-fields": True}


class ApiModel(BaseModel):
    """Base of every resource model: camelCase in YAML, snake_case in Python, typos rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    def to_dict(self) -> dict[str, Any]:
        """The document form: camelCase keys, JSON types, unset optionals left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# Set by the API server; accepted on input (objects read back from Kubernetes) and dropped.
_SERVER_METADATA = frozenset({
    "uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
    "managedFields", "selfLink", "ownerReferences", "finalizers", "generateName",
})


class ObjectMeta(ApiModel):
    """The part of Kubernetes ObjectMeta faultlab uses."""

    name: str = Field(max_length=63, pattern=NAME_PATTERN,
                      description="Resource name: lowercase letters, digits and '-' (a DNS-1123 label).")
    namespace: str = Field(default="default", max_length=63, pattern=NAME_PATTERN,
                           description="Namespace on Kubernetes; ignored by the local runtime.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels, as on any Kubernetes object.")
    annotations: dict[str, str] = Field(default_factory=dict,
                                        description="Annotations, as on any Kubernetes object.")
    generation: int = Field(default=0, ge=0, description="Spec generation, set by the API server.")

    @model_validator(mode="before")
    @classmethod
    def _drop_server_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k not in _SERVER_METADATA}
        return data


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """A Kubernetes-style condition (`Ready`, `Progressing`, `Degraded`, ...)."""

    type: str = Field(description="Condition type, e.g. Ready, Progressing, Degraded.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="CamelCase machine-readable reason for the last transition.")
    message: str = Field(default="", description="Human-readable details.")
    last_transition_time: datetime | None = Field(
        default=None, description="When the status last changed (RFC 3339).")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The metadata.generation this condition was computed from.")


class Resource(ApiModel):
    """A faultlab custom resource: apiVersion, kind, metadata, spec and status."""

    KINDS: ClassVar[dict[str, type[Resource]]] = {}
    PLURAL: ClassVar[str] = ""

    api_version: Literal["faultlab.dev/v1alpha1"] = Field(
        default="faultlab.dev/v1alpha1", description="Always faultlab.dev/v1alpha1.")
    kind: str = Field(description="The resource kind.")
    metadata: ObjectMeta = Field(description="Name, namespace and labels.")
    spec: ApiModel = Field(description="Desired state.")
    status: ApiModel | None = Field(default=None, description="Observed state, written by the controller.")

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        kind_field = cls.model_fields.get("kind")
        if kind_field is not None and isinstance(kind_field.default, str) and kind_field.default:
            Resource.KINDS[kind_field.default] = cls

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace

    def warnings(self) -> list[str]:
        """Valid but questionable settings, for the user to see (`faultlab up` prints them)."""
        return []

    @classmethod
    def parse(cls, document: dict[str, Any]) -> Resource:
        """Validates one document as this kind (or, on `Resource`, as the kind it names)."""
        if not isinstance(document, dict):
            raise ResourceError(f"a resource must be a mapping with apiVersion, kind, metadata and spec "
                                f"(got {type(document).__name__})")
        kind = document.get("kind")
        name = _doc_name(document)
        target: type[Resource] = cls
        if cls is Resource:
            _ensure_kinds_registered()
            if not kind:
                raise ResourceError(f"{name}: kind: required field is missing; "
                                    f"one of {', '.join(sorted(Resource.KINDS))}")
            if kind not in Resource.KINDS:
                raise ResourceError(f"{name}: kind: unknown kind {kind!r}{_suggest(str(kind), Resource.KINDS)}; "
                                    f"valid kinds: {', '.join(sorted(Resource.KINDS))}")
            target = Resource.KINDS[kind]
        api_version = document.get("apiVersion")
        if api_version is not None and api_version != API_VERSION:
            raise ResourceError(f"{kind or target.__name__} {name}: apiVersion: must be {API_VERSION} "
                                f"(got {api_version!r})")
        try:
            return target.model_validate(document)
        except ValidationError as exc:
            raise ResourceError.from_validation(f"{kind or target.__name__} {name}", exc, target) from None


class ResourceError(ValueError):
    """A resource is invalid. `problems` lists each one as `field.path: what is wrong; the fix`."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems) or [message]

    @classmethod
    def from_validation(cls, prefix: str, exc: ValidationError, model: type[BaseModel]) -> ResourceError:
        problems = [format_error(err, model) for err in exc.errors(include_url=False)]
        if len(problems) == 1:
            return cls(f"{prefix}: {problems[0]}", problems)
        return cls(f"{prefix}: {len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems),
                   problems)


def _ensure_kinds_registered() -> None:
    import faultlab.operator.api  # noqa: F401  (importing defines and registers every kind)


def _doc_name(document: dict[str, Any]) -> str:
    meta = document.get("metadata")
    if isinstance(meta, dict) and meta.get("name"):
        return str(meta["name"])
    return "<unnamed>"


def _suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def field_path(loc: Sequence[int | str]) -> str:
    """`('spec', 'faults', 0, 'target', 'value')` -> `spec.faults[0].target.value`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "<document>"


def _model_at(model: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model class found by walking `loc` (aliases) from `model`, if it is a model."""
    import typing

    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        found = None
        for fname, finfo in current.model_fields.items():
            if part in (fname, finfo.alias):
                found = finfo.annotation
                break
        if found is None:
            return None
        # unwrap Optional[...] / list[...] / dict[str, ...] down to a model, if there is one
        current = found
        for _ in range(4):
            if isinstance(current, type) and issubclass(current, BaseModel):
                break
            args = [a for a in typing.get_args(current) if a is not type(None)]
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            if models:
                current = models[0]
            elif args:
                current = args[-1]
            else:
                break
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _field_names(model: type[BaseModel]) -> list[str]:
    return [finfo.alias or fname for fname, finfo in model.model_fields.items()]


_NESTED_PATH = re.compile(r"^([A-Za-z][\w]*(?:\.[A-Za-z]\w*|\[\d+\])*): ")


def format_error(err: Any, model: type[BaseModel]) -> str:
    """One pydantic error as `path: problem (got X); fix`."""
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
    # union branches show up as a type name in the path (e.g. `str`, `Probe`); drop them
    loc = [p for p in loc if not (isinstance(p, str) and (p[:1].isupper() or p in {"str", "int", "float"}))]
    path = field_path(loc)
    kind = err["type"]
    ctx = err.get("ctx") or {}
    got = err.get("input")
    if kind == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        names = _field_names(parent) if parent else []
        hint = _suggest(str(loc[-1]), names) if names else ""
        valid = f"; valid fields here: {', '.join(names)}" if names else ""
        return f"{path}: unknown field{hint}{valid}"
    if kind == "missing":
        return f"{path}: required field is missing"
    bounds = {"greater_than_equal": ">= {ge}", "greater_than": "> {gt}", "less_than_equal": "<= {le}",
              "less_than": "< {lt}"}
    if kind in bounds:
        return f"{path}: must be {bounds[kind].format(**ctx)} (got {got!r})"
    if kind == "literal_error":
        expected = str(ctx.get("expected", ""))
        hint = _suggest(str(got), re.findall(r"'([^']*)'", expected)) if isinstance(got, str) else ""
        return f"{path}: {got!r} is not valid{hint}; must be one of {expected}"
    if kind == "string_pattern_mismatch":
        return (f"{path}: {got!r} is not a valid name: use lowercase letters, digits and '-', "
                f"starting and ending with a letter or digit")
    if kind in {"string_too_long", "too_long"}:
        return f"{path}: too long (at most {ctx.get('max_length')})"
    if kind in {"too_short", "string_too_short"}:
        return f"{path}: must have at least {ctx.get('min_length')} item(s)"
    if kind in {"value_error", "assertion_error"}:
        message = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        nested = _NESTED_PATH.match(message)
        if nested and loc:  # "key: problem" raised by a validator names a field below `loc`
            sub = nested.group(1)
            return f"{path}{'' if sub.startswith('[') else '.'}{sub}: {message[nested.end():]}"
        return f"{path}: {message}" if loc else message
    msg = str(err["msg"])
    return f"{path}: {msg[:1].lower() + msg[1:]} (got {got!r})"


def load_resources(source: str | Path) -> list[Resource]:
    """Parses every document of a YAML file (a path) or YAML text into its kind's model.

    Raises `ResourceError` naming the document, the field path and the fix.
    """
    looks_like_path = "\n" not in source if isinstance(source, str) else True
    if isinstance(source, Path) or (looks_like_path and (Path(source).exists()
                                                         or source.endswith((".yaml", ".yml", ".json")))):
        path = Path(source)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ResourceError(f"{path}: cannot read: {exc.strerror or exc}") from None
        origin = str(path)
    else:
        text, origin = str(source), "<text>"
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ResourceError(f"{origin}: not valid YAML: {exc}") from None
    resources: list[Resource] = []
    for i, doc in enumerate(documents):
        if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            resources.extend(Resource.parse(item) for item in doc["items"])
            continue
        try:
            resources.append(Resource.parse(doc))
        except ResourceError as exc:
            if len(documents) > 1:
                raise ResourceError(f"{origin} (document {i + 1}): {exc}", exc.problems) from None
            raise
    return resources


R = TypeVar("R", bound=Resource)


def load_one(source: str | Path, kind: type[R]) -> R:
    """The single resource of `kind` in `source`; a ResourceError if there is none or several."""
    found = [r for r in load_resources(source) if isinstance(r, kind)]
    kind_name = kind.model_fields["kind"].default
    if not found:
        raise ResourceError(f"{source}: no {kind_name} resource found")
    if len(found) > 1:
        names = ", ".join(r.name for r in found)
        raise ResourceError(f"{source}: several {kind_name} resources ({names}); keep one per file")
    return found[0]
