"""Checkpoint traces and Merkle proofs."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compute.errors import TraceError
from compute.trace import (
    CheckpointTrace,
    checkpoint_steps,
    first_divergence,
    merkle_proof,
    merkle_root,
    verify_checkpoint,
    verify_proof,
)


def _h(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def _leaves(n: int) -> list[bytes]:
    return [hashlib.sha256(bytes([i % 256, i // 256])).digest() for i in range(n)]


def test_checkpoint_steps_include_zero_and_the_last_step() -> None:
    assert checkpoint_steps(10, 3) == [0, 3, 6, 9, 10]
    assert checkpoint_steps(9, 3) == [0, 3, 6, 9]
    assert checkpoint_steps(1, 1) == [0, 1]


@given(st.integers(1, 70), st.data())
def test_every_leaf_proves_and_nothing_else_does(n: int, data: st.DataObject) -> None:
    leaves = _leaves(n)
    root = merkle_root(leaves)
    i = data.draw(st.integers(0, n - 1))
    proof = merkle_proof(leaves, i)
    assert verify_proof(root, leaves[i], i, n, proof)
    assert not verify_proof(root, hashlib.sha256(b"forged").digest(), i, n, proof)
    if n > 1:
        j = data.draw(st.integers(0, n - 1).filter(lambda j: j != i))
        assert not verify_proof(root, leaves[i], j, n, proof)
        assert not verify_proof(root, leaves[i], i, n, [*proof[:-1], hashlib.sha256(b"x").digest()])
        assert not verify_proof(root, leaves[i], i, n, [*proof, proof[-1]])
    assert not verify_proof(root, leaves[i], i, n + 1, proof)  # the root pins the leaf count


def test_roots_differ_for_different_leaf_lists() -> None:
    roots = {merkle_root(_leaves(n)) for n in range(0, 40)}
    assert len(roots) == 40  # carrying odd nodes up (not duplicating) keeps lists distinct
    leaves = _leaves(5)
    assert merkle_root(leaves) != merkle_root([*leaves, leaves[-1]])


def test_trace_proofs_verify_against_the_root() -> None:
    trace = CheckpointTrace.build([(s, _h(s)) for s in checkpoint_steps(20, 6)])
    assert trace.steps == [0, 6, 12, 18, 20]
    for i, (step, h) in enumerate(trace.checkpoints):
        assert verify_checkpoint(trace.root, step, h, i, len(trace.checkpoints), trace.proof(i))
        assert not verify_checkpoint(trace.root, step + 1, h, i, len(trace.checkpoints), trace.proof(i))
        assert not verify_checkpoint(trace.root, step, _h(99), i, len(trace.checkpoints), trace.proof(i))
    assert not verify_checkpoint("zz", 0, _h(0), 0, 5, trace.proof(0))
    assert trace.hash_at(12) == _h(12) and trace.final_hash == _h(20) and trace.index_of(18) == 3
    with pytest.raises(TraceError, match="no checkpoint at step 5"):
        trace.hash_at(5)


def test_trace_wire_form_is_checked() -> None:
    trace = CheckpointTrace.build([(0, _h(0)), (5, _h(5))])
    assert CheckpointTrace.from_wire(trace.to_wire()) == trace
    bad = [
        {"checkpoints": [[0, _h(0)], [5, _h(5)]], "root": "0" * 64},
        {"checkpoints": [[1, _h(0)]], "root": trace.root},
        {"checkpoints": [[0, _h(0)], [0, _h(1)]], "root": trace.root},
        {"checkpoints": [[0, "nothex"]], "root": trace.root},
        {"checkpoints": [], "root": trace.root},
        {"checkpoints": [[0]], "root": trace.root},
        {"checkpoints": "x", "root": trace.root},
        [1, 2],
    ]
    for wire in bad:
        with pytest.raises(TraceError):
            CheckpointTrace.from_wire(wire)


def test_first_divergence_finds_the_first_disagreeing_checkpoint() -> None:
    honest = CheckpointTrace.build([(s, _h(s)) for s in range(0, 50, 10)])
    liar = CheckpointTrace.build([(s, _h(s) if s < 30 else _h(-s)) for s in range(0, 50, 10)])
    assert first_divergence(honest, honest) is None
    assert first_divergence(honest, liar) == 3
    with pytest.raises(TraceError, match="different steps"):
        first_divergence(honest, CheckpointTrace.build([(0, _h(0))]))
