"""Transcribing without a job folder: decoded items (the Ray actors) and files streamed in
order (``batchasr transcribe``).

Both run their batches through the same :class:`~batchasr.runner.stages.model.ModelStage`
as the local worker (one model call per batch, the one-by-one retry, the failure streak)
and put items back together with the same ``assemble_finished`` / ``result_row``, so a
file is cut, batched, retried and reassembled in exactly one way whichever engine runs.

Size: above 400 lines because it holds both engines' streaming loops and the three ways a
file's pieces reach them (cut here, with VAD processes, from reader processes), which must
stay one path to give one output.
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from batchasr.audio.cut import CutOptions, SegmentCutter, VADFailed, iter_pieces
from batchasr.audio.decode import SAMPLE_RATE, probe
from batchasr.batches.assemble import PieceResult
from batchasr.errors import AudioError
from batchasr.runner.options import (DEFAULT_MAX_FAILURES_IN_A_ROW, PREFETCH_BATCHES,
                                     STREAM_POOL_BATCHES, pool_samples)
from batchasr.runner.read_ahead import ReadAhead, ReaderError
from batchasr.runner.read_processes import (End, ReaderDied, ReadProcesses, VADFailedRemote,
                                            VADWindow, Window)
from batchasr.runner.stages.completion import assemble_finished, result_row
from batchasr.runner.stages.model import ModelStage, RunBatch, model_error
from batchasr.runner.stages.pool import Pool, batch_plan, item_options
from batchasr.runner.stages.work import Piece
from batchasr.runner.vad_pool import Cancelled, PoolBroken, VADError, VADPool
from batchasr.transcript import ASRModel, Transcript

logger = logging.getLogger("batchasr.pipeline")  # the name log lines show (stable)


@dataclass
class DecodedItem:
    """An item with its whole audio decoded into pieces (``audio.cut.decode_pieces``), or
    the error that stopped it. ``item`` has the queue/manifest fields ``id, path, language,
    extra`` (see ``outputs.rows.transcript_to_row``)."""

    item: Mapping[str, Any]
    windows: list[tuple[float, np.ndarray]] = field(default_factory=list)  # (offset_s, audio)
    duration_s: float | None = None
    error: str | None = None


class _ItemsSink:
    """ModelStage results of :func:`transcribe_items`: per item, its pieces or its error."""

    def __init__(self, items: Sequence[DecodedItem]):
        self.items = items
        self.got: list[dict[int, PieceResult]] = [{} for _ in items]
        self.errors = [it.error for it in items]

    def is_failed(self, p: Piece) -> bool:
        return self.errors[p.work] is not None

    def model_failed(self, p: Piece, e: Exception) -> None:
        logger.error("model failed on %s: %s", self.items[p.work].item["id"], e, exc_info=e)
        self.errors[p.work] = model_error(e)

    def record(self, p: Piece, out: Transcript) -> None:
        self.got[p.work][p.index] = p.result(out)

    def flush(self) -> None:
        pass


def transcribe_items(model: ASRModel, items: Sequence[DecodedItem], *, batch_seconds: float,
                     padded_seconds: float | None = None, max_items: int | None = None,
                     max_failures_in_a_row: int = DEFAULT_MAX_FAILURES_IN_A_ROW,
                     run: RunBatch | None = None, punctuator=None) -> list[dict]:
    """Transcribe decoded items as length-sorted batches of their pieces and return one
    result row per item (``outputs.rows.PART_SCHEMA``): ``done`` with the reassembled (and,
    with ``punctuator``, punctuated) transcript, or ``failed`` with the decode, model or
    punctuation error. Rows in input order.

    ``run`` replaces the plain model call (e.g. to time it). Raises JobError when the model
    fails on ``max_failures_in_a_row`` pieces in a row.
    """
    sink = _ItemsSink(items)
    stage = _stage(model, sink, max_failures_in_a_row, run)
    names = getattr(model, "item_options", ())
    pieces = [Piece(k, j, *it.windows[j], it.item.get("language"), 0, None,
                    item_options(names, it.item.get("extra")))
              for k, it in enumerate(items) if it.error is None for j in range(len(it.windows))]
    quantum = _quantum(model)
    try:
        for options in dict.fromkeys(p.options for p in pieces):  # a batch, one set of options
            alike = [p for p in pieces if p.options == options]
            for batch in batch_plan([len(p.audio) for p in alike], batch_seconds=batch_seconds,
                                    padded_seconds=padded_seconds, max_items=max_items,
                                    quantum=quantum):
                stage.step([alike[i] for i in batch])
        stage.shutdown()  # the batches still in flight
    finally:
        stage.close()
    done = [k for k in range(len(items)) if sink.errors[k] is None]
    outs = dict(zip(done, assemble_finished(model, [list(sink.got[k].values()) for k in done],
                                            punctuator)))
    return [result_row({**it.item, "duration_s": it.duration_s},
                       sink.errors[k] if sink.errors[k] is not None else outs[k], model.name)
            for k, it in enumerate(items)]


# ---- files streamed in order (``batchasr transcribe``) ------------------------------------------


class FileResult(NamedTuple):
    """One input file of :func:`transcribe_files`: its transcript (in file time) and duration,
    or the error that stopped it."""

    path: str
    transcript: Transcript | None
    duration_s: float | None
    error: str | None = None


@dataclass
class _StreamedFile:
    index: int
    path: str
    language: str | None
    pieces: dict[int, PieceResult] = field(default_factory=dict)
    n_pieces: int | None = None  # known once the file is read to its end
    duration_s: float | None = None
    error: str | None = None
    transcript: Transcript | None = None  # once assembled

    @property
    def complete(self) -> bool:
        return self.error is not None or (self.n_pieces is not None
                                          and len(self.pieces) == self.n_pieces)


class _FilesSink:
    """ModelStage results of :func:`transcribe_files`: a failed file leaves the pool."""

    def __init__(self, pool: Pool):
        self.pool = pool

    def is_failed(self, p: Piece) -> bool:
        return p.work.error is not None

    def model_failed(self, p: Piece, e: Exception) -> None:
        logger.error("model failed on %s: %s", p.work.path, e, exc_info=e)
        p.work.error = model_error(e)
        self.pool.drop(p.work)

    def record(self, p: Piece, out: Transcript) -> None:
        p.work.pieces[p.index] = p.result(out)

    def flush(self) -> None:
        pass


def transcribe_files(model: ASRModel, files, cut: CutOptions, *, batch_seconds: float,
                     punctuator=None, pool_seconds: float | None = None,
                     max_items: int | None = None,
                     max_failures_in_a_row: int = DEFAULT_MAX_FAILURES_IN_A_ROW,
                     run: RunBatch | None = None, stats: dict | None = None,
                     vad_processes: int = 0, reader_processes: int | None = None,
                     vad_in_readers: bool | None = None,
                     read_ahead_s: float | None = None):
    """Transcribe ``files`` (``(path, language)`` pairs, any iterable) as the runner does and
    yield one :class:`FileResult` per file, in input order, in bounded memory.

    Each file is cut as the worker cuts it (``audio.cut.iter_pieces``: whole, equal
    windows, or VAD segments streamed a window at a time); the pieces of consecutive files
    share length-sorted batches taken from a pool of ``pool_seconds`` (default:
    ``options.STREAM_POOL_BATCHES`` batches) of decoded audio, the batch holding the oldest
    piece first; each file is put back together (and punctuated) by
    ``assemble_finished``. A file is never decoded whole: audio held is the pool, one
    window and the cutter's tail. Decode, VAD, model and punctuation failures fail their
    file only (``FileResult.error``); JobError after ``max_failures_in_a_row`` model
    failures in a row. ``stats`` (a dict), when given,
    gets ``peak_pool_samples``, ``batches`` and ``model_audio_s``. ``vad_processes``: the
    VAD of the next long files runs in that many processes (``runner.vad_pool``) while
    earlier files are transcribed; same pieces, so the same results.

    ``reader_processes`` (None: ``runner.device.default_reader_processes()``, 0 on CPUs):
    the next files, that many at a time in input order, are decoded, run through the VAD
    and cut in reader processes (``runner.read_ahead``; ``vad_processes`` is then not
    needed and not used) while earlier files are transcribed; their pieces are queued
    ahead within ``read_ahead_s`` audio seconds (default: as ``run``'s prefetch, 2
    batches; ``stats`` then gets ``peak_read_ahead_samples``). Same pieces in the same
    order, so the same results and errors; a file on which its reader process dies twice
    fails alone (``read_processes.ReaderDied``). A VAD loaded by the caller (not by name
    or folder) cannot be spawned: the files are then read here."""
    spec = getattr(cut.vad, "spec", None)
    if reader_processes is None:
        from batchasr.runner.device import default_reader_processes

        reader_processes = default_reader_processes()
    readers = None
    if vad_in_readers is None:
        from batchasr.runner.device import vad_in_reader_processes

        vad_in_readers = vad_in_reader_processes()
    if reader_processes > 0 and (cut.vad is None or spec is not None or not vad_in_readers):
        seconds = read_ahead_s or PREFETCH_BATCHES * batch_seconds
        readers = ReadAhead(ReadProcesses(reader_processes, cut, spec,
                                          vad_here=not vad_in_readers),
                            int(seconds * SAMPLE_RATE))
    elif reader_processes > 0:
        logger.info("the VAD was loaded by the caller: files are read in this process")
    vad_pool = VADPool(spec, vad_processes, cut.vad_window_s) \
        if vad_processes > 0 and spec is not None and readers is None else None
    try:
        yield from _transcribe_files(model, files, cut, batch_seconds=batch_seconds,
                                     punctuator=punctuator, pool_seconds=pool_seconds,
                                     max_items=max_items,
                                     max_failures_in_a_row=max_failures_in_a_row, run=run,
                                     stats=stats, vad_pool=vad_pool, readers=readers)
    finally:
        if vad_pool is not None:
            vad_pool.close()
        if readers is not None:
            readers.close()


def _segments_ahead(files, cut: CutOptions, vad_pool: VADPool | None):
    """``(path, language, known)`` for each of ``files``, with the VAD of the next long
    files already started in ``vad_pool`` (as many as it has processes); ``known`` is
    ``iter_pieces``'s, None to run the VAD here."""
    files = iter(files)
    ahead: deque = deque()
    max_n = int(cut.max_segment_s * SAMPLE_RATE)

    def start(path: str):
        if vad_pool is None or cut.vad is None:
            return None
        try:
            if probe(path)[0] * SAMPLE_RATE <= max_n:
                return None  # a file sent whole: no VAD
            return vad_pool.submit(path)
        except (AudioError, PoolBroken, Cancelled):  # the reading itself will say what is wrong
            return None

    def known(future):
        def segments():
            try:
                return vad_pool.wait(future)
            except PoolBroken:
                return None  # the VAD runs here after all
        return segments

    while True:
        while len(ahead) < (vad_pool.processes if vad_pool is not None else 1):
            nxt = next(files, None)
            if nxt is None:
                break
            path, language = nxt
            ahead.append((str(path), language, start(str(path))))
        if not ahead:
            return
        path, language, future = ahead.popleft()
        yield path, language, None if future is None else known(future)


