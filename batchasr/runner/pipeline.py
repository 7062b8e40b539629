"""The transcription steps every engine shares: cut, batch, run the model, reassemble, row.

The local worker (``batchasr.runner.worker``, streaming pieces from reader threads) and the Ray
actors (``batchasr.runner.ray``, handed blocks of decoded items) both call these functions,
so a file is cut into pieces, its pieces batched, the model's failures retried one by one,
the pieces put back together (and punctuated) into a result row in exactly one way,
whichever engine runs.

How a file becomes pieces (:func:`plan_file`, :class:`CutOptions`):

* not longer than ``max_segment_s`` (with a VAD) or ``max_window_s`` (without): one piece,
  the whole file, exactly as ``batchasr transcribe`` sees it;
* longer, with a VAD: the VAD's speech segments (:class:`SegmentCutter`), each cut into
  equal parts of at most ``max_segment_s``; silence is never sent to the model. The audio is
  decoded and fed a window at a time; only audio a segment may still need is kept
  (:class:`AudioTail`, bounded memory whatever the length of the recording);
* longer, without a VAD: equal windows of at most ``max_window_s``.

Pieces of many files share length-sorted batches; :func:`assemble` puts each file's pieces
back in order in file time (token times shifted by each piece's start, as FunASR's
``inference_with_vad`` does) and, for a model whose text has no punctuation (Paraformer) and
a punctuation model, restores punctuation over the whole file (``punctuate_many``, batched
across files) and builds sentence segments (``batchasr.batches.sentences``).
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from batchasr.audio import decode as audio
from batchasr.outputs.rows import failure_to_row, transcript_to_row
from batchasr.batches.plan import plan_batches, stitch
from batchasr.errors import AudioError, JobError
from batchasr.batches.sentences import join_vad_texts, timestamp_sentence, vad_segment_sentences
from batchasr.transcript import ASRModel, Segment, Transcript

logger = logging.getLogger("batchasr.runner.pipeline")

SR = audio.SAMPLE_RATE
# A function that transcribes one batch: (waveforms, languages) -> one Transcript each.
RunBatch = Callable[[list[np.ndarray], list[str | None]], list[Transcript]]


def window_seconds(n_samples: int, max_window_s: float) -> float:
    """Window length for a file of ``n_samples`` (at 16 kHz): equal windows of at most
    ``max_window_s`` (31 s -> 2 x 15.5 s, not 30 s + 1 s)."""
    max_n = int(max_window_s * SR)
    if n_samples <= max_n:
        return max_window_s
    return math.ceil(n_samples / math.ceil(n_samples / max_n)) / SR


# ---- long recordings: VAD segments --------------------------------------------------------------

MS = SR // 1000  # samples per millisecond
DEFAULT_MAX_SEGMENT_S = 30.0  # Paraformer: the length its batches and the windows always had


@dataclass(frozen=True)
class CutOptions:
    """How files become pieces for the model (see the module docstring)."""

    vad: Any = None  # a loaded batchasr.models.blocks.vad.VAD; None: equal windows of max_window_s
    max_segment_s: float = DEFAULT_MAX_SEGMENT_S
    max_window_s: float = 30.0
    # A file through the VAD is decoded and fed in windows of this length.
    vad_window_s: float = 30.0
    # Audio a VAD file keeps in memory for segments not cut yet; beyond it, the oldest is
    # spilled to an unlinked temporary file in spill_dir (None: the system's temp folder).
    memory_s: float = 180.0
    spill_dir: str | None = None

    def __post_init__(self):
        if min(self.max_segment_s, self.max_window_s, self.vad_window_s, self.memory_s) <= 0:
            raise ValueError("max_segment_s, max_window_s, vad_window_s and memory_s must be "
                             "positive")


def plan_file(n_samples: int, cut: CutOptions) -> tuple[bool, float]:
    """``(through_vad, window_s)`` for a file of ``n_samples`` (its header's estimate): a file
    longer than ``max_segment_s`` goes through the VAD when there is one, read in windows of
    ``vad_window_s``; any other file is read as equal windows of at most ``max_window_s``
    (the whole file when it is not longer)."""
    if cut.vad is not None:
        if n_samples > int(cut.max_segment_s * SR):
            return True, cut.vad_window_s
        return False, max(cut.max_segment_s, cut.max_window_s)
    return False, window_seconds(n_samples, cut.max_window_s)


def default_max_segment_s(model: ASRModel) -> float:
    """The longest piece that suits the model, as it declares (``max_segment_s``)."""
    return float(getattr(model, "max_segment_s", DEFAULT_MAX_SEGMENT_S))


def model_punctuates(model: ASRModel) -> bool:
    """Whether the model's text is already punctuated, as it declares (``punctuated``;
    a model that does not say is taken to punctuate, so nothing is added to its text)."""
    return bool(getattr(model, "punctuated", True))


def open_vad(vad: Any, *, download: bool = False):
    """A VAD from a name or folder (``batchasr.models.loader.load_vad``); None or "none": no VAD; a
    loaded VAD is returned as it is."""
    if vad is None or (isinstance(vad, str) and vad.lower() == "none"):
        return None
    if isinstance(vad, (str, os.PathLike)):
        from batchasr.models.loader import load_vad

        return load_vad(vad, download=download)
    return vad


def open_punctuator(punc: Any, *, download: bool = False):
    """A punctuation model from a name or folder (``load_punctuator``); None or "none": none;
    a loaded one is returned as it is."""
    if punc is None or (isinstance(punc, str) and punc.lower() == "none"):
        return None
    if isinstance(punc, (str, os.PathLike)):
        from batchasr.models.loader import load_punctuator

        return load_punctuator(punc, download=download)
    return punc


class AudioTail:
    """The samples of one file from ``start`` on, appended in order: what segments not cut
    yet may still need. The newest ``memory_samples`` stay in memory; older ones go to an
    unlinked temporary file (a VAD may hold a segment back until the next one ends, which
    can be an hour of silence later), so memory is bounded whatever the recording.
    ``drop_before`` releases what no segment can need any more."""

    def __init__(self, memory_samples: int, spill_dir: str | None = None):
        self.memory_samples = memory_samples
        self.spill_dir = spill_dir
        self.start = 0  # the first sample still held
        self.end = 0  # samples appended
        self.chunks: deque[np.ndarray] = deque()  # in memory: samples [mem_start, end)
        self.mem_start = 0
        self.file = None  # spilled: samples [start, mem_start) at (sample - file_base) * 4
        self.file_base = 0
        self.spilled = 0  # samples ever written to the file (for tests and logs)

    def append(self, wave: np.ndarray) -> None:
        self.chunks.append(np.ascontiguousarray(wave, np.float32))
        self.end += len(wave)
        while self.end - self.mem_start > self.memory_samples and len(self.chunks) > 1:
            self._spill()

    def _spill(self) -> None:
        chunk = self.chunks.popleft()
        if self.file is None:
            self.file = tempfile.TemporaryFile(prefix="batchasr-audio-", dir=self.spill_dir)
            self.file_base = self.mem_start
        os.pwrite(self.file.fileno(), chunk.tobytes(), (self.mem_start - self.file_base) * 4)
        self.mem_start += len(chunk)
        self.spilled += len(chunk)

    def read(self, a: int, b: int) -> np.ndarray:
        """A copy of samples ``[a, b)`` (``start <= a``, ``b <= end``)."""
        if a < self.start or b > self.end or a > b:
            raise ValueError(f"samples [{a}, {b}) are not held (held: [{self.start}, "
                             f"{self.end}))")
        parts = []
        if a < self.mem_start:  # from the spill file
            stop = min(b, self.mem_start)
            nbytes = (stop - a) * 4
            data = os.pread(self.file.fileno(), nbytes, (a - self.file_base) * 4)
            if len(data) != nbytes:
                raise OSError(f"short read from the spill file ({len(data)} of {nbytes} bytes)")
            parts.append(np.frombuffer(data, np.float32))
        pos = self.mem_start
        for chunk in self.chunks:
            lo, hi = max(a, pos), min(b, pos + len(chunk))
            if lo < hi:
                parts.append(chunk[lo - pos : hi - pos])
            pos += len(chunk)
            if pos >= b:
                break
        if not parts:
            return np.zeros(0, np.float32)
        return np.concatenate(parts) if len(parts) > 1 else parts[0].copy()

    def drop_before(self, a: int) -> None:
        self.start = max(self.start, min(a, self.end))
        while self.chunks and self.mem_start + len(self.chunks[0]) <= self.start:
            self.mem_start += len(self.chunks.popleft())
        if self.file is not None and self.start >= self.mem_start:  # nothing spilled is needed
            self.file.truncate(0)
            self.file_base = self.mem_start

    def close(self) -> None:
        self.chunks.clear()
        if self.file is not None:
            self.file.close()
            self.file = None


class Cut(NamedTuple):
    """One VAD segment of a file: its index in file order, its span (ms) and its samples."""

    index: int
    start_ms: int
    end_ms: int
    audio: np.ndarray

    @property
    def start_s(self) -> float:
        return self.start_ms / 1000


class SegmentCutter:
    """One file through the VAD: ``feed`` its audio in order, then ``finish``; each returns
    the segments that became final, with their samples, in file order. Segments are the
    VAD's, cut into equal parts of at most ``max_segment_ms`` and sliced from the audio as
    FunASR's ``slice_padding_audio_samples`` does (``[start_ms * 16, end_ms * 16)``)."""

    def __init__(self, vad, cut: CutOptions):
        self.stream = vad.stream()
        self.max_segment_ms = int(cut.max_segment_s * 1000)
        self.tail = AudioTail(int(cut.memory_s * SR), cut.spill_dir)
        self.count = 0  # segments returned so far

    def feed(self, wave: np.ndarray) -> list[Cut]:
        wave = np.asarray(wave, np.float32)
        self.tail.append(wave)
        return self._cut(self.stream.feed(wave))

    def finish(self) -> list[Cut]:
        try:
            return self._cut(self.stream.finish())
        finally:
            self.close()

    def close(self) -> None:
        if self.tail.spilled:
            logger.debug("%.0f s of audio held for the VAD went through a spill file",
                         self.tail.spilled / SR)
        self.tail.close()
        self.tail.spilled = 0

    def _cut(self, segments) -> list[Cut]:
        from batchasr.models.blocks.vad import split_long_segments

        out = []
        for start_ms, end_ms in split_long_segments(segments, self.max_segment_ms):
            a, b = start_ms * MS, min(end_ms * MS, self.tail.end)
            if b <= a:
                continue
            out.append(Cut(self.count, start_ms, end_ms, self.tail.read(a, b)))
            self.tail.drop_before(b)  # later segments start where this one ends, or later
            self.count += 1
        return out


