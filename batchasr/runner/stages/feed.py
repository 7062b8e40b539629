"""The Feed stage: claiming items, the reader threads that decode them, and the VAD.

Reader threads decode and resample ahead of the model into a buffer bounded in audio
seconds (:class:`batchasr.runner.threads.Prefetch`). A file is planned by
``audio.cut.plan_file``: read whole or as windows, each window a piece for the pool; or, a
long file with a VAD, read in windows that the main thread feeds to the VAD (MLX models run
on the main thread only), each speech segment it finds a piece (``audio.cut.SegmentCutter``).
A segment found in the segment cache goes straight to its item. Invariants: every file
handed to a reader ends with one "end" or "error" message (unless the run is cancelled);
an unreadable file or a VAD failure fails its item only.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from batchasr.audio import decode as audio
from batchasr.audio.cut import Cut, CutOptions, KnownSegments, SegmentCutter, planned_windows
from batchasr.audio.decode import SAMPLE_RATE
from batchasr.errors import AudioError, is_disk_full
from batchasr.outputs import segment_cache
from batchasr.queue.started import StartedLog
from batchasr.queue.store import Item, JobQueue
from batchasr.runner.hooks import CrashHook
from batchasr.runner.options import RunOptions, RunSummary
from batchasr.runner.read_processes import (Cancelled as ReadCancelled, End, Plan,
                                            ReaderDied, ReadProcesses, VADFailedRemote,
                                            VADWindow)
from batchasr.runner.stages.completion import Completion
from batchasr.runner.stages.pool import Pool
from batchasr.runner.stages.work import Work, fingerprint
from batchasr.runner.threads import Prefetch
from batchasr.runner.vad_pool import Cancelled, PoolBroken, VADError, VADPool

logger = logging.getLogger("batchasr.worker")  # the name log lines show (stable)


class Feed:
    """Claimed items -> reader threads -> pieces in the pool. ``step()`` keeps the readers
    supplied and takes decoded audio until the pool is full; ``wait()`` waits a little for
    more; ``shutdown()`` stops the readers; ``release()`` hands every item not finished
    back to pending."""

    def __init__(self, job_dir: Path, queue: JobQueue, opts: RunOptions, cut: CutOptions,
                 summary: RunSummary, pool: Pool, completion: Completion,
                 works: dict[str, Work], crash: CrashHook, owner: str,
                 claim_budget: float, vad_pool: VADPool | None = None,
                 read_processes: ReadProcesses | None = None):
        self.job_dir, self.queue, self.opts, self.cut = job_dir, queue, opts, cut
        self.summary, self.pool, self.completion, self.works = summary, pool, completion, works
        self.crash, self.owner = crash, owner
        self.claim_budget = claim_budget  # items this run may still claim
        self.exhausted = False  # the last claim found the queue empty
        self.claimed: deque[Item] = deque()  # claimed, not yet handed to a reader
        self.n_reading = 0  # works whose reader has not sent its last message (w.reading)
        self.buffer = Prefetch(opts.prefetch_samples)
        self.readers: ThreadPoolExecutor | None = None
        self.started: StartedLog | None = None  # opened by initialize()
        self.decode_s = 0.0
        self._decode_lock = threading.Lock()
        self.vad_pool = vad_pool  # long files' segments from VAD processes (None: in-process)
        # Decoding, the VAD and cutting in reader processes (None: in the reader threads);
        # each reader thread then forwards one process's file.
        self.read_processes = read_processes
        self.n_readers = max(opts.readers, read_processes.processes if read_processes else 0)

    def initialize(self) -> None:
        # each item is listed as a reader begins it: a kill then counts an attempt only for
        # the items it interrupted, not for the rest of the claim (queue.started)
        self.started = StartedLog(self.job_dir, self.owner)
        self.readers = ThreadPoolExecutor(self.n_readers, thread_name_prefix="batchasr-reader")
        if self.read_processes is not None:
            self.read_processes.start()

    def step(self) -> None:
        self.feed_readers()
        while not self.pool.full:
            msg = self.buffer.get()
            if msg is None:
                break
            self.handle(msg)
        self.open_room()

    def open_room(self) -> None:
        """Let the readers decode ahead what the sorting pool lacks, besides the prefetch:
        while the main thread waits for the model they fill the buffer, and its next step
        moves that into the pool. With the prefetch alone the pool grew by one batch per
        batch run, so a job's first batches were cut from a part-filled pool (less well
        sorted) and, on a CPU, ran one lane at a time (the loop starts a batch on a busy
        model only once the pool is full). Pool and buffer together stay within the pool's
        target plus the prefetch, as before."""
        room = max(0, self.pool.target - self.pool.samples)
        self.buffer.set_limit(self.opts.prefetch_samples + room)

    def wait(self) -> None:
        """Wait a little for decoded audio (the model is idle meanwhile)."""
        t = time.perf_counter()
        msg = self.buffer.get(timeout=0.1)
        self.summary.wait_s += time.perf_counter() - t
        if msg is not None:
            self.handle(msg)

    def shutdown(self) -> None:
        self.buffer.cancel()
        if self.vad_pool is not None:
            self.vad_pool.close()
        if self.read_processes is not None:
            self.read_processes.close()
        self.readers.shutdown(wait=True, cancel_futures=True)

    def more_coming(self) -> bool:
        """Could more audio arrive without running a batch first? (feed_readers has just
        claimed whatever the readers can take.)"""
        return bool(self.claimed) or self.n_reading > 0

    def take_ends(self) -> None:
        """When stopping: the readers' last messages of files read whole (not through the
        VAD), so that an item whose every piece was in the last batch is complete and
        written rather than redone; other messages are dropped with their items. A reader
        that has sent pieces which are all transcribed may not have sent its end yet: it is
        waited for, a second at most."""
        deadline = time.monotonic() + 1.0

        def awaited() -> bool:
            return time.monotonic() < deadline and any(
                w.reading and w.pieces and not w.vad and not w.failed
                for w in self.works.values())

        while (msg := self.buffer.get(timeout=0.1 if awaited() else 0.0)) is not None \
                or awaited():
            if msg is not None and msg[0] in ("end", "error") and not msg[1].vad:
                self.handle(msg)
        self.completion.write_ready()

    def release(self) -> None:
        """Hand the items claimed and not finished back to pending."""
        ids = [w.item.id for w in self.works.values() if not w.failed]
        ids += [i.id for i in self.claimed]
        for w in self.works.values():
            if w.cutter is not None:
                w.cutter.close()
        self.works.clear()
        self.n_reading = 0
        self.claimed.clear()
        if ids:
            logger.info("%d unfinished item(s) go back to pending", len(ids))
            try:
                self.queue.release(ids, owner=self.owner)
            except Exception as e:  # e.g. a second Ctrl-C inside it: reset_running covers them
                logger.warning("could not hand %d unfinished item(s) back (%s); the next run "
                               "puts them back to pending", len(ids), e,
                               exc_info=not is_disk_full(e))
                if self.started is not None:
                    self.started.close(remove=False)  # the next run's recovery reads it
                return
        if self.started is not None:
            self.started.close(remove=True)  # nothing of this run is left running

    # ---- claiming and reading -------------------------------------------------------------

    def claim(self) -> int:
        n = int(min(self.opts.claim_size, self.claim_budget))
        items = self.queue.claim(n, owner=self.owner, lease_s=self.opts.lease_s,
                                 max_attempts=self.opts.max_attempts) if n > 0 else []
        self.exhausted = len(items) < n  # the queue is empty (for now)
        self.claim_budget -= len(items)
        self.claimed.extend(items)
        return len(items)

    def feed_readers(self) -> None:
        """Keep a claim's worth of files queued for the reader threads, so they never wait
        for the main thread (a hand-over per file would cost a GIL switch each). Queued
        files hold no audio; the prefetch buffer bounds what is decoded."""
        while self.n_reading < max(2 * self.n_readers, self.opts.claim_size):
            if not self.claimed and (self.claim_budget <= 0 or self.exhausted
                                     or not self.claim()):
                return
            w = Work(self.claimed.popleft())
            self.works[w.item.id] = w
            self.n_reading += 1
            self.readers.submit(self.read, w)

    def read(self, w: Work) -> None:
        """Reader thread: decode one file into pieces; always ends with one 'end' or
        'error' message (unless the run is cancelled)."""
        self.started.begin(w.item.id)
        if self.read_processes is not None:
            return self.forward(w)
        busy = 0.0
        t = time.perf_counter()
        n = samples = 0
        try:
            with audio.open_audio(w.item.path) as f:
                # the length from the header: exact for PCM and FLAC, else an estimate
                through_vad, windows = planned_windows(f, self.cut)
                cutter = None
                if through_vad:
                    w.segmented = True
                    w.source = fingerprint(w.item.path)
                    if self.opts.segment_cache_s:
                        w.saved = segment_cache.load_segments(self.job_dir, w.item.id,
                                                              w.source)
                    busy += time.perf_counter() - t
                    cutter = self.known_cutter(w)  # None: the main thread feeds the VAD
                    t = time.perf_counter()  # waiting for the VAD process is not decoding
                    w.vad = cutter is None
                kind = "window" if w.vad else "piece"
                ok = True
                try:
                    for offset_s, wave in windows:
                        busy += time.perf_counter() - t
                        self.crash("decode")
                        if cutter is not None:  # cut here, with the VAD process's segments
                            ok = all(self.buffer.put(("cut", w, c), len(c.audio),
                                                     abandon=lambda: w.failed)
                                     for c in cutter.feed(wave))
                        else:
                            ok = self.buffer.put((kind, w, n, offset_s, wave), len(wave),
                                                 abandon=lambda: w.failed)
                        t = time.perf_counter()
                        if not ok:
                            break
                        n += 1
                        samples += len(wave)
                    if cutter is not None and ok:
                        for c in cutter.finish():
                            self.buffer.put(("cut", w, c), len(c.audio),
                                            abandon=lambda: w.failed)
                        n = cutter.count
                finally:
                    if cutter is not None:
                        cutter.close()
            busy += time.perf_counter() - t
            self.buffer.put(("end", w, n, samples / SAMPLE_RATE))
        except AudioError as e:
            busy += time.perf_counter() - t
            self.buffer.put(("error", w, str(e)))
        except VADError as e:
            busy += time.perf_counter() - t
            logger.error("VAD failed on %s: %s", w.item.id, e)
            self.buffer.put(("error", w, f"VAD error: {e}"))
        except Cancelled:
            pass  # stopping: the item goes back to pending
        except Exception as e:  # a decoder bug must fail the item, not hang the run
            busy += time.perf_counter() - t
            logger.exception("unexpected error decoding %s", w.item.path)
            self.buffer.put(("error", w, f"{type(e).__name__}: {e}"))
        finally:
            with self._decode_lock:
                self.decode_s += busy

    def forward(self, w: Work) -> None:
        """Reader thread: one file read by a reader process, its pieces forwarded as the
        thread would send them; always ends with one 'end' or 'error' message (unless the run
        is cancelled)."""
        def abandon() -> bool:
            return w.failed

        try:
            for ev in self.read_processes.read(w.item.path, abandon=abandon):
                if isinstance(ev, Plan):
                    if ev.through_vad:
                        w.segmented = True
                        w.source = fingerprint(w.item.path)
                        if self.opts.segment_cache_s:
                            w.saved = segment_cache.load_segments(self.job_dir, w.item.id,
                                                                  w.source)
                        w.vad = self.read_processes.vad_here  # the main thread's VAD
                    continue
                if isinstance(ev, End):
                    self.buffer.put(("end", w, ev.n_pieces, ev.duration_s))
                    return
                self.crash("decode")
                if isinstance(ev, Cut):
                    msg = ("cut", w, ev)
                else:  # a window for the main thread's VAD, or a piece
                    msg = ("window" if isinstance(ev, VADWindow) else "piece", w, ev.index,
                           ev.offset_s, ev.audio)
                if not self.buffer.put(msg, len(ev.audio), abandon=abandon):
                    return
        except AudioError as e:
            self.buffer.put(("error", w, str(e)))
        except VADFailedRemote as e:
            logger.error("VAD failed on %s: %s", w.item.id, e)
            self.buffer.put(("error", w, f"VAD error: {e}"))
        except ReaderDied as e:
            logger.error("%s: %s", w.item.id, e)
            self.buffer.put(("error", w, str(e)))
        except ReadCancelled:
            pass  # stopping: the item goes back to pending
        except Exception as e:  # a bug must fail the item, not hang the run
            logger.exception("unexpected error reading %s", w.item.path)
            self.buffer.put(("error", w, f"{type(e).__name__}: {e}"))

    def known_cutter(self, w: Work) -> SegmentCutter | None:
        """Reader thread: a cutter over the segments a VAD process found for ``w``'s file
        (raises AudioError / VADError as the VAD process met them); None when the VAD runs
        in this process (no pool, or the pool broke)."""
        if self.vad_pool is None:
            return None
        try:
            segments = self.vad_pool.segments(w.item.path)
        except PoolBroken:
            return None
        return SegmentCutter(KnownSegments(segments), self.cut)

    def handle(self, msg: tuple) -> None:
        kind, w = msg[0], msg[1]
        if kind == "piece":
            if not w.failed:
                _, _, index, offset_s, wave = msg
                self.pool.add(w, index, offset_s, wave, w.item.language,
                              options=self.pool.options_of(w.item.extra))
            return
        if kind == "window":
            if not w.failed:
                self.feed_vad(w, msg[4])
            return
        if kind == "cut":
            if not w.failed:
                self.add_cuts(w, [msg[2]])
            return
        if w.reading:
            w.reading = False
            self.n_reading -= 1
        if kind == "error":
            self.completion.fail(w, msg[2])
        else:
            w.duration_s = msg[3]
            if w.vad and not w.failed:
                self.feed_vad(w, None)
            if not w.failed:
                w.n_pieces = w.cutter.count if w.vad else msg[2]
                if w.complete:
                    self.completion.ready.append(w)
        self.completion.forget_if_finished(w)

    def feed_vad(self, w: Work, wave: np.ndarray | None) -> None:
        """A window of a long file through its VAD (None: the file's end); the segments that
        come out go to the pool, or straight to the item when the segment cache has them."""
        t = time.perf_counter()
        try:
            if w.cutter is None:
                w.cutter = SegmentCutter(self.opts.vad, self.cut)
            cuts = w.cutter.feed(wave) if wave is not None else w.cutter.finish()
        except Exception as e:  # the item fails, not the run
            logger.exception("VAD failed on %s", w.item.id)
            self.completion.fail(w, f"VAD error: {type(e).__name__}: {e}")
            return
        finally:
            self.summary.vad_s += time.perf_counter() - t
        self.add_cuts(w, cuts)

    def add_cuts(self, w: Work, cuts) -> None:
        """A long file's segments: to the pool, or straight to the item when the segment
        cache has them."""
        for c in cuts:
            saved = w.saved.pop((c.start_ms, c.end_ms), None)
            if saved is not None:
                self.completion.reuse(w, c.index, c.start_s, len(c.audio) / SAMPLE_RATE, saved)
            else:
                self.pool.add(w, c.index, c.start_s, c.audio, w.item.language,
                              (c.start_ms, c.end_ms), self.pool.options_of(w.item.extra))
