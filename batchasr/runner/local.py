"""The local engine: one process, one model, the job loop on the main thread.

:func:`run_job` takes the job lock, checks the job's settings, recovers what a dead run
left (:func:`recover`) and runs :class:`Runner`, which composes the stages of
``batchasr.runner.stages``: Feed (claim -> readers -> decode/VAD -> pieces) -> Pool
(batches) -> ModelStage (the batch in flight) -> Completion (assemble -> part, subtitles,
segment cache -> commit) -> Progress (bar, progress file).

Several worker processes can share one job (``batchasr run --workers N``, see
``batchasr.runner.processes``): each claims items under a lease (``owner``, renewed by a
heartbeat thread), and a worker that dies leaves leases that expire and are claimed again
by the others; ``complete`` only commits the items this worker still holds. A worker
started with ``lock_fd`` (the run's lock, inherited) skips the startup recovery (its
siblings are working) and, once the queue is empty, waits for the items its siblings hold,
taking over any whose lease expires.

Ctrl-C (SIGINT) or SIGTERM stops after the current batch (unfinished items go back to
pending); a second one stops at once (``batchasr.runner.signals.StopOnCtrlC``). Tests can
kill the process at named points (``batchasr.runner.hooks``).
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tqdm.contrib.logging import logging_redirect_tqdm

from batchasr.audio.decode import SAMPLE_RATE
from batchasr.errors import disk_full, is_disk_full
from batchasr.outputs import segment_cache
from batchasr.queue.lock import JobLock
from batchasr.queue.store import JobQueue
from batchasr.runner.device import (cpu_lanes, default_batch_seconds, default_reader_processes,
                                    stable_shapes_quantum, vad_in_reader_processes)
from batchasr.runner.hooks import crash_hook_from_env, slow_batch_s
from batchasr.runner.options import (RunOptions, RunSummary, default_max_segment_s, open_punctuator,
                                     open_vad)
from batchasr.runner.read_processes import ReadProcesses
from batchasr.runner.signals import StopOnCtrlC
from batchasr.runner.stages.completion import Completion
from batchasr.runner.stages.feed import Feed
from batchasr.runner.stages.model import ModelStage
from batchasr.runner.stages.pool import Pool
from batchasr.runner.stages.progress import Progress
from batchasr.runner.threads import Heartbeat
from batchasr.runner.vad_pool import VADPool
from batchasr.batches.assemble import model_punctuates
from batchasr.transcript import ASRModel

logger = logging.getLogger("batchasr.worker")  # the name log lines show (stable)


def run_job(
    job_dir: str | os.PathLike,
    model: ASRModel,
    *,
    batch_seconds: float | None = None,
    limit: int | None = None,
    max_window_s: float = RunOptions.max_window_s,
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
    puts items left running by a dead run back to pending (:func:`recover`), then works
    until the queue is empty, ``limit`` items were taken, or ``stop_event`` is set (Ctrl-C
    sets it when called from the main thread). Other keyword arguments are
    :class:`RunOptions` fields.

    ``owner`` names this worker in the leases (default: host, pid and a random suffix).
    ``lock_fd``: this process is one of several workers of one run, which holds the job
    lock and passed it down as this descriptor (see ``JobLock.adopt``); the startup
    recovery is then the run's business, and this worker keeps going until no item is
    pending or held by a sibling.

    Long recordings: ``vad`` (a name or folder for ``batchasr.models.loader.load_vad``, or a
    loaded VAD; None or "none": equal windows) cuts files longer than ``max_segment_s``
    (default: the model's, see ``options.default_max_segment_s``) into speech segments;
    ``punc`` (a name or folder for ``load_punctuator``, or a loaded punctuator) restores
    punctuation for models whose text has none.
    """
    if punc is not None and str(punc).lower() != "none" and model_punctuates(model):
        logger.warning("no punctuation model needed: %s's text is punctuated", model.name)
        punc = None
    if batch_seconds is None:  # the device's default, or what the model asks for there
        batch_seconds = default_batch_seconds("auto", model)
    opts = RunOptions(batch_seconds=batch_seconds, max_window_s=max_window_s,
                      vad=open_vad(vad), punctuator=open_punctuator(punc),
                      max_segment_s=max_segment_s or default_max_segment_s(model),
                      **options)
    if getattr(model, "sample_rate", SAMPLE_RATE) != SAMPLE_RATE:
        raise ValueError(f"model {model.name} expects {model.sample_rate} Hz; batchasr feeds "
                         f"{SAMPLE_RATE}")
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
        stopper = stack.enter_context(StopOnCtrlC(stop_event, job_dir=job_dir, owner=owner,
                                                  shared=shared))
        queue.ensure_meta({"model": model.name, **(meta or {})})
        queue.set_meta({"model_name": model.name})  # a label for people, not a setting
        requeued = 0
        if not shared:  # nobody else can be running items of this job: they were orphaned
            requeued, _ = recover(job_dir, queue, opts.max_attempts)
        runner = Runner(Path(job_dir), queue, model, opts, stop_event, limit, progress,
                        owner=owner, shared=shared)
        stopper.expected_wait = runner.model.expected_wait
        summary = runner.run()
        summary.requeued = requeued
        summary.signal = stopper.signum
        summary.remaining = queue.counts()
    return summary


