"""Terminal output: a live progress bar for a study and the table of its best trial."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console(stderr=True)  # progress and logs
results = Console()  # what a command answers: stdout, so that it can be redirected


def _best_text(status: dict[str, Any]) -> str:
    best = status.get("best_value")
    counts = status.get("trials") or {}
    parts = [f"best {best:.4g}" if best is not None else "best -"]
    for key in ("running", "pruned", "failed"):
        if counts.get(key):
            parts.append(f"{counts[key]} {key}")
    eta = status.get("eta_s")
    if eta is not None and status.get("state") in ("queued", "running"):
        parts.append(f"ETA {int(eta) // 60}m{int(eta) % 60:02d}s")
    return " | ".join(parts)


def follow(fetch: Callable[[], dict[str, Any]], keep_going: Callable[[], bool] | None = None,
           poll_s: float = 0.5, enabled: bool = True) -> dict[str, Any]:
    """Show a live bar (trial n/N, best so far, elapsed, ETA) until the study is done.

    Args:
        fetch: returns the study's status: ``state``, ``n_trials``, ``trials`` counts,
            ``best_value``, ``eta_s`` (the shape of :meth:`hpo.studies.Progress.as_dict`).
        keep_going: polled too; when it returns false the bar stops (e.g. workers exited).
        poll_s: seconds between polls.
        enabled: draw the bar (false: just wait).

    Returns:
        The last status fetched.
    """
    status = fetch()
    with Progress(
        TextColumn("[bold]trial"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), console=console, disable=not enabled, transient=False,
    ) as bar:
        task = bar.add_task("study", total=status["n_trials"], info="")
        while True:
            counts = status.get("trials") or {}
            bar.update(task, completed=counts.get("complete", 0) + counts.get("pruned", 0),
                       total=status["n_trials"], info=_best_text(status))
            if status["state"] not in ("queued", "running"):
                break
            if keep_going is not None and not keep_going():
                status = fetch()
                break
            time.sleep(poll_s)
            status = fetch()
        counts = status.get("trials") or {}
        bar.update(task, completed=counts.get("complete", 0) + counts.get("pruned", 0), info=_best_text(status))
    return status


def best_table(best: dict[str, Any], metric: str) -> Table:
    """A table of the best trial: its parameters, its CV score and each fold's score."""
    table = Table(title=f"Best trial #{best['number']}: {metric} {best['value']:.4f}", show_header=True)
    table.add_column("parameter")
    table.add_column("value", justify="right")
    for name, value in best["params"].items():
        table.add_row(name, f"{value:.4g}" if isinstance(value, float) else str(value))
    folds = best.get("fold_scores") or []
    if folds:
        table.add_row("fold scores", ", ".join(f"{s:.4f}" for s in folds), end_section=False)
        if best.get("fold_std") is not None:
            table.add_row("fold std", f"{best['fold_std']:.4f}")
    return table
