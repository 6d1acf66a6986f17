"""Target selection and blast radius: which members a fault hits, and whether that is allowed.

Pure functions over plain data (no I/O): the engine asks members for their roles,
then calls :func:`select_targets` with a seeded :class:`random.Random` and checks the
resulting plan with :func:`check_blast_radius` before anything is injected.

Rollout steps widen the radius: every step's targets are a prefix of one seeded
ordering of the eligible members, so step *k* hits everything step *k-1* hit, plus more.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from faultlab.operator.api.chaos import FAULT_TYPES, ONE_SHOT_FAULTS, QUORUM_FAULTS

__all__ = [
    "AGENT_FAULTS",
    "RUNTIME_FAULTS",
    "UNAVAILABILITY_FAULTS",
    "BlastRadius",
    "Candidate",
    "PlannedFault",
    "SelectionError",
    "StepPlan",
    "check_blast_radius",
    "quorum_tolerance",
    "select_targets",
    "target_count",
]

RUNTIME_FAULTS = frozenset({"kill", "pause"})
AGENT_FAULTS = frozenset(FAULT_TYPES) - RUNTIME_FAULTS
# Faults that can take a member out of the quorum (the API's list: crash, kill, pause, partition,
# loss, error, diskFill, corruption, memoryPressure): at most the quorum's tolerance of members at once.
UNAVAILABILITY_FAULTS = QUORUM_FAULTS


class SelectionError(ValueError):
    """A selection or plan that cannot be carried out; the message says why and what to change."""


@dataclass(frozen=True)
class Candidate:
    """A member as selection sees it. ``role``: leader | follower | unknown."""

    id: str
    address: str = ""
    role: str = "unknown"
    process: str = ""


@dataclass(frozen=True)
class BlastRadius:
    max_targets: int | None = None
    max_percent: float | None = None
    allow_quorum_loss: bool = False


def quorum_tolerance(n: int) -> int:
    """How many members a majority quorum of ``n`` can lose: floor((n-1)/2)."""
    return max(0, (n - 1) // 2)


def target_count(mode: str, value: float | None, eligible: int) -> int:
    """How many of ``eligible`` members a selection takes.

    ``one`` -> 1; ``fixed`` -> value; ``percent`` -> value% of eligible rounded up;
    ``all`` -> every eligible member.
    """
    mode = mode.lower()
    if mode == "one":
        want = 1
    elif mode == "all":
        want = eligible
    elif mode == "fixed":
        if value is None or value < 0 or int(value) != value:
            raise SelectionError(f"mode fixed needs a whole number value >= 0, got {value!r}")
        want = int(value)
    elif mode == "percent":
        if value is None or not 0 <= value <= 100:
            raise SelectionError(f"mode percent needs a value within [0, 100], got {value!r}")
        want = math.ceil(eligible * value / 100 - 1e-9)
    else:
        raise SelectionError(f"unknown selection mode {mode!r}; use one, fixed, percent or all")
    return want


def eligible_members(candidates: Sequence[Candidate], role: str) -> list[Candidate]:
    role = role.lower()
    if role == "any":
        return list(candidates)
    if role == "leader":
        return [c for c in candidates if c.role == "leader"]
    if role == "follower":
        return [c for c in candidates if c.role == "follower"]
    raise SelectionError(f"unknown role {role!r}; use leader, follower or any")


def select_targets(
    candidates: Sequence[Candidate],
    role: str,
    mode: str,
    value: float | None,
    rng: random.Random,
) -> list[Candidate]:
    """Seeded choice of members; raises SelectionError when the cluster cannot satisfy it."""
    pool = sorted(eligible_members(candidates, role), key=lambda c: c.id)
    want = target_count(mode, value, len(pool))
    if want > len(pool):
        have = ", ".join(f"{c.id}={c.role}" for c in sorted(candidates, key=lambda c: c.id)) or "no members"
        raise SelectionError(
            f"selection role={role} mode={mode} value={value} needs {want} member(s) but only "
            f"{len(pool)} are eligible ({have})"
        )
    order = list(pool)
    rng.shuffle(order)
    return order[:want]


@dataclass
class PlannedFault:
    """One fault of one rollout step, resolved to members.

    ``targets``: every member the fault holds in this step; ``new``: those added by this
    step (a one-shot fault such as kill acts only on these). ``peers``: others | selected |
    None, whose traffic a network fault affects (a partition cuts targets from others).
    """

    index: int
    name: str
    type: str
    targets: list[str]
    new: list[str] = field(default_factory=list)
    peers: str | None = None

    def impaired(self, members: Sequence[str]) -> set[str]:
        """Members this fault can take out of the quorum at once."""
        if self.type not in UNAVAILABILITY_FAULTS:
            return set()
        hit = set(self.new if self.type in ONE_SHOT_FAULTS else self.targets)
        if self.type == "partition" and self.peers != "selected":
            rest = set(members) - set(self.targets)
            return hit if len(hit) <= len(rest) else rest
        return hit


@dataclass
class StepPlan:
    step: int
    faults: list[PlannedFault]
    hold_seconds: float = 0.0

    def targets(self) -> set[str]:
        return {m for f in self.faults for m in f.targets}


def unavailable_at_once(faults: Iterable[PlannedFault], members: Sequence[str]) -> set[str]:
    """Members that the step's faults can make unavailable at the same time."""
    out: set[str] = set()
    for f in faults:
        out |= f.impaired(members)
    return out


def check_blast_radius(step: StepPlan, members: Sequence[str], radius: BlastRadius) -> list[str]:
    """Every way the step exceeds the blast radius (empty = allowed)."""
    problems: list[str] = []
    n = len(members)
    hit = step.targets()
    if n <= 0:
        return ["the target has no members"]
    if radius.max_targets is not None and len(hit) > radius.max_targets:
        problems.append(
            f"blastRadius.maxTargets: step {step.step} hits {len(hit)} member(s) ({', '.join(sorted(hit))}), "
            f"more than maxTargets={radius.max_targets}"
        )
    if radius.max_percent is not None and len(hit) > math.floor(n * radius.max_percent / 100 + 1e-9):
        problems.append(
            f"blastRadius.maxPercent: step {step.step} hits {len(hit)} of {n} member(s) "
            f"({len(hit) * 100 / n:.0f}%), more than maxPercent={radius.max_percent:g}%"
        )
    down = unavailable_at_once(step.faults, members)
    tolerance = quorum_tolerance(n)
    if len(down) > tolerance and not radius.allow_quorum_loss:
        problems.append(
            f"blastRadius.allowQuorumLoss: step {step.step} can make {len(down)} of {n} member(s) unavailable at "
            f"once ({', '.join(sorted(down))}) but a majority quorum of {n} tolerates only {tolerance}; narrow "
            f"the selection or set blastRadius.allowQuorumLoss: true"
        )
    return problems
