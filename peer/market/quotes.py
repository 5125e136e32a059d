"""Quotes: a submitter asks solvers for signed offers before it posts, and awards the job at once.

A job posted with a bid window waits blocks for bids before anyone works on it. A submitter
asked for no bid window (`bid_window_blocks` 0) asks the registered solvers instead, over
`/hivemesh/market/quote/1` (request/response, msgpack):

    request  {"job": the market.job note of the job to be posted (wire.py), "deadline_blocks": int}
    response {"price": int, "bond": int, "encryption_key": 32 bytes, "expires": height, "sig": 64 bytes}

The requester must be the job's submitter (the stream's remote peer, authenticated by the
transport). The solver answers like it bids (solver.py: policy, capacity, the spec fetched
from the submitter and checked against the note) and signs a `ledger.quotes.Quote` that
expires QUOTE_BLOCKS above its height; a refusal goes back as RemoteError.

`ask` sends the request to every eligible registered solver at once (at most MAX_ASKED, best
reputation first) and keeps, for at most QUOTE_WAIT_S, the answers whose signature and terms
check out against our own ledger state; `best` ranks them with the ledger's bid score (price,
reputation, stake; ties to the lower address), as end_block ranks bids. The submitter then
posts a `job_award` carrying the winning quote: the job is assigned in the block that posts it.
A hostile solver can only waste its own quote: a wrong signature or term is dropped here, and
the ledger checks the quote again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
import trio

from gossip.errors import GossipError
from ledger.errors import LedgerError
from ledger.jobs import check_offer, offer_score, unmet_requirement
from ledger.payout import reputation_of
from ledger.quotes import Quote
from ledger.state import State
from peer.market import wire
from peer.market.sealed import KEY_BYTES

if TYPE_CHECKING:
    from peer.market.service import MarketService

log = structlog.get_logger(__name__)

PROTOCOL = "/hivemesh/market/quote/1"
MAX_REQUEST = 8 * 1024
MAX_RESPONSE = 1024
QUOTE_BLOCKS = 5  # a quote may be used up to this many blocks above the height it was made at
QUOTE_WAIT_S = 1.0  # how long a submitter waits for quotes
MAX_ASKED = 16
_RESPONSE_FIELDS = {"price", "bond", "encryption_key", "expires", "sig"}


class Refused(GossipError):
    """A quote request this peer will not answer (its message goes back to the requester)."""


@dataclass(frozen=True)
class SignedQuote:
    """A solver's quote with its signature, checked against our ledger state when received."""

    solver: str
    quote: Quote
    sig: bytes

    def award_fields(self) -> dict[str, Any]:
        """The quote's fields of a job_award body."""
        q = self.quote
        return {
            "solver": self.solver,
            "price": q.price,
            "bond": q.bond,
            "encryption_key": q.encryption_key,
            "quote_expires": q.expires,
            "quote_sig": self.sig,
        }


def request_body(note: wire.JobNote, deadline_blocks: int) -> dict[str, Any]:
    return {"job": wire.encode(note)[1], "deadline_blocks": deadline_blocks}


def parse_request(body: Any) -> tuple[wire.JobNote, int]:
    """(job note, deadline) of a quote request. Raises Refused for anything malformed."""
    if not isinstance(body, dict) or set(body) != {"job", "deadline_blocks"}:
        raise Refused("a quote request is {job, deadline_blocks}")
    deadline = body["deadline_blocks"]
    if isinstance(deadline, bool) or not isinstance(deadline, int) or not 1 <= deadline <= wire.MAX_UINT64:
        raise Refused("deadline_blocks must be a positive integer")
    try:
        note = wire.parse(wire.KIND_JOB, body["job"])
    except wire.WireError as e:
        raise Refused(f"malformed job in the quote request: {e}") from None
    assert isinstance(note, wire.JobNote)
    return note, deadline


def response_body(quote: Quote, sig: bytes) -> dict[str, Any]:
    return {
        "price": quote.price,
        "bond": quote.bond,
        "encryption_key": quote.encryption_key,
        "expires": quote.expires,
        "sig": sig,
    }


