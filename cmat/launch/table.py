"""The live status table of a bench's runs: one row per run, redrawn in place on a terminal;
on a pipe or log file, one line per change of state (no redraws, no interleaved run logs —
each run's own lines are in ``run.log`` in its directory)."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

from cmat.rundir import read_progress

STATES = ("queued", "waiting", "running", "done", "reused", "failed", "skipped")


def _fmt(seconds: Optional[float]) -> str:
    if seconds is None:
        return "–"
    seconds = max(0.0, seconds)
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def remaining_seconds(progress: Optional[dict], now: float) -> Optional[float]:
    """A running run's remaining wall time: from the finished tasks' pace once one finished,
    before that from the run's own estimate (its ``expected_total``); None when neither exists."""
    if not progress:
        return None
    task, n, elapsed = progress["task"], progress["n_tasks"], progress["elapsed"]
    since = now - progress["time"]
    if task > 1 and elapsed > 0:
        return elapsed / (task - 1) * (n - task + 1) - since
    if progress.get("expected_total"):
        return progress["expected_total"] - elapsed - since
    return None


class StatusTable:
    """``rows``: name → {run_dir, state, started, ended, note}, from anything with ``name`` and
    ``run_dir`` (a bench's jobs, a study's SLURM units)."""

    def __init__(self, title: str, jobs, stream=None, live: Optional[bool] = None, enabled: bool = True):
        self.title = title
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.enabled = enabled
        self.rows = {j.name: {"run_dir": j.run_dir, "state": "queued",
                              "started": None, "ended": None, "note": ""} for j in jobs}
        self.began = time.time()
        self._drawn = 0
        self._last_draw = 0.0

    def set(self, name: str, state: str, note: str = "") -> None:
        row = self.rows[name]
        if row["state"] == state and row["note"] == note:
            return
        now = time.time()
        if state == "running" and row["started"] is None:
            row["started"] = now
        if state in ("done", "failed", "skipped", "reused"):
            row["ended"] = now
        row["state"], row["note"] = state, note
        if self.enabled and not self.live:
            took = f" in {_fmt(now - row['started'])}" if state in ("done", "failed") and row["started"] else ""
            print(f"[{name}] {state}{took}" + (f": {note}" if note else ""), file=self.stream, flush=True)
        self.draw(force=True)

    def counts(self) -> dict:
        out = {s: 0 for s in STATES}
        for r in self.rows.values():
            out[r["state"]] += 1
        return out

    def render(self) -> str:
        now = time.time()
        counts = ", ".join(f"{n} {s}" for s, n in self.counts().items() if n)
        lines = [f"{self.title}: {counts} — {_fmt(now - self.began)} so far",
                 f"{'run':<24}{'state':<9}{'task':<24}{'elapsed':>10}{'remaining':>12}"]
        for name, r in self.rows.items():
            task, remaining = "", None
            if r["state"] == "running":
                p = read_progress(Path(r["run_dir"]))
                if p:
                    task = f"{p['task']}/{p['n_tasks']} {p['task_name']}"[:23]
                    remaining = remaining_seconds(p, now)
            elapsed = None if r["started"] is None else (r["ended"] or now) - r["started"]
            lines.append(f"{name:<24}{r['state']:<9}{task:<24}{_fmt(elapsed):>10}"
                         f"{_fmt(remaining) if r['state'] == 'running' else '':>12}")
        return "\n".join(lines)

    def draw(self, force: bool = False) -> None:
        """Redraw in place (terminal only), at most once a second unless forced."""
        if not (self.enabled and self.live):
            return
        now = time.time()
        if not force and now - self._last_draw < 1.0:
            return
        text = self.render()
        if self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
        self.stream.write(text + "\n")
        self.stream.flush()
        self._drawn = text.count("\n") + 1
        self._last_draw = now

    def close(self) -> None:
        """The final table, once (on a pipe it is printed here for the first time)."""
        if not self.enabled:
            return
        if self.live:
            self.draw(force=True)
        else:
            print(self.render(), file=self.stream, flush=True)