def recover(job_dir: str | os.PathLike, queue: JobQueue,
            max_attempts: int | None = None) -> tuple[int, int]:
    """Startup recovery, for the process that holds the job's lock before any worker of it
    runs: items left ``running`` by a dead run go back to pending, those already claimed
    ``max_attempts`` times (None: ``RunOptions.max_attempts``) are failed instead
    (``queue.reset_running``); one info line says so when there were any; then the segment
    caches of items that are done or no longer queued are removed
    (:func:`sweep_segment_cache`). Returns ``(requeued, poisoned)``."""
    if max_attempts is None:
        max_attempts = RunOptions.max_attempts
    requeued, poisoned = queue.reset_running(max_attempts=max_attempts)
    if requeued or poisoned:
        logger.info("%d item(s) left running by a previous run requeued, %d failed after "
                    "%s attempts", requeued, poisoned, max_attempts)
    sweep_segment_cache(job_dir, queue)
    return requeued, poisoned


def sweep_segment_cache(job_dir: str | os.PathLike, queue: JobQueue) -> None:
    """Remove the segment caches of items that are done (or no longer queued): a run killed
    between an item's commit and the removal of its saved segments leaves them. For the
    process that holds the job's lock, before its workers start."""
    for item_id, folder in segment_cache.cached_items(job_dir).items():
        it = queue.get(item_id)
        if it is None or it.status == "done":
            shutil.rmtree(folder, ignore_errors=True)


def worker_id(tag: str = "") -> str:
    """A lease owner name unique to this process: ``host:pid[:tag]:random``."""
    return ":".join(x for x in (socket.gethostname(), str(os.getpid()), tag,
                                uuid.uuid4().hex[:8]) if x)


def _vad_pool(opts: RunOptions, cut) -> VADPool | None:
    """VAD processes for the long files of this run, when the VAD can be spawned (it was
    loaded by name or folder) and ``opts.vad_processes`` does not say 0."""
    spec = getattr(cut.vad, "spec", None)
    if cut.vad is None or spec is None or opts.vad_processes <= 0:
        return None
    return VADPool(spec, opts.vad_processes, cut.vad_window_s)


def _read_processes(opts: RunOptions, cut) -> ReadProcesses | None:
    """Reader processes for this run (``opts.reader_processes``; None: the device's default),
    unless a VAD is given that cannot be spawned (loaded by the caller, not by name or
    folder): the reader threads then cut with it here."""
    n = opts.reader_processes
    if n is None:
        n = default_reader_processes()
    if n <= 0:
        return None
    spec = getattr(cut.vad, "spec", None)
    vad_here = not (opts.vad_in_readers if opts.vad_in_readers is not None
                    else vad_in_reader_processes())
    if cut.vad is not None and spec is None and not vad_here:
        logger.info("the VAD was loaded by the caller: files are read in this process")
        return None
    return ReadProcesses(n, cut, spec, vad_here=vad_here)


IDLE_START_BATCHES = 2  # decoded batches' worth that starts a batch on an idle device