def make_handler(service: MarketService) -> Any:
    """The protocol handler: the solver side (see the module docstring)."""

    async def handle(peer: str, body: Any) -> dict[str, Any]:
        note, deadline = parse_request(body)
        if note.submitter != peer:
            raise Refused("only a job's submitter asks for quotes on it")
        quote, sig = await service.solver.quote(note, deadline)
        return response_body(quote, sig)

    return handle


def check_response(
    state: State, note: wire.JobNote, deadline: int, solver: str, reply: Any, chain_id: str
) -> SignedQuote:
    """The quote in `reply` if it is signed by `solver` and its terms can win the job now.

    Raises ValueError saying what is wrong (the caller drops that quote).
    """
    if not isinstance(reply, dict) or set(reply) != _RESPONSE_FIELDS:
        raise ValueError(f"a quote answer has exactly the fields {sorted(_RESPONSE_FIELDS)}")
    price, bond, key, expires, sig = (reply[k] for k in ("price", "bond", "encryption_key", "expires", "sig"))
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (price, bond, expires)):
        raise ValueError("price, bond and expires must be unsigned integers")
    if not isinstance(key, bytes) or len(key) != KEY_BYTES or not isinstance(sig, bytes):
        raise ValueError("a quote carries a 32-byte X25519 key and a signature")
    quote = Quote(note.job_id, note.spec_hash, deadline, price, bond, key, expires)
    if not quote.signed_by(solver, sig, chain_id):
        raise ValueError("the quote's signature is not the solver's")
    if price == 0:
        raise ValueError("a quote's price must be positive")
    if expires <= state.height:
        raise ValueError(f"the quote expires at height {expires}, we are at {state.height}")
    try:  # what the ledger will check of the award: the same function
        check_offer(state, note.job_id, note.submitter, note.bounty, note.requirements, solver, price, bond)
    except LedgerError as e:
        raise ValueError(str(e)) from None
    problem = unmet_requirement(state, note.requirements, solver, bond)
    if problem is not None:
        raise ValueError(str(problem))
    return SignedQuote(solver, quote, sig)


def candidates(state: State, note: wire.JobNote, me: str) -> list[str]:
    """Registered solvers that could take the job (requirements met without a bond), best first."""
    solvers = [
        address
        for address, account in state.accounts.items()
        if address != me and account.has_role("solver")
        and unmet_requirement(state, note.requirements, address, 0) is None
    ]  # fmt: skip
    ranked = sorted(solvers, key=lambda a: (-reputation_of(state, a, "solver"), a))
    return ranked[:MAX_ASKED]


async def ask(service: MarketService, note: wire.JobNote, deadline: int) -> list[SignedQuote]:
    """The valid quotes that come back within QUOTE_WAIT_S from the solvers asked (see above)."""
    state = service.ledger.state
    asked = candidates(state, note, service.ledger.address)
    got: list[SignedQuote] = []

    async def ask_one(solver: str) -> None:
        try:
            await service.ensure_connected(solver)
            reply = await service.gossip.rpc.request(
                solver,
                PROTOCOL,
                request_body(note, deadline),
                timeout=QUOTE_WAIT_S,
                max_response=MAX_RESPONSE,
            )
            got.append(
                check_response(service.ledger.state, note, deadline, solver, reply, service.ledger.chain_id)
            )
        except GossipError as e:
            log.debug("no quote", job=note.job_id[:16], solver=solver, reason=str(e))
        except ValueError as e:
            log.info("quote dropped", job=note.job_id[:16], solver=solver, reason=str(e))

    with trio.move_on_after(QUOTE_WAIT_S):
        async with trio.open_nursery() as nursery:
            for solver in asked:
                nursery.start_soon(ask_one, solver)
    log.info("quotes received", job=note.job_id[:16], asked=len(asked), quotes=len(got))
    return got


def best(state: State, bounty: int, quotes: list[SignedQuote]) -> SignedQuote | None:
    """The quote the ledger's bid ranking would pick: highest score, ties to the lower address."""
    if not quotes:
        return None
    return min(
        quotes, key=lambda q: (-offer_score(state, bounty, q.solver, q.quote.price, q.quote.bond), q.solver)
    )
