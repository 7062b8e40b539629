"""Ctrl-C and SIGTERM for a local run: the first stops after the batch in flight, the
second at once.

Invariants: active on the main thread only; the handlers never log (the logging lock can
deadlock in a handler), they os.write; each signal is counted once. A hard stop hands this
worker's running items back to pending before the process exits with ``128 + signal``.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Any

from batchasr.queue.store import JobQueue
from batchasr.runner.options import stop_line


class StopOnCtrlC:
    """While active (main thread only), SIGINT (Ctrl-C) and SIGTERM stop the run. The first
    sets ``stop``, so the loop ends after the batch in flight, and says so at once with the
    wait to expect (``expected_wait``, set by run_job). The second stops at once: it raises
    KeyboardInterrupt in the main thread (its ``signum`` attribute names the signal), and a
    watchdog thread, if the main thread has not unwound within ``hard_stop_s`` (it is inside
    a long model call: C code does not return to Python for signal handlers), hands this
    worker's running items back to pending (attempt not counted) on a queue connection of
    its own and ends the process with ``os._exit(128 + signal)``. What the writer has not
    committed then is an orphan part, which the export ignores.

    The signals are counted as they arrive, even while the main thread is in C code:
    ``signal.set_wakeup_fd`` makes the C-level handler write each one to a socket that a
    watcher thread reads; the Python handler (run on the main thread between bytecodes)
    drains the same socket, so each signal is counted once by whichever sees it first.
    Neither logs (the logging lock can deadlock in a handler): messages are os.write."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, stop: threading.Event, *, job_dir: str | os.PathLike | None = None,
                 owner: str | None = None, shared: bool = False, hard_stop_s: float = 1.0):
        self.stop = stop
        self.job_dir, self.owner, self.shared = job_dir, owner, shared
        self.hard_stop_s = hard_stop_s
        self.expected_wait = None  # () -> (audio seconds in the model, seconds or None)
        self.signum = 0  # the first signal
        self.last = 0  # the latest one
        self.count = 0
        self.hard = self.raised = False
        self.previous: dict[int, Any] = {}
        self.previous_fd: int | None = None
        self._lock = threading.RLock()
        self._unwound = threading.Event()
        self._watcher: threading.Thread | None = None

    def _handler(self, signum, frame):
        self._drain()
        if self.count == 0:  # the byte was lost (wakeup socket full): count this one
            self._note(signum)
        if self.hard and not self.raised:
            self.raised = True
            e = KeyboardInterrupt()
            e.signum = self.last
            raise e

    def _drain(self) -> None:
        with self._lock:
            try:
                data = self._r.recv(256)
            except (BlockingIOError, InterruptedError, OSError):
                return
            for signum in data:
                if signum:  # 0: __exit__ waking the watcher
                    self._note(signum)

    def _note(self, signum: int) -> None:
        self.count += 1
        self.last = signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        if self.count == 1:
            self.signum = signum
            self.stop.set()
            again = "press Ctrl-C again" if signum == signal.SIGINT else f"send {name} again"
            os.write(2, f"\nbatchasr: {name}: stopping after the current batch"
                        f"{self._wait_note()}; {again} to stop at once\n".encode())
        elif not self.hard:
            self.hard = True
            os.write(2, f"\nbatchasr: {name} again: stopping now; unfinished items go back "
                        f"to pending\n".encode())
            threading.Thread(target=self._watchdog, name="batchasr-hard-stop",
                             daemon=True).start()

    def _wait_note(self) -> str:
        try:
            audio_s, wait_s = self.expected_wait() if self.expected_wait else (0.0, None)
        except Exception:
            return ""
        if not audio_s:
            return ""
        if wait_s is None:
            return f" ({audio_s:.1f} s of audio in the model; its speed is not measured yet)"
        return f" ({audio_s:.1f} s of audio in the model: about {wait_s:.1f} s at this run's speed)"

    def _watch(self) -> None:
        import select

        while not self._unwound.is_set():
            try:
                select.select([self._r], [], [])
            except (OSError, ValueError):
                return
            self._drain()

    def _watchdog(self) -> None:
        # The main thread in Python (the KeyboardInterrupt raised) gets longer to unwind:
        # the writer finishing the part it is writing, say.
        if self._unwound.wait(self.hard_stop_s) or (self.raised and self._unwound.wait(10.0)):
            return
        left = None
        try:
            if self.job_dir is not None and self.owner is not None:
                with JobQueue(self.job_dir) as queue:
                    ids = [i.id for i in queue.items("running") if i.lease_owner == self.owner]
                    queue.release(ids, owner=self.owner)
                    counts = queue.counts()
                    left = counts["pending"] + counts["running"]
        except BaseException:  # the next run's recovery puts them back anyway
            pass
        if left is not None and not self.shared:
            os.write(2, f"{self.job_dir}: {stop_line(left)}\n".encode())
        os._exit(128 + self.last)

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        import socket as _socket

        self._r, self._w = _socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        for signum in self.SIGNALS:
            self.previous[signum] = signal.signal(signum, self._handler)
        self.previous_fd = signal.set_wakeup_fd(self._w.fileno(), warn_on_full_buffer=False)
        self._watcher = threading.Thread(target=self._watch, name="batchasr-signals",
                                         daemon=True)
        self._watcher.start()
        return self

    def __exit__(self, *exc):
        if self._watcher is None:
            return
        signal.set_wakeup_fd(self.previous_fd)
        for signum, previous in self.previous.items():
            signal.signal(signum, previous)
        self._unwound.set()
        try:
            self._w.send(b"\0")
        except OSError:
            pass
        self._watcher.join(timeout=1.0)
        self._r.close()
        self._w.close()
