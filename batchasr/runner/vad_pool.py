"""The VAD in worker processes: the speech segments of whole files, many files at once, off
the threads of the process that runs the model.

A reader thread that meets a long file asks the pool for the file's segments
(:meth:`VADPool.segments`) and then cuts the file itself as it reads it
(``audio.cut.SegmentCutter`` over ``audio.cut.KnownSegments``), so no waveform crosses a
process boundary: a VAD process decodes the file on its own, window by window (bounded
memory), and sends back only ``(start_ms, end_ms)`` pairs. The segments are the VAD's own
(the same streaming code as in-process), so the pieces are identical to cutting with the
VAD in the model's process.

The processes are spawned on first use, load the VAD once (``load_vad(spec)``), ignore
Ctrl-C (the run's process decides when to stop) and die with the process that started them,
however it dies (``kill -9`` included). A file the VAD process cannot decode fails as it
would in-process (``AudioError``); an error of the VAD itself is a ``VADError``. When a VAD
process dies, the pool is broken: :meth:`segments` raises ``PoolBroken`` and the caller falls
back to the in-process VAD for the rest of the run.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor, TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool

from batchasr.errors import AudioError

logger = logging.getLogger("batchasr.worker")  # the name log lines show (stable)


class VADError(Exception):
    """The VAD raised on a file (in its process); the message names the exception."""


class PoolBroken(Exception):
    """A VAD process died: this pool answers no more."""


class Cancelled(Exception):
    """The pool was closed while a file was waiting for its segments."""


class VADPool:
    """``processes`` VAD processes for the VAD ``spec`` (what ``load_vad`` takes), reading
    files in windows of ``window_s`` seconds."""

    def __init__(self, spec: str, processes: int, window_s: float):
        self.spec, self.processes, self.window_s = spec, processes, window_s
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self.closed = False
        self.broken = False
        self.busy_s = 0.0  # seconds the VAD processes spent, summed

    def _pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ProcessPoolExecutor(
                    self.processes, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start, initargs=(self.spec, os.getpid()))
            return self._executor

    def segments(self, path: str) -> list[tuple[int, int]]:
        """The speech segments (ms) of a whole file; blocks the calling (reader) thread.
        Raises AudioError, VADError, PoolBroken or Cancelled."""
        return self.wait(self.submit(path))

    def submit(self, path: str):
        """Start finding a file's segments; :meth:`wait` gives them. Raises PoolBroken or
        Cancelled."""
        if self.closed:
            raise Cancelled()
        if self.broken:
            raise PoolBroken()
        # Ctrl-C reaches the whole process group: blocked while the pool spawns its
        # processes (a blocked mask survives fork and exec), so one still importing cannot die
        # of it; each ignores it once it runs (_start).
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            return self._pool().submit(_file_segments, path, self.window_s)
        except (BrokenProcessPool, RuntimeError) as e:  # broken, or shut down meanwhile
            self.broken = not self.closed
            raise (Cancelled() if self.closed else PoolBroken()) from e
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def wait(self, future) -> list[tuple[int, int]]:
        """The segments of a :meth:`submit`; raises as :meth:`segments` does."""
        while True:
            try:
                kind, value, busy = future.result(timeout=0.2)
                break
            except FutureTimeout:
                if self.closed:
                    future.cancel()
                    raise Cancelled() from None
            except BrokenProcessPool as e:
                if not self.broken and not self.closed:
                    logger.warning("a VAD process died; the VAD runs in this process from now on")
                self.broken = True
                raise (Cancelled() if self.closed else PoolBroken()) from e
        with self._lock:
            self.busy_s += busy
        if kind == "audio":
            raise AudioError(*value)
        if kind == "vad":
            raise VADError(value)
        return [tuple(s) for s in value]

    def close(self) -> None:
        """Stop at once: waiting files get Cancelled, the processes are killed."""
        self.closed = True
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is None:
            return
        processes = list(getattr(executor, "_processes", {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        for p in processes:  # a VAD of a 3 h file is not worth waiting for
            try:
                p.kill()
            except Exception:
                pass
        for p in processes:
            p.join(timeout=5)


# ---- in the VAD process ------------------------------------------------------------------------

_VAD = None


def _start(spec: str, parent: int) -> None:
    from batchasr.runner.parent import die_with_parent

    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's Ctrl-C is the parent's to handle
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by submit
    global _VAD
    # numpy only, never MLX: the accelerator, its memory above all, belongs to the model's
    # process (VAD processes in MLX on an H200 ran it out of memory, memory limits or not)
    from batchasr.models.vads import open_vad

    _VAD = open_vad(spec)


def _file_segments(path: str, window_s: float):
    t = time.process_time()
    try:
        value = ("ok", [list(s) for s in _VAD.segment_file(path, window_s=window_s)])
    except AudioError as e:
        value = ("audio", (e.path, e.reason, e.detail))
    except Exception as e:
        value = ("vad", f"{type(e).__name__}: {e}")
    return (*value, time.process_time() - t)
