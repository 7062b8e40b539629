"""Live progress of a run: one small JSON file per worker, for `batchasr status`.

Each live worker rewrites ``<job>/progress/<worker>.json`` every few seconds (atomically,
so a reader never sees a torn file) and removes it when it stops; files older than
``PROGRESS_MAX_AGE_S`` are from a worker that died or hangs and are not read. The figures
are a display aid only: the queue, not these files, says what is done.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from batchasr.files import atomic_write

PROGRESS_DIR = "progress"  # <job>/progress/<worker>.json, rewritten by each live worker
PROGRESS_MAX_AGE_S = 120.0  # older files are from a worker that died or hangs


def _progress_file(job_dir: str | os.PathLike, owner: str) -> Path:
    return Path(job_dir) / PROGRESS_DIR / (owner.replace(os.sep, "_").replace(":", "_") + ".json")


def write_progress(job_dir: str | os.PathLike, owner: str, figures: dict[str, Any]) -> None:
    """Atomically (re)write this worker's figures for `batchasr status`."""
    out = _progress_file(job_dir, owner)
    out.parent.mkdir(exist_ok=True)
    # not synced to the folder: a display aid, rewritten every few seconds
    atomic_write(out, json.dumps({**figures, "owner": owner, "updated_at": time.time()}),
                 sync_dir=False)


def drop_progress(job_dir: str | os.PathLike, owner: str) -> None:
    """Remove this worker's file (its figures are in runs.jsonl now), and the folder with
    the run's last one."""
    out = _progress_file(job_dir, owner)
    out.unlink(missing_ok=True)
    try:
        out.parent.rmdir()  # the last worker of the run leaves no folder behind
    except OSError:
        pass


def read_live_progress(job_dir: str | os.PathLike, *, now: float | None = None,
                       max_age_s: float = PROGRESS_MAX_AGE_S) -> list[dict[str, Any]]:
    """The figures of the workers that wrote theirs in the last ``max_age_s`` seconds."""
    t = time.time() if now is None else now
    found = []
    for f in sorted((Path(job_dir) / PROGRESS_DIR).glob("*.json")):
        try:
            rec = json.loads(f.read_text())
        except (OSError, ValueError):
            continue  # being replaced, or foreign
        if t - rec.get("updated_at", 0) <= max_age_s:
            found.append(rec)
    return found
