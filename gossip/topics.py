"""Names of the gossip topics every hivemesh peer speaks.

The trailing number is the topic's schema version: a peer that changes what travels on a
topic in an incompatible way moves to a new name instead of confusing old peers.
"""

from __future__ import annotations

TOPIC_TX = "hivemesh/tx/1"  # signed ledger transactions on their way to the mempool
TOPIC_CONSENSUS = "hivemesh/consensus/1"  # proposals, prevotes, precommits
TOPIC_TASKS = "hivemesh/tasks/1"  # job specs and bids
TOPIC_VOTES = "hivemesh/votes/1"  # verifier weights and reputation votes

ALL_TOPICS = (TOPIC_TX, TOPIC_CONSENSUS, TOPIC_TASKS, TOPIC_VOTES)
