"""The job loop: claim -> decode (reader threads) -> batch -> transcribe -> write -> mark done.

One process, one model, on the main thread. Reader threads decode and resample ahead of the
model into a buffer bounded in audio seconds; the main thread keeps a pool of decoded
pieces, cuts it into length-sorted batches (``batching.plan_batches``) and runs the model.
Files longer than ``max_window_s`` are read as windows in bounded memory and their
transcripts stitched back with file times. With a VAD (``vad``), files longer than
``max_segment_s`` are instead read in windows that the main thread feeds to the VAD (MLX
models run on the main thread only); each speech segment it finds becomes a piece, so the
segments of many files share batches, and memory stays bounded whatever the length of a
file (``pipeline.SegmentCutter``). When an item's last piece is done, the main thread puts
its pieces back together and, with a punctuation model, punctuates the items finished
together in one batched call (``pipeline.assemble``).

Resuming a long file: every ``checkpoint_s`` seconds of its audio through the model, its
finished segments are saved (``results.write_segment_checkpoint``, by the writer thread);
a later run that takes the item again finds them and sends only the other segments to the
model. Checkpoints are a cache, never a result: the item's row is written, as any, in one
part when all its segments are done, and the checkpoints are removed after the commit.

After each batch, the items whose every piece is transcribed go to a writer thread (so the
model does not wait for the disk either), which writes them in this order: Parquet part
(atomic) -> subtitles -> ``queue.complete(ids, part)`` (one transaction).
So a kill at any instant leaves each item either done with its part on disk, or
pending/running, to be redone by the next run; an orphan part is ignored by the export,
which reads only the part the queue names. Failures are per item: an unreadable file, or a
piece the model fails on even alone, marks that item failed and the rest carry on.

Several worker processes can share one job (``batchasr run --workers N``, see
``batchasr.runner.processes``): each claims items under a lease (``owner``, renewed by a heartbeat
thread), and a worker that dies leaves leases that expire and are claimed again by the
others; ``complete`` only commits the items this worker still holds. A worker started
with ``lock_fd`` (the run's lock, inherited) skips the startup recovery (its siblings are
working) and, once the queue is empty, waits for the items its siblings hold, taking over
any whose lease expires. The batching, model call, one-by-one retry and stitching are the
shared functions of ``batchasr.runner.pipeline``, which the Ray engine calls too.

Ctrl-C (SIGINT) or SIGTERM stops after the current batch (unfinished items go back to
pending); a second one stops at once, within about a second even inside a long model call
(see ``_StopOnCtrlC``). Tests can kill the process at named points with
``BATCHASR_TEST_CRASH_AT=<point>:<n>`` (see ``CRASH_POINTS``); with
``BATCHASR_TEST_CRASH_ONCE=<file>`` only the first process to create that file dies.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import queue as stdqueue
import shutil
import signal
import socket
import sys
import threading
import time
import uuid
from collections import deque
from contextlib import ExitStack
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from batchasr.audio import decode as audio
from batchasr.runner import pipeline
from batchasr.outputs import names, parquet, segment_cache, writers
from batchasr.outputs.rows import transcript_to_row
from batchasr.errors import AudioError, disk_full, is_disk_full
from batchasr.files import fsync_dir
from batchasr.queue.lock import JobLock
from batchasr.queue.progress import drop_progress, write_progress
from batchasr.queue.store import Item, JobQueue
from batchasr.transcript import ASRModel, Transcript

logger = logging.getLogger("batchasr.runner.worker")

SR = audio.SAMPLE_RATE
CRASH_ENV = "BATCHASR_TEST_CRASH_AT"
CRASH_ONCE_ENV = "BATCHASR_TEST_CRASH_ONCE"
# decode: a reader has decoded the n-th piece; batch: just before the n-th model call;
# after_part: the n-th part is written, its items not yet done; after_complete: committed;
# after_checkpoint: the n-th segment checkpoint of a long file is written.
CRASH_POINTS = ("decode", "batch", "after_part", "after_complete", "after_checkpoint")
# BATCHASR_TEST_SLOW_BATCH=<seconds>: before each model call, the main thread writes
# "batchasr-test: slow batch" on stderr and sleeps that long in C code with SIGINT and SIGTERM
# blocked for it: a long model call that does not return to Python for signal handlers.
SLOW_ENV = "BATCHASR_TEST_SLOW_BATCH"
PROGRESS_EVERY_S = 2.0  # the progress file for `status`: at most this often from the loop


@dataclass(frozen=True)
class RunOptions:
    # Batching. A batch holds at most batch_seconds of audio, and at most
    # max_padded_seconds once padded to its longest piece (default: batch_seconds).
    batch_seconds: float
    max_padded_seconds: float | None = None
    max_batch_items: int | None = None
    # Longer files are cut into windows of at most this length (equal lengths per file).
    max_window_s: float = 30.0
    # Long recordings. vad: a loaded VAD (pipeline.open_vad), or None for the windows above;
    # files longer than max_segment_s (None: the model's default, 30 s; 15 s for Nano) are
    # then cut into its speech segments of at most that length. punctuator: a punctuation
    # model for models whose text has none (pipeline.open_punctuator). A long file's
    # finished segments are saved every checkpoint_s seconds of audio (None: never).
    vad: Any = None
    max_segment_s: float | None = None
    punctuator: Any = None
    checkpoint_s: float | None = 120.0
    # Pipeline. Readers decode ahead into a buffer of prefetch_seconds (default 2 batches);
    # the main thread sorts a pool of pool_seconds (default 4 batches) into batches.
    readers: int = 2
    prefetch_seconds: float | None = None
    pool_seconds: float | None = None
    claim_size: int = 64  # items claimed per queue transaction
    # Robustness. An item claimed max_attempts times by runs that died is failed at start;
    # this many items failing in the model in a row means the model, not the items, is
    # broken: the run stops instead of failing the whole job.
    max_attempts: int | None = 5
    max_model_failures_in_a_row: int = 20
    # Leases: a claimed item is this worker's for lease_s seconds, renewed every
    # heartbeat_s (default lease_s / 4) while the process lives; after a worker dies, the
    # others take its items over when the lease runs out (at once when the coordinating
    # run sees it die).
    lease_s: float = 60.0
    heartbeat_s: float | None = None
    # Outputs written next to each part (besides the Parquet rows): subtitles per item.
    subtitle_formats: tuple[str, ...] = ("srt",)
    subtitle_options: Any = None  # subtitles.SubtitleOptions

    def __post_init__(self):
        if self.batch_seconds <= 0 or self.max_window_s <= 0:
            raise ValueError("batch_seconds and max_window_s must be positive")
        if self.max_segment_s is not None and self.max_segment_s <= 0:
            raise ValueError("max_segment_s must be positive")
        if self.readers < 1 or self.claim_size < 1:
            raise ValueError("readers and claim_size must be at least 1")
        if self.lease_s <= 0 or (self.heartbeat_s is not None
                                 and not 0 < self.heartbeat_s < self.lease_s):
            raise ValueError("lease_s must be positive and heartbeat_s below it")

    @property
    def padded_seconds(self) -> float:
        return self.max_padded_seconds or self.batch_seconds


@dataclass
class RunSummary:
    """What one run did, and where its time went (seconds)."""

    done: int = 0
    failed: int = 0
    audio_s: float = 0.0  # audio of the items completed
    wall_s: float = 0.0
    decode_s: float = 0.0  # reader threads decoding + resampling (summed over threads)
    wait_s: float = 0.0  # the main thread waiting for decoded audio: the model idle on I/O
    model_s: float = 0.0
    write_s: float = 0.0  # parts, subtitles, queue commits (on the writer thread)
    batches: int = 0
    padding: float = 0.0  # share of the batches' padded size that was padding
    vad_s: float = 0.0  # the main thread in the VAD
    punc_s: float = 0.0  # the main thread putting items together and punctuating them
    segments_reused: int = 0  # segments of long files found saved by an earlier run
    model_audio_s: float = 0.0  # audio sent to the model (VAD segments or windows)
    requeued: int = 0  # items a previous run left running, put back at start
    taken_over: int = 0  # items finished here but committed by another worker (lease lost)
    workers: int = 1  # worker processes (the figures above are their sums)
    stopped: bool = False  # stopped early (Ctrl-C / stop_event), not out of work
    signal: int = 0  # the signal that stopped it (SIGINT, SIGTERM), 0 if none
    remaining: dict[str, int] = field(default_factory=dict)  # queue counts at the end

    @property
    def items(self) -> int:
        return self.done + self.failed

    @property
    def speed(self) -> float:
        """Audio seconds per wall second (= audio hours per hour)."""
        return self.audio_s / self.wall_s if self.wall_s else 0.0

    @property
    def overhead_per_item_s(self) -> float:
        """Wall time not spent in the model, per item."""
        return (self.wall_s - self.model_s) / self.items if self.items else 0.0

    def __str__(self) -> str:
        head = (f"{self.done} done, {self.failed} failed, {self.audio_s / 3600:.2f} h of audio "
                f"in {self.wall_s:.1f} s ({self.speed:.1f}x real time)")
        extra = "".join(f", {name} {value:.1f} s" for name, value in
                        (("VAD", self.vad_s), ("punctuation", self.punc_s)) if value)
        times = (f"model {self.model_s:.1f} s{extra}, waiting for audio {self.wait_s:.1f} s; "
                 f"on other threads: decoding {self.decode_s:.1f} s, writing "
                 f"{self.write_s:.1f} s; {self.batches} batches, {self.padding:.0%} padding")
        if self.segments_reused:
            times += f"; {self.segments_reused} saved segment(s) reused"
        left = self.remaining.get("pending", 0) + self.remaining.get("running", 0)
        stop = f"\n{stop_line(left)}" if self.stopped and left else ""
        if self.workers > 1:
            return f"{head} on {self.workers} workers; summed over them: {times}{stop}"
        return f"{head}; {times}; {self.overhead_per_item_s * 1000:.1f} ms overhead/item{stop}"


def stop_line(left: int) -> str:
    """What a run stopped with items left says (the summary's last line)."""
    return f"stopped: {left} item(s) left, run the same command to continue"


def run_job(
    job_dir: str | os.PathLike,
    model: ASRModel,
    *,
    batch_seconds: float,
    limit: int | None = None,
    max_window_s: float = 30.0,
    progress: bool = True,
    stop_event: threading.Event | None = None,
    meta: dict[str, Any] | None = None,
    owner: str | None = None,
    lock_fd: int | None = None,
    vad: Any = None,
    max_segment_s: float | None = None,
    punc: Any = None,
    **options: Any,
) -> RunSummary:
    """Transcribe the pending items of a job folder (already enqueued) and return a summary.

    Takes the job lock (JobError if another live process holds it), checks the job's
    recorded settings (``{"model": model.name}`` plus ``meta``; JobError on a mismatch),
    puts items left running by a dead run back to pending, then works until the queue is
    empty, ``limit`` items were taken, or ``stop_event`` is set (Ctrl-C sets it when called
    from the main thread). Other keyword arguments are :class:`RunOptions` fields.

    ``owner`` names this worker in the leases (default: host, pid and a random suffix).
    ``lock_fd``: this process is one of several workers of one run, which holds the job
    lock and passed it down as this descriptor (see ``JobLock.adopt``); the startup
    recovery is then the run's business, and this worker keeps going until no item is
    pending or held by a sibling.

    Long recordings: ``vad`` (a name or folder for ``batchasr.models.loader.load_vad``, or a loaded
    VAD; None or "none": equal windows) cuts files longer than ``max_segment_s`` (default:
    the model's, see ``pipeline.default_max_segment_s``) into speech segments; ``punc`` (a
    name or folder for ``load_punctuator``, or a loaded punctuator) restores punctuation for
    models whose text has none.
    """
    if punc is not None and str(punc).lower() != "none" and pipeline.model_punctuates(model):
        logger.warning("no punctuation model needed: %s's text is punctuated", model.name)
        punc = None
    opts = RunOptions(batch_seconds=batch_seconds, max_window_s=max_window_s,
                      vad=pipeline.open_vad(vad), punctuator=pipeline.open_punctuator(punc),
                      max_segment_s=max_segment_s or pipeline.default_max_segment_s(model),
                      **options)
    if getattr(model, "sample_rate", SR) != SR:
        raise ValueError(f"model {model.name} expects {model.sample_rate} Hz; batchasr feeds {SR}")
    stop_event = stop_event or threading.Event()
    owner = owner or worker_id()
    shared = lock_fd is not None
    try:
        summary = _run_job(job_dir, model, opts, stop_event, limit, progress, meta, owner,
                           lock_fd, shared)
    except Exception as e:  # a full disk: one message naming the folder and the free space
        if not is_disk_full(e):
            raise
        raise disk_full(job_dir, e) from e
    logger.info("run finished: %s", summary)
    return summary


def _run_job(job_dir, model, opts, stop_event, limit, progress, meta, owner, lock_fd,
             shared) -> RunSummary:
    with ExitStack() as stack:
        lock = JobLock.adopt(job_dir, lock_fd) if shared else JobLock(job_dir).acquire()
        stack.callback(lock.release)
        queue = stack.enter_context(JobQueue(job_dir))
        stopper = stack.enter_context(_StopOnCtrlC(stop_event, job_dir=job_dir, owner=owner,
                                                   shared=shared))
        queue.ensure_meta({"model": model.name, **(meta or {})})
        queue.set_meta({"model_name": model.name})  # a label for people, not a setting
        requeued = poisoned = 0
        if not shared:  # nobody else can be running items of this job: they were orphaned
            requeued, poisoned = queue.reset_running(max_attempts=opts.max_attempts)
        if requeued or poisoned:
            logger.info("%d item(s) left running by a previous run requeued, %d failed after "
                        "%s attempts", requeued, poisoned, opts.max_attempts)
        if not shared:
            sweep_checkpoints(job_dir, queue)
        runner = _Runner(Path(job_dir), queue, model, opts, stop_event, limit, progress,
                         owner=owner, shared=shared)
        stopper.expected_wait = runner.expected_wait
        summary = runner.run()
        summary.requeued = requeued
        summary.signal = stopper.signum
        summary.remaining = queue.counts()
    return summary


def sweep_checkpoints(job_dir: str | os.PathLike, queue: JobQueue) -> None:
    """Remove the segment checkpoints of items that are done (or no longer queued): a run
    killed between an item's commit and the removal of its checkpoints leaves them. For the
    process that holds the job's lock, before its workers start."""
    for item_id, folder in segment_cache.cached_items(job_dir).items():
        it = queue.get(item_id)
        if it is None or it.status == "done":
            shutil.rmtree(folder, ignore_errors=True)


def worker_id(tag: str = "") -> str:
    """A lease owner name unique to this process: ``host:pid[:tag]:random``."""
    return ":".join(x for x in (socket.gethostname(), str(os.getpid()), tag,
                                uuid.uuid4().hex[:8]) if x)


# ---- internals -------------------------------------------------------------------------------


@dataclass
class _Work:
    """A claimed item on its way through the pipeline (shared with its reader thread)."""

    item: Item
    reading: bool = True  # the reader has not sent its last message yet
    n_pieces: int | None = None  # known once the reader is done
    duration_s: float | None = None
    pieces: dict[int, pipeline.PieceResult] = field(default_factory=dict)
    failed: bool = False  # also tells the reader to stop
    # A long file through the VAD (set by the reader before its first message):
    vad: bool = False
    source: str = ""  # the audio file's size and mtime, stored with its checkpoints
    saved: dict[tuple[int, int], Transcript] = field(default_factory=dict)  # checkpointed
    cutter: Any = None  # pipeline.SegmentCutter, used on the main thread only
    unsaved: list = field(default_factory=list)  # (index, start_ms, end_ms, transcript)
    unsaved_s: float = 0.0
    bar_s: float = 0.0  # audio seconds of this item the progress bar has counted

    @property
    def complete(self) -> bool:
        return not self.failed and self.n_pieces is not None and len(self.pieces) == self.n_pieces


@dataclass
class _Piece:
    work: _Work
    index: int
    offset_s: float
    audio: np.ndarray
    arrival: int  # order of arrival, so the oldest piece is never starved
    span: tuple[int, int] | None = None  # a VAD segment's (start_ms, end_ms)


class _Prefetch:
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


class _CrashHook:
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


def _slow_batch(seconds: float) -> None:
    """The BATCHASR_TEST_SLOW_BATCH hook (see SLOW_ENV)."""
    os.write(2, b"batchasr-test: slow batch\n")
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        time.sleep(seconds)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


class _Writer:
    """The writer thread: for each batch of finished items, part -> subtitles -> complete,
    in hand-over order, on a queue connection of its own. ``done`` hands each committed
    batch back to the main thread; ``error`` is the exception that stopped it, if any."""

    def __init__(self, job_dir: Path, model_name: str, opts: RunOptions, crash: _CrashHook,
                 owner: str):
        self.job_dir, self.model_name, self.opts, self.crash = job_dir, model_name, opts, crash
        self.owner = owner
        self.inbox: stdqueue.Queue = stdqueue.Queue(maxsize=2)  # back-pressure on the model
        self.done: stdqueue.Queue = stdqueue.Queue()
        self.error: BaseException | None = None
        self.write_s = 0.0
        self.thread = threading.Thread(target=self._loop, name="batchasr-writer", daemon=True)
        self.thread.start()

    def submit(self, msg: tuple) -> None:
        """``("items", works, transcripts)`` or ``("checkpoint", work, segments)``."""
        while self.error is None:
            try:
                return self.inbox.put(msg, timeout=0.1)
            except stdqueue.Full:
                pass
        raise self.error

    def close(self) -> None:
        """Finish what was handed over, then stop."""
        if self.thread.is_alive():
            while self.error is None:
                try:
                    self.inbox.put(None, timeout=0.1)
                    break
                except stdqueue.Full:
                    pass
            self.thread.join()

    def _loop(self) -> None:
        try:
            with JobQueue(self.job_dir) as queue:
                while (msg := self.inbox.get()) is not None:
                    t = time.perf_counter()
                    if msg[0] == "checkpoint":
                        self._checkpoint(*msg[1:])
                    else:
                        committed = self._write(queue, *msg[1:])
                        self.done.put((msg[1], committed))
                    self.write_s += time.perf_counter() - t
        except BaseException as e:  # reported to the main thread, which stops the run
            self.error = e

    def _checkpoint(self, w: _Work, segments: list) -> None:
        try:
            segment_cache.save_segments(self.job_dir, w.item.id, w.source, segments)
        except Exception as e:  # a cache: losing one costs time, never results
            logger.warning("could not save %d finished segment(s) of %s: %s", len(segments),
                           w.item.id, e, exc_info=not is_disk_full(e))
        self.crash("after_checkpoint")

    def _write(self, queue: JobQueue, works: list[_Work], transcripts: list[Transcript]) -> int:
        transcripts = {w.item.id: t for w, t in zip(works, transcripts)}
        rows = [transcript_to_row(_item_dict(w), transcripts[w.item.id],
                                          model_name=self.model_name) for w in works]
        part = parquet.write_part(self.job_dir, rows)
        self.crash("after_part")
        self._write_subtitles(works, transcripts)
        committed = queue.complete([w.item.id for w in works], part, owner=self.owner,
                                   durations={w.item.id: w.duration_s for w in works})
        if committed < len(works):
            logger.warning("%d of %d item(s) were taken over by another worker after this "
                           "one's lease ran out; their results in %s are ignored",
                           len(works) - committed, len(works), part)
        else:  # done: their segment checkpoints are no use any more
            for w in works:
                if w.vad:
                    segment_cache.drop_segments(self.job_dir, w.item.id)
        self.crash("after_complete")
        return committed

    def _write_subtitles(self, works: Sequence[_Work], transcripts: dict[str, Transcript]) -> None:
        # Subtitles are a convenience copy (the export renders them from the parts), so a
        # problem with one is logged and does not fail its item. One folder fsync per batch.
        folders = set()
        for fmt in self.opts.subtitle_formats:
            folder = names.default_folder(self.job_dir, fmt)
            for w in works:
                try:
                    writers.write_item_subtitles(
                        self.job_dir, w.item.id, transcripts[w.item.id],
                        self.opts.subtitle_options, duration_s=w.duration_s, fmt=fmt,
                        folder=folder, sync_dir=False,
                    )
                    folders.add(folder)
                except Exception as e:
                    if is_disk_full(e):  # stops the run as a part would: the item is not done
                        raise
                    logger.exception("could not write %s subtitles for %s", fmt, w.item.id)
        for folder in folders:
            fsync_dir(folder)


class _Heartbeat:
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


class _Runner:
    def __init__(self, job_dir: Path, queue: JobQueue, model: ASRModel, opts: RunOptions,
                 stop: threading.Event, limit: int | None, progress: bool, *,
                 owner: str, shared: bool = False):
        self.job_dir, self.queue, self.model, self.opts, self.stop = job_dir, queue, model, opts, stop
        self.owner, self.shared = owner, shared
        self.claim_budget = math.inf if limit is None else max(0, limit)
        self.exhausted = False  # the last claim found the queue empty
        self.summary = RunSummary()
        self.crash = _CrashHook(os.environ.get(CRASH_ENV), os.environ.get(CRASH_ONCE_ENV))
        self.slow_s = float(os.environ.get(SLOW_ENV) or 0)
        self.cut = pipeline.CutOptions(
            vad=opts.vad, max_window_s=opts.max_window_s, spill_dir=str(job_dir),
            max_segment_s=opts.max_segment_s or pipeline.default_max_segment_s(model))
        self.buffer = _Prefetch(int((opts.prefetch_seconds or 2 * opts.batch_seconds) * SR))
        self.pool_target = int((opts.pool_seconds or 4 * opts.batch_seconds) * SR)
        self.claimed: deque[Item] = deque()  # claimed, not yet handed to a reader
        self.work: dict[str, _Work] = {}  # handed to a reader, not yet done/failed
        self.pool: list[_Piece] = []
        self.pool_samples = 0
        self.ready: list[_Work] = []  # every piece transcribed, not yet written
        self.arrivals = 0
        self.streak = pipeline.FailureStreak(opts.max_model_failures_in_a_row)
        # Models with submit() (Paraformer) keep one batch in flight: (pieces, pending)
        self.pipelined = callable(getattr(model, "submit", None))
        self.inflight: tuple[list[_Piece], Any] | None = None
        self.current: list[_Piece] = []  # the batch being started or run on the main thread
        self._decode_s = 0.0
        self._decode_lock = threading.Lock()
        self.padded = self.useful = 0  # samples in batches once padded / of real audio
        # Progress: the job's audio seconds, from the durations probed at enqueue (items
        # whose length is not known count at the mean of the known ones until a reader
        # finds it out); the done part of the job is the bar's initial value. Its rate is
        # audio seconds per second: "x real time".
        self.n_run = int(min(queue.counts()["pending"], self.claim_budget))
        n_known, known_s = queue.known_durations()
        self.mean_s = known_s / n_known if n_known else 0.0
        self.before_s, _ = queue.audio_seconds(["done"])
        todo_s, _ = queue.audio_seconds(["pending"], limit=self.n_run, mean_s=self.mean_s)
        self.transcribed_s = 0.0
        self.bar = _AudioBar(total=self.before_s + todo_s, initial=self.before_s,
                             desc="transcribing", disable=not progress, dynamic_ncols=True,
                             smoothing=0.05)
        if self.before_s and progress:
            self.bar.write(f"resuming: {_hours(self.before_s)} of "
                           f"{_hours(self.before_s + todo_s)} of audio done before",
                           file=sys.stderr)
        self._update_bar_total()

    # ---- the loop -------------------------------------------------------------------------

    def run(self) -> RunSummary:
        t0 = time.perf_counter()
        self.started_at = time.time()
        self._write_progress()
        readers = ThreadPoolExecutor(self.opts.readers, thread_name_prefix="batchasr-reader")
        self.readers = readers
        self.writer = _Writer(self.job_dir, self.model.name, self.opts, self.crash, self.owner)
        heartbeat = _Heartbeat(self.job_dir, self.owner, self.opts.lease_s,
                               self.opts.heartbeat_s or self.opts.lease_s / 4,
                               on_beat=self._write_progress)
        try:
            # warnings and failures logged meanwhile are printed above the bar, not into it
            with logging_redirect_tqdm() if not self.bar.disable else ExitStack():
                while self.step():
                    pass
        finally:
            # Normal end, Ctrl-C, or an error: stop the readers, let the writer finish what
            # it was given, and hand every item not written back to pending.
            self.buffer.cancel()
            readers.shutdown(wait=True, cancel_futures=True)
            self.writer.close()
            self._collect_written()
            self._release_unfinished()
            heartbeat.close()
            drop_progress(self.job_dir, self.owner)  # runs.jsonl has the figures now
            self.bar.close()
            s = self.summary
            s.wall_s = time.perf_counter() - t0
            s.decode_s = self._decode_s
            s.write_s = self.writer.write_s
            s.model_audio_s = self.transcribed_s
            s.padding = 1.0 - self.useful / self.padded if self.padded else 0.0
        if self.writer.error is not None:  # failed on the last batch, after the loop ended
            raise self.writer.error
        return self.summary

    def step(self) -> bool:
        """One iteration: feed the readers, take decoded audio, and run at most one batch.
        False when the run is over (no more work, limit reached, or asked to stop)."""
        self._collect_written()
        if self.writer.error is not None:
            raise self.writer.error  # e.g. the disk is full: stop, keep what is written
        if self.stop.is_set():
            self._finish_inflight()  # one batch at most: its results are kept
            self._take_ends()
            self.summary.stopped = True
            logger.info("stopping: unfinished items go back to pending")
            return False
        self._feed_readers()
        self._drain()
        self._write_ready()
        if self.pool and (self.pool_samples >= self.pool_target or not self._more_coming()
                          or self._idle_start()):
            self._run_batch(self._next_batch())
            self._write_ready()
            self._save_segments()
            return True
        if self.inflight is not None:  # no batch to start now: nothing to overlap with
            self._finish_inflight()
            return True
        if self._more_coming():
            t = time.perf_counter()
            msg = self.buffer.get(timeout=0.1)
            self.summary.wait_s += time.perf_counter() - t
            if msg is not None:
                self._handle(msg)
            return True
        if self.shared and self.claim_budget > 0 and self.queue.running_elsewhere(self.owner):
            # A sibling holds items: wait for it to finish them, or take them over once
            # its lease runs out (it died). Pending items it gives back are claimed too.
            self.stop.wait(min(1.0, self.opts.lease_s / 4))
            self.exhausted = False
            return True
        return False  # out of work (items still being written are waited for by run())

    def _take_ends(self) -> None:
        """When stopping: the readers' last messages of files read whole (not through the
        VAD), so that an item whose every piece was in the last batch is complete and
        written rather than redone; other messages are dropped with their items. A reader
        that has sent pieces which are all transcribed may not have sent its end yet: it is
        waited for, a second at most."""
        deadline = time.monotonic() + 1.0

        def awaited() -> bool:
            return time.monotonic() < deadline and any(
                w.reading and w.pieces and not w.vad and not w.failed
                for w in self.work.values())

        while (msg := self.buffer.get(timeout=0.1 if awaited() else 0.0)) is not None \
                or awaited():
            if msg is not None and msg[0] in ("end", "error") and not msg[1].vad:
                self._handle(msg)
        self._write_ready()

    def _idle_start(self) -> bool:
        """The device has had nothing yet and a full batch is decoded: start it rather than
        wait for the whole sorting pool (later batches are sorted from a full pool while
        the device works)."""
        return (self.summary.batches == 0 and self.inflight is None
                and self.pool_samples >= self.opts.batch_seconds * SR)

    def _more_coming(self) -> bool:
        """Could more audio arrive without running a batch first? (_feed_readers has just
        claimed whatever the readers can take.)"""
        return bool(self.claimed) or any(w.reading for w in self.work.values())

    # ---- claiming and reading -------------------------------------------------------------

    def _claim(self) -> int:
        n = int(min(self.opts.claim_size, self.claim_budget))
        items = self.queue.claim(n, owner=self.owner, lease_s=self.opts.lease_s,
                                 max_attempts=self.opts.max_attempts) if n > 0 else []
        self.exhausted = len(items) < n  # the queue is empty (for now)
        self.claim_budget -= len(items)
        self.claimed.extend(items)
        return len(items)

    def _feed_readers(self) -> None:
        """Keep a claim's worth of files queued for the reader threads, so they never wait
        for the main thread (a hand-over per file would cost a GIL switch, ~5 ms, each).
        Queued files hold no audio; the prefetch buffer bounds what is decoded."""
        reading = sum(w.reading for w in self.work.values())
        while reading < max(2 * self.opts.readers, self.opts.claim_size):
            if not self.claimed and (self.claim_budget <= 0 or self.exhausted
                                     or not self._claim()):
                return
            w = _Work(self.claimed.popleft())
            self.work[w.item.id] = w
            self.readers.submit(self._read, w)
            reading += 1

    def _read(self, w: _Work) -> None:
        """Reader thread: decode one file into pieces; always ends with one 'end' or
        'error' message (unless the run is cancelled)."""
        busy = 0.0
        t = time.perf_counter()
        n = samples = 0
        try:
            with audio.open_audio(w.item.path) as f:
                # n_samples from the header: exact for PCM and FLAC, else an estimate
                through_vad, window_s = pipeline.plan_file(f.info.n_samples(SR), self.cut)
                if through_vad:  # the main thread feeds the windows to the VAD
                    w.source = _fingerprint(w.item.path)
                    if self.opts.checkpoint_s:
                        w.saved = segment_cache.load_segments(self.job_dir, w.item.id,
                                                                   w.source)
                    w.vad = True
                kind = "window" if through_vad else "piece"
                for offset_s, wave in f.windows(window_s):
                    busy += time.perf_counter() - t
                    self.crash("decode")
                    ok = self.buffer.put((kind, w, n, offset_s, wave), len(wave),
                                         abandon=lambda: w.failed)
                    t = time.perf_counter()
                    if not ok:
                        break
                    n += 1
                    samples += len(wave)
            busy += time.perf_counter() - t
            self.buffer.put(("end", w, n, samples / SR))
        except AudioError as e:
            busy += time.perf_counter() - t
            self.buffer.put(("error", w, str(e)))
        except Exception as e:  # a decoder bug must fail the item, not hang the run
            busy += time.perf_counter() - t
            logger.exception("unexpected error decoding %s", w.item.path)
            self.buffer.put(("error", w, f"{type(e).__name__}: {e}"))
        finally:
            with self._decode_lock:
                self._decode_s += busy

    def _drain(self) -> None:
        while self.pool_samples < self.pool_target:
            msg = self.buffer.get()
            if msg is None:
                return
            self._handle(msg)

    def _handle(self, msg: tuple) -> None:
        kind, w = msg[0], msg[1]
        if kind == "piece":
            if not w.failed:
                _, _, index, offset_s, wave = msg
                self._add_piece(_Piece(w, index, offset_s, wave, self.arrivals))
            return
        if kind == "window":
            if not w.failed:
                self._feed_vad(w, msg[4])
            return
        w.reading = False
        if kind == "error":
            self._fail(w, msg[2])
        else:
            w.duration_s = msg[3]
            if w.vad and not w.failed:
                self._feed_vad(w, None)
            if not w.failed:
                w.n_pieces = w.cutter.count if w.vad else msg[2]
                if w.complete:
                    self.ready.append(w)
        self._forget_if_finished(w)

    def _add_piece(self, p: _Piece) -> None:
        self.pool.append(p)
        self.pool_samples += len(p.audio)
        self.arrivals += 1

    def _feed_vad(self, w: _Work, wave: np.ndarray | None) -> None:
        """A window of a long file through its VAD (None: the file's end); the segments that
        come out go to the pool, or straight to the item when a checkpoint has them."""
        t = time.perf_counter()
        try:
            if w.cutter is None:
                w.cutter = pipeline.SegmentCutter(self.opts.vad, self.cut)
            cuts = w.cutter.feed(wave) if wave is not None else w.cutter.finish()
        except Exception as e:  # the item fails, not the run
            logger.exception("VAD failed on %s", w.item.id)
            self._fail(w, f"VAD error: {type(e).__name__}: {e}")
            return
        finally:
            self.summary.vad_s += time.perf_counter() - t
        for c in cuts:
            saved = w.saved.pop((c.start_ms, c.end_ms), None)
            if saved is not None:
                w.pieces[c.index] = pipeline.PieceResult(c.start_s,
                                                         c.start_s + len(c.audio) / SR, saved)
                self.summary.segments_reused += 1
            else:
                self._add_piece(_Piece(w, c.index, c.start_s, c.audio, self.arrivals,
                                       (c.start_ms, c.end_ms)))

    # ---- batches ----------------------------------------------------------------------------

    def _next_batch(self) -> list[_Piece]:
        """The planned batch that holds the oldest piece in the pool (so no piece starves),
        taken out of the pool."""
        lengths = [len(p.audio) for p in self.pool]
        plan = pipeline.batch_plan(lengths, batch_seconds=self.opts.batch_seconds,
                                   padded_seconds=self.opts.padded_seconds,
                                   max_items=self.opts.max_batch_items)
        oldest = min(range(len(self.pool)), key=lambda i: self.pool[i].arrival)
        chosen = next(b for b in plan if oldest in b)
        taken = set(chosen)
        batch = [self.pool[i] for i in chosen]
        self.pool = [p for i, p in enumerate(self.pool) if i not in taken]
        self.pool_samples -= sum(len(p.audio) for p in batch)
        return batch

    def _run_batch(self, batch: list[_Piece]) -> None:
        batch = [p for p in batch if not p.work.failed]
        if not batch:
            return
        self.crash("batch")
        waves, langs = [p.audio for p in batch], [p.work.item.language for p in batch]
        self.current = batch
        if self.slow_s:
            _slow_batch(self.slow_s)
        if not self.pipelined:
            try:
                self._apply(batch, pipeline.run_or_each(self._transcribe, waves, langs))
            finally:
                self.current = []
            return
        # Keep one batch in flight: start this one on the device, then finish the previous
        # one on the host while the device works (see ParaformerASR.submit).
        t = time.perf_counter()
        try:
            pending = self.model.submit(waves, languages=pipeline.model_languages(langs))
        except Exception as e:  # the pieces are retried one by one by _finish_inflight
            pending = e
        self.summary.model_s += time.perf_counter() - t
        self._finish_inflight()
        t = time.perf_counter()
        if not isinstance(pending, Exception):
            try:
                pending.advance()
            except Exception as e:
                pending = e
        self.summary.model_s += time.perf_counter() - t
        self.inflight = (batch, pending)
        self.current = []

    def expected_wait(self) -> tuple[float, float | None]:
        """(audio seconds in the model now, the model seconds they should take at this run's
        speed so far, None before any is measured): what a stop after the batch in flight
        waits for. Read from another thread (the signal watcher)."""
        pieces = list(self.current) + (list(self.inflight[0]) if self.inflight else [])
        audio_s = sum(len(p.audio) for p in pieces) / SR
        per_s = self.summary.model_s / self.transcribed_s if self.transcribed_s else None
        return audio_s, None if per_s is None else audio_s * per_s

    def _finish_inflight(self) -> None:
        """Results of the batch in flight (if any) to their items; if the batch failed,
        each piece alone, so that only the pieces the model fails on even alone fail."""
        if self.inflight is None:
            return
        batch, pending = self.inflight
        self.inflight = None
        waves, langs = [p.audio for p in batch], [p.work.item.language for p in batch]
        t = time.perf_counter()
        outs: list | None = None
        if not isinstance(pending, Exception):
            try:
                outs = pipeline.checked(pending.result(), len(batch))
            except Exception as e:
                pending = e
        self.summary.model_s += time.perf_counter() - t
        if outs is None:
            if len(batch) == 1:
                outs = [pending]
            else:
                logger.warning("batch of %d failed in the model (%s: %s); retrying one by one",
                               len(batch), type(pending).__name__, pending)
                outs = [pipeline.run_or_each(self._run_model, [w], [lang])[0]
                        for w, lang in zip(waves, langs)]
        self._count(waves)
        self._apply(batch, outs)
        self._write_ready()
        self._save_segments()

    def _apply(self, batch: list[_Piece], outs: list) -> None:
        for p, out in zip(batch, outs):
            if p.work.failed:  # an earlier piece of the same file failed
                continue
            if isinstance(out, Exception):
                logger.error("model failed on %s", p.work.item.id, exc_info=out)
                self._fail(p.work, pipeline.model_error(out))
                self._forget_if_finished(p.work)
                self.streak.failed(out)  # raises JobError when the model looks broken
            else:
                self.streak.ok()
                self._record(p, out)

    def _run_model(self, waves: list[np.ndarray], langs: list[str | None]) -> list[Transcript]:
        t = time.perf_counter()
        try:
            return pipeline.run_model(self.model, waves, langs)
        finally:
            self.summary.model_s += time.perf_counter() - t

    def _transcribe(self, waves: list[np.ndarray], langs: list[str | None]) -> list[Transcript]:
        outs = self._run_model(waves, langs)
        self._count(waves)
        return outs

    def _count(self, waves: list[np.ndarray]) -> None:
        self.summary.batches += 1
        self.padded += max(len(w) for w in waves) * len(waves)
        self.useful += sum(len(w) for w in waves)
        seconds = sum(len(w) for w in waves) / SR
        self.transcribed_s += seconds

    def _record(self, p: _Piece, out: Transcript) -> None:
        w = p.work
        w.pieces[p.index] = pipeline.PieceResult(p.offset_s, p.offset_s + len(p.audio) / SR, out)
        self._advance(w, len(p.audio) / SR)
        if p.span is not None and self.opts.checkpoint_s:
            w.unsaved.append((p.index, *p.span, out))
            w.unsaved_s += len(p.audio) / SR
        if w.complete:
            self.ready.append(w)

    def _save_segments(self) -> None:
        """Hand the writer the finished segments of long files still in progress, once a
        file has ``checkpoint_s`` seconds of them not saved yet."""
        for w in self.work.values():
            if w.unsaved and w.unsaved_s >= self.opts.checkpoint_s and not w.failed \
                    and not w.complete:
                self.writer.submit(("checkpoint", w, w.unsaved))
                w.unsaved, w.unsaved_s = [], 0.0

    # ---- writing ----------------------------------------------------------------------------

    def _write_ready(self) -> None:
        """Hand the items whose every piece is transcribed to the writer (as one part)."""
        if not self.ready:
            return
        ready, self.ready = self.ready, []
        punctuator = self.opts.punctuator
        t = time.perf_counter()
        try:
            transcripts = pipeline.assemble(self.model, [list(w.pieces.values()) for w in ready],
                                            punctuator)
        except Exception as e:
            if punctuator is None:
                raise  # stitching is plain bookkeeping: a bug, not an item's problem
            logger.exception("punctuation failed on %d item(s)", len(ready))
            for w in ready:
                self._fail(w, f"punctuation error: {type(e).__name__}: {e}")
                self._forget_if_finished(w)
            return
        finally:
            if punctuator is not None:
                self.summary.punc_s += time.perf_counter() - t
        self.writer.submit(("items", ready, transcripts))

    def _collect_written(self) -> None:
        """Count the items the writer has committed."""
        while True:
            try:
                works, committed = self.writer.done.get_nowait()
            except stdqueue.Empty:
                break
            self.summary.taken_over += len(works) - committed
            for w in works:
                self.work.pop(w.item.id, None)
                self._bar_finished(w)
            if committed == len(works):
                self.summary.done += committed
                self.summary.audio_s += sum(w.duration_s or 0.0 for w in works)
            else:  # which ones were committed is the queue's to say
                for w in works:
                    it = self.queue.get(w.item.id)
                    if it is not None and it.status == "done" and it.lease_owner == self.owner:
                        self.summary.done += 1
                        self.summary.audio_s += w.duration_s or 0.0
            self._update_bar_total()
            if (self.summary.done and not self.progress_done
                    or time.time() - self.progress_written >= PROGRESS_EVERY_S):
                self._write_progress()  # at the first item done, then every few seconds

    def _fail(self, w: _Work, error: str) -> None:
        if w.failed:
            return
        w.failed = True
        if w.cutter is not None:
            w.cutter.close()
        logger.warning("%s failed: %s", w.item.id, error)
        self.queue.fail(w.item.id, error, owner=self.owner, duration_s=w.duration_s)
        self.summary.failed += 1
        self._bar_finished(w)
        if w in self.ready:
            self.ready.remove(w)
        if any(p.work is w for p in self.pool):
            self.pool = [p for p in self.pool if p.work is not w]
            self.pool_samples = sum(len(p.audio) for p in self.pool)
        self._update_bar_total()

    def _forget_if_finished(self, w: _Work) -> None:
        if w.failed and not w.reading:
            self.work.pop(w.item.id, None)

    def _release_unfinished(self) -> None:
        ids = [w.item.id for w in self.work.values() if not w.failed]
        ids += [i.id for i in self.claimed]
        for w in self.work.values():
            if w.cutter is not None:
                w.cutter.close()
        self.work.clear()
        self.claimed.clear()
        if ids:
            logger.info("%d unfinished item(s) go back to pending", len(ids))
            try:
                self.queue.release(ids, owner=self.owner)
            except Exception as e:  # e.g. a second Ctrl-C inside it: reset_running covers them
                logger.warning("could not hand %d unfinished item(s) back (%s); the next run "
                               "puts them back to pending", len(ids), e,
                               exc_info=not is_disk_full(e))

    def _advance(self, w: _Work, seconds: float) -> None:
        """Count audio of an item on the bar, never past the item's share of the total."""
        share = w.item.duration_s if w.item.duration_s is not None else self.mean_s
        if w.duration_s is not None:
            share = max(share, w.duration_s)
        step = max(0.0, min(seconds, share - w.bar_s))
        w.bar_s += step
        if step:
            self.bar.update(step)

    def _bar_finished(self, w: _Work) -> None:
        """An item is done or failed: the bar counts all of it. Only an item whose length
        was not known at the start changes the total (it was counted at the mean)."""
        if w.item.duration_s is None:
            actual = w.duration_s if w.duration_s is not None else self.mean_s
            self.bar.total = max(self.bar.n, self.bar.total + actual - self.mean_s)
            w.item = dataclasses.replace(w.item, duration_s=actual)  # its share from now on
        self._advance(w, math.inf)

    def _update_bar_total(self) -> None:
        """The counts after the bar (the total is the job's audio, fixed at the start)."""
        s = self.summary
        self.bar.set_postfix_str(f"{s.done} done, {s.failed} failed", refresh=False)

    def _write_progress(self) -> None:
        """This worker's figures for `batchasr status` while it runs (every heartbeat)."""
        s = self.summary
        self.progress_written, self.progress_done = time.time(), s.done
        try:
            write_progress(self.job_dir, self.owner, {
                "pid": os.getpid(), "started_at": self.started_at, "audio_s": s.audio_s,
                "done": s.done, "failed": s.failed, "bar_n": self.bar.n,
                "bar_total": self.bar.total})
        except OSError:  # figures for `status` only: never a reason to stop
            logger.debug("could not write the progress file", exc_info=True)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"


class _AudioBar(tqdm):
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


def _fingerprint(path: str) -> str:
    """Size and modification time of an audio file: its segment checkpoints are used only
    while these are unchanged."""
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def _item_dict(w: _Work) -> dict[str, Any]:
    i = w.item
    return {"id": i.id, "seq": i.seq, "path": i.path, "language": i.language,
            "extra": i.extra, "duration_s": w.duration_s}


class _StopOnCtrlC:
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
