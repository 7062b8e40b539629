"""The Progress stage: the progress bar (audio seconds, "x real time") and the progress file
that ``batchasr status`` reads while a worker runs.

Invariants: the bar's total is the job's audio, fixed at the start from the durations probed
at enqueue (items whose length is not known count at the mean of the known ones until a
reader finds it out); the done part of the job is its initial value; it only moves forward,
and never counts more of an item than the item's share.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from batchasr.queue.progress import drop_progress, write_progress
from batchasr.queue.store import JobQueue
from batchasr.runner.options import RunSummary
from batchasr.runner.stages.work import Work

logger = logging.getLogger("batchasr.worker")  # the name log lines show (stable)

PROGRESS_EVERY_S = 2.0  # the progress file for `status`: at most this often from the loop


class Progress:
    """The bar and the progress file of one worker. ``initialize`` writes the first progress
    file; ``step`` rewrites it at the first item done, then every ``PROGRESS_EVERY_S``;
    ``shutdown`` removes it (runs.jsonl has the figures then) and closes the bar."""

    def __init__(self, job_dir: Path, queue: JobQueue, owner: str, summary: RunSummary,
                 claim_budget: float, show: bool):
        self.job_dir, self.owner, self.summary = job_dir, owner, summary
        self.n_run = int(min(queue.counts()["pending"], claim_budget))
        n_known, known_s = queue.known_durations()
        self.mean_s = known_s / n_known if n_known else 0.0
        self.before_s, _ = queue.audio_seconds(["done"])
        todo_s, _ = queue.audio_seconds(["pending"], limit=self.n_run, mean_s=self.mean_s)
        self.bar = AudioBar(total=self.before_s + todo_s, initial=self.before_s,
                            desc="transcribing", disable=not show, dynamic_ncols=True,
                            smoothing=0.05)
        if self.before_s and show:
            self.bar.write(f"resuming: {hours(self.before_s)} of "
                           f"{hours(self.before_s + todo_s)} of audio done before",
                           file=sys.stderr)
        self.started_at = time.time()
        self.written_at, self.written_done = 0.0, 0
        self.update_counts()

    def initialize(self) -> None:
        self.started_at = time.time()
        self.write()

    def step(self) -> None:
        """After items were committed: the counts, and the progress file when due."""
        self.update_counts()
        s = self.summary
        if (s.done and not self.written_done
                or time.time() - self.written_at >= PROGRESS_EVERY_S):
            self.write()  # at the first item done, then every few seconds

    def shutdown(self) -> None:
        drop_progress(self.job_dir, self.owner)  # runs.jsonl has the figures now
        self.bar.close()

    def advance(self, w: Work, seconds: float) -> None:
        """Count audio of an item on the bar, never past the item's share of the total."""
        share = w.item.duration_s if w.item.duration_s is not None else self.mean_s
        if w.duration_s is not None:
            share = max(share, w.duration_s)
        step = max(0.0, min(seconds, share - w.bar_s))
        w.bar_s += step
        if step:
            self.bar.update(step)

    def finished(self, w: Work) -> None:
        """An item is done or failed: the bar counts all of it. Only an item whose length
        was not known at the start changes the total (it was counted at the mean)."""
        if w.item.duration_s is None:
            actual = w.duration_s if w.duration_s is not None else self.mean_s
            self.bar.total = max(self.bar.n, self.bar.total + actual - self.mean_s)
            w.item = dataclasses.replace(w.item, duration_s=actual)  # its share from now on
        self.advance(w, math.inf)

    def update_counts(self) -> None:
        """The counts after the bar (the total is the job's audio, fixed at the start)."""
        s = self.summary
        self.bar.set_postfix_str(f"{s.done} done, {s.failed} failed", refresh=False)

    def write(self) -> None:
        """This worker's figures for `batchasr status` while it runs (every heartbeat)."""
        s = self.summary
        self.written_at, self.written_done = time.time(), s.done
        try:
            write_progress(self.job_dir, self.owner, {
                "pid": os.getpid(), "started_at": self.started_at, "audio_s": s.audio_s,
                "done": s.done, "failed": s.failed, "bar_n": self.bar.n,
                "bar_total": self.bar.total})
        except OSError:  # figures for `status` only: never a reason to stop
            logger.debug("could not write the progress file", exc_info=True)


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"


class AudioBar(tqdm):
    """Progress in audio seconds, with the rate as "x real time" (audio seconds per
    second) and "first batch" until the first audio is through the model, e.g.
    ``transcribing:  37%|███▋      | 1:02:03/2:47:10 audio [00:12<00:20, 310.2x real time,
    40 done, 1 failed]``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, bar_format="{desc}: {percentage:3.0f}%|{bar}| {audio} "
                                           "[{elapsed}<{remaining}, {speed}{postfix}]",
                         **kwargs)

    @property
    def format_dict(self):
        d = super().format_dict
        if "initial" not in d:  # disabled from the start: nothing is shown
            return d
        n, total = d["n"], d["total"]
        d["audio"] = (f"{tqdm.format_interval(n)}/{tqdm.format_interval(total or 0)} audio")
        rate = d["rate"]
        if rate is None and d["elapsed"] and n > d["initial"]:
            rate = (n - d["initial"]) / d["elapsed"]
        d["speed"] = f"{rate:.1f}x real time" if n > d["initial"] and rate else "first batch"
        if not total:  # nothing known to measure against
            d["bar_format"] = "{desc}: {audio} [{elapsed}, {speed}{postfix}]"
        return d