def _pieces_of(files, cut: CutOptions, vad_pool: VADPool | None, readers: ReadAhead | None):
    """``(path, language, pieces, read)`` for each of ``files`` in input order: ``pieces``
    as ``iter_pieces`` yields them (``read`` gets what it puts there), cut here or, with
    ``readers``, in the reader processes."""
    if readers is None:
        for path, language, known in _segments_ahead(files, cut, vad_pool):
            read: dict = {}
            yield path, language, iter_pieces(path, cut, read, known), read
        return
    for path, language, events in readers.files(files):
        read = {}
        yield path, language, _read_pieces(events, read, cut), read


def _read_pieces(events, read: dict, cut: CutOptions):
    """A file's events from the reader processes as ``iter_pieces``'s pieces (a long
    file's windows through ``cut.vad`` here when the processes leave the VAD to us)."""
    cutter = None
    try:
        for ev in events:
            if isinstance(ev, End):
                n = ev.n_pieces
                if cutter is not None:
                    yield from cutter.cut_pieces(None)
                    n = cutter.count
                read.update(duration_s=ev.duration_s, n_pieces=n)
                return
            if isinstance(ev, VADWindow):
                if cutter is None:
                    cutter = SegmentCutter(cut.vad, cut)
                yield from cutter.cut_pieces(ev.audio)
                continue
            yield (ev.index, ev.offset_s, ev.audio) if isinstance(ev, Window) \
                else (ev.index, ev.start_s, ev.audio)
    finally:
        if cutter is not None:
            cutter.close()
        events.close()  # left early: the rest of the file is dropped


