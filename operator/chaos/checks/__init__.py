"""Verdict checkers over recorded client histories."""

from faultlab.operator.chaos.checks.linearizability import (
    Explanation,
    KeyResult,
    LinearizabilityResult,
    LostWrite,
    LostWritesResult,
    Verdict,
    check_linearizable,
    check_no_lost_writes,
)

__all__ = [
    "Explanation",
    "KeyResult",
    "LinearizabilityResult",
    "LostWrite",
    "LostWritesResult",
    "Verdict",
    "check_linearizable",
    "check_no_lost_writes",
]
