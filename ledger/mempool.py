"""Mempool: txs waiting for a block. Admission checks, nonce pipelining, fair reaping, recheck.

Admission (`add`) runs, cheapest first: decode and size, dedupe by hash (pending, or committed
recently), capacity, then the `check_tx` rules (chain, known sender, nonce, fee) with the
sender's pipeline taken into account, then the signature. A sender may hold several pending
txs with consecutive nonces starting at its state nonce; the next one must carry the nonce
after its last pending tx, and its balance must cover the fees of all its pending txs plus
this one (only fees: a pending transfer that spends the balance can still make a later tx of
the same sender unpayable; it is then excluded from the block and dropped by the recheck).

A signature is verified once per node: the hashes of txs whose signature verified are kept
(an LRU that never evicts a pending tx), whoever verified them (admission here, or the tx
gossip validator through `remember_verified`), and `verified` can be passed to
`apply_block(verified=...)`. A tx hash is sha256 of the tx's exact bytes, signature included.

`reap` returns pending txs in an order that applies cleanly: each sender's txs in nonce order,
senders interleaved round-robin (one tx per sender per round, senders ordered by the arrival
of their oldest pending tx). Reaped txs stay pending until `update` sees them committed.

`update(committed, new_state)` removes committed txs and rechecks the rest against the new
state, dropping every tx that no longer passes (and the later txs of its sender, which depend
on it). Senders whose account record and params did not change are not rechecked.

The mempool holds the state it is given by reference only during a call; one task owns it.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, KeysView
from dataclasses import dataclass

from ledger.apply import check_tx
from ledger.errors import DuplicateTx, InsufficientBalance, InvalidTx, LedgerError, MempoolFull
from ledger.params import Params
from ledger.state import Account, State
from ledger.tx import MAX_TX_BYTES, SignedTx, decode_tx, verify_tx


@dataclass(slots=True)
class _Pending:
    stx: SignedTx
    sender: str
    seq: int  # arrival order, for fair reaping


class Mempool:
    """Bounded pool of admitted txs. See the module docstring for the rules.

    Args:
        max_txs, max_bytes: capacity (count of txs, sum of their wire sizes).
        recent_committed: how many committed tx hashes to remember for dedupe.
        verified_cache: how many verified hashes to remember (default 2 * max_txs + 1024;
            pending txs are always kept on top of that).
        decode: turns tx bytes into a SignedTx (decode_tx, or the node's caching decoder).
    """

    def __init__(
        self,
        max_txs: int = 10_000,
        max_bytes: int = 32 * 1024 * 1024,
        *,
        recent_committed: int = 50_000,
        verified_cache: int | None = None,
        decode: Callable[[bytes], SignedTx] = decode_tx,
    ) -> None:
        if max_txs < 1 or max_bytes < 1:
            raise ValueError("max_txs and max_bytes must be >= 1")
        self.max_txs, self.max_bytes = max_txs, max_bytes
        self._decode = decode
        self._txs: dict[bytes, _Pending] = {}
        self._queues: dict[str, list[bytes]] = {}  # sender -> pending hashes, consecutive nonces
        self._fees: dict[str, int] = {}  # sender -> sum of its pending fees
        self._checked: dict[str, Account | None] = {}  # sender -> account its queue was checked with
        self._params: Params | None = None  # params of the last update
        self._bytes = 0
        self._seq = 0
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._verified_cap = 2 * max_txs + 1_024 if verified_cache is None else verified_cache
        self._committed: OrderedDict[bytes, None] = OrderedDict()
        self._committed_cap = recent_committed

    # ---- queries ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._txs)

    def __contains__(self, tx_hash: object) -> bool:
        return tx_hash in self._txs

    def has(self, tx_hash: bytes) -> bool:
        return tx_hash in self._txs

    def get(self, tx_hash: bytes) -> SignedTx | None:
        entry = self._txs.get(tx_hash)
        return entry.stx if entry else None

    @property
    def size_bytes(self) -> int:
        return self._bytes

    @property
    def verified(self) -> KeysView[bytes]:
        """Hashes of txs whose signature verified here (pass to apply_block's `verified=`)."""
        return self._verified.keys()

    def pending_nonce(self, state: State, address: str) -> int:
        """The nonce the sender's next tx must carry (state nonce + its pending txs)."""
        queue = self._queues.get(address)
        if queue:
            return self._txs[queue[-1]].stx.tx.nonce + 1
        acct = state.accounts.get(address)
        return acct.nonce if acct else 0

    # ---- admission -------------------------------------------------------------------------

    def add(self, tx: bytes | SignedTx, state: State) -> bytes:
        """Admit a tx checked against `state` (the state of the last `update`). Returns its hash.

        Raises:
            InvalidTx: malformed or oversized. DuplicateTx: already pending or just committed.
            MempoolFull: no room. WrongChain, UnknownAccount, BadNonce, FeeTooLow,
            InsufficientBalance: as check_tx, with the sender's pending txs counted.
            BadSignature: the signature does not verify.
        """
        stx = _parse(tx, self._decode)
        tx_hash = stx.hash
        if tx_hash in self._txs:
            raise DuplicateTx(tx_hash)
        if tx_hash in self._committed:
            raise DuplicateTx(tx_hash, "committed")
        size = len(stx.encoded)
        if len(self._txs) >= self.max_txs:
            raise MempoolFull("txs", self.max_txs)
        if self._bytes + size > self.max_bytes:
            raise MempoolFull("bytes", self.max_bytes)
        sender = stx.sender_address
        self._admit(state, stx, sender, self.pending_nonce(state, sender), self._fees.get(sender, 0))
        if tx_hash not in self._verified:
            verify_tx(stx)
        self.remember_verified(tx_hash)
        queue = self._queues.setdefault(sender, [])
        if not queue:
            self._checked[sender] = state.accounts.get(sender)
        queue.append(tx_hash)
        self._fees[sender] = self._fees.get(sender, 0) + stx.tx.fee
        self._txs[tx_hash] = _Pending(stx, sender, self._seq)
        self._seq += 1
        self._bytes += size
        return tx_hash

    @staticmethod
    def _admit(state: State, stx: SignedTx, sender: str, nonce: int, pending_fees: int) -> None:
        """check_tx without the signature (checked after, only if the rest passes) plus pending fees."""
        check_tx(state, stx, verified=(stx.hash,), nonce=nonce)
        balance = state.accounts[sender].balance
        if balance < pending_fees + stx.tx.fee:
            raise InsufficientBalance(pending_fees + stx.tx.fee, balance)

    def is_verified(self, tx_hash: bytes) -> bool:
        return tx_hash in self._verified

    def remember_verified(self, tx_hash: bytes) -> None:
        """Record that this exact tx's signature verified (by admission or the gossip validator)."""
        self._verified[tx_hash] = None
        self._verified.move_to_end(tx_hash)
        kept = 0
        while len(self._verified) > self._verified_cap + kept:
            oldest, _ = self._verified.popitem(last=False)
            if oldest in self._txs:  # never forget a pending tx (it would be verified again)
                self._verified[oldest] = None
                kept += 1

    # ---- block building --------------------------------------------------------------------

    def reap(self, max_txs: int, max_bytes: int) -> list[bytes]:
        """Up to `max_txs` txs of at most `max_bytes` in all, in an order that applies cleanly."""
        senders = sorted(self._queues, key=lambda s: self._txs[self._queues[s][0]].seq)
        turn: deque[tuple[str, int]] = deque((s, 0) for s in senders)
        out: list[bytes] = []
        total = 0
        while turn and len(out) < max_txs:
            sender, pos = turn.popleft()
            queue = self._queues[sender]
            encoded = self._txs[queue[pos]].stx.encoded
            if total + len(encoded) > max_bytes:
                continue  # this sender's later txs need this one first: the sender is done
            out.append(encoded)
            total += len(encoded)
            if pos + 1 < len(queue):
                turn.append((sender, pos + 1))
        return out

    # ---- after a commit ----------------------------------------------------------------------

    def update(self, committed_tx_hashes: Iterable[bytes], new_state: State) -> list[bytes]:
        """Forget committed txs, recheck the rest against `new_state`. Returns the dropped hashes.

        `committed_tx_hashes` should be the hashes of the block's charged receipts (the txs it
        applied). They are remembered for dedupe, so an excluded tx passed here could not be
        added again until it ages out; a pending excluded tx left out is rechecked instead.
        """
        for tx_hash in committed_tx_hashes:
            self._committed[tx_hash] = None
            self._committed.move_to_end(tx_hash)
            entry = self._txs.get(tx_hash)
            if entry is not None:
                self._remove(entry.sender, tx_hash)
        while len(self._committed) > self._committed_cap:
            self._committed.popitem(last=False)
        params_changed = new_state.params != self._params
        self._params = new_state.params
        dropped: list[bytes] = []
        for sender in sorted(self._queues):
            acct = new_state.accounts.get(sender)
            if params_changed or acct is not self._checked.get(sender):
                dropped += self._recheck(sender, new_state)
        return dropped

    def _recheck(self, sender: str, state: State) -> list[bytes]:
        acct = state.accounts.get(sender)
        nonce = acct.nonce if acct else 0
        fees = 0
        keep: list[bytes] = []
        dropped: list[bytes] = []
        for tx_hash in self._queues[sender]:
            stx = self._txs[tx_hash].stx
            if dropped or stx.tx.nonce < nonce:
                dropped.append(tx_hash)
                continue
            try:
                self._admit(state, stx, sender, nonce, fees)
            except LedgerError:
                dropped.append(tx_hash)
                continue
            keep.append(tx_hash)
            nonce += 1
            fees += stx.tx.fee
        for tx_hash in dropped:
            self._bytes -= len(self._txs.pop(tx_hash).stx.encoded)
        self._set_queue(sender, keep, fees)
        self._checked[sender] = acct
        return dropped

    def _remove(self, sender: str, tx_hash: bytes) -> None:
        entry = self._txs.pop(tx_hash)
        self._bytes -= len(entry.stx.encoded)
        queue = self._queues[sender]
        queue.remove(tx_hash)
        self._set_queue(sender, queue, self._fees[sender] - entry.stx.tx.fee)

    def _set_queue(self, sender: str, queue: list[bytes], fees: int) -> None:
        if queue:
            self._queues[sender], self._fees[sender] = queue, fees
        else:
            for table in (self._queues, self._fees, self._checked):
                table.pop(sender, None)


def _parse(tx: bytes | SignedTx, decode: Callable[[bytes], SignedTx]) -> SignedTx:
    if isinstance(tx, SignedTx):
        tx.check()
        if len(tx.encoded) > MAX_TX_BYTES:
            raise InvalidTx(f"tx of {len(tx.encoded)} bytes exceeds the limit of {MAX_TX_BYTES}")
        return tx
    return decode(tx)