class _VADFailed(Exception):
    """The VAD raised (its exception is the cause) while :func:`iter_pieces` cut a file."""


def iter_pieces(path: str, cut: CutOptions, read: dict | None = None
                ) -> Iterator[tuple[int, float, np.ndarray]]:
    """A file's pieces in file order, streamed a window at a time: ``(index, offset_s,
    waveform)`` (speech segments through the VAD, or windows; see :func:`plan_file`). Once
    the last is yielded, ``read`` (a dict) gets ``duration_s`` and ``n_pieces``. Raises
    AudioError; a VAD failure raises ``_VADFailed`` from it. Holds one window and the
    cutter's tail, never the whole file."""
    with audio.open_audio(path) as f:
        through_vad, window_s = plan_file(f.info.n_samples(SR), cut)
        cutter = SegmentCutter(cut.vad, cut) if through_vad else None
        n = samples = 0
        try:
            for offset_s, wave in f.windows(window_s):
                samples += len(wave)
                if cutter is None:
                    yield n, offset_s, wave
                    n += 1
                    continue
                try:
                    cuts = cutter.feed(wave)
                except Exception as e:
                    raise _VADFailed() from e
                for c in cuts:
                    yield c.index, c.start_s, c.audio
            if cutter is not None:
                try:
                    cuts = cutter.finish()
                except Exception as e:
                    raise _VADFailed() from e
                for c in cuts:
                    yield c.index, c.start_s, c.audio
                n = cutter.count
        finally:
            if cutter is not None:
                cutter.close()
    if read is not None:
        read.update(duration_s=samples / SR, n_pieces=n)


