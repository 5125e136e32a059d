"""Deterministic chance from block data: the state's entropy, spot-check samples, committee draws.

The state machine has no randomness of its own. `State.entropy` (32 bytes) is re-derived in
every begin_block:

    entropy_H = sha256("hivemesh/entropy/v1\\0" || msgpack([entropy_{H-1}, H, time_ms, proposer, extra]))

where `extra` is the block's own randomness handed to begin_block (the hash of the previous
block, which covers every tx of that block; b"" when the caller has none). Every peer that
applies the same blocks gets the same value. It is unpredictable before the block's header is
fixed, but the proposer of a block can grind it (by its choice of time and txs), so it is used
only where one proposer's bias is tolerable: which items a verifier samples and which
validators referee a dispute step, each drawn from the entropy of a block *after* the data it
judges is committed.

Uniform numbers below a bound come from sha256(tag || msgpack([seed, label, counter])) read as a
64-bit integer with rejection of the biased top range, so every value is exactly equally likely.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from gossip.envelope import packb
from ledger.params import BPS

ENTROPY_DOMAIN = b"hivemesh/entropy/v1\x00"
_DRAW_DOMAIN = b"hivemesh/draw/v1\x00"
_SPAN = 1 << 64


def next_entropy(prev: bytes, height: int, time_ms: int, proposer: str, extra: bytes = b"") -> bytes:
    """The entropy of block `height` (see the module docstring)."""
    return hashlib.sha256(ENTROPY_DOMAIN + packb([prev, height, time_ms, proposer, extra])).digest()


def uniform(seed: bytes, label: str, bound: int) -> int:
    """An integer uniform in [0, bound), fixed by (seed, label). Requires bound >= 1."""
    assert bound >= 1, bound
    limit = _SPAN - _SPAN % bound  # values at or above this would favour small results
    counter = 0
    while True:
        digest = hashlib.sha256(_DRAW_DOMAIN + packb([seed, label, counter])).digest()
        value = int.from_bytes(digest[:8], "big")
        if value < limit:
            return value % bound
        counter += 1


def sample_count(n_items: int, rate_bps: int) -> int:
    """How many of `n_items` a spot check at `rate_bps` samples: ceil(n * rate / 10_000), at least
    1 (when n >= 1) and at most n."""
    if n_items <= 0:
        return 0
    return min(n_items, max(1, -(-n_items * rate_bps // BPS)))


def sample_indices(entropy: bytes, job_id: str, n_items: int, rate_bps: int) -> list[int]:
    """The item indices (sorted, distinct, in [0, n_items)) a verifier must re-run for `job_id`.

    `entropy` is the job's sample seed (ledger.audits: the block entropy drawn after the result
    commit), so the solver cannot know the sample when it commits. A partial Fisher-Yates
    shuffle picks `sample_count(n_items, rate_bps)` items, each subset equally likely.
    """
    if not isinstance(n_items, int) or not 0 <= n_items <= 1 << 32:
        raise ValueError(f"n_items must be an integer in [0, 2**32], got {n_items!r}")
    if not isinstance(rate_bps, int) or not 0 <= rate_bps <= BPS:
        raise ValueError(f"rate_bps must be an integer in [0, {BPS}], got {rate_bps!r}")
    swapped: dict[int, int] = {}
    picked = []
    for i in range(sample_count(n_items, rate_bps)):
        j = i + uniform(entropy, f"sample/{job_id}/{i}", n_items - i)
        picked.append(swapped.get(j, j))
        swapped[j] = swapped.get(i, i)
    return sorted(picked)


def weighted_draw(
    seed: bytes, label: str, candidates: Sequence[tuple[str, int]], k: int
) -> list[tuple[str, int]]:
    """Draw up to `k` distinct candidates without replacement, each pick with probability
    proportional to its weight among those left. `candidates` are (name, weight > 0) pairs; the
    result keeps each pick's weight and is sorted by name. Deterministic in (seed, label)."""
    pool = sorted((name, weight) for name, weight in candidates if weight > 0)
    chosen: list[tuple[str, int]] = []
    for i in range(min(k, len(pool))):
        target = uniform(seed, f"{label}/{i}", sum(w for _, w in pool))
        for idx, (_, weight) in enumerate(pool):
            if target < weight:
                chosen.append(pool.pop(idx))
                break
            target -= weight
    return sorted(chosen)
