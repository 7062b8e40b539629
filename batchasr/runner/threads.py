"""The local worker's helper threads: the reader hand-over buffer and the lease heartbeat.

Invariants: :class:`Prefetch` is bounded in samples, not messages, so memory is bounded
whatever mix of short clips and long windows comes through; :class:`Heartbeat` uses a queue
connection of its own, so a long model call on the main thread never lets leases lapse;
:func:`wait_gone` outlasts threads that ran MLX code.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from pathlib import Path

from batchasr.errors import is_disk_full
from batchasr.queue.store import JobQueue

logger = logging.getLogger("batchasr.worker")  # the name log lines show (stable)


def wait_gone(native_ids: list[int], timeout_s: float = 10.0) -> None:
    """Wait until these OS threads have ended, not just their Python side (Linux; elsewhere
    a short pause). A thread that ran an mx.compile'd function (mlx.nn's activations are)
    drops its thread-local compile cache after Python's join() has returned, and that needs
    the GIL: if the interpreter is finalizing by then, the thread is unwound inside a
    noexcept destructor and the process aborts ("terminate called without an active
    exception"; seen when `batchasr transcribe` exited right after its last batch)."""
    if not os.path.isdir("/proc/self/task"):
        time.sleep(0.05)
        return
    deadline = time.monotonic() + timeout_s
    while any(os.path.exists(f"/proc/self/task/{t}") for t in native_ids) \
            and time.monotonic() < deadline:
        time.sleep(0.002)  # releases the GIL, which the ending threads need


class Prefetch:
    """Reader threads -> main thread hand-over, bounded in samples (not in messages), so
    memory is bounded whatever mix of short clips and long windows comes through."""

    def __init__(self, max_samples: int):
        self.max_samples = max_samples
        self._q: deque = deque()
        self._samples = 0
        self._cv = threading.Condition()
        self.cancelled = False

    def put(self, msg: tuple, samples: int = 0, abandon=lambda: False) -> bool:
        """Block while full; False if cancelled or ``abandon()`` became true meanwhile."""
        with self._cv:
            while (self._samples and self._samples + samples > self.max_samples
                   and not self.cancelled and not abandon()):
                self._cv.wait(0.1)
            if self.cancelled or (samples and abandon()):
                return False
            self._q.append((msg, samples))
            self._samples += samples
            self._cv.notify_all()
            return True

    def set_limit(self, max_samples: int) -> None:
        """A new bound (waiting readers re-check it at once)."""
        with self._cv:
            self.max_samples = max_samples
            self._cv.notify_all()

    def get(self, timeout: float = 0.0) -> tuple | None:
        """The oldest message, waiting up to ``timeout`` seconds; None if there is none."""
        with self._cv:
            if not self._q and timeout:
                self._cv.wait(timeout)
            if not self._q:
                return None
            msg, samples = self._q.popleft()
            self._samples -= samples
            self._cv.notify_all()
            return msg

    def cancel(self) -> None:
        with self._cv:
            self.cancelled = True
            self._cv.notify_all()


class Heartbeat:
    """A thread renewing this worker's leases every ``every`` seconds, on a queue
    connection of its own (a long model call on the main thread must not let them lapse)."""

    def __init__(self, job_dir: Path, owner: str, lease_s: float, every: float,
                 on_beat=None):
        self.job_dir, self.owner, self.lease_s, self.every = job_dir, owner, lease_s, every
        self.on_beat = on_beat  # also called every beat (the progress file for `status`)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="batchasr-heartbeat", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        with JobQueue(self.job_dir) as queue:
            while not self._stop.wait(self.every):
                try:
                    queue.heartbeat(self.owner, lease_s=self.lease_s)
                except Exception as e:  # e.g. the database stayed busy: try again next beat
                    logger.warning("lease heartbeat failed: %s", e, exc_info=not is_disk_full(e))
                if self.on_beat is not None:
                    try:
                        self.on_beat()
                    except Exception:  # figures for `status` only
                        logger.debug("could not write the progress file", exc_info=True)

    def close(self) -> None:
        self._stop.set()
        self.thread.join()