def decode_pieces(path: str, cut: CutOptions) -> tuple[list[tuple[float, np.ndarray]], float]:
    """A whole file as ``[(offset_s, waveform), ...]`` pieces (:func:`iter_pieces`) and its
    duration in seconds (raises AudioError, or what the VAD raised). Holds the file's pieces
    in memory: for engines that hand decoded items between processes; the local worker
    streams instead."""
    read: dict = {}
    try:
        pieces = [(offset_s, wave) for _, offset_s, wave in iter_pieces(path, cut, read)]
    except _VADFailed as e:
        raise e.__cause__ from None
    return pieces, read["duration_s"]


def batch_plan(lengths: Sequence[int], *, batch_seconds: float,
               padded_seconds: float | None = None, max_items: int | None = None) -> list[list[int]]:
    """Length-sorted batches of pieces (lengths in samples) under the run's budgets."""
    return plan_batches(lengths, max_total=int(batch_seconds * SR),
                        max_padded=int((padded_seconds or batch_seconds) * SR),
                        max_items=max_items)


def model_languages(languages: list[str | None]) -> list[str | None] | None:
    """The `languages` argument of a model call: None when no piece names one."""
    return languages if any(languages) else None


def checked(outs, n: int) -> list[Transcript]:
    """A model's outputs for n inputs, the zip guarded (as whisper's DecodingTask.run does)."""
    outs = list(outs)
    if len(outs) != n:
        raise ValueError(f"model returned {len(outs)} transcripts for {n} inputs")
    return outs


