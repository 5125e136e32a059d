"""Merkle proofs of trace leaves, checked on the ledger.

The same tree as `compute.trace` (the ledger may not import compute/; a test checks that the two
agree): leaf = sha256(0x00 || msgpack([step, state_hash])), node = sha256(0x01 || left || right),
an odd node at the end of a level carried up unchanged, root = sha256(0x02 || leaf count as u64
|| top node). Because the root seals the leaf count, a valid proof also proves the count.

For a training job a leaf is (checkpoint step, state hash); for an inference job it is (batch
index, batch output hash), so there step == index.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from gossip.envelope import packb

MAX_LEAVES = 1 << 20
MAX_PROOF_LEN = 20  # ceil(log2(MAX_LEAVES)) siblings at most


def leaf_hash(step: int, state_hash: str) -> bytes:
    return hashlib.sha256(b"\x00" + packb([step, state_hash])).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def seal_root(top: bytes, n_leaves: int) -> bytes:
    return hashlib.sha256(b"\x02" + n_leaves.to_bytes(8, "big") + top).digest()


def verify_leaf(
    root_hex: str, step: int, state_hash: str, index: int, n_leaves: int, proof: Sequence[bytes]
) -> bool:
    """True when (step, state_hash) is leaf `index` of the `n_leaves`-leaf tree with root `root_hex`."""
    if not (isinstance(index, int) and isinstance(n_leaves, int) and 0 <= index < n_leaves <= MAX_LEAVES):
        return False
    try:
        root = bytes.fromhex(root_hex)
    except ValueError:
        return False
    node, width, used = leaf_hash(step, state_hash), n_leaves, 0
    while width > 1:
        sibling = index ^ 1
        if sibling < width:
            if used >= len(proof) or not isinstance(proof[used], bytes) or len(proof[used]) != 32:
                return False
            node = node_hash(proof[used], node) if index % 2 else node_hash(node, proof[used])
            used += 1
        index, width = index // 2, (width + 1) // 2
    return used == len(proof) and seal_root(node, n_leaves) == root


def tree_levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """Every level of the tree, leaves first (for building proofs off the ledger and in tests)."""
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        prev = levels[-1]
        nxt = [node_hash(prev[i], prev[i + 1]) for i in range(0, len(prev) - 1, 2)]
        if len(prev) % 2:
            nxt.append(prev[-1])
        levels.append(nxt)
    return levels


def root_of(levels: list[list[bytes]]) -> str:
    """The hex root of a tree given by `tree_levels` (which must have at least one leaf)."""
    return seal_root(levels[-1][0], len(levels[0])).hex()


def proof_of(levels: list[list[bytes]], index: int) -> list[bytes]:
    """Sibling hashes from leaf `index` up to the root."""
    proof = []
    for level in levels[:-1]:
        if index ^ 1 < len(level):
            proof.append(level[index ^ 1])
        index //= 2
    return proof
