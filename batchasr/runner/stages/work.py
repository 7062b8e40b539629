"""The records the local worker's stages share: a claimed item on its way (:class:`Work`) and
one piece of it waiting for, or in, a batch (:class:`Piece`)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from batchasr.audio.decode import SAMPLE_RATE
from batchasr.batches.assemble import PieceResult
from batchasr.queue.store import Item
from batchasr.transcript import Transcript


@dataclass
class Work:
    """A claimed item on its way through the pipeline (shared with its reader thread)."""

    item: Item
    reading: bool = True  # the reader has not sent its last message yet
    n_pieces: int | None = None  # known once the reader is done
    duration_s: float | None = None
    pieces: dict[int, PieceResult] = field(default_factory=dict)
    failed: bool = False  # also tells the reader to stop
    # A long file through the VAD (set by the reader before its first message): segmented;
    # vad when the main thread feeds its VAD (else a VAD process found its segments)
    segmented: bool = False
    vad: bool = False
    source: str = ""  # the audio file's size and mtime, stored with its saved segments
    saved: dict[tuple[int, int], Transcript] = field(default_factory=dict)  # segment cache
    cutter: Any = None  # audio.cut.SegmentCutter, used on the main thread only
    unsaved: list = field(default_factory=list)  # (index, start_ms, end_ms, transcript)
    unsaved_s: float = 0.0
    bar_s: float = 0.0  # audio seconds of this item the progress bar has counted

    @property
    def complete(self) -> bool:
        return not self.failed and self.n_pieces is not None and len(self.pieces) == self.n_pieces

    @property
    def label(self) -> str:
        return self.item.id

    def as_row_item(self) -> dict[str, Any]:
        """The item's fields for its result row."""
        i = self.item
        return {"id": i.id, "seq": i.seq, "path": i.path, "language": i.language,
                "extra": i.extra, "duration_s": self.duration_s}


@dataclass
class Piece:
    """One piece of an item (``work``: the item's record, any object) for the model."""

    work: Any
    index: int
    offset_s: float
    audio: np.ndarray
    language: str | None
    arrival: int  # order of arrival, so the oldest piece is never starved
    span: tuple[int, int] | None = None  # a VAD segment's (start_ms, end_ms)
    # the item's own model options (the recognizer's ``item_options`` found in its manifest
    # columns), as (name, value) pairs: only pieces with the same options share a batch
    options: tuple = ()

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    def result(self, transcript: Transcript) -> PieceResult:
        """The piece's transcript with where the piece lies in its file."""
        return PieceResult(self.offset_s, self.offset_s + self.seconds, transcript)


def fingerprint(path: str) -> str:
    """Size and modification time of an audio file: its saved segments are used only while
    these are unchanged."""
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"
