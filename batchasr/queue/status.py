"""What `batchasr status` shows: a job's counts, audio done and left, speed, ETA, failures.

Read-only: never takes the job lock (a starting run must not see it held) and writes nothing.
"running" counts only the items held by a live run; items a dead run left running are
"interrupted" (counted as pending). The speed is the run in progress's (from its workers'
progress files) when one is alive, else that of the finished runs in ``runs.jsonl``.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchasr.errors import JobError
from batchasr.queue.lock import run_is_alive
from batchasr.queue.progress import read_live_progress
from batchasr.queue.store import DB_NAME, Item, JobQueue, SkippedRow

RUNS_FILE = "runs.jsonl"  # one JSON line per finished run (its summary), appended by the runner


@dataclass(frozen=True)
class JobStatus:
    job_dir: Path
    counts: dict[str, int]  # JobQueue.live_counts
    model: str  # the model's label ("?" when none is recorded)
    done_s: float = 0.0  # audio done (known durations)
    left_s: float = 0.0  # audio pending or running (unknown durations at the job's mean)
    failed: list[Item] = field(default_factory=list)  # with failures=True
    skipped_rows: list[SkippedRow] = field(default_factory=list)  # with failures=True
    live: list[dict[str, Any]] = field(default_factory=list)  # the live run's workers' figures
    runs: list[dict[str, Any]] = field(default_factory=list)  # finished runs (runs.jsonl)
    now: float = 0.0  # when it was read (epoch s)

    @property
    def left(self) -> int:
        return self.counts["pending"] + self.counts["running"]

    @property
    def total(self) -> int:
        return self.left + self.counts["done"] + self.counts["failed"]

    def live_figures(self) -> tuple[float, float]:
        """``(audio_s, wall_s)`` of the run in progress, over all its workers."""
        audio = sum(p["audio_s"] for p in self.live)
        return audio, self.now - min(p["started_at"] for p in self.live)

    def past_figures(self) -> tuple[float, float]:
        """``(audio_s, wall_s)`` summed over the finished runs."""
        return sum(r["audio_s"] for r in self.runs), sum(r["wall_s"] for r in self.runs)


def job_status(job_dir: str | os.PathLike, *, failures: bool = False,
               counts_only: bool = False, now: float | None = None) -> JobStatus:
    """Read a job folder's status (JobError when it has no queue). ``failures``: the failed
    items and skipped manifest rows too; ``counts_only``: only counts (and failures)."""
    job = Path(job_dir)
    if not (job / DB_NAME).exists():
        raise JobError(f"{job} is not a job folder (no queue.db)")
    alive = run_is_alive(job)
    with JobQueue(job) as queue:
        counts = queue.live_counts(run_alive=alive)
        failed = queue.failed() if failures else []
        skipped_rows = queue.skipped_rows() if failures else []
        if counts_only:
            return JobStatus(job, counts, "?", failed=failed, skipped_rows=skipped_rows)
        done_s = queue.done_seconds()
        left_s, _ = queue.audio_seconds(["pending", "running"])
        meta = queue.meta()
    live = read_live_progress(job) if alive else []
    runs = []
    if not live and (job / RUNS_FILE).exists():
        runs = [json.loads(line) for line in (job / RUNS_FILE).read_text().splitlines()
                if line.strip()]
    return JobStatus(job, counts, meta.get("model_name") or meta.get("model", "?"), done_s,
                     left_s, failed, skipped_rows, live, runs,
                     time.time() if now is None else now)
