"""The Completion stage: THE result recorder. Transcribed pieces -> assembled (punctuated)
transcripts -> result rows, subtitles and the segment cache -> queue commit.

:func:`assemble_finished` and :func:`result_row` are the one way every engine turns an
item's pieces into its row. In the local worker, :class:`Completion` hands the items whose
every piece is transcribed to the :class:`Writer` thread (so the model does not wait for the
disk), which writes them in this order: Parquet part (atomic) -> subtitles ->
``queue.complete(ids, part)`` (one transaction). So a kill at any instant leaves each item
either done with its part on disk, or pending/running, to be redone by the next run.
Every ``segment_cache_s`` seconds of a long file's audio through the model, its finished
segments are saved (the segment cache, a cache, never a result: removed after the commit).
"""
from __future__ import annotations

import logging
import queue as stdqueue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from batchasr.batches.assemble import PieceResult, assemble
from batchasr.errors import is_disk_full
from batchasr.outputs import names, parquet, segment_cache
from batchasr.outputs.rows import failure_to_row, transcript_to_row
from batchasr.queue.store import JobQueue
from batchasr.runner.hooks import CrashHook
from batchasr.runner.options import RunOptions, RunSummary
from batchasr.runner.stages.model import model_error
from batchasr.runner.stages.pool import Pool
from batchasr.runner.stages.progress import Progress
from batchasr.runner.stages.work import Piece, Work
from batchasr.runner.subtitle_process import (SUBTITLE_WRITERS, SubtitleProcess,
                                              SubtitleProcessDied, write_subtitle_files)
from batchasr.transcript import ASRModel, Transcript

logger = logging.getLogger("batchasr.worker")  # the name log lines show (stable)


def assemble_finished(model: ASRModel, items: Sequence[Sequence[PieceResult]],
                      punctuator=None) -> list[Transcript | str]:
    """Each finished item's transcript from its pieces (``batches.assemble.assemble``), or,
    when the punctuation model fails on them, the error that fails them all (a string).
    Without a punctuator a failure is a bug, and raises."""
    try:
        return assemble(model, items, punctuator)
    except Exception as e:
        if punctuator is None:
            raise  # stitching is plain bookkeeping: a bug, not an item's problem
        logger.exception("punctuation failed on %d item(s)", len(items))
        return [f"punctuation error: {type(e).__name__}: {e}"] * len(items)


def result_row(item: dict[str, Any], out: Transcript | str, model_name: str) -> dict:
    """An item's result row: ``done`` with its transcript, or ``failed`` with its error."""
    if isinstance(out, str):
        return failure_to_row(item, out, model_name=model_name)
    return transcript_to_row(item, out, model_name=model_name)


