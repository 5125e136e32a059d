"""Governance of parameters: param_change proposals, stake-weighted yes/no votes, the tally.

Rules:
- param_change(changes) checks the changed params against the current ones (bounds and
  cross-checks), takes params.gov_deposit from the proposer and opens voting until
  end_height = submit height + params.gov_voting_blocks (votes in that block still count).
- vote(proposal, option) needs bonded stake; voting again replaces the earlier vote.
- Tally, in end_block of end_height, with each voter's bonded stake at that moment (self-stake
  plus its own delegations; delegators are not represented by their validator):
  quorum when (yes + no) * 10_000 >= gov_quorum_bps * all bonded stake; passes when also
  yes * 10_000 > gov_threshold_bps * (yes + no). Without quorum the deposit is burned ("no_quorum"),
  otherwise refunded. A passed proposal whose changes no longer validate against the params in
  force then is "failed"; else its params take effect from the next block. Proposals ending in
  the same block are tallied in id order. Votes are dropped after the tally.
"""

from __future__ import annotations

from dataclasses import replace

from ledger.accounts import burn, credit, debit
from ledger.errors import InvalidParams, NoVotingPower, ProposalClosed, UnknownProposal
from ledger.params import BPS
from ledger.state import Journal, Proposal, bonded_by_owner, total_bonded
from ledger.tx import Tx


def _bonded_of(j: Journal, address: str) -> int:
    v = j.state.validators.get(address)
    own = v.self_stake if v is not None else 0
    return own + sum(amount for (d, _), amount in j.state.delegations.items() if d == address)


def param_change(j: Journal, tx: Tx, sender: str) -> None:
    s = j.state
    changes = dict(tx.body["changes"])
    s.params.with_changes(changes)  # raises InvalidParams now rather than at the tally
    deposit = s.params.gov_deposit
    debit(j, sender, deposit)
    pid = s.next_proposal_id
    j.set("next_proposal_id", pid + 1)
    proposal = Proposal(
        proposer=sender,
        changes=tuple(sorted(changes.items())),
        deposit=deposit,
        submit_height=s.height,
        end_height=s.height + s.params.gov_voting_blocks,
        status="voting",
    )
    j.put("proposals", pid, proposal)


def vote(j: Journal, tx: Tx, sender: str) -> None:
    pid = tx.body["proposal"]
    proposal = j.state.proposals.get(pid)
    if proposal is None:
        raise UnknownProposal(pid)
    if proposal.status != "voting":
        raise ProposalClosed(pid, proposal.status)
    if _bonded_of(j, sender) == 0:
        raise NoVotingPower(sender)
    j.put("votes", (pid, sender), tx.body["option"] == "yes")


def tally_ended(j: Journal) -> list[int]:
    """end_block step: close every proposal whose voting ends at or before this height. Returns their ids."""
    s = j.state
    ending = sorted(
        pid for pid, p in s.proposals.items() if p.status == "voting" and p.end_height <= s.height
    )
    if not ending:
        return []
    powers = bonded_by_owner(s)
    total = total_bonded(s)
    for pid in ending:
        proposal = s.proposals[pid]
        yes = no = 0
        for key in sorted(k for k in s.votes if k[0] == pid):
            power = powers.get(key[1], 0)
            if s.votes[key]:
                yes += power
            else:
                no += power
            j.delete("votes", key)
        p = s.params
        if total == 0 or (yes + no) * BPS < p.gov_quorum_bps * total:
            status = "no_quorum"
            burn(j, proposal.deposit)
        else:
            credit(j, proposal.proposer, proposal.deposit)
            status = "rejected"
            if yes * BPS > p.gov_threshold_bps * (yes + no):
                try:
                    j.set("params", p.with_changes(dict(proposal.changes)))
                    status = "passed"
                except InvalidParams:
                    status = "failed"
        j.put("proposals", pid, replace(proposal, status=status, deposit=0, yes=yes, no=no))
    return ending