def run_model(model: ASRModel, waves: list[np.ndarray],
              languages: list[str | None]) -> list[Transcript]:
    """One model call on a batch."""
    return checked(model.transcribe(waves, languages=model_languages(languages)), len(waves))


def run_or_each(run: RunBatch, waves: list[np.ndarray],
                languages: list[str | None]) -> list[Transcript | Exception]:
    """Run a batch; if the call raises, run each piece alone, so that only the pieces the
    model fails on even alone fail. One Transcript or the exception per piece, in order."""
    try:
        return list(run(waves, languages))
    except Exception as e:
        if len(waves) == 1:
            return [e]
        logger.warning("batch of %d failed in the model (%s: %s); retrying one by one",
                       len(waves), type(e).__name__, e)
    outs: list[Transcript | Exception] = []
    for wave, lang in zip(waves, languages):
        try:
            [out] = run([wave], [lang])
        except Exception as e1:
            outs.append(e1)
        else:
            outs.append(out)
    return outs


def model_error(e: Exception) -> str:
    """The error recorded for an item the model failed on."""
    return f"model error: {type(e).__name__}: {e}"


class FailureStreak:
    """Counts model failures in a row: that many means the model, not the items, is
    broken, so the run stops (JobError) instead of failing the whole job."""

    def __init__(self, limit: int):
        self.limit, self.n = limit, 0

    def ok(self) -> None:
        self.n = 0

    def failed(self, e: Exception) -> None:
        self.n += 1
        if self.n >= self.limit:
            raise JobError(
                f"the model failed on {self.n} items in a row, last with {type(e).__name__}: "
                f"{e}. Stopping; the items not reached stay pending (retry failed ones with "
                "retry_failed)."
            ) from e


