"""Solver quotes: a solver's signed offer to do one job, which its submitter may award at post time.

A bid window costs a job blocks of latency before anyone works on it. Instead, a submitter may
ask solvers directly for quotes before it posts (peer/market/quotes.py), pick one by the same
score the ledger ranks bids with (ledger.payout.bid_score), and post the job with that quote
in a `job_award` tx: the job is assigned to the quoting solver in the block that posts it.

A quote binds everything the solver agreed to: the chain, the job id (which binds the
submitter and the nonce of its job_award tx), the spec (by hash: the work), the deadline, the
price, the bond the solver puts up, the X25519 key the input is sealed to, and the last
height at which it may be used. The ledger checks the signature against the solver's address
(its Ed25519 key), so nobody can award a job to a solver that did not offer to do it, on other
terms or after the quote expired.
"""

from __future__ import annotations

from dataclasses import dataclass

from gossip.envelope import packb
from gossip.identity import Identity, public_from_peer_id, verify

QUOTE_DOMAIN = b"hivemesh/quote/v1\x00"
QUOTE_VERSION = 1


@dataclass(frozen=True, slots=True)
class Quote:
    """The terms a solver signs (see the module docstring)."""

    job_id: str
    spec_hash: str
    deadline_blocks: int
    price: int
    bond: int
    encryption_key: bytes
    expires: int  # the last height at which a job_award may carry this quote

    def signing_bytes(self, chain_id: str) -> bytes:
        return QUOTE_DOMAIN + packb(
            [
                QUOTE_VERSION,
                chain_id,
                self.job_id,
                self.spec_hash,
                self.deadline_blocks,
                self.price,
                self.bond,
                self.encryption_key,
                self.expires,
            ]
        )

    def sign(self, identity: Identity, chain_id: str) -> bytes:
        return identity.sign(self.signing_bytes(chain_id))

    def signed_by(self, solver: str, signature: bytes, chain_id: str) -> bool:
        """Whether `signature` is `solver`'s (a peer id / ledger address) over these terms."""
        try:
            public = public_from_peer_id(solver)
        except ValueError:
            return False
        return verify(public, signature, self.signing_bytes(chain_id))
