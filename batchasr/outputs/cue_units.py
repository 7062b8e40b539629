"""Cue units: a transcript's text cut into the smallest timed pieces a cue may be cut between.

A :class:`Unit` is a word (or a CJK character, with its punctuation) and its time in ms.
Units come from tokens matched against the reference text (:func:`align`,
:func:`units_from_text`), from tokens joined by rule when they cannot be matched
(:func:`units_from_tokens`), or from a text known only to span a time (:func:`units_from_span`).
Invariant: units cut from the reference text keep every character of it between the first and
the last token (punctuation goes to the word before it, opening brackets to the word after; a
space becomes the ``sep`` of the next unit); :mod:`batchasr.outputs.cues` groups units into cues.
"""
from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass
from typing import Sequence

from batchasr.transcript import Transcript

__all__ = [
    "Unit", "display_width", "strength", "is_cjk_text", "surface", "align", "units_from_text",
    "units_from_tokens", "units_from_span",
]


# --- characters ------------------------------------------------------------------------------

STRONG_PUNCT = set("。！？!?.…")
WEAK_PUNCT = set("，,、；;：:")
CLOSING = set("\"'”’)]}」』》）〉】")
OPENING = set("“‘([{「『《（〈【")  # ASCII quotes are ambiguous and stay where spaces put them
CJK_LANGUAGES = {"zh", "ja", "ko", "yue", "cmn", "wuu"}


@functools.lru_cache(maxsize=1 << 16)
def _wide(ch: str) -> bool:
    """Full-width: CJK ideographs, kana, hangul, CJK punctuation. Never separated by spaces."""
    return unicodedata.east_asian_width(ch) in ("W", "F")


@functools.lru_cache(maxsize=1 << 16)  # called for every unit of every cue layout
def display_width(text: str, cjk: bool) -> float:
    """Display width: in CJK mode full-width chars count 1 and half-width 0.5, else 1 per char."""
    if not cjk:
        return sum(0 if unicodedata.combining(c) else 1 for c in text)
    return sum(1.0 if _wide(c) else 0.5 for c in text if not unicodedata.combining(c))


def strength(text: str) -> int:
    """2 after sentence-ending punctuation, 1 after a comma-like one, else 0."""
    text = text.rstrip()
    while text and text[-1] in CLOSING:
        text = text[:-1]
    if text and text[-1] in STRONG_PUNCT:
        return 2
    return 1 if text and text[-1] in WEAK_PUNCT else 0


def is_cjk_text(transcript: Transcript) -> bool:
    lang = (transcript.language or "").lower().replace("_", "-").split("-")[0]
    if lang in CJK_LANGUAGES:
        return True
    text = transcript.text or "".join(t.text for t in transcript.tokens)
    wide = sum(1 for c in text if _wide(c) and c.isalpha())
    narrow = sum(1 for c in text if c.isalpha() and not _wide(c))
    return wide > 0 and 3 * wide >= narrow  # one CJK character carries about 3 Latin letters' worth


# --- units: the smallest pieces a cue may be cut between ----------------------------------------


@dataclass
class Unit:
    start: int  # ms
    end: int  # ms
    text: str
    sep: str = ""  # what goes between the previous unit and this one on the same line
    hard_break: bool = False  # a cue must start here (long pause, segment boundary)
    w: float = 0.0  # display widths of text and sep, filled in by build_cues
    sep_w: float = 0.0


def _split_gap(gap: str) -> tuple[str, str, str]:
    """Split the text between two tokens into (trailing of left, separator, leading of right)."""
    ws = [i for i, c in enumerate(gap) if c.isspace()]
    if ws:
        return gap[: ws[0]], " ", gap[ws[-1] + 1 :]
    i = len(gap)
    while i > 0 and gap[i - 1] in OPENING:  # an opening bracket belongs to the next word
        i -= 1
    return gap[:i], "", gap[i:]


def surface(raw: str) -> tuple[str, bool, bool]:
    """A token's spelling without markers: (surface, glues to next, starts a word)."""
    glue = raw.endswith("@@")
    surf = raw[:-2] if glue else raw
    word_start = surf[:1] in ("\u2581", "\u0120")  # sentencepiece "▁", byte-level BPE "Ġ"
    return surf.lstrip("\u2581\u0120").strip(), glue, word_start