class Runner:
    """The job loop of one worker: the stages, and ``step()`` deciding what runs next."""

    def __init__(self, job_dir: Path, queue: JobQueue, model: ASRModel, opts: RunOptions,
                 stop: threading.Event, limit: int | None, progress: bool, *,
                 owner: str, shared: bool = False):
        self.job_dir, self.queue, self.opts, self.stop = job_dir, queue, opts, stop
        self.owner, self.shared = owner, shared
        self.summary = RunSummary()
        crash = crash_hook_from_env()
        works: dict = {}  # handed to a reader, not yet done/failed
        self.pool = Pool(batch_seconds=opts.batch_seconds, padded_seconds=opts.padded_seconds,
                         max_items=opts.max_batch_items, target=opts.pool_samples,
                         item_options=getattr(model, "item_options", ()),
                         quantum=stable_shapes_quantum(model))
        budget = math.inf if limit is None else max(0, limit)  # items it may claim
        self.progress = Progress(job_dir, queue, owner, self.summary, budget, progress)
        cut = opts.cut(model, spill_dir=str(job_dir))
        self.read_processes = _read_processes(opts, cut)
        # where the readers are processes (the GPU default), the subtitles are too: laying
        # out cues on threads here took the interpreter from the model's launches
        subtitle_process = (opts.subtitle_process if opts.subtitle_process is not None
                            else self.read_processes is not None)
        self.completion = Completion(job_dir, queue, model, opts, self.summary, self.progress,
                                     self.pool, works, crash, owner,
                                     subtitle_process=subtitle_process)
        self.model = ModelStage(model, self.completion,
                                max_failures_in_a_row=opts.max_model_failures_in_a_row,
                                crash=crash, slow_s=slow_batch_s(), lanes=cpu_lanes())
        self.vad_pool = None if self.read_processes is not None else _vad_pool(opts, cut)
        self.feed = Feed(job_dir, queue, opts, cut, self.summary, self.pool, self.completion,
                         works, crash, owner, budget, vad_pool=self.vad_pool,
                         read_processes=self.read_processes)

    def run(self) -> RunSummary:
        t0 = time.perf_counter()
        self.progress.initialize()
        self.feed.initialize()
        self.completion.initialize()
        heartbeat = Heartbeat(self.job_dir, self.owner, self.opts.lease_s,
                              self.opts.heartbeat_s or self.opts.lease_s / 4,
                              on_beat=self.progress.write)
        try:
            # warnings and failures logged meanwhile are printed above the bar, not into it
            with logging_redirect_tqdm() if not self.progress.bar.disable else ExitStack():
                while self.step():
                    pass
        finally:
            # Normal end, Ctrl-C, or an error: stop the readers, let the writer finish what
            # it was given, and hand every item not written back to pending.
            loop_end = time.perf_counter()
            self.model.close()
            self.feed.shutdown()
            self.completion.shutdown()
            self.feed.release()
            heartbeat.close()
            self.progress.shutdown()
            s, m = self.summary, self.model
            end = time.perf_counter()
            s.wall_s = end - t0
            s.drain_s = end - loop_end
            s.first_batch_s = (m.first_batch_at - t0) if m.first_batch_at is not None else 0.0
            s.decode_s = self.feed.decode_s
            if self.read_processes is not None:
                s.decode_s += self.read_processes.busy_s
                s.reader_processes = self.read_processes.processes
                s.vad_network_chunks = self.read_processes.network_chunks
            s.write_s = self.completion.writer.write_s
            s.model_s, s.batches = m.model_s, m.batches
            s.vad_processes_s = self.vad_pool.busy_s if self.vad_pool is not None else 0.0
            s.model_audio_s = m.transcribed_s
            s.padding = m.padding
        if self.completion.writer.error is not None:  # failed on the last batch, after the loop
            raise self.completion.writer.error
        return self.summary

    def step(self) -> bool:
        """One iteration: feed the readers, take decoded audio, and run at most one batch.
        False when the run is over (no more work, limit reached, or asked to stop)."""
        self.completion.step()
        if self.stop.is_set():
            self.model.shutdown()  # the batches in flight: their results are kept
            self.feed.take_ends()
            self.summary.stopped = True
            logger.info("stopping: unfinished items go back to pending")
            return False
        self.feed.step()
        self.completion.write_ready()
        if self.pool and (self.pool.full or not self.feed.more_coming() or self._idle_start()):
            batch = self.pool.next_batch()
            self.feed.open_room()  # the readers refill it while the model works
            self.model.step(batch)
            self.completion.flush()
            return True
        if self.model.busy:  # no batch to start now: nothing to overlap with
            self.model.finish_oldest()
            return True
        if self.feed.more_coming():
            self.feed.wait()
            return True
        if self.shared and self.feed.claim_budget > 0 \
                and self.queue.running_elsewhere(self.owner):
            # A sibling holds items: wait for it to finish them, or take them over once
            # its lease runs out (it died). Pending items it gives back are claimed too.
            self.stop.wait(min(1.0, self.opts.lease_s / 4))
            self.feed.exhausted = False
            return True
        return False  # out of work (items still being written are waited for by run())

    def _idle_start(self) -> bool:
        """The device is idle and two batches' worth is decoded: start one rather than wait
        for the whole sorting pool (a full pool sorts best, and fills while the device works
        when the readers are faster than the model; when they are slower, as with long
        recordings through the VAD, waiting for it would leave the device idle). Two, not
        one: a first batch cut from the first batch's worth that arrived is whatever the
        readers finished first (a third of it padding in a 30 min job of short clips, and a
        batch shape of its own); a job under two batches is planned whole."""
        return (not self.model.busy
                and self.pool.samples >= IDLE_START_BATCHES * self.opts.batch_seconds
                * SAMPLE_RATE)
