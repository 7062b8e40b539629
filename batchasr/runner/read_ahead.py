"""Files read ahead by reader processes for a consumer that takes them one at a time, in
input order (``batchasr transcribe --reader-processes N``).

Background threads, one per reader process, each forward one file's events from
:meth:`runner.read_processes.ReadProcesses.read` (decoding, the VAD and the cutting happen
in the processes) into that file's own queue; the consumer takes the files in input order
and each file's pieces in file order, as it would have cut them itself. Up to ``processes``
files are read at a time (the next ones queued behind them hold no audio).

Memory is bounded in audio seconds: the pieces queued and not yet taken, all files together,
stay within ``max_samples``; a file's next piece waits while they would exceed it, unless it
is the file being consumed and has nothing queued (so that file always moves on, and the
bound is ``max_samples`` plus one piece). Behind the queues, each process's ring holds what
it has cut and not handed over; a process whose ring is full waits too.

Errors are the file's: what ``read`` raises (AudioError, VADFailedRemote, ReaderDied) is
raised by that file's events, where the consumer reads them; an unexpected error in a
process (``read`` gives it as a plain RuntimeError with the process's "Type: message")
comes as :class:`ReaderError` with that message. Closing stops the threads and the
processes at once.
"""
from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from typing import Iterable, Iterator

from batchasr.runner.read_processes import Cancelled, End, Plan, ReadProcesses


class ReaderError(Exception):
    """An unexpected error in a reader process; the message is the process's "Type: msg"."""


class _File:
    def __init__(self, path: str):
        self.path = path
        self.events: deque = deque()  # (event or exception, samples)
        self.samples = 0  # audio queued, not taken yet
        self.abandoned = False  # the consumer stopped taking this file


class ReadAhead:
    """Files of an iterable read ahead by ``procs``; see the module docstring."""

    def __init__(self, procs: ReadProcesses, max_samples: int):
        self.procs = procs
        self.max_samples = max_samples
        self.samples = 0  # audio queued, all files
        self.peak_samples = 0
        self.closed = False
        self._head: _File | None = None  # the file being consumed
        self._cv = threading.Condition()
        self._threads = ThreadPoolExecutor(procs.processes,
                                           thread_name_prefix="batchasr-read-ahead")

    def files(self, files: Iterable[tuple[str, object]]
              ) -> Iterator[tuple[str, object, Iterator]]:
        """``(path, language, events)`` for each of ``files`` in order: ``events`` yields
        the file's pieces (``Window`` or ``audio.cut.Cut``) and then its ``End``, or raises
        its error. Leaving ``events`` early drops the rest of that file. The files after
        it are read meanwhile (``2 * processes`` submitted at most)."""
        files = iter(files)
        ahead: deque = deque()
        while True:
            while len(ahead) < 2 * self.procs.processes:
                nxt = next(files, None)
                if nxt is None:
                    break
                path, language = nxt
                f = _File(str(path))
                self._threads.submit(self._read, f)
                ahead.append((f, language))
            if not ahead:
                return
            f, language = ahead.popleft()
            with self._cv:
                self._head = f
                self._cv.notify_all()
            yield f.path, language, self._events(f)

    def close(self) -> None:
        """Stop at once: the threads stop forwarding, the processes are killed."""
        with self._cv:
            self.closed = True
            self._cv.notify_all()
        self.procs.close()
        self._threads.shutdown(wait=True, cancel_futures=True)

    # ---- the reader threads -----------------------------------------------------------------

    def _read(self, f: _File) -> None:
        try:
            with closing(self.procs.read(f.path, abandon=lambda: f.abandoned)) as events:
                for ev in events:  # leaving early: the process drops the rest of the file
                    if isinstance(ev, Plan):
                        continue
                    if isinstance(ev, End):
                        self._put(f, ev, 0)
                        return
                    if not self._put(f, ev, len(ev.audio)):
                        return
            self._put(f, Cancelled(), 0)  # abandoned: nobody takes it
        except RuntimeError as e:
            self._put(f, ReaderError(str(e)) if type(e) is RuntimeError else e, 0)
        except Exception as e:  # the file's error, raised where the consumer reads it
            self._put(f, e, 0)

    def _put(self, f: _File, ev, samples: int) -> bool:
        """Queue one event of ``f``, waiting for room; False when ``f`` was abandoned or
        this was closed meanwhile."""
        with self._cv:
            while (samples and self.samples and self.samples + samples > self.max_samples
                   and not (f is self._head and not f.samples)
                   and not self.closed and not f.abandoned):
                self._cv.wait()
            if self.closed or f.abandoned:
                return False
            f.events.append((ev, samples))
            f.samples += samples
            self.samples += samples
            self.peak_samples = max(self.peak_samples, self.samples)
            self._cv.notify_all()
            return True

    # ---- the consumer -----------------------------------------------------------------------

    def _take(self, f: _File):
        with self._cv:
            while not f.events:
                if self.closed:
                    raise Cancelled()
                self._cv.wait()
            ev, samples = f.events.popleft()
            f.samples -= samples
            self.samples -= samples
            self._cv.notify_all()
            return ev

    def _events(self, f: _File) -> Iterator:
        try:
            while True:
                ev = self._take(f)
                if isinstance(ev, Exception):
                    raise ev
                yield ev
                if isinstance(ev, End):
                    return
        finally:
            with self._cv:  # nothing more is taken: the thread stops, its audio is freed
                f.abandoned = True
                self.samples -= f.samples
                f.samples = 0
                f.events.clear()
                self._cv.notify_all()
