"""Which of its claimed items a worker has begun: ``<job>/started/<owner's digest>.log``.

A claim counts an attempt for every item it takes (:meth:`JobQueue.claim`), and the startup
recovery fails an item left running once it has ``max_attempts`` (it has probably been
killing its workers). But a claim takes hundreds of items at once, and most of them are
still waiting for a reader when the process is killed: without this log, five kills would
fail items that were never read. So the runner appends each item's id here as a reader
begins it, and the attempt is given back to every item its owner's log does not list: by
:meth:`JobQueue.reset_running` at the next start, and by :meth:`JobQueue.claim` when a
sibling worker of a run of several takes over an item whose owner's lease ran out (once:
the take-over makes it the sibling's). An owner without a log (an older run, a claim made
without a runner) keeps every attempt, as before.

Invariants: an item is listed before any of its audio is read, so an item that crashes its
worker is always counted. The lines are not fsynced: a killed process's writes are in the
page cache and survive it; after a power cut an item may be listed less, never more. A log
that could not be written is removed, so that its owner keeps every attempt.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from pathlib import Path

logger = logging.getLogger("batchasr.queue")

FOLDER = "started"


def log_path(job_dir: str | os.PathLike, owner: str) -> Path:
    """The log of ``owner`` (a lease owner name: host, pid and a random part, made safe)."""
    digest = hashlib.sha1(owner.encode("utf-8")).hexdigest()[:20]
    return Path(job_dir) / FOLDER / f"{digest}.log"


class StartedLog:
    """``begin(item_id)`` from any thread; ``close(remove)`` when the run ends."""

    def __init__(self, job_dir: str | os.PathLike, owner: str):
        self.path = log_path(job_dir, owner)
        self._lock = threading.Lock()
        self._fd: int | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        except OSError as e:
            logger.warning("no log of the items begun (%s): a kill counts an attempt for "
                           "every item claimed", e)

    def begin(self, item_id: str) -> None:
        line = (json.dumps(item_id, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            if self._fd is None:
                return
            try:
                os.write(self._fd, line)
            except OSError as e:  # e.g. a full disk: without a whole log, count every attempt
                logger.warning("the log of the items begun could not be written (%s); a kill "
                               "now counts an attempt for every item claimed", e)
                self._close(remove=True)

    def close(self, *, remove: bool) -> None:
        """Close; ``remove`` once no item of this run is left running (all given back)."""
        with self._lock:
            self._close(remove)

    def _close(self, remove: bool) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:  # the write that failed may have taken the descriptor with it
                pass
        if remove:
            try:
                self.path.unlink()
                self.path.parent.rmdir()  # the last log of the job gone: no empty folder left
            except OSError:  # gone already, or a sibling worker's log is still there
                pass


def begun(job_dir: str | os.PathLike, owner: str) -> set[str] | None:
    """The ids ``owner``'s log lists, or None when it has no log. A torn last line (the
    process killed inside a write) is ignored: that item had not begun."""
    try:
        data = log_path(job_dir, owner).read_bytes()
    except FileNotFoundError:
        return None
    ids = set()
    for line in data.split(b"\n"):
        try:
            ids.add(json.loads(line))
        except ValueError:
            continue
    return ids


def clear(job_dir: str | os.PathLike) -> None:
    """Remove every log: nothing of the job is running (its lock is held, nothing started)."""
    shutil.rmtree(Path(job_dir) / FOLDER, ignore_errors=True)
