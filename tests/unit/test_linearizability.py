"""WGL linearizability checker and lost-write check on hand-made and generated histories."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from faultlab.operator.chaos.checks import check_linearizable, check_no_lost_writes
from faultlab.operator.chaos.history import Operation, OpKind, Outcome

OK, FAIL, UNKNOWN = Outcome.OK, Outcome.FAIL, Outcome.UNKNOWN


def put(client: str, key: str, value: str, call: float, ret: float, outcome: Outcome = OK) -> Operation:
    return Operation(client, OpKind.PUT, key, value=value, call=call, ret=ret, outcome=outcome)


def get(client: str, key: str, output: str | None, call: float, ret: float, outcome: Outcome = OK) -> Operation:
    return Operation(client, OpKind.GET, key, output=output, call=call, ret=ret, outcome=outcome)


def delete(client: str, key: str, call: float, ret: float, outcome: Outcome = OK) -> Operation:
    return Operation(client, OpKind.DELETE, key, call=call, ret=ret, outcome=outcome)


def cas(
    client: str,
    key: str,
    expected: str | None,
    value: str,
    succeeded: bool | None,
    call: float,
    ret: float,
    outcome: Outcome = OK,
) -> Operation:
    return Operation(
        client,
        OpKind.CAS,
        key,
        value=value,
        expected=expected,
        succeeded=succeeded,
        call=call,
        ret=ret,
        outcome=outcome,
    )


def verdict(*ops: Operation) -> str:
    return check_linearizable(ops).verdict


# --- hand-made histories -----------------------------------------------------------------------


def test_empty_history_is_linearizable() -> None:
    result = check_linearizable([])
    assert result.verdict == "linearizable" and result.ok and result.ops_checked == 0


def test_sequential_history() -> None:
    assert (
        verdict(
            get("a", "k", None, 0, 1),
            put("a", "k", "1", 2, 3),
            get("b", "k", "1", 4, 5),
            delete("a", "k", 6, 7),
            get("b", "k", None, 8, 9),
        )
        == "linearizable"
    )


def test_stale_read_after_completed_write() -> None:
    result = check_linearizable([put("a", "k", "1", 0, 1), put("a", "k", "2", 2, 3), get("b", "k", "1", 4, 5)])
    assert result.verdict == "not_linearizable" and not result.ok
    why = result.explanation
    assert why is not None and why.key == "k"
    assert [op.value for op in why.linearized] == ["1"] and why.state == "1"
    assert [op.value for op in why.stuck] == ["2"]
    assert "would overwrite '1', which nothing writes again, before b: get(k) -> '1'" in str(why)
    assert "not_linearizable" in result.summary()


def test_read_of_the_wrong_value_is_explained() -> None:
    why = check_linearizable([put("a", "k", "1", 0, 1), get("b", "k", "2", 4, 5)]).explanation
    assert why is not None and why.stuck == (get("b", "k", "2", 4, 5),)
    assert "reads '2' but the value is '1'" in str(why)


def test_read_concurrent_with_write_may_see_either_value() -> None:
    for seen in (None, "1"):
        assert verdict(put("a", "k", "1", 0, 10), get("b", "k", seen, 2, 3)) == "linearizable"
    assert verdict(put("a", "k", "1", 0, 10), get("b", "k", "1", 2, 3), get("b", "k", None, 4, 5)) == (
        "not_linearizable"
    )


def test_touching_intervals_count_as_concurrent() -> None:
    assert verdict(put("a", "k", "1", 0, 5), get("b", "k", None, 5, 6)) == "linearizable"
    assert verdict(put("a", "k", "1", 0, 5), get("b", "k", None, 5.001, 6)) == "not_linearizable"


def test_concurrent_writes_seen_in_contradictory_orders() -> None:
    writes = [put("w1", "k", "a", 0, 10), put("w2", "k", "b", 0, 10)]
    consistent = [get("r1", "k", "a", 1, 2), get("r1", "k", "b", 3, 4), get("r2", "k", "b", 3, 4)]
    assert verdict(*writes, *consistent) == "linearizable"
    contradictory = [
        get("r1", "k", "a", 1, 2),
        get("r1", "k", "b", 3, 4),
        get("r2", "k", "b", 1, 2),
        get("r2", "k", "a", 3, 4),
    ]
    assert verdict(*writes, *contradictory) == "not_linearizable"


def test_cas_chain_is_linearizable() -> None:
    assert (
        verdict(
            cas("a", "k", None, "1", True, 0, 1),
            cas("b", "k", None, "2", False, 0.5, 1.5),
            cas("a", "k", "1", "3", True, 2, 3),
            cas("b", "k", "1", "4", False, 4, 5),
            get("c", "k", "3", 6, 7),
        )
        == "linearizable"
    )


def test_two_concurrent_cas_from_the_same_value_cannot_both_win() -> None:
    assert verdict(cas("a", "k", None, "x", True, 0, 2), cas("b", "k", None, "y", True, 1, 3)) == "not_linearizable"
    assert verdict(cas("a", "k", None, "x", True, 0, 2), cas("b", "k", None, "y", False, 1, 3)) == "linearizable"


def test_cas_swap_against_the_wrong_value() -> None:
    result = check_linearizable([put("a", "k", "a", 0, 1), cas("b", "k", "b", "c", True, 2, 3)])
    assert result.verdict == "not_linearizable"
    assert "swapped although the value is 'a'" in str(result.explanation)


def test_cas_reported_no_swap_although_the_value_matched() -> None:
    result = check_linearizable([put("a", "k", "a", 0, 1), cas("b", "k", "a", "c", False, 2, 3)])
    assert result.verdict == "not_linearizable"
    assert "did not swap although the value is 'a'" in str(result.explanation)
    assert verdict(put("a", "k", "a", 0, 3), cas("b", "k", "a", "c", False, 2, 4)) == "linearizable"


def test_cas_with_unknown_outcome_may_or_may_not_swap() -> None:
    base = [put("a", "k", "a", 0, 1), cas("b", "k", "a", "c", None, 2, 3, UNKNOWN)]
    assert verdict(*base, get("c", "k", "c", 10, 11)) == "linearizable"
    assert verdict(*base, get("c", "k", "a", 10, 11)) == "linearizable"
    assert verdict(*base, get("c", "k", "a", 10, 11), get("c", "k", "c", 12, 13)) == "linearizable"
    assert verdict(*base, get("c", "k", "c", 10, 11), get("c", "k", "a", 12, 13)) == "not_linearizable"


def test_unknown_write_may_take_effect_late_or_never() -> None:
    base = [put("a", "k", "a", 0, 1), put("a", "k", "b", 2, 3, UNKNOWN)]
    assert verdict(*base, get("r", "k", "a", 4, 5), get("r", "k", "b", 100, 101)) == "linearizable"
    assert verdict(*base, get("r", "k", "a", 4, 5), get("r", "k", "a", 100, 101)) == "linearizable"
    assert verdict(*base, get("r", "k", "b", 4, 5), get("r", "k", "a", 6, 7)) == "not_linearizable"
    # It cannot take effect before it was invoked.
    assert verdict(*base[:1], put("a", "k", "b", 2, 3, UNKNOWN), get("r", "k", "b", 0.5, 1.5)) == ("not_linearizable")


def test_failed_write_did_not_happen() -> None:
    assert verdict(put("a", "k", "a", 0, 1, FAIL), get("r", "k", None, 2, 3)) == "linearizable"
    result = check_linearizable([put("a", "k", "a", 0, 1, FAIL), get("r", "k", "a", 2, 3)])
    assert result.verdict == "not_linearizable" and result.ops_dropped == 1


def test_unknown_read_is_dropped() -> None:
    result = check_linearizable([put("a", "k", "a", 0, 1), get("r", "k", "garbage", 2, 3, UNKNOWN)])
    assert result.verdict == "linearizable"
    assert (result.ops_checked, result.ops_dropped) == (1, 1)


def test_delete_makes_the_key_absent() -> None:
    assert verdict(put("a", "k", "a", 0, 1), delete("a", "k", 2, 3), get("r", "k", None, 4, 5)) == "linearizable"
    assert verdict(put("a", "k", "a", 0, 1), delete("a", "k", 2, 3), get("r", "k", "a", 4, 5)) == ("not_linearizable")


def test_written_again_value_may_be_read_again() -> None:
    assert (
        verdict(
            put("a", "k", "x", 0, 1),
            put("a", "k", "y", 2, 3),
            get("r", "k", "x", 2.5, 10),
            put("b", "k", "x", 4, 5),
            get("r", "k", "y", 4, 4.5),
            get("r", "k", "x", 11, 12),
        )
        == "linearizable"
    )


def test_initial_values() -> None:
    ops = [get("r", "k", "seed", 0, 1)]
    assert check_linearizable(ops).verdict == "not_linearizable"
    assert check_linearizable(ops, initial={"k": "seed"}).verdict == "linearizable"


def test_keys_are_checked_independently() -> None:
    ops = [
        put("a", "x", "1", 0, 1),
        put("a", "y", "1", 0, 1),
        get("b", "x", "1", 2, 3),
        get("b", "y", None, 2, 3),  # stale
        get("b", "z", None, 2, 3),
    ]
    result = check_linearizable(ops)
    assert result.verdict == "not_linearizable"
    assert result.failed_keys == ["y"]
    assert {k: r.verdict for k, r in result.keys.items()} == {
        "x": "linearizable",
        "y": "not_linearizable",
        "z": "linearizable",
    }
    assert result.explanation is not None and result.explanation.key == "y"
    assert result.ops_checked == 5
    # The same calls on one key would not be linearizable; on two keys they are.
    assert verdict(put("a", "x", "1", 0, 1), get("b", "y", None, 2, 3)) == "linearizable"
    assert verdict(put("a", "x", "1", 0, 1), get("b", "x", None, 2, 3)) == "not_linearizable"


def test_explanation_reports_longest_prefix_and_stuck_ops() -> None:
    ops = [
        put("a", "k", "1", 0, 1),
        get("b", "k", "1", 2, 3),
        put("a", "k", "2", 4, 10),
        get("b", "k", "3", 5, 6),
        get("c", "k", "2", 7, 8),
        get("c", "k", "2", 11, 12),
    ]
    why = check_linearizable(ops).explanation
    assert why is not None
    assert [str(op) for op in why.linearized][:2] == [str(ops[0]), str(ops[1])]
    assert ops[3] in why.stuck
    assert ops[5] not in why.stuck  # invoked after the blocking read returned


def test_invalid_operations_are_rejected_with_a_message() -> None:
    with pytest.raises(ValueError, match="returns before it is invoked"):
        check_linearizable([put("a", "k", "1", 5, 1)])
    with pytest.raises(ValueError, match="put without a value"):
        check_linearizable([Operation("a", OpKind.PUT, "k", call=0, ret=1)])


def adversarial(writers: int, key: str = "k") -> list[Operation]:
    """Blind concurrent writes, then two reads no order of them explains: exponential for WGL."""
    ops = [put(f"w{i}", key, f"v{i}", 0, 10) for i in range(writers)]
    return [*ops, get("r", key, "v0", 11, 12), get("r", key, "v1", 13, 14)]


def test_timeout_is_unknown_never_a_pass() -> None:
    result = check_linearizable(adversarial(40), timeout_s=0.05)
    assert result.verdict == "unknown" and not result.ok
    assert result.unknown_keys == ["k"] and result.explanation is None
    assert "unknown" in result.summary()
    assert check_linearizable(adversarial(6)).verdict == "not_linearizable"


def test_timeout_spent_leaves_remaining_keys_unknown() -> None:
    ops = [*adversarial(40, key="big"), put("a", "other", "1", 0, 1), get("a", "other", "1", 2, 3)]
    result = check_linearizable(ops, timeout_s=0.05)
    assert result.keys["other"].verdict == "linearizable"  # smallest keys go first
    assert result.keys["big"].verdict == "unknown"
    assert result.verdict == "unknown"


def test_configuration_bound_is_unknown() -> None:
    result = check_linearizable(adversarial(40), max_configurations=10_000)
    assert result.verdict == "unknown"


# --- generated histories -----------------------------------------------------------------------


def simulate(
    rng: random.Random,
    clients: int,
    ops_per_client: int,
    keys: int,
    *,
    fail_p: float = 0.03,
    unknown_p: float = 0.03,
    max_duration: float = 10.0,
) -> list[Operation]:
    return simulate_with_final(
        rng, clients, ops_per_client, keys, fail_p=fail_p, unknown_p=unknown_p, max_duration=max_duration
    )[0]


def simulate_with_final(
    rng: random.Random,
    clients: int,
    ops_per_client: int,
    keys: int,
    *,
    fail_p: float = 0.03,
    unknown_p: float = 0.03,
    max_duration: float = 10.0,
) -> tuple[list[Operation], dict[str, str | None]]:
    """Clients with random, overlapping intervals against an atomic register.

    Each operation takes effect at a random instant inside its interval (or, when
    UNKNOWN, maybe never; when FAIL, never), so the history is linearizable by
    construction. Values are unique per write.
    """
    plan = []
    for c in range(clients):
        t = rng.uniform(0, 3)
        for j in range(ops_per_client):
            call = t
            ret = call + rng.uniform(0.01, max_duration)
            t = ret + rng.uniform(0, 2)
            r = rng.random()
            kind = OpKind.GET if r < 0.45 else OpKind.PUT if r < 0.75 else OpKind.CAS if r < 0.9 else OpKind.DELETE
            o = rng.random()
            outcome = FAIL if o < fail_p else UNKNOWN if o < fail_p + unknown_p else OK
            plan.append((rng.uniform(call, ret), f"c{c}", kind, f"k{rng.randrange(keys)}", call, ret, outcome, j))
    plan.sort(key=lambda p: p[0])
    state: dict[str, str | None] = {}
    written: dict[str, list[str | None]] = {}
    history = []
    for _, client, kind, key, call, ret, outcome, j in plan:
        takes_effect = outcome is OK or (outcome is UNKNOWN and rng.random() < 0.5)
        current = state.get(key)
        value = f"{client}-{j}"
        if kind is OpKind.GET:
            history.append(get(client, key, current if outcome is OK else None, call, ret, outcome))
        elif kind is OpKind.PUT:
            if takes_effect:
                state[key] = value
            history.append(put(client, key, value, call, ret, outcome))
        elif kind is OpKind.DELETE:
            if takes_effect:
                state[key] = None
            history.append(delete(client, key, call, ret, outcome))
        else:
            expected = current if rng.random() < 0.5 else rng.choice([None, *written.get(key, [])])
            swapped = current == expected
            if takes_effect and swapped:
                state[key] = value
            history.append(cas(client, key, expected, value, swapped if outcome is OK else None, call, ret, outcome))
        if kind in (OpKind.PUT, OpKind.CAS):
            written.setdefault(key, []).append(value)
    rng.shuffle(history)
    return history, {f"k{i}": state.get(f"k{i}") for i in range(keys)}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    clients=st.integers(1, 8),
    ops_per_client=st.integers(1, 25),
    keys=st.integers(1, 3),
    max_duration=st.sampled_from([0.5, 3.0, 10.0]),
)
def test_atomic_register_histories_are_linearizable(
    seed: int, clients: int, ops_per_client: int, keys: int, max_duration: float
) -> None:
    ops = simulate(random.Random(seed), clients, ops_per_client, keys, max_duration=max_duration)
    result = check_linearizable(ops, timeout_s=60)
    assert result.verdict == "linearizable", result.summary()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    clients=st.integers(1, 8),
    ops_per_client=st.integers(1, 25),
    keys=st.integers(1, 3),
    pick=st.integers(0, 10_000),
)
def test_a_read_of_a_never_written_value_is_caught(
    seed: int, clients: int, ops_per_client: int, keys: int, pick: int
) -> None:
    ops = simulate(random.Random(seed), clients, ops_per_client, keys)
    reads = [i for i, op in enumerate(ops) if op.kind is OpKind.GET and op.outcome is OK]
    assume(reads)
    victim = reads[pick % len(reads)]
    ops[victim] = get(ops[victim].client, ops[victim].key, "never-written", ops[victim].call, ops[victim].ret)
    result = check_linearizable(ops, timeout_s=60)
    assert result.verdict == "not_linearizable"
    assert result.failed_keys == [ops[victim].key]


@pytest.mark.parametrize(("ops_per_client", "keys"), [(125, 1), (125, 4), (625, 20)])
def test_checker_speed(ops_per_client: int, keys: int) -> None:
    ops = simulate(random.Random(42), 16, ops_per_client, keys)
    result = check_linearizable(ops, timeout_s=120)
    print(
        f"\n16 clients, {len(ops)} ops, {keys} key(s): {result.verdict} in {result.elapsed_s:.3f}s, "
        f"max {max(r.configurations for r in result.keys.values())} configurations per key"
    )
    assert result.verdict == "linearizable"
    assert 0 < result.elapsed_s < 60


# --- lost writes -------------------------------------------------------------------------------


def test_no_lost_writes_when_the_last_write_survives() -> None:
    ops = [put("a", "k", "1", 0, 1), put("a", "k", "2", 2, 3), get("b", "k", "2", 4, 5)]
    result = check_no_lost_writes(ops, {"k": "2"})
    assert result.ok and result.verdict == "ok" and result.acknowledged == 2 and not result.lost


def test_concurrent_write_may_win() -> None:
    ops = [put("a", "k", "1", 0, 5), put("b", "k", "2", 1, 6)]
    assert check_no_lost_writes(ops, {"k": "1"}).ok
    assert check_no_lost_writes(ops, {"k": "2"}).ok


def test_write_overwritten_by_an_earlier_write_is_lost() -> None:
    ops = [put("a", "k", "1", 0, 1), put("a", "k", "2", 2, 3), cas("a", "k", "2", "3", True, 4, 5)]
    result = check_no_lost_writes(ops, {"k": "1"})
    assert result.verdict == "violated" and not result.ok
    assert [lw.op.value for lw in result.lost] == ["2", "3"]
    assert "returned at 1, before this write was invoked" in result.lost[0].reason
    assert "lost:" in result.summary()


def test_unknown_and_failed_writes() -> None:
    ops = [put("a", "k", "1", 0, 1), put("a", "k", "2", 2, 3, UNKNOWN), put("a", "k", "3", 4, 5, FAIL)]
    assert check_no_lost_writes(ops, {"k": "2"}).ok  # the unknown write landed late
    assert check_no_lost_writes(ops, {"k": "1"}).ok  # ... or never; it was not acknowledged
    result = check_no_lost_writes(ops, {"k": "3"})  # a failed write must not show up
    assert result.verdict == "violated" and result.unexplained == {"k": "3"}
    assert [lw.op.value for lw in result.lost] == ["1"]


def test_final_absent_value() -> None:
    ops = [put("a", "k", "1", 0, 2), delete("b", "k", 1, 3)]
    assert check_no_lost_writes(ops, {"k": None}).ok
    lost = check_no_lost_writes([put("a", "k", "1", 0, 1)], {"k": None})
    assert lost.verdict == "violated" and "initial value None" in lost.lost[0].reason
    assert check_no_lost_writes([], {"k": None}).ok


def test_final_value_never_written() -> None:
    result = check_no_lost_writes([put("a", "k", "1", 0, 1)], {"k": "ghost", "j": "ghost"})
    assert result.verdict == "violated"
    assert result.unexplained == {"j": "ghost", "k": "ghost"}
    assert "was never written" in result.lost[0].reason


def test_unsuccessful_cas_is_not_a_write() -> None:
    ops = [put("a", "k", "1", 0, 1), cas("b", "k", "x", "2", False, 2, 3)]
    assert check_no_lost_writes(ops, {"k": "1"}).ok
    assert check_no_lost_writes(ops, {"k": "2"}).verdict == "violated"


def test_missing_final_read_is_unknown() -> None:
    ops = [put("a", "k", "1", 0, 1), put("a", "j", "1", 0, 1)]
    result = check_no_lost_writes(ops, {"k": "1"})
    assert result.verdict == "unknown" and result.unchecked_keys == ("j",) and not result.ok


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), clients=st.integers(1, 8), ops_per_client=st.integers(1, 30))
def test_atomic_register_loses_no_writes(seed: int, clients: int, ops_per_client: int) -> None:
    ops, final = simulate_with_final(random.Random(seed), clients, ops_per_client, 3)
    assert check_no_lost_writes(ops, final).ok


def test_rolled_back_final_value_loses_later_writes() -> None:
    rng = random.Random(3)
    ops, _ = simulate_with_final(rng, 4, 40, 1, fail_p=0, unknown_p=0, max_duration=0.5)
    acked = sorted(
        (op for op in ops if op.kind is OpKind.PUT or (op.kind is OpKind.CAS and op.succeeded)),
        key=lambda op: op.call,
    )
    early = acked[0]
    result = check_no_lost_writes(ops, {"k0": early.value})  # as if the store rolled back to it
    later = {op.value for op in acked if op.call > early.ret}
    assert result.verdict == "violated"
    assert later and later <= {lw.op.value for lw in result.lost}