def _stage(model: ASRModel, sink, max_failures_in_a_row: int,
           run: RunBatch | None) -> ModelStage:
    """The model stage as the local worker runs it: a batch in flight while the host
    finishes the one before (the model's ``submit``), or on a CPU that many batches at once
    (``runner.device.cpu_lanes``)."""
    from batchasr.runner.device import cpu_lanes

    return ModelStage(model, sink, max_failures_in_a_row=max_failures_in_a_row, run=run,
                      lanes=cpu_lanes())


def _quantum(model: ASRModel) -> int | None:
    """The stable-shape quantum (runner.device, imported here: it imports MLX)."""
    from batchasr.runner.device import stable_shapes_quantum

    return stable_shapes_quantum(model)


def _transcribe_files(model: ASRModel, files, cut: CutOptions, *, batch_seconds: float,
                      punctuator, pool_seconds: float | None, max_items: int | None,
                      max_failures_in_a_row: int, run: RunBatch | None, stats: dict | None,
                      vad_pool: VADPool | None, readers: ReadAhead | None = None):
    pool = Pool(batch_seconds=batch_seconds, max_items=max_items, arrival_order=True,
                target=pool_samples(pool_seconds, batch_seconds, STREAM_POOL_BATCHES),
                quantum=_quantum(model))
    stage = _stage(model, _FilesSink(pool), max_failures_in_a_row, run)
    try:
        yield from _stream(model, files, cut, pool, stage, punctuator, stats, vad_pool,
                           readers)
    finally:
        stage.close()


