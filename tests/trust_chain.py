"""A small chain for the trust-game tests: validators, a submitter, a solver, verifiers, and traces.

`TrustChain` applies real signed txs through `apply_block` and checks the ledger invariants and
the token supply after every block. `Trace` builds a trace's leaves, root and proofs with
`ledger.merkle`, and `solver_move` / `challenger_answer` play the dispute game honestly from
the parties' own traces.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from gossip.identity import Identity
from ledger import payout
from ledger.apply import Receipt, apply_block
from ledger.disputes import dispute_id_for
from ledger.genesis import Genesis, genesis_state
from ledger.jobs import job, job_id_for
from ledger.merkle import leaf_hash, proof_of, root_of, tree_levels
from ledger.params import Params
from ledger.records_disputes import Dispute
from ledger.state import app_hash, balance, check_invariants, total_supply
from ledger.tx import sign_tx

CHAIN = "hm-trust"
IDS = [Identity.from_seed(hashlib.sha256(b"trust-%d" % i).digest()) for i in range(13)]
A = [i.peer_id for i in IDS]
VALIDATORS = (0, 1, 2, 3, 4)
STAKES = (5_000, 4_000, 3_000, 2_000, 1_000)
OWNER, SUBMITTER, SOLVER, CHALLENGER, VERIFIER2, VERIFIER3, PROPOSER = 5, 6, 7, 8, 9, 10, 12
START = 1_000_000
MODEL = hashlib.sha256(b"trust-model").hexdigest()
SPEC = hashlib.sha256(b"trust-spec").hexdigest()
KEY = bytes(range(32))
PRICE, JOB_BOND, BOUNTY = 6_000, 2_000, 10_000
PARAMS = Params(
    min_fee=0,
    registration_burn=100,
    min_challenge_window_blocks=2,
    max_job_window_blocks=200,
    reputation_default=5_000,
    reputation_gain_bps=500,
    reputation_dispute_bps=5_000,
    dispute_min_bond=500,
    dispute_step_blocks=3,
    dispute_referee_blocks=4,
    dispute_committee_size=3,
    dispute_jackpot_bps=3_000,
    dispute_committee_reward_bps=1_000,
    reputation_referee_bps=1_000,
    verify_report_bond=100,
    verify_reward=10,
    max_reports_per_job=3,
    spot_check_min_bps=500,
    spot_check_max_bps=5_000,
    repvote_min_deposit=200,
    repvote_commit_blocks=3,
    repvote_reveal_blocks=3,
    repvote_quorum_bps=5_000,
    repvote_kappa_bps=5_000,
    repvote_alpha_bps=5_000,
    repvote_tolerance=2_000,
    repvote_penalty_bps=1_000,
)


def h(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


@dataclass
class Trace:
    """Leaves (step, hash) of a trace whose hashes follow `truth` up to index `diverge` (exclusive)
    and are wrong from there on (diverge=None: an honest trace)."""

    n: int
    diverge: int | None = None
    every: int = 1
    tag: str = "run"
    levels: list[list[bytes]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.levels = tree_levels([leaf_hash(*self.leaf(i)) for i in range(self.n)])

    def hash_at(self, i: int) -> str:
        wrong = self.diverge is not None and i >= self.diverge
        return h(f"{self.tag}-{'bad' if wrong else 'true'}-{i}")

    def leaf(self, i: int) -> tuple[int, str]:
        return i * self.every, self.hash_at(i)

    @property
    def root(self) -> str:
        return root_of(self.levels)

    def proof(self, i: int) -> list[bytes]:
        return proof_of(self.levels, i)


def solver_move(d: Dispute, trace: Trace) -> dict[str, Any]:
    """The honest solver's dispute_bisect body for the current phase (reveal or bisect)."""
    if d.phase == "reveal":
        mid = d.claim_index if d.claim_index < trace.n else trace.n - 1
    else:
        mid = (d.lo + d.hi) // 2
    step, value = trace.leaf(mid)
    return {
        "dispute_id": dispute_id_for(d.job_id),
        "mid": mid,
        "step": step,
        "hash": value,
        "n_leaves": trace.n,
        "proof": trace.proof(mid),
    }