class Completion:
    """Items of the local worker from their last piece to the queue commit. ``fail`` is THE
    way an item fails (queue, summary, bar, pool). As a ModelStage sink it records each
    piece's transcript. ``step()`` hands the items finished meanwhile to the writer and
    counts the ones it committed; ``shutdown()`` lets the writer finish."""

    def __init__(self, job_dir: Path, queue: JobQueue, model: ASRModel, opts: RunOptions,
                 summary: RunSummary, progress: Progress, pool: Pool, works: dict[str, Work],
                 crash: CrashHook, owner: str, *, subtitle_process: bool = False):
        self.job_dir, self.queue, self.model, self.opts = job_dir, queue, model, opts
        self.summary, self.progress, self.pool, self.works = summary, progress, pool, works
        self.crash, self.owner = crash, owner
        self.ready: list[Work] = []  # every piece transcribed, not yet written
        self.writer: Writer | None = None
        self.subtitle_process = subtitle_process  # the writer's subtitles in a process

    def initialize(self) -> None:
        self.writer = Writer(self.job_dir, self.model.name, self.opts, self.crash, self.owner,
                             subtitle_process=self.subtitle_process)

    def step(self) -> None:
        """Count what the writer committed; stop the run if the writer failed."""
        self.collect_written()
        if self.writer.error is not None:
            raise self.writer.error  # e.g. the disk is full: stop, keep what is written

    def shutdown(self) -> None:
        """Let the writer finish what it was given, and count it."""
        self.writer.close()
        self.collect_written()

    # ---- a ModelStage's sink ----------------------------------------------------------

    def is_failed(self, p: Piece) -> bool:
        return p.work.failed

    def model_failed(self, p: Piece, e: Exception) -> None:
        logger.error("model failed on %s", p.work.item.id, exc_info=e)
        self.fail(p.work, model_error(e))
        self.forget_if_finished(p.work)

    def record(self, p: Piece, out: Transcript) -> None:
        w = p.work
        w.pieces[p.index] = p.result(out)
        self.progress.advance(w, p.seconds)
        if p.span is not None and self.opts.segment_cache_s:
            w.unsaved.append((p.index, *p.span, out))
            w.unsaved_s += p.seconds
        if w.complete:
            self.ready.append(w)

    def flush(self) -> None:
        self.write_ready()
        self.save_segments()

    # ---- items ------------------------------------------------------------------------

    def reuse(self, w: Work, index: int, offset_s: float, seconds: float,
              saved: Transcript) -> None:
        """A segment found in the segment cache: recorded without the model."""
        w.pieces[index] = PieceResult(offset_s, offset_s + seconds, saved)
        self.summary.segments_reused += 1

    def save_segments(self) -> None:
        """Hand the writer the finished segments of long files still in progress, once a
        file has ``segment_cache_s`` seconds of them not saved yet."""
        for w in self.works.values():
            if w.unsaved and w.unsaved_s >= self.opts.segment_cache_s and not w.failed \
                    and not w.complete:
                self.writer.submit(("segments", w, w.unsaved))
                w.unsaved, w.unsaved_s = [], 0.0

    def write_ready(self) -> None:
        """Hand the items whose every piece is transcribed to the writer (as one part)."""
        if not self.ready:
            return
        ready, self.ready = self.ready, []
        punctuator = self.opts.punctuator
        t = time.perf_counter()
        try:
            outs = assemble_finished(self.model, [list(w.pieces.values()) for w in ready],
                                     punctuator)
        finally:
            if punctuator is not None:
                self.summary.punc_s += time.perf_counter() - t
        if outs and isinstance(outs[0], str):
            for w in ready:
                self.fail(w, outs[0])
                self.forget_if_finished(w)
            return
        self.writer.submit(("items", ready, outs))

    def collect_written(self) -> None:
        """Count the items the writer has committed."""
        while True:
            try:
                works, committed = self.writer.done.get_nowait()
            except stdqueue.Empty:
                break
            self.summary.taken_over += len(works) - committed
            for w in works:
                self.works.pop(w.item.id, None)
                self.progress.finished(w)
            if committed == len(works):
                self.summary.done += committed
                self.summary.audio_s += sum(w.duration_s or 0.0 for w in works)
            else:  # which ones were committed is the queue's to say
                for w in works:
                    it = self.queue.get(w.item.id)
                    if it is not None and it.status == "done" and it.lease_owner == self.owner:
                        self.summary.done += 1
                        self.summary.audio_s += w.duration_s or 0.0
            self.progress.step()

    def fail(self, w: Work, error: str) -> None:
        if w.failed:
            return
        w.failed = True
        if w.cutter is not None:
            w.cutter.close()
        logger.warning("%s failed: %s", w.item.id, error)
        self.queue.fail(w.item.id, error, owner=self.owner, duration_s=w.duration_s)
        self.summary.failed += 1
        self.progress.finished(w)
        if w in self.ready:
            self.ready.remove(w)
        self.pool.drop(w)
        self.progress.update_counts()

    def forget_if_finished(self, w: Work) -> None:
        if w.failed and not w.reading:
            self.works.pop(w.item.id, None)


WRITER_BACKLOG = 8  # hand-overs (batches of finished items) waiting for the writer


