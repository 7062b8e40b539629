"""Fault-injection hooks for tests; no-ops unless their environment variables are set.

``BATCHASR_TEST_CRASH_AT=<point>:<n>`` SIGKILLs the process the n-th time ``point`` is
reached (see ``CRASH_POINTS``); with ``BATCHASR_TEST_CRASH_ONCE=<file>`` only the first
process to create that file dies. ``BATCHASR_TEST_SLOW_BATCH=<seconds>`` makes each model
call a long one that does not return to Python for signal handlers.
``BATCHASR_TEST_READER_DIES_ON=<text>`` SIGKILLs a reader process when it opens a file whose
name contains the text (a decoder that crashes on a hostile file).
"""
from __future__ import annotations

import os
import signal
import threading
import time

CRASH_ENV = "BATCHASR_TEST_CRASH_AT"
CRASH_ONCE_ENV = "BATCHASR_TEST_CRASH_ONCE"
# decode: a reader has decoded the n-th piece; batch: just before the n-th model call;
# after_part: the n-th part is written, its items not yet done; after_complete: committed;
# after_segment_cache: the n-th batch of finished segments of a long file is saved.
CRASH_POINTS = ("decode", "batch", "after_part", "after_complete", "after_segment_cache")
# BATCHASR_TEST_SLOW_BATCH=<seconds>: before each model call, the main thread writes
# "batchasr-test: slow batch" on stderr and sleeps that long in C code with SIGINT and SIGTERM
# blocked for it: a long model call that does not return to Python for signal handlers.
SLOW_ENV = "BATCHASR_TEST_SLOW_BATCH"
READER_DIES_ENV = "BATCHASR_TEST_READER_DIES_ON"


class CrashHook:
    """``BATCHASR_TEST_CRASH_AT=<point>:<n>``: SIGKILL this process the n-th time ``point``
    is reached. For fault-injection tests only; a no-op when the variable is unset."""

    def __init__(self, spec: str | None, once: str | None = None):
        self.point, self.n, self.count, self.once = None, 0, 0, once
        self._lock = threading.Lock()
        if spec:
            point, _, n = spec.partition(":")
            if point not in CRASH_POINTS:
                raise ValueError(f"{CRASH_ENV}: unknown point {point!r}; one of {CRASH_POINTS}")
            self.point, self.n = point, int(n or 1)

    def __call__(self, point: str) -> None:
        if point != self.point:
            return
        with self._lock:
            self.count += 1
            if self.count == self.n and self._first():
                os.kill(os.getpid(), signal.SIGKILL)

    def _first(self) -> bool:
        """With a once-file: True only for the process that creates it."""
        if not self.once:
            return True
        try:
            os.close(os.open(self.once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            return False


def slow_batch(seconds: float) -> None:
    """The BATCHASR_TEST_SLOW_BATCH hook (see SLOW_ENV)."""
    os.write(2, b"batchasr-test: slow batch\n")
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        time.sleep(seconds)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def crash_hook_from_env() -> CrashHook:
    """The crash hook the environment asks for (a no-op when it asks for none)."""
    return CrashHook(os.environ.get(CRASH_ENV), os.environ.get(CRASH_ONCE_ENV))


def slow_batch_s() -> float:
    """Seconds of BATCHASR_TEST_SLOW_BATCH (0: none)."""
    return float(os.environ.get(SLOW_ENV) or 0)


def reader_dies_on(path: str) -> None:
    """The BATCHASR_TEST_READER_DIES_ON hook, in a reader process (see READER_DIES_ENV)."""
    text = os.environ.get(READER_DIES_ENV)
    if text and text in os.path.basename(path):
        os.kill(os.getpid(), signal.SIGKILL)