# ---- putting a file back together -------------------------------------------------------------


class PieceResult(NamedTuple):
    """A piece's transcript (times relative to the piece) and where the piece lies in its file."""

    start_s: float
    end_s: float
    transcript: Transcript


def _words(model: ASRModel, t: Transcript) -> tuple[list[str], list[list[int]]]:
    """Words and their [start_ms, end_ms] as the model's official output groups them
    (Paraformer: ``word_timestamps``); else the timed tokens; else no times."""
    timed = bool(t.tokens) and all(k.start_ms is not None and k.end_ms is not None
                                   for k in t.tokens)
    if timed and hasattr(model, "word_timestamps"):
        words, times = model.word_timestamps(t)
        return list(words), [list(x) for x in times]
    if timed:
        return [k.text for k in t.tokens], [[k.start_ms, k.end_ms] for k in t.tokens]
    return t.text.split(), []


def assemble(model: ASRModel, items: Sequence[Sequence[PieceResult]],
             punctuator=None) -> list[Transcript]:
    """One transcript per item from its pieces (any order): stitched in file time (token and
    segment times shifted by each piece's start; texts joined without a space between CJK
    characters). When ``punctuator`` is given and the model's text has no punctuation, each
    item's text is punctuated as FunASR's ``inference_with_vad`` does it (``punctuate_many``
    over all items at once): the pieces' words joined by ``join_vad_texts``, ``text`` the
    punctuated result, ``raw_text`` the text before, and ``segments`` the sentences of
    ``timestamp_sentence`` from the punctuation ids and the word times (or, when those do not
    line up, one per piece, as the official fallback does)."""
    ordered = [sorted(pieces, key=lambda p: p.start_s) for pieces in items]
    stitched = [stitch([(p.start_s, p.transcript) for p in pieces]) for pieces in ordered]
    if punctuator is None or model_punctuates(model):
        return stitched
    inputs = []
    for pieces in ordered:
        texts, words, times, spans = [], [], [], []
        for p in pieces:
            w, t = _words(model, p.transcript)
            off = int(round(p.start_s * 1000))
            t = [[a + off, b + off] for a, b in t]
            texts.append(" ".join(w))
            words += w
            times += t
            spans.append((p.transcript.text, t, (off, int(round(p.end_s * 1000)))))
        inputs.append((join_vad_texts(texts), words, times, spans))
    punctuated = punctuator.punctuate_many([x[0] for x in inputs])
    out = []
    for tr, (_, words, times, spans), (text, punc_ids) in zip(stitched, inputs, punctuated):
        if len(punc_ids) == len(times):
            sentences = timestamp_sentence(punc_ids, times, " ".join(words))
        else:
            logger.info("punctuation ids (%d) and word times (%d) do not line up: one "
                        "sentence per segment", len(punc_ids), len(times))
            sentences = vad_segment_sentences(spans)
        segments = [Segment(x["start"] / 1000, x["end"] / 1000, x["text"].strip())
                    for x in sentences]
        out.append(replace(tr, text=text, raw_text=tr.text, segments=segments))
    return out


@dataclass
class DecodedItem:
    """An item with its whole audio decoded into pieces (``decode_pieces``), or the error
    that stopped it. ``item`` has the queue/manifest fields ``id, path, language, extra``
    (see :func:`results.transcript_to_row`)."""

    item: Mapping[str, Any]
    windows: list[tuple[float, np.ndarray]] = field(default_factory=list)  # (offset_s, audio)
    duration_s: float | None = None
    error: str | None = None


