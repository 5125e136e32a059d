"""`hivemesh demo --cheat --json` end to end: real peer processes, one cheat caught and slashed.

The demo checks every balance itself (it exits 1 when one moved otherwise); this test checks
what it reports: the cheat job went to the cheater, the verifier's dispute reversed it, the
cheater lost its bond and reputation, the verifier gained the jackpot, and the normal round
still finalized and matched the local runs.
"""

from __future__ import annotations

import json

import pytest

from tests.test_market_processes import hivemesh

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


def test_demo_cheat_catches_and_slashes_the_cheater() -> None:
    done = hivemesh("demo", "--cheat", "--json", timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert [v["phase"] for v in result["jobs"]] == ["finalized", "finalized"]
    assert all(c["matches"] for c in result["checks"])

    cheat = result["cheat"]
    job, dispute = cheat["job"], cheat["dispute"]
    cheater, verifier = cheat["cheater"], cheat["verifier"]
    assert (job["status"], job["solver"]) == ("reversed", cheater)
    assert (dispute["challenger"], dispute["outcome"]) == (verifier, "challenger")
    assert dispute["reason"] == "referee"
    weights = dict((m, w) for m, w in dispute["committee"])
    majority = sum(w for m, w in weights.items() if dispute["votes"].get(m) == "challenger")
    assert 2 * majority > sum(weights.values())
    reputation = cheat["reputation"]
    assert reputation[cheater]["after"] < reputation[cheater]["before"]
    assert reputation[verifier]["after"] > reputation[verifier]["before"]
    before, after = cheat["supply"]
    assert after["burned"] - before["burned"] == cheat["burned"]
    # Both newcomers paid the same registration burn: the cheater lost its bond on top, the
    # verifier won the jackpot; the fees each paid are a few tokens.
    changes = cheat["changes"]
    assert changes[verifier] - changes[cheater] >= job["bond"]
