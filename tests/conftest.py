"""Shared pytest fixtures. Each owner keeps their fixtures in a marked block."""
from __future__ import annotations

# ==== runner fixtures (audio / manifest / queue / worker) =====================================
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pytest
import soundfile as sf

from batchasr.transcript import Segment, Token, Transcript


def write_marked_wav(path: Path, seconds: float, mark: int, sr: int = 16000) -> Path:
    """A 16-bit WAV whose samples all equal ``mark / 1000``, so FakeModel can tell which
    file (and which window of it) it was given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.full(int(round(seconds * sr)), mark / 1000, np.float32), sr, subtype="FLOAT")
    return path


def mark_of(waveform: np.ndarray) -> int:
    return int(round(float(np.median(waveform)) * 1000))


class FakeModel:
    """An ASRModel for runner tests: the text of a waveform is ``m<mark>:<n_samples>``, with
    one token (times covering the waveform) and one segment.

    ``fail_marks``: waveforms with these marks make the whole call raise (as a model bug on
    one input would); ``delay_s``: sleep per call; ``on_call(model)``: a hook run first.
    ``calls`` records the batch sizes, ``seen`` every (mark, n_samples) transcribed,
    ``batches`` them call by call.
    """

    name = "fake"
    sample_rate = 16000

    def __init__(self, *, fail_marks: Sequence[int] = (), delay_s: float = 0.0,
                 on_call: Callable[["FakeModel"], None] | None = None):
        self.fail_marks = set(fail_marks)
        self.delay_s = delay_s
        self.on_call = on_call
        self.calls: list[int] = []
        self.seen: list[tuple[int, int]] = []
        self.batches: list[list[tuple[int, int]]] = []  # (mark, n_samples) per successful call
        self.languages: list = []
        self._lock = threading.Lock()

    def transcribe(self, waveforms, *, languages=None):
        if self.on_call:
            self.on_call(self)
        with self._lock:
            self.calls.append(len(waveforms))
            self.languages.append(languages)
        if self.delay_s:
            time.sleep(self.delay_s)
        marks = [mark_of(w) for w in waveforms]
        bad = [m for m in marks if m in self.fail_marks]
        if bad:
            raise RuntimeError(f"fake model cannot do mark {bad[0]}")
        out = []
        with self._lock:  # one call's pieces together (lanes call from two threads at once)
            self.batches.append([(m, len(w)) for w, m in zip(waveforms, marks)])
        for w, m in zip(waveforms, marks):
            assert w.dtype == np.float32 and w.ndim == 1
            self.seen.append((m, len(w)))
            end_ms = len(w) * 1000 // 16000
            text = f"m{m}:{len(w)}"
            out.append(Transcript(text=text, tokens=[Token(text, m, 0, end_ms)],
                                  segments=[Segment(0.0, end_ms / 1000, text)]))
        return out


@pytest.fixture
def fake_model() -> FakeModel:
    return FakeModel()
def done_count(job: Path) -> int:
    """Items committed as done in a job's queue, read-only from another process (-1 while the
    queue does not exist yet), for tests that kill a runner after some progress."""
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{job / 'queue.db'}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT count(*) FROM items WHERE status='done'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return -1
# ==== end of runner fixtures ==================================================================


class PipelinedFakeModel(FakeModel):
    """FakeModel with the runner's pipelined protocol (``submit`` -> ``advance``/``result``,
    as ParaformerASR has): the work, and any failure, happens in ``result()``;
    ``fail_submit_marks`` make ``submit`` itself raise."""

    def __init__(self, *, fail_submit_marks: Sequence[int] = (), **kwargs):
        super().__init__(**kwargs)
        self.fail_submit_marks = set(fail_submit_marks)
        self.submitted: list[int] = []

    def submit(self, waveforms, *, languages=None):
        marks = [mark_of(w) for w in waveforms]
        if any(m in self.fail_submit_marks for m in marks):
            raise RuntimeError("fake model cannot start this batch")
        self.submitted.append(len(waveforms))
        model = self

        class Pending:
            def advance(self):
                pass

            def result(self):
                return model.transcribe(waveforms, languages=languages)

        return Pending()
