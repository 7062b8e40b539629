"""Group audio pieces into batches of similar length, and stitch windowed transcripts back.

Pure functions on lengths and transcripts, no I/O.

Batches are cut from pieces sorted by length, so a batch holds neighbours and padding stays
small even when files range from one second to thirty. Two budgets bound a batch:

- ``max_total``: the sum of its lengths, the audio it carries (FunASR's ``batch_size_s``);
- ``max_padded``: its longest length x its size, what the model actually computes on
  once every row is padded, so it bounds memory;

plus an optional ``max_items``. Lengths are in any one unit (the worker uses samples).
A piece larger than a budget on its own still gets a batch: nothing is ever dropped.

Long files are transcribed as windows (``audio.AudioFile.windows``); :func:`stitch` puts
the windows' transcripts back into one, with times relative to the start of the file
(faster-whisper's ``restore_speech_timestamps`` in one function).
"""
from __future__ import annotations

import unicodedata
from dataclasses import replace
from typing import Sequence

from batchasr.transcript import Segment, Token, Transcript


def plan_batches(
    lengths: Sequence[int],
    *,
    max_total: int,
    max_padded: int | None = None,
    max_items: int | None = None,
    quantum: int | None = None,
) -> list[list[int]]:
    """Indices into ``lengths`` grouped into batches, longest batch first.

    Every index appears in exactly one batch. Within the budgets above, batches are filled
    greedily in order of decreasing length (so an out-of-memory shows up on the first
    batch, not after an hour). Ties keep input order, so the plan is deterministic.

    ``quantum`` (a length, the model's padding bucket): stable shapes. A batch's size then
    depends only on its longest length rounded up to the quantum: as many pieces as that
    padded length fits in the smaller budget (and ``max_items``). A long job then meets each
    (size, padded length) shape again and again instead of a new one per batch (on GPUs a
    new shape builds kernels and cuDNN plans). Both budgets still hold: the batch's audio is
    at most its padded size.
    """
    if max_total <= 0 or (max_padded is not None and max_padded <= 0):
        raise ValueError("batch budgets must be positive")
    if max_items is not None and max_items <= 0:
        raise ValueError("max_items must be positive")
    if quantum is not None and quantum <= 0:
        raise ValueError("quantum must be positive")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if quantum is not None:
        budget = min(max_total, max_padded or max_total)
        batches = []
        k = 0
        while k < len(order):
            padded = -(-max(lengths[order[k]], 1) // quantum) * quantum
            size = max(1, budget // padded)
            if max_items is not None:
                size = min(size, max_items)
            batches.append(order[k : k + size])
            k += size
        return batches
    batches: list[list[int]] = []
    batch: list[int] = []
    total = 0
    for i in order:
        n = lengths[i]
        if batch:
            longest = lengths[batch[0]]  # sorted descending: the first is the longest
            fits = (
                total + n <= max_total
                and (max_padded is None or longest * (len(batch) + 1) <= max_padded)
                and (max_items is None or len(batch) < max_items)
            )
            if not fits:
                batches.append(batch)
                batch, total = [], 0
        batch.append(i)
        total += n
    if batch:
        batches.append(batch)
    return batches


def padded_size(lengths: Sequence[int], batch: Sequence[int]) -> int:
    """What a batch costs once padded: its longest length x its size."""
    return max(lengths[i] for i in batch) * len(batch) if batch else 0


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of the padded batches that is padding (0 = none): a measure of the plan."""
    padded = sum(padded_size(lengths, b) for b in batches)
    return 1.0 - sum(lengths) / padded if padded else 0.0


# ---- windows of one file back into one transcript ------------------------------------------


def shift(t: Transcript, offset_s: float) -> Transcript:
    """The transcript of a window starting ``offset_s`` into its file, in file time."""
    if not offset_s:
        return t
    off_ms = int(round(offset_s * 1000))
    moved = lambda toks: [  # noqa: E731
        replace(k, start_ms=None if k.start_ms is None else k.start_ms + off_ms,
                end_ms=None if k.end_ms is None else k.end_ms + off_ms) for k in toks]
    return replace(
        t,
        tokens=moved(t.tokens),
        aligned_pieces=moved(t.aligned_pieces),  # SenseVoice's timestamp pieces
        segments=[Segment(s.start_s + offset_s, s.end_s + offset_s, s.text) for s in t.segments],
    )


def stitch(pieces: Sequence[tuple[float, Transcript]]) -> Transcript:
    """One transcript from ``(offset_s, transcript)`` of consecutive windows of a file.

    Token and segment times get their window's offset; texts are joined with a space,
    except next to CJK characters, which are written without spaces. Flags are merged,
    and the language is the first one a window reports.
    """
    ordered = sorted(pieces, key=lambda p: p[0])
    if len(ordered) == 1:
        return shift(ordered[0][1], ordered[0][0])
    text = ""
    tokens: list[Token] = []
    aligned: list[Token] = []
    segments: list[Segment] = []
    flags: list[str] = []
    language = emotion = event = raw = None
    for offset, t in ordered:
        t = shift(t, offset)
        text = _join(text, t.text)
        tokens += t.tokens
        aligned += t.aligned_pieces
        segments += t.segments
        flags += [f for f in t.flags if f not in flags]
        language = language or t.language
        emotion, event = emotion or t.emotion, event or t.event  # SenseVoice: the first too
        if t.raw_text is not None:  # SenseVoice's tagged texts, joined as the texts are
            raw = _join(raw or "", t.raw_text)
    return Transcript(text=text, tokens=tokens, segments=segments, language=language, flags=flags,
                      raw_text=raw, emotion=emotion, event=event, aligned_pieces=aligned)


def _join(a: str, b: str) -> str:
    a, b = a.rstrip(), b.lstrip()
    if not a or not b:
        return a or b
    return a + b if _is_cjk(a[-1]) or _is_cjk(b[0]) else f"{a} {b}"


def _is_cjk(ch: str) -> bool:
    # Wide East Asian characters (Han, kana, fullwidth punctuation) take no spaces between
    # them; Korean does put spaces between words, so Hangul is not one of them.
    return (unicodedata.east_asian_width(ch) in ("W", "F")
            and not unicodedata.name(ch, "").startswith("HANGUL"))
