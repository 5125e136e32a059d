"""Decoded txs by the hash of their bytes: each tx is decoded (and its fields checked) once per node.

A tx's bytes reach a node several times: in a gossip batch (validated), at mempool
admission, inside a proposed block (shape check) and when the decided block is applied.
`decode_tx` checks every field (addresses are base58 peer ids, re-derived to prove they are
canonical), which costs far more than hashing the bytes, so the node keeps the SignedTx of
each tx it decoded, keyed by sha256 of its exact bytes. A SignedTx re-encodes to exactly
the bytes it was decoded from, so a hit is the very same tx.

Bounded (least recently used out); one thread (the event loop) uses it, synchronously.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from ledger.tx import SignedTx, decode_tx


class DecodedTxs:
    """`decode(raw)`: decode_tx with a bounded cache. Raises InvalidTx as decode_tx does."""

    def __init__(self, capacity: int = 20_000) -> None:
        self.capacity = capacity
        self.hits = 0
        self._txs: OrderedDict[bytes, SignedTx] = OrderedDict()

    def __len__(self) -> int:
        return len(self._txs)

    def decode(self, raw: bytes) -> SignedTx:
        key = hashlib.sha256(raw).digest()
        stx = self._txs.get(key)
        if stx is not None:
            self.hits += 1
            self._txs.move_to_end(key)
            return stx
        stx = decode_tx(raw)
        self._txs[key] = stx
        if len(self._txs) > self.capacity:
            self._txs.popitem(last=False)
        return stx
