"""Linearizability and lost-write checks for key-value histories.

``check_linearizable`` is the Wing-Gong/Lowe search as Porcupine runs it:

* P-compositionality: the history is split per key and each key is checked alone.
* Events (calls and returns) sit in a doubly-linked list; the search walks it from
  the head, linearizes a call whose operation the model accepts, lifts the call and
  its return out of the list, and backtracks when it meets a return whose operation
  is not yet linearized. So the only candidates are the operations invoked before
  the earliest pending return — the operation that has "just completed" bounds the
  choice. At equal times calls sort before returns (touching intervals overlap).
* Memoisation (Lowe): a configuration is (set of linearized ops as an int bitset,
  model state); a configuration seen before is never explored again.
* Read-only steps are committed without a choice point: when a candidate never
  changes the state (a GET, an OK CAS that did not swap) and the model accepts it
  now, moving it to the front of any linearization of the rest keeps that valid, so
  if its branch fails the whole configuration fails. (This does not hold for a write
  that merely happens to leave the current value unchanged.)
* Register-specific pruning, sound for any values (unique or not): the state may not
  move away from a value that no pending operation can write again while a pending
  ``OK`` read (GET, swapping CAS) still needs it; and in the cache a value that no
  pending operation compares with is stored as one stand-in, so orderings of blind
  writes collapse into one configuration.
* ``FAIL`` operations are dropped; ``UNKNOWN`` ones never return (``ret = +inf``),
  so they may take effect at any time after their call or not at all (the search
  succeeds once every ``OK`` operation is linearized); an ``UNKNOWN`` GET says
  nothing and is dropped.

Running out of time (or past the configuration bound) yields ``"unknown"``, never a pass.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from faultlab.operator.chaos.history import Operation, OpKind, Outcome

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

Verdict = Literal["linearizable", "not_linearizable", "unknown"]

_GET, _SET, _CAS_SWAP, _CAS_NO_SWAP, _CAS_EITHER = range(5)
_TIME_CHECK_EVERY = 1024
_NONE = object()  # "no value" in the per-op tables (None is a value: the key is absent)
_DEAD = object()  # cache stand-in for a state no pending operation compares with
_CONTEXT_OPS = 8


@dataclass(frozen=True, slots=True)
class Explanation:
    """Where the search got stuck on one key.

    ``linearized`` is the longest linearizable prefix found (Porcupine's partial
    linearization), in linearization order, and ``state`` the key's value after it;
    ``stuck`` are the pending operations that could go next (invoked before the
    earliest pending response), none of which leads to a full linearization;
    ``reasons`` says why, one line per stuck operation.
    """

    key: str
    linearized: tuple[Operation, ...]
    state: str | None
    stuck: tuple[Operation, ...]
    reasons: tuple[str, ...]

    def __str__(self) -> str:
        lines = [
            f"key {self.key!r}: no linearization exists; the longest linearizable prefix has "
            f"{len(self.linearized)} operation(s) and leaves the value {self.state!r}."
        ]
        if self.linearized:
            shown = self.linearized[-_CONTEXT_OPS:]
            skipped = len(self.linearized) - len(shown)
            lines.append("  last linearized" + (f" (after {skipped} earlier)" if skipped else "") + ":")
            lines.extend(f"    {op}" for op in shown)
        lines.append("  none of these can come next:")
        lines.extend(f"    {op}  -- {why}" for op, why in zip(self.stuck, self.reasons, strict=True))
        return "\n".join(lines)


def _why_not(op: Operation, state: str | None, pending: list[Operation]) -> str:
    if op.kind is OpKind.GET and op.output != state:
        return f"reads {op.output!r} but the value is {state!r}"
    if op.kind is OpKind.CAS and op.outcome is Outcome.OK:
        if op.succeeded is True and state != op.expected:
            return f"swapped although the value is {state!r}, not {op.expected!r}"
        if op.succeeded is False and state == op.expected:
            return f"did not swap although the value is {op.expected!r}"
    others = [p for p in pending if p is not op]
    if not any(_may_write(p, state) for p in others):
        needs = [p for p in others if p.outcome is Outcome.OK and _must_see(p) == state]
        if needs and _changes(op, state):
            return f"would overwrite {state!r}, which nothing writes again, before {needs[0]} reads it"
    return "allowed here, but every continuation after it fails"


def _may_write(op: Operation, value: str | None) -> bool:
    if op.kind is OpKind.DELETE:
        return value is None
    return op.kind is not OpKind.GET and op.value == value and op.succeeded is not False


def _must_see(op: Operation) -> object:
    if op.kind is OpKind.GET or (op.kind is OpKind.CAS and op.succeeded):
        return op.output if op.kind is OpKind.GET else op.expected
    return _NONE


def _changes(op: Operation, state: str | None) -> bool:
    if op.kind is OpKind.PUT:
        return op.value != state
    if op.kind is OpKind.DELETE:
        return state is not None
    return op.kind is OpKind.CAS and op.succeeded is not False and op.expected == state and op.value != state


@dataclass(frozen=True, slots=True)
class KeyResult:
    key: str
    verdict: Verdict
    ops_checked: int
    elapsed_s: float
    configurations: int
    explanation: Explanation | None = None


@dataclass(frozen=True, slots=True)
class LinearizabilityResult:
    verdict: Verdict
    keys: Mapping[str, KeyResult]
    ops_checked: int
    ops_dropped: int
    elapsed_s: float
    explanation: Explanation | None = None

    @property
    def ok(self) -> bool:
        return self.verdict == "linearizable"

    @property
    def failed_keys(self) -> list[str]:
        return [k for k, r in self.keys.items() if r.verdict == "not_linearizable"]

    @property
    def unknown_keys(self) -> list[str]:
        return [k for k, r in self.keys.items() if r.verdict == "unknown"]

    def summary(self) -> str:
        head = (
            f"{self.verdict}: {self.ops_checked} operation(s) on {len(self.keys)} key(s) checked "
            f"in {self.elapsed_s:.3f}s ({self.ops_dropped} failed or unanswered read(s) dropped)"
        )
        if self.verdict == "unknown":
            head += f"; time or configuration budget ran out on key(s) {', '.join(map(repr, self.unknown_keys))}"
        if self.explanation is not None:
            head += "\n" + str(self.explanation)
        return head


@dataclass(slots=True)
class _Search:
    verdict: Verdict
    configurations: int
    prefix: list[int] = field(default_factory=list)
    state: str | None = None


def _compile(op: Operation) -> tuple[int, str | None, str | None]:
    if op.kind is OpKind.GET:
        return _GET, op.output, None
    if op.kind is OpKind.PUT:
        return _SET, op.value, None
    if op.kind is OpKind.DELETE:
        return _SET, None, None
    if op.outcome is not Outcome.OK or op.succeeded is None:
        return _CAS_EITHER, op.expected, op.value
    return (_CAS_SWAP if op.succeeded else _CAS_NO_SWAP), op.expected, op.value


def _search(ops: list[Operation], initial: str | None, deadline: float, max_configurations: int) -> _Search:
    n = len(ops)
    events = sorted(
        [(op.call, 0, i) for i, op in enumerate(ops)] + [(op.effective_ret, 1, i) for i, op in enumerate(ops)]
    )
    tail = 2 * n + 1
    nxt = list(range(1, tail + 2))
    prv = list(range(-1, tail))
    op_of = [0] * (tail + 1)
    match = [0] * (tail + 1)
    call_entry = [0] * n
    for pos, (_, is_ret, i) in enumerate(events, 1):
        op_of[pos] = i
        if is_ret:
            match[call_entry[i]] = pos
        else:
            call_entry[i] = pos

    compiled = [_compile(op) for op in ops]
    codes = [c[0] for c in compiled]
    arg_a = [c[1] for c in compiled]
    arg_b = [c[2] for c in compiled]
    must = [op.outcome is Outcome.OK for op in ops]
    read_only = [code in (_GET, _CAS_NO_SWAP) for code in codes]
    # Per pending op: the value it must see (OK GET, OK swapping CAS), the value it may
    # write, and the value it compares the state with. Counted over pending ops only.
    needs = [a if code in (_GET, _CAS_SWAP) and ok else _NONE for code, a, _, ok in _zip4(compiled, must)]
    writes = [
        (a if code == _SET else b) if code in (_SET, _CAS_SWAP, _CAS_EITHER) else _NONE
        for code, a, b, _ in _zip4(compiled, must)
    ]
    compares = [a if code != _SET and (ok or code != _GET) else _NONE for code, a, _, ok in _zip4(compiled, must)]
    readers: dict[object, int] = defaultdict(int)
    writers: dict[object, int] = defaultdict(int)
    referenced: dict[object, int] = defaultdict(int)
    for i in range(n):
        readers[needs[i]] += 1
        writers[writes[i]] += 1
        referenced[compares[i]] += 1
    remaining = sum(must)

    state = initial
    linearized = 0
    cache: set[tuple[int, object]] = set()
    # Choice stack as an immutable cons list (entry, state before, read-only, rest): O(1) snapshots.
    stack: tuple[int, str | None, bool, object] | None = None
    depth = best_depth = 0
    best_stack = stack
    best_state = state
    steps = 0
    entry = nxt[0]
    verdict: Verdict = "linearizable"

    while remaining:
        steps += 1
        if steps % _TIME_CHECK_EVERY == 0 and (time.monotonic() > deadline or len(cache) > max_configurations):
            verdict = "unknown"
            break
        m = match[entry]
        if m:
            op = op_of[entry]
            code = codes[op]
            a = arg_a[op]
            if code == _GET:
                ok = state == a
                new_state = state
            elif code == _SET:
                ok = True
                new_state = a
            elif code == _CAS_SWAP:
                ok = state == a
                new_state = arg_b[op]
            elif code == _CAS_NO_SWAP:
                ok = state != a
                new_state = state
            else:
                ok = True
                new_state = arg_b[op] if state == a else state
            if ok and new_state != state and not writers[state]:
                # Leaving a value nobody can write again: only if no pending op must still read it.
                ok = readers[state] - (needs[op] == state) == 0
            if ok:
                forced = read_only[op]
                new_linearized = linearized | (1 << op)
                # A value no pending op compares with behaves like any other such value.
                live = referenced[new_state] - (compares[op] == new_state) > 0
                config = (new_linearized, new_state if live else _DEAD)
                if config not in cache:
                    cache.add(config)
                    stack = (entry, state, forced, stack)
                    depth += 1
                    state = new_state
                    linearized = new_linearized
                    if must[op]:
                        remaining -= 1
                    readers[needs[op]] -= 1
                    writers[writes[op]] -= 1
                    referenced[compares[op]] -= 1
                    p, q = prv[entry], nxt[entry]
                    nxt[p] = q
                    prv[q] = p
                    p, q = prv[m], nxt[m]
                    nxt[p] = q
                    prv[q] = p
                    if depth > best_depth:
                        best_depth, best_stack, best_state = depth, stack, state
                    entry = nxt[0]
                    continue
                if not forced:
                    entry = nxt[entry]
                    continue
                # A read-only step into an explored (hence failed) configuration: backtrack.
            else:
                entry = nxt[entry]
                continue
        # Backtrack: pop choices; a read-only choice was forced, so keep popping past it.
        while True:
            if stack is None:
                verdict = "not_linearizable"
                break
            entry, state, forced, rest = stack
            stack = rest  # type: ignore[assignment]
            depth -= 1
            op = op_of[entry]
            linearized &= ~(1 << op)
            if must[op]:
                remaining += 1
            readers[needs[op]] += 1
            writers[writes[op]] += 1
            referenced[compares[op]] += 1
            m = match[entry]
            nxt[prv[m]] = m
            prv[nxt[m]] = m
            nxt[prv[entry]] = entry
            prv[nxt[entry]] = entry
            if not forced:
                entry = nxt[entry]
                break
        if verdict == "not_linearizable":
            break

    result = _Search(verdict, len(cache))
    if verdict != "linearizable":
        prefix: list[int] = []
        node = best_stack
        while node is not None:
            prefix.append(op_of[node[0]])
            node = node[3]  # type: ignore[assignment]
        prefix.reverse()
        result.prefix = prefix
        result.state = best_state
    return result


def _zip4(
    compiled: list[tuple[int, str | None, str | None]], must: list[bool]
) -> list[tuple[int, str | None, str | None, bool]]:
    return [(code, a, b, ok) for (code, a, b), ok in zip(compiled, must, strict=True)]


def _explain(key: str, ops: list[Operation], search: _Search) -> Explanation:
    done = set(search.prefix)
    pending = [i for i in range(len(ops)) if i not in done]
    horizon = min((ops[i].ret for i in pending if ops[i].outcome is Outcome.OK), default=math.inf)
    stuck = sorted((ops[i] for i in pending if ops[i].call <= horizon), key=lambda op: (op.call, op.ret))
    pending_ops = [ops[i] for i in pending]
    return Explanation(
        key=key,
        linearized=tuple(ops[i] for i in search.prefix),
        state=search.state,
        stuck=tuple(stuck),
        reasons=tuple(_why_not(op, search.state, pending_ops) for op in stuck),
    )


def _validate(op: Operation) -> None:
    if op.kind is OpKind.PUT and op.value is None:
        raise ValueError(f"put without a value (use delete to remove a key): {op}")
    if op.kind is OpKind.CAS and op.value is None:
        raise ValueError(f"cas without a new value: {op}")
    if op.outcome is Outcome.OK and not op.ret >= op.call:
        raise ValueError(f"operation returns before it is invoked (ret < call): {op}")


def check_linearizable(
    ops: Iterable[Operation],
    *,
    timeout_s: float = 10.0,
    max_configurations: int = 2_000_000,
    initial: Mapping[str, str | None] | None = None,
) -> LinearizabilityResult:
    """Decide whether a key-value history is linearizable (every key starts absent unless ``initial``).

    The verdict is ``"not_linearizable"`` if any key is, else ``"unknown"`` if the
    ``timeout_s`` budget (for the whole history) ran out on some key, else
    ``"linearizable"``. A key whose search explores more than ``max_configurations``
    configurations (a memory bound) is ``"unknown"`` too. Keys are checked smallest
    first so a time-out costs the fewest.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    initial = initial or {}
    by_key: dict[str, list[Operation]] = defaultdict(list)
    dropped = 0
    for op in ops:
        _validate(op)
        if op.outcome is Outcome.FAIL or (op.outcome is Outcome.UNKNOWN and op.kind is OpKind.GET):
            dropped += 1
            by_key.setdefault(op.key, [])
            continue
        by_key[op.key].append(op)

    results: dict[str, KeyResult] = {}
    explanation: Explanation | None = None
    for key in sorted(by_key, key=lambda k: (len(by_key[k]), k)):
        key_ops = by_key[key]
        key_started = time.monotonic()
        if key_started > deadline and key_ops:
            results[key] = KeyResult(key, "unknown", len(key_ops), 0.0, 0)
            continue
        search = _search(key_ops, initial.get(key), deadline, max_configurations)
        why = None
        if search.verdict == "not_linearizable":
            why = _explain(key, key_ops, search)
            explanation = explanation or why
        results[key] = KeyResult(
            key, search.verdict, len(key_ops), time.monotonic() - key_started, search.configurations, why
        )

    verdicts = {r.verdict for r in results.values()}
    verdict: Verdict = (
        "not_linearizable" if "not_linearizable" in verdicts else "unknown" if "unknown" in verdicts else "linearizable"
    )
    return LinearizabilityResult(
        verdict=verdict,
        keys=dict(sorted(results.items())),
        ops_checked=sum(r.ops_checked for r in results.values()),
        ops_dropped=dropped,
        elapsed_s=time.monotonic() - started,
        explanation=explanation,
    )


