"""Checkpoint traces and the Merkle tree that commits to them.

A training run commits to the hash of its full training state (weights and optimizer
state) every k steps, including step 0 and the final step. The trace is that list of
(step, state hash) pairs plus the Merkle root over them; the root goes on the ledger, and
a single checkpoint can later be proven against it with `CheckpointTrace.proof` and
`verify_proof`, which is what dispute bisection needs.

Tree: leaf = sha256(0x00 || msgpack([step, state_hash])), node = sha256(0x01 || left ||
right); an odd node at the end of a level is carried up unchanged (never duplicated), and
root = sha256(0x02 || leaf count as u64 || top node), so no two leaf lists share a root and
a proof pins the number of leaves. The same tree commits to inference output batches.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from compute import canonical
from compute.errors import TraceError
from ledger.merkle import leaf_hash, node_hash, seal_root, tree_levels

MAX_CHECKPOINTS = 1 << 20
_EMPTY_ROOT = hashlib.sha256(b"hivemesh/merkle/empty").digest()


def checkpoint_steps(steps: int, every: int) -> list[int]:
    """Steps at which a run of `steps` updates checkpoints: 0, k, 2k, ..., and `steps`."""
    return sorted({*range(0, steps, every), steps})


def item_leaf(index: int, item_hash: str) -> bytes:
    """A leaf for an indexed item (e.g. inference output batch `index`)."""
    return leaf_hash(index, item_hash)


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The root: the tree's top node sealed with the leaf count, so a proof also fixes the count."""
    return seal_root(tree_levels(leaves)[-1][0], len(leaves)) if leaves else _EMPTY_ROOT


def merkle_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """Sibling hashes from leaf `index` up to the root (levels where it has no sibling are skipped)."""
    if not 0 <= index < len(leaves):
        raise TraceError(f"leaf index {index} out of range for {len(leaves)} leaves")
    proof = []
    for level in tree_levels(leaves)[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            proof.append(level[sibling])
        index //= 2
    return proof


def verify_proof(root: bytes, leaf: bytes, index: int, n_leaves: int, proof: Sequence[bytes]) -> bool:
    """True when `leaf` is leaf `index` of an `n_leaves`-leaf tree with this root. Never raises."""
    if not (
        isinstance(index, int) and isinstance(n_leaves, int) and 0 <= index < n_leaves <= MAX_CHECKPOINTS
    ):
        return False
    node, width, used = leaf, n_leaves, 0
    while width > 1:
        sibling = index ^ 1
        if sibling < width:
            if used >= len(proof) or not isinstance(proof[used], bytes) or len(proof[used]) != 32:
                return False
            node = node_hash(proof[used], node) if index % 2 else node_hash(node, proof[used])
            used += 1
        index, width = index // 2, (width + 1) // 2
    return used == len(proof) and seal_root(node, n_leaves) == root


@dataclass(frozen=True)
class CheckpointTrace:
    """(step, state hash) every k steps, including 0 and the last step, and their Merkle root (hex)."""

    checkpoints: tuple[tuple[int, str], ...]
    root: str

    @classmethod
    def build(cls, checkpoints: Sequence[tuple[int, str]]) -> CheckpointTrace:
        """Validate the checkpoint list and compute its root. Raises TraceError."""
        cps = tuple((step, h) for step, h in checkpoints)
        problems = []
        if not 1 <= len(cps) <= MAX_CHECKPOINTS:
            problems.append(f"a trace needs 1..{MAX_CHECKPOINTS} checkpoints, got {len(cps)}")
        elif cps[0][0] != 0:
            problems.append(f"a trace must start at step 0, got {cps[0][0]}")
        for step, h in cps:
            if not isinstance(step, int) or isinstance(step, bool) or step < 0 or not canonical.is_hash(h):
                problems.append(f"bad checkpoint ({step!r}, {h!r})")
                break
        if not problems and any(a[0] >= b[0] for a, b in itertools.pairwise(cps)):
            problems.append("checkpoint steps must be strictly increasing")
        if problems:
            raise TraceError(problems)
        return cls(cps, merkle_root([leaf_hash(s, h) for s, h in cps]).hex())

    @property
    def steps(self) -> list[int]:
        return [step for step, _ in self.checkpoints]

    @property
    def final_hash(self) -> str:
        return self.checkpoints[-1][1]

    def hash_at(self, step: int) -> str:
        for s, h in self.checkpoints:
            if s == step:
                return h
        raise TraceError(f"no checkpoint at step {step}; checkpoints are at {self.steps}")

    def index_of(self, step: int) -> int:
        return self.steps.index(step) if step in self.steps else -1

    def proof(self, index: int) -> list[bytes]:
        """Merkle proof for checkpoint `index` (position in `checkpoints`, not the step)."""
        return merkle_proof([leaf_hash(s, h) for s, h in self.checkpoints], index)

    def to_wire(self) -> dict[str, Any]:
        return {"checkpoints": [[s, h] for s, h in self.checkpoints], "root": self.root}

    @classmethod
    def from_wire(cls, obj: Any) -> CheckpointTrace:
        """Decode and check a trace from the network (the root must match). Raises TraceError."""
        if not isinstance(obj, dict) or set(obj) != {"checkpoints", "root"}:
            raise TraceError("a trace must be a map with exactly 'checkpoints' and 'root'")
        cps = obj["checkpoints"]
        if not isinstance(cps, list) or not all(isinstance(c, list | tuple) and len(c) == 2 for c in cps):
            raise TraceError("'checkpoints' must be a list of [step, hash] pairs")
        trace = cls.build([(c[0], c[1]) for c in cps])
        if trace.root != obj["root"]:
            raise TraceError(f"root {obj['root']!r} does not commit to these checkpoints")
        return trace


def verify_checkpoint(
    root: str, step: int, state_hash: str, index: int, n: int, proof: Sequence[bytes]
) -> bool:
    """True when (step, state_hash) is checkpoint `index` of an `n`-checkpoint trace with `root`."""
    if not canonical.is_hash(root) or not canonical.is_hash(state_hash) or not isinstance(step, int):
        return False
    return verify_proof(bytes.fromhex(root), leaf_hash(step, state_hash), index, n, proof)


def first_divergence(a: CheckpointTrace, b: CheckpointTrace) -> int | None:
    """Index of the first checkpoint where two traces over the same steps disagree, or None.

    Raises TraceError if the traces do not checkpoint the same steps.
    """
    if a.steps != b.steps:
        raise TraceError("traces checkpoint different steps")
    for i, (x, y) in enumerate(zip(a.checkpoints, b.checkpoints, strict=True)):
        if x[1] != y[1]:
            return i
    return None