def align(text: str, surfaces: Sequence[str]) -> list[tuple[int, int] | None] | None:
    """Find each token's span in ``text``, left to right; None where it cannot be found.

    A token may be preceded by spaces and punctuation it does not contain (strict match).
    Where the text holds letters no token explains (number formatting, a dropped token), a short
    forward search resynchronises (lenient match). Returns None when more than 30% of the tokens
    are missing: the spans are then not trusted and tokens are joined by rule instead.
    """
    lowered = text.lower()
    if len(lowered) != len(text):  # rare case-folding that changes length: match exactly
        lowered = text
    spans: list[tuple[int, int] | None] = []
    cur = missed = 0
    for surf in surfaces:
        n = len(surf)
        if n == 0 or (surf.startswith("<") and surf.endswith(">")):
            spans.append(None)  # special or empty token: no text of its own
            continue
        low, found, j = surf.lower(), -1, cur
        while j + n <= len(text):
            if lowered[j : j + n] == low:
                found = j
                break
            if text[j].isalnum():
                break
            j += 1
        if found < 0:
            found = lowered.find(low, cur, cur + 16 + n)
        if found < 0:
            spans.append(None)
            missed += 1
            continue
        spans.append((found, found + n))
        cur = found + n
    if missed > 0.3 * len(surfaces) or all(s is None for s in spans):
        return None
    return spans


def units_from_text(text: str, spans, times) -> list[Unit]:
    """Units cut from the reference ``text`` at the tokens' spans: nothing of the text is lost
    (punctuation goes to the word before it, opening brackets to the word after), and a cut is
    allowed only at a space, at CJK characters or at CJK punctuation."""
    units: list[Unit] = []
    prev_b = None  # end of the previous matched span
    early = None  # start time of unmatched tokens before the first matched one
    for span, (t0, t1) in zip(spans, times):
        if span is None:  # no text of its own: it widens its neighbour's time
            if units:
                units[-1].end = max(units[-1].end, t1)
            elif early is None:
                early = t0
            continue
        a, b = span
        if prev_b is None:
            lead, sep, glue = text[:a].strip(), "", False
            t0 = min(t0, early) if early is not None else t0
        else:
            gap = text[prev_b:a]
            left, sep, lead = _split_gap(gap)
            units[-1].text += left
            glue = not (sep or any(_wide(c) for c in gap) or _wide(text[prev_b - 1]) or _wide(text[a]))
        if glue:
            units[-1].text += lead + text[a:b]
            units[-1].end = max(units[-1].end, t1)
        else:
            units.append(Unit(t0, t1, lead + text[a:b], sep))
        prev_b = b
    units[-1].text += text[prev_b:].rstrip()  # punctuation after the last token
    return units


def _is_punct(s: str) -> bool:
    return bool(s) and all(unicodedata.category(c)[0] == "P" for c in s)


def units_from_tokens(surfaces, flags, times) -> list[Unit]:
    """Units joined by rule, for tokens that cannot be matched against the text: ``@@`` pieces
    glue to the next piece, sentencepiece tokens start a word only after ``▁``, CJK characters
    are never separated by spaces, punctuation sticks to the word before it."""
    spm = any(word_start for _, word_start in flags)
    units: list[Unit] = []
    glue_prev = False
    for surf, (glue, word_start), (t0, t1) in zip(surfaces, flags, times):
        joins_word = (spm and not word_start) or (not spm and _is_punct(surf))
        attach = units and (glue_prev or not surf or joins_word)
        if attach:
            units[-1].text += surf
            units[-1].end = max(units[-1].end, t1)
        else:
            cjk_edge = units and (_wide(units[-1].text[-1:] or "a") or _wide(surf[:1] or "a"))
            units.append(Unit(t0, t1, surf, "" if not units or cjk_edge else " "))
        glue_prev = glue
    return [u for u in units if u.text] or units[:1]


def units_from_span(text: str, t0: int, t1: int) -> list[Unit]:
    """Units for a text known only to span ``t0..t1`` ms: words (or single CJK characters),
    with times spread by character position."""
    pieces: list[list] = []  # [offset, text, sep]
    sep = ""
    for i, ch in enumerate(text):
        if ch.isspace():
            sep = " " if pieces else ""
            continue
        prev = pieces[-1][1][-1] if pieces else None
        if prev is None or sep or ch in OPENING:
            new = True
        elif prev in OPENING or (not ch.isalnum()):
            new = False  # punctuation sticks left, an opening bracket sticks right
        else:
            new = _wide(ch) or _wide(prev)
        if new:
            pieces.append([i, ch, sep])
        else:
            pieces[-1][1] += ch
        sep = ""
    n, span = max(1, len(text)), t1 - t0
    ends = [p[0] for p in pieces[1:]] + [n]
    return [Unit(t0 + span * off // n, t0 + span * e // n, s, sp) for (off, s, sp), e in zip(pieces, ends)]