def transcribe_items(model: ASRModel, items: Sequence[DecodedItem], *, batch_seconds: float,
                     padded_seconds: float | None = None, max_items: int | None = None,
                     max_failures_in_a_row: int = 20, run: RunBatch | None = None,
                     punctuator=None) -> list[dict]:
    """Transcribe decoded items as length-sorted batches of their pieces and return one
    result row per item (:data:`results.PART_SCHEMA`): ``done`` with the reassembled (and,
    with ``punctuator``, punctuated) transcript, or ``failed`` with the decode or model
    error. Rows in input order.

    ``run`` replaces the plain model call (e.g. to time it). Raises JobError when the model
    fails on ``max_failures_in_a_row`` pieces in a row.
    """
    run = run or (lambda waves, langs: run_model(model, waves, langs))
    pieces = [(k, j) for k, it in enumerate(items) if it.error is None
              for j in range(len(it.windows))]
    got: list[dict[int, PieceResult]] = [{} for _ in items]
    errors = [it.error for it in items]
    streak = FailureStreak(max_failures_in_a_row)
    lengths = [len(items[k].windows[j][1]) for k, j in pieces]
    for batch in batch_plan(lengths, batch_seconds=batch_seconds, padded_seconds=padded_seconds,
                            max_items=max_items):
        chosen = [pieces[i] for i in batch if errors[pieces[i][0]] is None]
        if not chosen:
            continue
        outs = run_or_each(run, [items[k].windows[j][1] for k, j in chosen],
                           [items[k].item.get("language") for k, _ in chosen])
        for (k, j), out in zip(chosen, outs):
            if isinstance(out, Exception):
                logger.error("model failed on %s: %s", items[k].item["id"], out, exc_info=out)
                errors[k] = errors[k] or model_error(out)
                streak.failed(out)
            else:
                streak.ok()
                offset, wave = items[k].windows[j]
                got[k][j] = PieceResult(offset, offset + len(wave) / SR, out)
    done = [k for k in range(len(items)) if errors[k] is None]
    transcripts = dict(zip(done, assemble(model, [list(got[k].values()) for k in done],
                                          punctuator)))
    rows = []
    for k, it in enumerate(items):
        item = {**it.item, "duration_s": it.duration_s}
        if errors[k] is not None:
            rows.append(failure_to_row(item, errors[k], model_name=model.name))
        else:
            rows.append(transcript_to_row(item, transcripts[k], model_name=model.name))
    return rows


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

    @property
    def complete(self) -> bool:
        return self.error is not None or (self.n_pieces is not None
                                          and len(self.pieces) == self.n_pieces)


