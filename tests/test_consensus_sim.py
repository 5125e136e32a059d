"""Whole networks of consensus cores under faults, on a fake clock (see consensus_sim.py).

Every scenario checks safety: correct nodes agree on every height, decide only values
that were proposed, never sign two different messages for one (height, round, step), and
persist each signature before sending it. Most also check liveness (every node that takes
part decides every height), after partitions heal where there are partitions.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossip.envelope import unpackb
from ledger.consensus import ValidatorSet, is_valid_evidence
from tests.consensus_sim import CHAIN_ID, SimResult, run_sim


def assert_safe(r: SimResult) -> None:
    assert r.violations == []
    assert r.agreement_violations() == []
    assert r.validity_violations() == []
    assert all(author in {r.nodes[i].address for i in r.config.byzantine} for _, author, _ in r.rejected), (
        "a message from a correct node was rejected"
    )


def assert_live(r: SimResult) -> None:
    assert r.finished, f"not every node decided {r.config.heights} heights by {r.time_ms} ms"


def proposer_index(value: bytes) -> int:
    assert value.startswith(b"block:") and not value.startswith(b"block:evil:")
    return unpackb(value[len(b"block:") :])[2]


@pytest.mark.parametrize("n", [4, 16])
def test_all_honest_with_20_percent_drop(n: int) -> None:
    r = run_sim(n=n, heights=3, drop=0.2, seed=n)
    assert_safe(r)
    assert_live(r)
    assert all(len(node.decisions) >= 3 for node in r.nodes)


def test_same_seed_same_run() -> None:
    a, b = run_sim(n=5, heights=2, drop=0.3, seed=7), run_sim(n=5, heights=2, drop=0.3, seed=7)
    assert [n.decisions for n in a.nodes] == [n.decisions for n in b.nodes]
    assert (a.time_ms, a.events) == (b.time_ms, b.events)


def test_partition_without_a_two_thirds_side_decides_only_after_it_heals() -> None:
    heal = 1500
    r = run_sim(n=4, heights=3, seed=3, drop=0.1, partition=[{0, 1}, {2, 3}], heal_ms=heal)
    assert_safe(r)
    assert_live(r)
    assert min(t for node in r.nodes for t in node.decide_time.values()) >= heal


def test_partition_with_a_two_thirds_side_keeps_deciding_and_the_other_side_syncs() -> None:
    heal = 800
    r = run_sim(n=4, heights=4, seed=4, drop=0.1, partition=[{0, 1, 2}, {3}], heal_ms=heal)
    assert_safe(r)
    assert_live(r)
    majority, isolated = r.nodes[:3], r.nodes[3]
    assert all(node.decide_time[h] < heal for node in majority for h in range(1, 5))
    assert all(t >= heal for t in isolated.decide_time.values())


def test_equivocating_validator_cannot_split_the_others_and_is_caught() -> None:
    r = run_sim(n=4, heights=4, seed=5, drop=0.1, byzantine=frozenset({0}))
    assert_safe(r)
    assert_live(r)
    cheat = r.nodes[0].address
    assert r.evidence, "the double signs produced no evidence"
    for _, ev in r.evidence:
        assert ev.validator == cheat
        assert is_valid_evidence(ev, r.validator_sets[ev.height], chain_id=CHAIN_ID)
        assert not is_valid_evidence(ev, ValidatorSet([r.validator_sets[1].validators[0]]), chain_id="other")
    assert {i for i, _ in r.evidence} >= {1, 2, 3}, "every correct node should see the double signs"


def test_silent_validator_with_less_than_a_third_forces_round_changes_only() -> None:
    r = run_sim(n=4, heights=8, seed=6, silent=frozenset({3}))
    assert_safe(r)
    assert_live(r)
    mute = r.nodes[3].address
    silent_turns = [h for h in range(1, 9) if r.validator_sets[h].proposer(0) == mute]
    assert silent_turns, "the scenario must make the silent node a round-0 proposer"
    for node in r.nodes[:3]:
        for h in range(1, 9):
            assert (node.decide_round[h] >= 1) == (h in silent_turns)
            assert proposer_index(node.decisions[h]) != 3


def test_crashed_validator_restarts_from_its_last_signed_record_and_catches_up() -> None:
    back = 400
    r = run_sim(n=4, heights=6, seed=8, drop=0.1, crashes={1: (30, back)})
    assert_safe(r)
    assert_live(r)
    assert any(t >= back for t in r.nodes[1].decide_time.values())


def test_weighted_proposer_frequency_follows_power() -> None:
    powers = [1, 2, 3, 4]
    r = run_sim(n=4, powers=powers, heights=40, seed=9)
    assert_safe(r)
    assert_live(r)
    node = r.nodes[0]
    assert all(node.decide_round[h] == 0 for h in range(1, 41))
    counts = Counter(proposer_index(node.decisions[h]) for h in range(1, 41))
    assert [counts[i] for i in range(4)] == [40 * p // sum(powers) for p in powers]


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(4, 7),
    drop=st.floats(0.0, 0.35),
    byzantine=st.booleans(),
    silent=st.booleans(),
    heal=st.one_of(st.none(), st.integers(50, 1500)),
)
def test_agreement_is_never_violated(
    seed: int, n: int, drop: float, byzantine: bool, silent: bool, heal: int | None
) -> None:
    f = (n - 1) // 3  # faults the network must tolerate
    byz = frozenset({0}) if byzantine else frozenset()
    mute = frozenset({n - 1}) if silent and len(byz) < f else frozenset()
    partition = [set(range(n // 2)), set(range(n // 2, n))] if heal is not None else None
    r = run_sim(
        n=n,
        heights=2,
        seed=seed,
        drop=drop,
        byzantine=byz,
        silent=mute,
        partition=partition,
        heal_ms=heal or 0,
    )
    assert_safe(r)
    assert_live(r)