# --- lost writes -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LostWrite:
    op: Operation
    final_value: str | None
    reason: str

    def __str__(self) -> str:
        return f"lost: {self.op} -- {self.reason}"


@dataclass(frozen=True, slots=True)
class LostWritesResult:
    """``verdict`` is ``"violated"`` when a write is lost or a final value was never written,
    ``"unknown"`` when some written key has no final read, else ``"ok"``."""

    verdict: Literal["ok", "violated", "unknown"]
    lost: tuple[LostWrite, ...]
    acknowledged: int
    unexplained: Mapping[str, str | None]
    unchecked_keys: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"

    def summary(self) -> str:
        lines = [f"{self.verdict}: {self.acknowledged} acknowledged write(s) checked, {len(self.lost)} lost"]
        lines.extend(f"  {lw}" for lw in self.lost)
        lines.extend(f"  key {k!r}: final value {v!r} was never written" for k, v in self.unexplained.items())
        if self.unchecked_keys:
            lines.append(f"  no final read for key(s): {', '.join(map(repr, self.unchecked_keys))}")
        return "\n".join(lines)


def check_no_lost_writes(
    ops: Iterable[Operation],
    final_reads: Mapping[str, str | None],
    *,
    initial: Mapping[str, str | None] | None = None,
) -> LostWritesResult:
    """Check that every acknowledged write survives in the values read after the run.

    Acknowledged writes are ``OK`` PUTs and ``OK`` CAS with ``succeeded=True``.
    Written values are unique per key, so the final value ``v`` names the writes
    that can have produced it: the non-``FAIL`` PUTs/CAS writing ``v`` (DELETEs when
    ``v`` is None) and the initial value. The final value is the last write in any
    linearization, so an acknowledged write ``W`` with ``W.value != v`` survived
    (was overwritten) only if some producer ``P`` of ``v`` may be ordered after
    ``W``: not ``P.ret < W.call`` (``UNKNOWN`` producers have ``ret = +inf``). If
    every producer returned before ``W`` was invoked — or ``v`` was never written —
    ``W`` is lost. This is a per-write necessary condition; pair it with
    ``check_linearizable`` for the whole history.
    """
    initial = initial or {}
    writes: dict[str, list[Operation]] = defaultdict(list)
    for op in ops:
        if op.kind is not OpKind.GET and op.outcome is not Outcome.FAIL:
            writes[op.key].append(op)

    lost: list[LostWrite] = []
    unexplained: dict[str, str | None] = {}
    unchecked: list[str] = []
    acknowledged = 0
    for key in sorted(set(writes) | set(final_reads)):
        key_writes = writes.get(key, [])
        acked = [
            w
            for w in key_writes
            if w.outcome is Outcome.OK and (w.kind is OpKind.PUT or (w.kind is OpKind.CAS and w.succeeded))
        ]
        acknowledged += len(acked)
        if key not in final_reads:
            if acked:
                unchecked.append(key)
            continue
        final = final_reads[key]
        producers = [
            w.effective_ret
            for w in key_writes
            if (w.value if w.kind is not OpKind.DELETE else None) == final
            and not (w.kind is OpKind.CAS and w.outcome is Outcome.OK and w.succeeded is False)
        ]
        from_initial = initial.get(key) == final
        if not producers and not from_initial:
            unexplained[key] = final
        latest = max(producers, default=-math.inf)
        for w in acked:
            if w.value == final:
                continue
            if latest >= w.call:
                continue
            if producers:
                reason = (
                    f"the final value {final!r} was written by an operation that returned at "
                    f"{latest:g}, before this write was invoked"
                )
            elif from_initial:
                reason = f"the key holds its initial value {final!r}, which no write restored"
            else:
                reason = f"the final value {final!r} was never written"
            lost.append(LostWrite(w, final, reason))

    verdict: Literal["ok", "violated", "unknown"] = (
        "violated" if lost or unexplained else "unknown" if unchecked else "ok"
    )
    return LostWritesResult(
        verdict=verdict,
        lost=tuple(lost),
        acknowledged=acknowledged,
        unexplained=unexplained,
        unchecked_keys=tuple(unchecked),
    )