def _stream(model: ASRModel, files, cut: CutOptions, pool: Pool, stage: ModelStage, punctuator,
            stats: dict | None, vad_pool: VADPool | None, readers: ReadAhead | None):
    """The loop of :func:`_transcribe_files`: pieces of the files in input order into the
    pool, a batch whenever it is full, each file yielded once all its pieces are back."""
    pending: dict[int, _StreamedFile] = {}  # read or being read, not yet yielded
    state = {"next": 0}
    if stats is not None:
        stats.update(peak_pool_samples=0, batches=0, model_audio_s=0.0)
        if readers is not None:
            stats["peak_read_ahead_samples"] = 0

    def run_batch() -> None:
        batch = pool.next_batch()
        stage.step(batch)
        if stats is not None:
            stats["batches"] += 1
            stats["model_audio_s"] += sum(len(p.audio) for p in batch) / SAMPLE_RATE

    def finished():
        """The files at the head of the input order that are complete, assembled."""
        ready = []
        while state["next"] in pending and pending[state["next"]].complete:
            ready.append(pending.pop(state["next"]))
            state["next"] += 1
        done = [f for f in ready if f.error is None]
        if done:
            for f, out in zip(done, assemble_finished(
                    model, [list(f.pieces.values()) for f in done], punctuator)):
                if isinstance(out, str):
                    f.error = out
                else:
                    f.transcript = out
        for f in ready:
            if f.error is not None:
                yield FileResult(f.path, None, f.duration_s, f.error)
            else:
                yield FileResult(f.path, f.transcript, f.duration_s)

    for k, (path, language, pieces, read) in enumerate(_pieces_of(files, cut, vad_pool,
                                                                   readers)):
        f = _StreamedFile(k, str(path), language)
        pending[k] = f
        try:
            for index, offset_s, wave in pieces:
                pool.add(f, index, offset_s, wave, f.language)
                if stats is not None:
                    stats["peak_pool_samples"] = max(stats["peak_pool_samples"], pool.samples)
                    if readers is not None:
                        stats["peak_read_ahead_samples"] = readers.peak_samples
                while pool.full and f.error is None:
                    run_batch()
                if f.error is not None:  # the model failed on one of its pieces
                    break
            else:
                f.duration_s, f.n_pieces = read["duration_s"], read["n_pieces"]
        except VADFailed as e:
            logger.error("VAD failed on %s", f.path, exc_info=e.__cause__)
            f.error = f"VAD error: {type(e.__cause__).__name__}: {e.__cause__}"
        except AudioError as e:
            f.error = str(e)
        except (VADError, VADFailedRemote) as e:  # in a VAD or reader process
            logger.error("VAD failed on %s: %s", f.path, e)
            f.error = f"VAD error: {e}"
        except (ReaderDied, ReaderError) as e:  # the reader process died, or a decoder bug
            logger.error("%s: %s", f.path, e)
            f.error = str(e)
        except Exception as e:  # a decoder bug fails the file, not the others
            logger.exception("unexpected error decoding %s", f.path)
            f.error = f"{type(e).__name__}: {e}"
        finally:
            pieces.close()  # a file left early: its decoder and VAD tail are closed now
        if f.error is not None:
            pool.drop(f)
        yield from finished()
    if stats is not None and readers is not None:
        stats["peak_read_ahead_samples"] = readers.peak_samples
    while pool:
        run_batch()
        yield from finished()
    stage.shutdown()  # the batches still in flight
    yield from finished()


