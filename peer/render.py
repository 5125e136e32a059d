"""Human output of the CLI: rich tables and short summaries (`--json` bypasses all of it)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

# Off a terminal (pipes, logs) rich would assume 80 columns and fold every multiaddr.
console = Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 200)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")
    sys.stdout.flush()


def short(peer_id: str, keep: int = 10) -> str:
    return peer_id if len(peer_id) <= 2 * keep else f"{peer_id[:keep]}…{peer_id[-6:]}"


def compact(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _show(table: Table) -> None:
    """Print a table, wrapping long cells (multiaddrs, ids) instead of cutting them."""
    for column in table.columns:
        column.overflow = "fold"
    console.print(table)


def status(info: dict[str, Any]) -> None:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("peer id", info.get("peer_id", "?"))
    table.add_row("version", str(info.get("version", "?")))
    table.add_row("api", f"http://{info.get('api')}")
    table.add_row("uptime", f"{info.get('uptime_s', 0):.0f}s")
    for i, addr in enumerate(info.get("listen", [])):
        table.add_row("listen" if i == 0 else "", addr)
    connected = info.get("connected_peers", [])
    table.add_row("connected", f"{len(connected)} peer(s)")
    for entry in info.get("bootstrap", []):
        state = (
            "connected"
            if entry.get("connected")
            else f"not connected ({entry.get('last_error') or 'dialling'})"
        )
        table.add_row("bootstrap", escape(f"{entry.get('addr')}  {state}"))
    _show(table)


def peers(rows: list[dict[str, Any]]) -> None:
    if not rows:
        console.print("no connected peers", markup=False)
        return
    table = Table("peer id", "score", "banned")
    for row in rows:
        table.add_row(row["peer_id"], f"{row.get('score', 0.0):.2f}", "yes" if row.get("banned") else "no")
    _show(table)


def received(topic: str, entries: list[dict[str, Any]]) -> None:
    if not entries:
        console.print(f"nothing received on {topic}", markup=False)
        return
    table = Table("#", "author", "kind", "seq", "msg id", "body", title=f"received on {topic}")
    for e in entries:
        table.add_row(
            str(e["index"]),
            short(e["author"]),
            escape(e["kind"]),
            str(e["seq"]),
            e["msg_id"][:12],
            escape(compact(e["body"])),
        )
    _show(table)


def cluster(rows: Iterable[dict[str, Any]], title: str) -> None:
    table = Table("peer", "pid", "api", "multiaddr", "connected", title=title)
    for row in rows:
        if "alive" in row and not row["alive"]:
            connected = "[red]down[/red]"
        elif row.get("error"):
            connected = f"[red]{escape(row['error'])}[/red]"
        else:
            connected = "" if row.get("connected_peers") is None else str(row["connected_peers"])
        table.add_row(str(row["index"]), str(row["pid"]), f"http://{row['api']}", row["multiaddr"], connected)
    _show(table)
