"""Cutting a file into pieces for the model: whole, equal windows, or VAD speech segments.

How a file becomes pieces (:func:`plan_file`, :class:`CutOptions`):

* not longer than ``max_segment_s`` (with a VAD) or ``max_window_s`` (without): one piece,
  the whole file, exactly as ``batchasr transcribe`` sees it;
* longer, with a VAD: the VAD's speech segments (:class:`SegmentCutter`), each cut into
  equal parts of at most ``max_segment_s`` (:func:`split_long_segments`); silence is never
  sent to the model. The audio is decoded and fed a window at a time; only audio a segment
  may still need is kept (:class:`AudioTail`, bounded memory whatever the length of the
  recording);
* longer, without a VAD: equal windows of at most ``max_window_s``.

Invariants: the VAD is handed in loaded (``CutOptions.vad``, any object with ``stream()``);
this module never loads a model. Pieces come out in file order, each with its offset in
the file, so the reassembly (``batchasr.batches.assemble``) can put them back in file time.
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, NamedTuple

import numpy as np

from batchasr.audio import decode as audio
from batchasr.audio.decode import SAMPLE_RATE as SR, SAMPLES_PER_MS

logger = logging.getLogger("batchasr.pipeline")  # the name log lines show (stable)


def split_long_segments(segments: Iterable[tuple[int, int]],
                        max_segment_ms: int | None) -> list[tuple[int, int]]:
    """Cut each segment longer than max_segment_ms into the fewest equal parts that fit."""
    out = []
    for start, end in segments:
        n = 1 if not max_segment_ms or end - start <= max_segment_ms else \
            -(-(end - start) // max_segment_ms)
        bounds = [start + (end - start) * i // n for i in range(n)] + [end]
        out.extend(zip(bounds[:-1], bounds[1:]))
    return out


def window_seconds(n_samples: int, max_window_s: float) -> float:
    """Window length for a file of ``n_samples`` (at 16 kHz): equal windows of at most
    ``max_window_s`` (31 s -> 2 x 15.5 s, not 30 s + 1 s)."""
    max_n = int(max_window_s * SR)
    if n_samples <= max_n:
        return max_window_s
    return math.ceil(n_samples / math.ceil(n_samples / max_n)) / SR


DEFAULT_MAX_SEGMENT_S = 30.0  # a model that declares no max_segment_s (Paraformer's length)
DEFAULT_MAX_WINDOW_S = 30.0


@dataclass(frozen=True)
class CutOptions:
    """How files become pieces for the model (see the module docstring)."""

    vad: Any = None  # a loaded batchasr.models.blocks.vad.VAD; None: equal windows of max_window_s
    max_segment_s: float = DEFAULT_MAX_SEGMENT_S
    max_window_s: float = DEFAULT_MAX_WINDOW_S
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


def planned_windows(f: audio.AudioFile, cut: CutOptions
                    ) -> tuple[bool, Iterator[tuple[float, np.ndarray]]]:
    """An open file read as :func:`plan_file` plans it (from its header's length estimate):
    ``(through_vad, windows)``, the windows ``(offset_s, waveform)`` in file order."""
    through_vad, window_s = plan_file(f.info.n_samples(SR), cut)
    return through_vad, f.windows(window_s)


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

    def cut_pieces(self, wave: np.ndarray | None) -> list[tuple[int, float, np.ndarray]]:
        """``feed(wave)`` (``finish()`` for None) as ``(index, offset_s, waveform)`` pieces;
        an exception of the VAD raises VADFailed from it."""
        try:
            cuts = self.feed(wave) if wave is not None else self.finish()
        except Exception as e:
            raise VADFailed() from e
        return [(c.index, c.start_s, c.audio) for c in cuts]

    def close(self) -> None:
        if self.tail.spilled:
            logger.debug("%.0f s of audio held for the VAD went through a spill file",
                         self.tail.spilled / SR)
        self.tail.close()
        self.tail.spilled = 0

    def _cut(self, segments) -> list[Cut]:
        out = []
        for start_ms, end_ms in split_long_segments(segments, self.max_segment_ms):
            a, b = start_ms * SAMPLES_PER_MS, min(end_ms * SAMPLES_PER_MS, self.tail.end)
            if b <= a:
                continue
            out.append(Cut(self.count, start_ms, end_ms, self.tail.read(a, b)))
            self.tail.drop_before(b)  # later segments start where this one ends, or later
            self.count += 1
        return out


class KnownSegments:
    """A VAD whose segments (ms) are already known (found by a VAD process): its stream
    releases each segment once the audio fed reaches its end, and the rest at ``finish``,
    so :class:`SegmentCutter` cuts exactly the pieces it cuts with the VAD itself."""

    def __init__(self, segments):
        self.segments = [tuple(s) for s in segments]

    def stream(self) -> "KnownSegments._Stream":
        return KnownSegments._Stream(self.segments)

    class _Stream:
        def __init__(self, segments):
            self.pending = deque(segments)
            self.fed = 0

        def feed(self, wave: np.ndarray) -> list[tuple[int, int]]:
            self.fed += len(wave)
            out = []
            while self.pending and self.pending[0][1] * SAMPLES_PER_MS <= self.fed:
                out.append(self.pending.popleft())
            return out

        def finish(self) -> list[tuple[int, int]]:
            out, self.pending = list(self.pending), deque()
            return out


class VADFailed(Exception):
    """The VAD raised (its exception is the cause) while :func:`iter_pieces` cut a file."""


def iter_pieces(path: str, cut: CutOptions, read: dict | None = None, known=None
                ) -> Iterator[tuple[int, float, np.ndarray]]:
    """A file's pieces in file order, streamed a window at a time: ``(index, offset_s,
    waveform)`` (speech segments through the VAD, or windows; see :func:`plan_file`). Once
    the last is yielded, ``read`` (a dict) gets ``duration_s`` and ``n_pieces``. Raises
    AudioError; a VAD failure raises ``VADFailed`` from it. Holds one window and the
    cutter's tail, never the whole file.

    ``known``: a function giving the segments of a file that goes through the VAD, found
    elsewhere (a VAD process; what it raises propagates), or None to run ``cut.vad`` here;
    called only for such a file. The pieces are the same either way."""
    with audio.open_audio(path) as f:
        through_vad, windows = planned_windows(f, cut)
        cutter = None
        if through_vad:
            segments = known() if known is not None else None
            cutter = SegmentCutter(cut.vad if segments is None else KnownSegments(segments),
                                   cut)
        n = samples = 0
        try:
            for offset_s, wave in windows:
                samples += len(wave)
                if cutter is None:
                    yield n, offset_s, wave
                    n += 1
                    continue
                yield from cutter.cut_pieces(wave)
            if cutter is not None:
                yield from cutter.cut_pieces(None)
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
    except VADFailed as e:
        raise e.__cause__ from None
    return pieces, read["duration_s"]