class Writer:
    """The writer thread: for each batch of finished items, part -> subtitles -> complete,
    in hand-over order, on a queue connection of its own. ``done`` hands each committed
    batch back to the main thread; ``error`` is the exception that stopped it, if any.
    ``subtitle_process``: the subtitle files are written by a process of their own
    (``runner.subtitle_process``), else on threads here."""

    def __init__(self, job_dir: Path, model_name: str, opts: RunOptions, crash: CrashHook,
                 owner: str, *, subtitle_process: bool = False):
        self.job_dir, self.model_name, self.opts, self.crash = job_dir, model_name, opts, crash
        self.owner = owner
        # Back-pressure on the model, loose enough that the model's thread waits only when
        # the writer is behind on average, not during one slow part (its subtitles): with 2
        # hand-overs, a 10 h job's model thread waited 0.56 s of 9.7 s here (H200). What
        # waits is small (transcripts) and, after a crash, redone: nothing is lost.
        self.inbox: stdqueue.Queue = stdqueue.Queue(maxsize=WRITER_BACKLOG)
        self.done: stdqueue.Queue = stdqueue.Queue()
        self.error: BaseException | None = None
        self.write_s = 0.0
        # subtitle files written (and fsynced) several at once
        self._syncs = ThreadPoolExecutor(SUBTITLE_WRITERS, thread_name_prefix="batchasr-subtitles")
        self._subtitles: SubtitleProcess | None = None
        if subtitle_process and opts.subtitle_formats:
            try:
                self._subtitles = SubtitleProcess()
            except Exception as e:  # e.g. no processes allowed here: the threads write them
                logger.warning("subtitles are written in this process (%s: %s)",
                               type(e).__name__, e)
        self.thread = threading.Thread(target=self._loop, name="batchasr-writer", daemon=True)
        self.thread.start()

    def submit(self, msg: tuple) -> None:
        """``("items", works, transcripts)`` or ``("segments", work, segments)``."""
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
        self._syncs.shutdown(wait=True)
        if self._subtitles is not None:
            self._subtitles.close()

    def _loop(self) -> None:
        try:
            with JobQueue(self.job_dir) as queue:
                while (msg := self.inbox.get()) is not None:
                    t = time.perf_counter()
                    if msg[0] == "segments":
                        self._save_segments(*msg[1:])
                    else:
                        committed = self._write(queue, *msg[1:])
                        self.done.put((msg[1], committed))
                    self.write_s += time.perf_counter() - t
        except BaseException as e:  # reported to the main thread, which stops the run
            self.error = e

    def _save_segments(self, w: Work, segments: list) -> None:
        try:
            segment_cache.save_segments(self.job_dir, w.item.id, w.source, segments)
        except Exception as e:  # a cache: losing one costs time, never results
            logger.warning("could not save %d finished segment(s) of %s: %s", len(segments),
                           w.item.id, e, exc_info=not is_disk_full(e))
        self.crash("after_segment_cache")

    def _write(self, queue: JobQueue, works: list[Work], transcripts: list[Transcript]) -> int:
        transcripts = {w.item.id: t for w, t in zip(works, transcripts)}
        rows = [result_row(w.as_row_item(), transcripts[w.item.id], self.model_name)
                for w in works]
        items = [(w.item.id, row, w.duration_s) for w, row in zip(works, rows)]
        asked = self._ask_subtitles(items)  # written while the part is
        try:
            part = parquet.write_part(self.job_dir, rows)
        except BaseException:
            self._drop_answers(asked)
            raise
        self.crash("after_part")
        self._write_subtitles(items, asked)
        committed = queue.complete([w.item.id for w in works], part, owner=self.owner,
                                   durations={w.item.id: w.duration_s for w in works})
        if committed < len(works):
            logger.warning("%d of %d item(s) were taken over by another worker after this "
                           "one's lease ran out; their results in %s are ignored",
                           len(works) - committed, len(works), part)
        else:  # done: their saved segments are no use any more
            for w in works:
                if w.segmented:
                    segment_cache.drop_segments(self.job_dir, w.item.id)
        self.crash("after_complete")
        return committed

    def _ask_subtitles(self, items: list) -> list[str]:
        """Send the subtitle process every format's request for these items ((id, row,
        duration)); ``_write_subtitles`` takes the answers. Returns the formats asked."""
        if self._subtitles is None or not items:
            return []
        asked = []
        try:
            for fmt in self.opts.subtitle_formats:
                self._subtitles.send(fmt, names.default_folder(self.job_dir, fmt),
                                     self.opts.subtitle_options, items)
                asked.append(fmt)
        except SubtitleProcessDied as e:
            self._subtitle_process_died(e)
        return asked

    def _write_subtitles(self, items: list, asked: Sequence[str]) -> None:
        # Subtitles are a convenience copy (the export renders them from the parts), so a
        # problem with one is logged and does not fail its item; a full disk stops the run
        # as a part would (the batch is then not done). A format the subtitle process was
        # asked for is its answer (in the order asked); any other, or every one once the
        # process died, is written here.
        for fmt in self.opts.subtitle_formats:
            folder = names.default_folder(self.job_dir, fmt)
            answer = None
            if fmt in asked and self._subtitles is not None:
                try:
                    answer = self._subtitles.receive()
                except SubtitleProcessDied as e:
                    self._subtitle_process_died(e)
            errors, folder_error = answer or write_subtitle_files(
                self._syncs, fmt, folder, self.opts.subtitle_options, items)
            for (item_id, _, _), error in zip(items, errors):
                if error is None:
                    continue
                if is_disk_full(error):
                    raise error
                logger.error("could not write %s subtitles for %s", fmt, item_id,
                             exc_info=error)
            if folder_error is not None:
                raise folder_error

    def _drop_answers(self, asked: Sequence[str]) -> None:
        """Read and drop the answers to requests sent (the batch failed before them)."""
        for _ in asked:
            if self._subtitles is None:
                return
            try:
                self._subtitles.receive()
            except SubtitleProcessDied as e:
                self._subtitle_process_died(e)

    def _subtitle_process_died(self, e: SubtitleProcessDied) -> None:
        logger.warning("%s: subtitles are written in this process from now on", e)
        self._subtitles = None