def challenger_answer(d: Dispute, trace: Trace) -> dict[str, Any]:
    """The honest challenger's dispute_respond body: agree iff its own value at mid is the solver's."""
    return {"dispute_id": dispute_id_for(d.job_id), "agree": trace.hash_at(d.mid) == d.mid_hash}


class TrustChain:
    """Validators 0..4 (stakes 5000..1000), model owner 5, submitter 6, solver 7, verifiers 8, 9, 10.

    Fees are 0, so balances change only by what the ledger does.
    """

    def __init__(self, params: Params = PARAMS, *, entropy_tag: bytes = b"") -> None:
        genesis = Genesis.from_dict(
            {
                "chain_id": CHAIN,
                "balances": {a: START for a in A},
                "validators": [
                    {"address": A[i], "pubkey": IDS[i].public.hex(), "self_stake": s, "commission_bps": 0}
                    for i, s in zip(VALIDATORS, STAKES, strict=True)
                ],
                "params": params.to_dict(),
            }
        )
        self.state = genesis_state(genesis)
        self.minted = self.state.minted
        self.entropy_tag = entropy_tag
        roles = [(OWNER, "model_owner"), (SOLVER, "solver"), (CHALLENGER, "verifier")]
        roles += [(VERIFIER2, "verifier"), (VERIFIER3, "verifier")]
        assert all(r.ok for r in self.block(*(self.tx(i, "register", {"role": role}) for i, role in roles)))
        self.ok(OWNER, "model_register", {"model_hash": MODEL, "arch": "mlp-v1", "royalty_bps": 500})

    def tx(self, i: int, tx_type: str, body: dict[str, Any]):
        return sign_tx(IDS[i], tx_type, body, nonce=self.state.accounts[A[i]].nonce, fee=0, chain_id=CHAIN)

    def block(self, *txs) -> list[Receipt]:
        height = self.state.height + 1
        entropy = hashlib.sha256(self.entropy_tag + b"%d" % height).digest()
        new, receipts, digest = apply_block(
            self.state, height, height * 1_000, A[PROPOSER], list(txs), entropy=entropy
        )
        check_invariants(new)
        assert new.minted == self.minted and total_supply(new) + new.burned == self.minted
        assert digest == app_hash(new)
        self.state = new
        return receipts

    def run(self, i: int, tx_type: str, body: dict[str, Any]) -> Receipt:
        return self.block(self.tx(i, tx_type, body))[0]

    def ok(self, i: int, tx_type: str, body: dict[str, Any]) -> Receipt:
        r = self.run(i, tx_type, body)
        assert r.ok, r
        return r

    def skip_to(self, height: int) -> None:
        while self.state.height < height:
            self.block()

    def bal(self, i: int) -> int:
        return balance(self.state, A[i])

    def rep(self, i: int, role: str) -> int:
        return payout.reputation_of(self.state, A[i], role)

    # ---- a job up to its commit ----

    def assigned_job(self, kind: str = "training", challenge_window: int = 30) -> str:
        job_id = job_id_for(CHAIN, A[SUBMITTER], self.state.accounts[A[SUBMITTER]].nonce)
        post = {
            "spec_hash": SPEC,
            "model_hash": MODEL,
            "kind": kind,
            "bounty": BOUNTY,
            "bid_window_blocks": 1,
            "deadline_blocks": 10,
            "challenge_window_blocks": challenge_window,
            "requirements": {},
        }
        self.ok(SUBMITTER, "job_post", post)
        bid = {"job_id": job_id, "price": PRICE, "bond": JOB_BOND, "encryption_key": KEY}
        self.ok(SOLVER, "job_bid", bid)
        self.skip_to(job(self.state, job_id)["bids_close"])
        assert job(self.state, job_id)["status"] == "assigned"
        return job_id

    def commit(self, job_id: str, root: str, output_hash: str | None = None) -> None:
        body = {
            "job_id": job_id,
            "output_hash": output_hash or h("output"),
            "trace_root": root,
            "result_size": 1,
        }
        self.ok(SOLVER, "job_commit", body)

    def committed_job(self, trace: Trace, kind: str = "training", output_hash: str | None = None) -> str:
        job_id = self.assigned_job(kind)
        self.commit(job_id, trace.root, output_hash)
        return job_id

    def dispute(self, job_id: str) -> Dispute:
        return self.state.disputes[dispute_id_for(job_id)]