def transcribe_files(model: ASRModel, files, cut: CutOptions, *, batch_seconds: float,
                     punctuator=None, pool_seconds: float | None = None,
                     max_items: int | None = None, max_failures_in_a_row: int = 20,
                     run: RunBatch | None = None,
                     stats: dict | None = None):
    """Transcribe ``files`` (``(path, language)`` pairs, any iterable) as the runner does and
    yield one :class:`FileResult` per file, in input order, in bounded memory.

    Each file is cut as the worker cuts it (:func:`plan_file`: whole, equal windows, or VAD
    segments streamed through a :class:`SegmentCutter` a window at a time); the pieces of
    consecutive files share length-sorted batches taken from a pool of ``pool_seconds``
    (default 4 batches, as the worker's) of decoded audio, the batch holding the oldest
    piece first; each file is put back together (and punctuated) by :func:`assemble`. A file
    is never decoded whole: audio held is the pool, one window and the cutter's tail.
    Decode, VAD and model failures fail their file only (``FileResult.error``); JobError
    after ``max_failures_in_a_row`` model failures in a row. ``stats`` (a dict), when
    given, gets ``peak_pool_samples``, ``batches`` and ``model_audio_s``."""
    run = run or (lambda waves, langs: run_model(model, waves, langs))
    pool_target = int((pool_seconds or 4 * batch_seconds) * SR)
    pool: list[tuple[_StreamedFile, int, float, np.ndarray]] = []
    pending: dict[int, _StreamedFile] = {}  # read or being read, not yet yielded
    streak = FailureStreak(max_failures_in_a_row)
    state = {"pool_samples": 0, "next": 0}
    if stats is not None:
        stats.update(peak_pool_samples=0, batches=0, model_audio_s=0.0)

    def add(f: _StreamedFile, index: int, offset_s: float, wave: np.ndarray) -> None:
        pool.append((f, index, offset_s, wave))
        state["pool_samples"] += len(wave)
        if stats is not None:
            stats["peak_pool_samples"] = max(stats["peak_pool_samples"], state["pool_samples"])

    def drop(f: _StreamedFile) -> None:
        pool[:] = [p for p in pool if p[0] is not f]
        state["pool_samples"] = sum(len(p[3]) for p in pool)

    def run_batch() -> None:
        plan = batch_plan([len(p[3]) for p in pool], batch_seconds=batch_seconds,
                          max_items=max_items)
        chosen = set(next(b for b in plan if 0 in b))  # the pool is in arrival order
        batch = [p for i, p in enumerate(pool) if i in chosen]
        pool[:] = [p for i, p in enumerate(pool) if i not in chosen]
        state["pool_samples"] -= sum(len(p[3]) for p in batch)
        outs = run_or_each(run, [p[3] for p in batch], [p[0].language for p in batch])
        if stats is not None:
            stats["batches"] += 1
            stats["model_audio_s"] += sum(len(p[3]) for p in batch) / SR
        for (f, index, offset_s, wave), out in zip(batch, outs):
            if f.error is not None:
                continue
            if isinstance(out, Exception):
                logger.error("model failed on %s: %s", f.path, out, exc_info=out)
                f.error = model_error(out)
                drop(f)
                streak.failed(out)
            else:
                streak.ok()
                f.pieces[index] = PieceResult(offset_s, offset_s + len(wave) / SR, out)

    def finished():
        """The files at the head of the input order that are complete, assembled."""
        ready = []
        while state["next"] in pending and pending[state["next"]].complete:
            ready.append(pending.pop(state["next"]))
            state["next"] += 1
        done = [f for f in ready if f.error is None]
        if done:
            try:
                transcripts = assemble(model, [list(f.pieces.values()) for f in done],
                                       punctuator)
            except Exception as e:
                if punctuator is None:
                    raise
                logger.exception("punctuation failed on %d file(s)", len(done))
                for f in done:
                    f.error = f"punctuation error: {type(e).__name__}: {e}"
                transcripts = [None] * len(done)
            got = dict(zip(map(id, done), transcripts))
        for f in ready:
            if f.error is not None:
                yield FileResult(f.path, None, f.duration_s, f.error)
            else:
                yield FileResult(f.path, got[id(f)], f.duration_s)

    for k, (path, language) in enumerate(files):
        f = _StreamedFile(k, str(path), language)
        pending[k] = f
        read: dict = {}
        pieces = iter_pieces(f.path, cut, read)
        try:
            for index, offset_s, wave in pieces:
                add(f, index, offset_s, wave)
                while state["pool_samples"] >= pool_target and f.error is None:
                    run_batch()
                if f.error is not None:  # the model failed on one of its pieces
                    break
            else:
                f.duration_s, f.n_pieces = read["duration_s"], read["n_pieces"]
        except _VADFailed as e:
            logger.error("VAD failed on %s", f.path, exc_info=e.__cause__)
            f.error = f"VAD error: {type(e.__cause__).__name__}: {e.__cause__}"
        except AudioError as e:
            f.error = str(e)
        except Exception as e:  # a decoder bug fails the file, not the others
            logger.exception("unexpected error decoding %s", f.path)
            f.error = f"{type(e).__name__}: {e}"
        finally:
            pieces.close()  # a file left early: its decoder and VAD tail are closed now
        if f.error is not None:
            drop(f)
        yield from finished()
    while pool:
        run_batch()
        yield from finished()
    yield from finished()

