"""The local worker's helper threads: the reader hand-over buffer and the lease heartbeat.

Invariants: :class:`Prefetch` is bounded in samples, not messages, so memory is bounded
whatever mix of short clips and long windows comes through; :class:`Heartbeat` uses a queue
connection of its own, so a long model call on the main thread never lets leases lapse;
:class:`ServiceThreads` are made once per process and outlasted at exit (:func:`wait_gone`),
since threads that ran MLX code must end before the interpreter does.
"""
from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

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


class ServiceThreads:
    """Threads of the process that run MLX calls (CPU lanes, the VAD network's server), made
    once and reused by every run in it: MLX never frees a stream, each CPU stream keeps an
    OS thread of its own, and a stream serves only the thread that made it, so new threads
    per run (a Ray actor runs one per block) would add streams and threads without end.

    Daemon threads taking calls from one queue, each started before any call is given (a
    thread started on demand, as ThreadPoolExecutor does, was left unregistered when a
    second Ctrl-C interrupted the start, and the interpreter then waited for it at exit
    for ever). At exit (atexit, while the interpreter still runs) they are stopped and
    waited for until the OS has ended them (:func:`wait_gone`); a forked child forgets the
    parent's."""

    def __init__(self, name: str):
        self.name = name
        self._reset()
        atexit.register(self.end)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self.lock = threading.Lock()
        self.calls: queue.SimpleQueue = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        self.native_ids: list[int] = []
        self.local = threading.local()  # each thread's MLX streams, by device

    def ensure(self, n: int) -> None:
        """At least ``n`` threads, each started and waiting for calls."""
        with self.lock:
            while len(self.threads) < n:
                started = threading.Event()
                t = threading.Thread(target=self._serve, args=(started,), daemon=True,
                                     name=f"{self.name}_{len(self.threads)}")
                t.start()
                started.wait()
                self.threads.append(t)

    def submit(self, call: Callable[[], Any]) -> Future:
        """Run ``call`` on the first free thread (call ensure() first)."""
        future: Future = Future()
        self.calls.put((future, call))
        return future

    def _serve(self, started: threading.Event) -> None:
        self.native_ids.append(threading.get_native_id())
        started.set()
        while (work := self.calls.get()) is not None:
            future, call = work
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = call()
            except BaseException as e:
                future.set_exception(e)
            else:
                future.set_result(result)
            del work, future, call

    def stream(self):
        """On one of these threads: its MLX stream on the default device, made once (a
        stream of its own: MLX runs a stream's ops on one thread, and threads' default CPU
        streams are not separate ones)."""
        import mlx.core as mx

        if not hasattr(self.local, "streams"):
            self.local.streams = {}
        streams, device = self.local.streams, mx.default_device()
        if str(device) not in streams:
            streams[str(device)] = mx.new_stream(device)
        return streams[str(device)]

    def end(self, timeout_s: float = 10.0) -> None:
        """Stop the threads once their calls are done (a call still running after
        ``timeout_s`` is left to the process's end)."""
        with self.lock:
            threads, ids, self.threads, self.native_ids = self.threads, self.native_ids, [], []
        for _ in threads:
            self.calls.put(None)
        deadline = time.monotonic() + timeout_s
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        wait_gone([i for t, i in zip(threads, ids) if not t.is_alive()],
                  max(0.0, deadline - time.monotonic()))


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
        """A new bound (waiting readers re-check it at once). Called at every step of
        the main loop: an unchanged bound wakes nobody."""
        if max_samples == self.max_samples:  # only this (the main) thread sets it
            return
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