def open_for_files(model, weights, dtype, device, download, *, vad, punc,
                   max_segment_s: float | None, max_window_s: float, **decoding):
    """What ``batchasr transcribe`` runs with: the recognizer (``device.open_model``), how its
    files are cut (the VAD opened, ``max_segment_s`` defaulting to the model's) and the
    punctuation model (None for none). Raises as the loaders do."""
    from batchasr.runner.device import open_model
    from batchasr.runner.options import default_max_segment_s, open_punctuator, open_vad

    asr = open_model(model, weights, dtype, device, download, **decoding)
    cut = CutOptions(vad=open_vad(vad, download=download), max_window_s=max_window_s,
                     max_segment_s=max_segment_s or default_max_segment_s(asr))
    return asr, cut, open_punctuator(punc, download=download)


def transcribe_paths(model: ASRModel, paths: Sequence[str], cut: CutOptions, *,
                     language: str | None = None, **options):
    """:func:`transcribe_files` over files and folders (scanned for audio files as ``run``
    scans them), one :class:`FileResult` per file in input order; a folder without audio
    files gives one error result. ``options`` go to :func:`transcribe_files`."""
    from pathlib import Path

    from batchasr.manifest.scan import iter_audio_files

    entries: list[tuple[str, str | None]] = []  # (path, error), folders expanded
    for arg in paths:
        if Path(arg).is_dir():
            found = [str(p) for p in iter_audio_files(arg)]
            entries += [(p, None) for p in found] or [(arg, f"{arg}: no audio files in the "
                                                            "folder")]
        else:
            entries.append((arg, None))
    results = transcribe_files(model, ((p, language) for p, err in entries if err is None), cut,
                               **options)
    for path, error in entries:
        yield next(results) if error is None else FileResult(path, None, None, error)
