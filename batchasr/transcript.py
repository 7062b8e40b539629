"""Result types every model family returns, and the protocol the runner relies on.

The runner never branches on the model family: it hands a list of 16 kHz mono float32
waveforms to ``model.transcribe`` and gets one :class:`Transcript` per waveform back,
in the same order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np


@dataclass
class Token:
    """One output token: its string as the model's vocabulary spells it, and its times."""

    text: str
    id: int
    start_ms: int | None = None  # None when the model gives no timestamps
    end_ms: int | None = None


@dataclass
class Segment:
    """A stretch of text with times, relative to the start of the audio given to the model."""

    start_s: float
    end_s: float
    text: str


@dataclass
class Transcript:
    text: str
    tokens: list[Token] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    language: str | None = None
    # Problems worth a column in the results, e.g. "repetition_loop", "token_cap".
    flags: list[str] = field(default_factory=list)
    # Set when the runner restored punctuation (``text`` is then punctuated and ``segments``
    # are sentences): the model's own text before that. None otherwise.
    # SenseVoice: the decoded text with its tags, as the official generate() returns it.
    raw_text: str | None = None
    # SenseVoice: the emotion and audio event its tags report ("HAPPY", "Speech"); else None
    emotion: str | None = None
    event: str | None = None
    # SenseVoice with timestamps: the pieces its official timestamps are for (the decoded text
    # re-encoded, the 4 tags dropped, force-aligned), with their times; ``tokens`` are then
    # the decoded ids, without times. Empty for the other models.
    aligned_pieces: list[Token] = field(default_factory=list)


class ASRModel(Protocol):
    """What the runner and the CLI need from a loaded recognizer; shared code relies on these
    declarations only, never on a concrete class.

    A recognizer may also be pipelined: ``submit(waveforms, languages=...)`` starts a batch,
    ``advance()`` moves it on while the runner prepares the next one, ``result()`` returns
    its transcripts (the runner then keeps one batch in flight).
    """

    name: str  # e.g. "paraformer" (recorded in the results)
    sample_rate: int  # always 16000 for the FunASR families
    punctuated: bool  # its text already carries punctuation (no punctuation model is added)
    max_segment_s: float  # the longest piece of audio that suits it (VAD segments are cut to this)

    def transcribe(
        self, waveforms: Sequence[np.ndarray], *, languages: Sequence[str | None] | None = None
    ) -> list[Transcript]:
        """Transcribe 16 kHz mono float32 waveforms; one Transcript each, in input order."""
        ...


def to_record(t: Transcript, *, path: str, duration_s: float | None = None, asr=None) -> dict:
    """The JSON object `batchasr transcribe --json` prints for one file (a stable interface:
    the port is checked against the official implementation through it). ``tokens`` are the
    vocabulary pieces of ``token_ids``; for models with ``vocab_pieces`` (LLM tokenizers,
    whose pieces are byte-level) ``token_texts`` adds what each id contributes to the text.
    ``timestamps`` are the timed tokens' [start_ms, end_ms], or, for a transcript with
    ``aligned_pieces`` (SenseVoice), the official per-word ``timestamp``."""
    timed = [tok for tok in t.tokens if tok.start_ms is not None]
    record = {
        "path": path,
        "text": t.text,
        "tokens": [tok.text for tok in t.tokens],
        "token_ids": [tok.id for tok in t.tokens],
        "timestamps": [[tok.start_ms, tok.end_ms] for tok in timed],
        "segments": [[round(s.start_s, 3), round(s.end_s, 3), s.text] for s in t.segments],
    }
    if asr is not None and hasattr(asr, "vocab_pieces"):
        # LLM models: `tokens` are the vocabulary pieces of the ids; `token_texts` what each
        # id adds to the text (a character split across ids belongs to the id completing it)
        record["tokens"] = asr.vocab_pieces(record["token_ids"])
        record["token_texts"] = [tok.text for tok in t.tokens]
    if duration_s is not None:
        record["duration_s"] = round(duration_s, 3)
    if t.language:
        record["language"] = t.language
    for key in ("raw_text", "emotion", "event"):  # where the model gives them (SenseVoice)
        if getattr(t, key) is not None:
            record[key] = getattr(t, key)
    if t.flags:
        record["flags"] = list(t.flags)
    if asr is not None and hasattr(asr, "word_timestamps") and (timed or t.aligned_pieces):
        words, word_times = asr.word_timestamps(t)
        record["words"], record["word_timestamps"] = words, word_times
        if t.aligned_pieces:  # SenseVoice: `timestamps` is the official `timestamp` (per word)
            record["timestamps"] = word_times
    return record
