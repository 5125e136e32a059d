"""Idle chains: empty blocks come often only while the state waits on future heights."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest
import trio
import trio.testing

from ledger.driver import awaits_heights
from ledger.genesis import genesis_state
from ledger.state import UnbondingEntry
from tests.ledger_cluster import key, ledger_cluster, make_genesis
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(60)


def test_only_height_deadlines_count_as_waiting() -> None:
    validators = [key(f"validator-{i}") for i in range(4)]
    state = genesis_state(make_genesis(validators, validators))
    assert not awaits_heights(state)
    assert awaits_heights(dataclasses.replace(state, job_timers={(9, "job-1"): "open"}))
    assert awaits_heights(dataclasses.replace(state, game_timers={(9, "dispute", "d-1"): "reveal"}))
    entry = UnbondingEntry(amount=5, creation_height=1, release_height=50)
    assert awaits_heights(dataclasses.replace(state, unbonding={(validators[0].peer_id, "v"): (entry,)}))


async def test_an_idle_chain_slows_down_but_txs_still_go_at_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    busy, idle = 1.0, 20.0
    async with ledger_cluster(tmp_path, observers=0) as cluster:
        peers = await cluster.start_all(empty_block_interval=busy, idle_block_interval=idle)
        await wait_until(lambda: min(cluster.heights()) >= 1, timeout=120)
        start, first = trio.current_time(), max(cluster.heights())
        await wait_until(lambda: min(cluster.heights()) >= first + 2, timeout=600)
        assert trio.current_time() - start >= idle  # nothing due: the long interval
        sent = trio.current_time()
        tx_hash = await peers[0].node.submit(cluster.transfer(0, cluster.users[1].peer_id, 2))
        await peers[0].node.wait_committed(tx_hash, timeout=600)
        assert trio.current_time() - sent < idle / 2  # a tx never waits for the idle interval


async def test_a_busy_chain_keeps_the_minimum_block_interval(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    minimum = 2.0
    committed_at: dict[int, float] = {}  # height -> when its first tx was seen committed

    async with ledger_cluster(tmp_path, observers=0) as cluster:
        peers = await cluster.start_all(min_block_interval=minimum)
        await wait_until(lambda: min(cluster.heights()) >= 1, timeout=120)

        async def send_and_wait(tx: bytes) -> None:
            height, _, _ = await peers[0].node.wait_committed(await peers[0].node.submit(tx), timeout=600)
            committed_at.setdefault(height, trio.current_time())

        async with trio.open_nursery() as nursery:
            for i in range(40):  # a tx every 0.25 s for 10 s: without the minimum, a block each
                nursery.start_soon(send_and_wait, cluster.transfer(i % 2, cluster.users[2].peer_id, 1))
                await trio.sleep(0.25)  # pacing the load, not synchronisation
        heights = sorted(committed_at)
        assert len(heights) >= 3
        gaps = [committed_at[b] - committed_at[a] for a, b in itertools.pairwise(heights)]
        # One gap seen here may be short (this peer decided a height late, the next proposer on
        # time, and worker threads take real time under the mock clock), but never on average.
        assert sum(gaps) / len(gaps) >= minimum * 0.9, gaps


async def test_after_an_empty_block_a_tx_does_not_wait_for_the_minimum_interval(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    minimum, idle = 5.0, 20.0
    async with ledger_cluster(tmp_path, observers=0) as cluster:
        peers = await cluster.start_all(min_block_interval=minimum, idle_block_interval=idle)
        node = peers[0].node
        await wait_until(lambda: min(cluster.heights()) >= 1, timeout=120)
        await node.wait_committed(await node.submit(cluster.transfer(0, cluster.users[1].peer_id, 2)), 600)
        sent = trio.current_time()  # just after a block with a tx: the next one waits
        tx_hash = await node.submit(cluster.transfer(1, cluster.users[1].peer_id, 2))
        with_tx, _, _ = await node.wait_committed(tx_hash, timeout=600)
        assert trio.current_time() - sent >= minimum * 0.9
        await wait_until(lambda: node.height > with_tx, timeout=600)  # then an empty block
        sent = trio.current_time()
        tx_hash = await node.submit(cluster.transfer(0, cluster.users[1].peer_id, 3))
        await node.wait_committed(tx_hash, timeout=600)
        assert trio.current_time() - sent < minimum / 2  # right after an empty block: at once
