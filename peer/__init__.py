"""The peer daemon, its local API and the `hivemesh` command line.

Files and their jobs:
  config.py    config.toml model; precedence CLI > env (HIVEMESH_*) > file > defaults
  home.py      home directory layout, init, node key, run.json, the daemon lock
  logs.py      structlog setup (JSON off a TTY, console on one)
  metrics.py   the peer's own Prometheus gauges in its per-peer registry
  received.py  bounded per-topic log of received gossip envelopes
  api.py       local HTTP API (ASGI app on hypercorn/trio)
  daemon.py    Peer: one trio nursery owning transport, gossip, dialer, ledger, market, API; signals
  genesis_file.py  genesis.json: read, write, install into a home, build a local test net's
  ledger_service.py  the daemon's ledger operations: sign with the node key, submit, wait, query
  ledger_api.py  the ledger's HTTP endpoints (POST /tx, /tx/raw, /query/..., /ledger/status)
  client.py    HTTP client of the local API used by the read commands
  procs.py     starting, finding and stopping peer processes; waiting with deadlines
  cluster.py   local multi-process clusters (up / status / down), cluster.json
  market/      the compute market agents (solver, submitter), its blobs, API and `hivemesh demo`
  render.py    human output of the CLI (rich tables) next to --json
  cli.py       the `hivemesh` command (typer, noun-verb); __main__.py makes `python -m peer` the same
  tx_cli.py    the ledger commands: `tx ...`, `query ...`, `ledger status`, `genesis ...`
  job_cli.py   the market commands: `model init|register|list`, `job submit|show|list|result`
  version.py   the installed version
  errors.py    PeerError and its subclasses (user-facing conditions, one line each)
"""

from __future__ import annotations

from peer.version import __version__

__all__ = ["__version__"]
