"""What every voice activity detector shares: speech segments (start_ms, end_ms), streamed.

`VAD.segments_stream(windows)` takes `(offset_s, waveform)` windows in file order
(`batchasr.audio.decode.iter_windows`), yields each segment once it is final, and keeps only
the detector's bounded state, so a 3-hour file never sits in memory. `max_segment_ms` cuts
longer segments into the fewest equal parts no longer than it (for ASR batching). Detectors
(batchasr.models.fsmn_vad, batchasr.models.silero_vad) implement `stream()`.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from batchasr.audio.cut import split_long_segments
from batchasr.audio.decode import SAMPLE_RATE, iter_windows

SpeechSegment = tuple[int, int]  # (start_ms, end_ms)


class VADStream:
    """One file's detector state: `feed(samples)` in order, then `finish()`; both return the
    segments (start_ms, end_ms) that became final."""

    def feed(self, samples: np.ndarray) -> list[SpeechSegment]:
        raise NotImplementedError

    def finish(self) -> list[SpeechSegment]:
        raise NotImplementedError


class VAD:
    """A voice activity detector. `segments(waveform)` for audio in memory, `segments_stream`
    for long files read window by window."""

    name: str = "vad"
    sample_rate: int = SAMPLE_RATE

    def stream(self) -> VADStream:
        raise NotImplementedError

    def segments(self, waveform: np.ndarray, *,
                 max_segment_ms: int | None = None) -> list[SpeechSegment]:
        """Speech segments of a whole 16 kHz mono float32 waveform, in ms."""
        return list(self.segments_stream([(0.0, waveform)], max_segment_ms=max_segment_ms))

    def segments_stream(self, windows: Iterable[tuple[float, np.ndarray]], *,
                        max_segment_ms: int | None = None) -> Iterator[SpeechSegment]:
        """Segments of a file given as contiguous `(offset_s, waveform)` windows, in order."""
        st = self.stream()
        consumed = 0
        for offset_s, wav in windows:
            if round(offset_s * self.sample_rate) != consumed:
                raise ValueError(f"windows must be contiguous: expected offset "
                                 f"{consumed / self.sample_rate:.3f} s, got {offset_s:.3f} s")
            consumed += len(wav)
            yield from split_long_segments(st.feed(np.asarray(wav, np.float32)), max_segment_ms)
        yield from split_long_segments(st.finish(), max_segment_ms)

    def segment_file(self, path, *, max_segment_ms: int | None = None,
                     window_s: float = 60.0) -> list[SpeechSegment]:
        """Segments of an audio file decoded window by window (bounded memory)."""
        return list(self.segments_stream(iter_windows(path, window_s, sr=self.sample_rate),
                                         max_segment_ms=max_segment_ms))
