"""Block sync's random poll (ledger/blocksync.py) runs only while our height stands still.

On trio's autojump clock: while blocks keep arriving (consensus carries the node), no poll
round is spent on asking peers how high they are; once the height stops moving, polls come
every poll interval (jittered) again.
"""

from __future__ import annotations

import trio
import trio.testing
from prometheus_client import CollectorRegistry

from gossip.identity import Identity
from gossip.memory_transport import MemoryNetwork
from gossip.node import GossipNode
from ledger.blocksync import BlockSync


async def test_block_sync_polls_only_while_our_height_stands_still(
    autojump_clock: trio.testing.MockClock,
) -> None:
    identity = Identity.generate()
    gossip = GossipNode(MemoryNetwork(seed=3).transport(identity), identity, CollectorRegistry())
    height = 0

    async def deliver(peer: str, height: int, block: bytes, commit: bytes, more: bool) -> bool:
        return True

    async def done() -> None:
        pass

    sync = BlockSync(gossip, height=lambda: height, deliver=deliver, done=done, poll_interval=1.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sync.run)
        for _ in range(50):  # a block every 0.4 s of the mock clock: 20 s, 10 to 40 poll periods
            await trio.sleep(0.4)
            height += 1
        assert sync.rounds == 0
        await trio.sleep(20)  # no block: a poll every 0.5 to 1.5 s
        assert sync.rounds >= 10
        nursery.cancel_scope.cancel()
