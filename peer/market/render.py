"""How the CLI shows market jobs and models with rich (`--json` bypasses all of it).

`job_line` renders the steps of a job's life (posted -> bidding -> assigned -> running x% ->
committed -> finalized) from the API's job view, marking what is done, what is happening now
and what is still to come; `JobFollower` redraws it live while `follow_jobs` polls the daemon.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from peer.client import ApiClient
from peer.errors import PeerError
from peer.render import console, short

STEPS = ("posted", "bidding", "assigned", "running", "committed", "finalized")
FAILED = {"expired", "missed", "cancelled", "reversed"}
BAR_WIDTH = 20
POLL_S = 0.25


def _progress_text(view: dict[str, Any]) -> str:
    progress = view.get("progress") or {}
    done, total = progress.get("done", 0), progress.get("total", 0)
    if not total:
        return "running"
    filled = BAR_WIDTH * done // total
    unit = "steps" if view.get("kind") == "training" else "batches"
    return (
        f"running {'█' * filled}{'░' * (BAR_WIDTH - filled)} {100 * done // total}% ({done}/{total} {unit})"
    )


def _step_label(step: str, view: dict[str, Any]) -> str:
    if step == "bidding" and view.get("bid_window_blocks") == 0:
        return "awarded to a quote"  # job_award: no bid window
    if step == "bidding" and view.get("bids"):
        return f"bidding ({len(view['bids'])} bid{'s' if len(view['bids']) != 1 else ''})"
    if step == "assigned" and view.get("solver"):
        return f"assigned to {short(view['solver'])} at {view['price']}"
    if step == "running":
        return _progress_text(view)
    if step == "committed" and view.get("output_hash"):
        local = view.get("submitted_here") or {}
        checked = " ✓ result checked" if local.get("verified") else ""
        accepted = " and accepted" if checked and local.get("accepted") == "sent" else ""
        return f"committed {view['output_hash'][:12]}…{checked}{accepted}"
    return step


def job_line(view: dict[str, Any]) -> Text:
    """posted ✓ → bidding ✓ → assigned … with the current step highlighted."""
    phase = view.get("phase", "posted")
    text = Text()
    if phase in FAILED:
        text.append(f"{view.get('kind', 'job')} {view['job_id'][:12]}… ", style="bold")
        text.append(f"{phase}", style="bold red")
        return text
    current = STEPS.index(phase) if phase in STEPS else 0
    if view.get("solver") and current < STEPS.index("assigned"):
        current = STEPS.index("assigned")
    text.append(f"{view.get('kind', 'job')} {view['job_id'][:12]}…  ", style="bold")
    for i, step in enumerate(STEPS):
        if i:
            text.append(" → ", style="dim")
        if i < current or phase == "finalized":
            text.append(_step_label(step, view) + " ✓", style="green")
        elif i == current:
            text.append(_step_label(step, view), style="bold yellow")
        else:
            text.append(step, style="dim")
    return text


class JobFollower:
    """Shows several jobs while they progress: a live view on a terminal, else one line per change.

    Off a terminal (pipes, logs) a line is printed when a job changes phase, gets its result
    checked, or passes another quarter of its work.
    """

    def __init__(self, show: bool) -> None:
        self._show = show
        live = show and console.is_terminal
        self._live = Live(console=console, refresh_per_second=8, transient=False) if live else None
        self._printed: dict[str, tuple[Any, ...]] = {}

    def __enter__(self) -> JobFollower:
        if self._live is not None:
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def update(self, views: list[dict[str, Any]]) -> None:
        if self._live is not None:
            self._live.update(Group(*(job_line(v) for v in views)))
            return
        if not self._show:
            return
        for view in views:
            progress = view.get("progress") or {}
            quarter = 4 * progress.get("done", 0) // progress["total"] if progress.get("total") else 0
            local = view.get("submitted_here") or {}
            key = (view.get("phase"), quarter, view.get("solver"), local.get("verified"))
            if self._printed.get(view["job_id"]) != key:
                self._printed[view["job_id"]] = key
                console.print(job_line(view))


def job_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        console.print("no jobs", markup=False)
        return
    table = Table("job", "kind", "status", "bounty", "price", "submitter", "solver", "posted at")
    for r in rows:
        table.add_row(
            r["job_id"][:16] + "…",
            r["kind"],
            r["status"],
            str(r["bounty"]),
            str(r["price"] or ""),
            short(r["submitter"]),
            short(r["solver"]) if r["solver"] else "",
            str(r["post_height"]),
        )
    console.print(table)


def model_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        console.print("no models registered", markup=False)
        return
    table = Table("model", "arch", "owner", "royalty", "registered at", "served here")
    for r in rows:
        table.add_row(
            r["model_hash"],
            r["arch"],
            short(r["owner"]),
            f"{r['royalty_bps']} bps",
            str(r["registered_height"]),
            "yes" if r.get("served_here") else "no",
        )
    console.print(table)


def job_summary(view: dict[str, Any]) -> None:
    """The outcome of a job, a few lines."""
    lines = [
        f"job {view['job_id']}: {view['status']} at height {view.get('closed_height') or view['height']}"
    ]
    if view.get("solver"):
        lines.append(f"  solver {view['solver']}  price {view['price']}  bond {view['bond']}")
    if view.get("output_hash"):
        local = view.get("submitted_here") or {}
        check = "checked against the commitment" if local.get("verified") else "not fetched by this peer"
        lines.append(f"  output {view['output_hash']} ({check})")
        lines.append(f"  trace root {view['trace_root']}  result {view['result_size']} bytes")
    console.print("\n".join(lines), markup=False)


def follow_jobs(client: ApiClient, job_ids: list[str], *, show: bool, timeout: float) -> list[dict[str, Any]]:
    """Poll the daemon until every job settles (finalized or failed); returns their last views."""
    deadline = time.monotonic() + timeout
    views: dict[str, dict[str, Any]] = {}
    with JobFollower(show) as follower:
        while True:
            for job_id in job_ids:
                views[job_id] = client.get_json(f"/market/jobs/{job_id}")
            follower.update([views[j] for j in job_ids])
            settled = [v for v in views.values() if v["phase"] in FAILED or _finished(v)]
            if len(settled) == len(job_ids):
                return [views[j] for j in job_ids]
            if time.monotonic() >= deadline:
                raise PeerError(
                    f"gave up after {timeout:.0f}s; follow it with `hivemesh job show {job_ids[0]}`"
                )
            time.sleep(POLL_S)


def _finished(view: dict[str, Any]) -> bool:
    """Finalized, and (for our own job) the result fetched and checked or given up on."""
    if view["phase"] != "finalized":
        return False
    local = view.get("submitted_here")
    return local is None or local["result_state"] != "waiting"
