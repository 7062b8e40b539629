"""Cues: a Transcript cut into timed, line-broken subtitle cues that follow reading rules.

:func:`build_cues` ``(transcript, opts) -> list[Cue]`` is a pure function. It turns token times
(or, without them, segment times, or, without those, the item's duration) into cues that follow
the reading rules in :class:`SubtitleOptions` (line width, lines per cue, duration, gaps). The
writers (:mod:`batchasr.outputs.writers`) only format the cues it returns.

Cue text follows the transcript's ``text`` (the reference spelling, with its punctuation and
spaces); token strings are only matched against it to learn *where* each token's time applies.
When they cannot be matched, tokens are joined by rule: ``@@`` pieces glue to the next piece, CJK
characters are never separated by spaces, Latin words are.

Sentences: when the runner restored punctuation (``Transcript.raw_text`` set), the segments are
sentences, and a new cue always starts with a sentence that follows a full stop or question mark;
the line and duration rules then split long sentences (preferring commas).

Above 400 lines because the cue rules (units, grouping, layout, timing) are one algorithm whose
steps share the private ``_Unit``/``_Ctx`` types.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Sequence

from batchasr.transcript import Transcript

__all__ = ["Cue", "SubtitleOptions", "build_cues"]


@dataclass(frozen=True)
class SubtitleOptions:
    """Reading rules for cues (defaults follow the Netflix timed-text style guides)."""

    # layout; None = pick by script: 16 full-width chars for CJK text, 42 chars for Latin text
    max_line_width: float | None = None
    max_lines: int = 2
    cjk: bool | None = None  # None = decide from the transcript's language / characters
    # timing, in seconds
    min_duration: float = 1.0
    max_duration: float = 7.0
    min_gap: float = 0.083  # two frames at 24 fps between consecutive cues
    pause: float = 0.5  # a silence this long between tokens always starts a new cue
    # reading speed: a cue read faster than this is extended by up to max_extend into silence
    max_cps: float | None = None  # None = 9 for CJK text, 17 for Latin text
    max_extend: float = 0.5

    def __post_init__(self):
        if self.max_lines < 1:
            raise ValueError("max_lines must be at least 1")
        if not 0 < self.min_duration <= self.max_duration:
            raise ValueError("need 0 < min_duration <= max_duration")
        if self.max_line_width is not None and self.max_line_width <= 0:
            raise ValueError("max_line_width must be positive")
        if self.min_gap < 0 or self.pause <= 0 or self.max_extend < 0:
            raise ValueError("min_gap and max_extend must be >= 0 and pause > 0")


@dataclass(frozen=True)
class Cue:
    start_s: float
    end_s: float
    text: str  # lines joined with "\n"


# --- characters ------------------------------------------------------------------------------

STRONG_PUNCT = set("。！？!?.…")
WEAK_PUNCT = set("，,、；;：:")
CLOSING = set("\"'”’)]}」』》）〉】")
OPENING = set("“‘([{「『《（〈【")  # ASCII quotes are ambiguous and stay where spaces put them
CJK_LANGUAGES = {"zh", "ja", "ko", "yue", "cmn", "wuu"}


def _wide(ch: str) -> bool:
    """Full-width: CJK ideographs, kana, hangul, CJK punctuation. Never separated by spaces."""
    return unicodedata.east_asian_width(ch) in ("W", "F")


def _width(text: str, cjk: bool) -> float:
    """Display width: in CJK mode full-width chars count 1 and half-width 0.5, else 1 per char."""
    if not cjk:
        return sum(0 if unicodedata.combining(c) else 1 for c in text)
    return sum(1.0 if _wide(c) else 0.5 for c in text if not unicodedata.combining(c))


def _strength(text: str) -> int:
    """2 after sentence-ending punctuation, 1 after a comma-like one, else 0."""
    text = text.rstrip()
    while text and text[-1] in CLOSING:
        text = text[:-1]
    if text and text[-1] in STRONG_PUNCT:
        return 2
    return 1 if text and text[-1] in WEAK_PUNCT else 0


def _is_cjk_text(transcript: Transcript) -> bool:
    lang = (transcript.language or "").lower().replace("_", "-").split("-")[0]
    if lang in CJK_LANGUAGES:
        return True
    text = transcript.text or "".join(t.text for t in transcript.tokens)
    wide = sum(1 for c in text if _wide(c) and c.isalpha())
    narrow = sum(1 for c in text if c.isalpha() and not _wide(c))
    return wide > 0 and 3 * wide >= narrow  # one CJK character carries about 3 Latin letters' worth


# --- units: the smallest pieces a cue may be cut between ----------------------------------------


@dataclass
class _Unit:
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


def _surface(raw: str) -> tuple[str, bool, bool]:
    """A token's spelling without markers: (surface, glues to next, starts a word)."""
    glue = raw.endswith("@@")
    surf = raw[:-2] if glue else raw
    word_start = surf[:1] in ("\u2581", "\u0120")  # sentencepiece "▁", byte-level BPE "Ġ"
    return surf.lstrip("\u2581\u0120").strip(), glue, word_start


def _align(text: str, surfaces: Sequence[str]) -> list[tuple[int, int] | None] | None:
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


def _units_from_text(text: str, spans, times) -> list[_Unit]:
    """Units cut from the reference ``text`` at the tokens' spans: nothing of the text is lost
    (punctuation goes to the word before it, opening brackets to the word after), and a cut is
    allowed only at a space, at CJK characters or at CJK punctuation."""
    units: list[_Unit] = []
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
            units.append(_Unit(t0, t1, lead + text[a:b], sep))
        prev_b = b
    units[-1].text += text[prev_b:].rstrip()  # punctuation after the last token
    return units


def _is_punct(s: str) -> bool:
    return bool(s) and all(unicodedata.category(c)[0] == "P" for c in s)


def _units_from_tokens(surfaces, flags, times) -> list[_Unit]:
    """Units joined by rule, for tokens that cannot be matched against the text: ``@@`` pieces
    glue to the next piece, sentencepiece tokens start a word only after ``▁``, CJK characters
    are never separated by spaces, punctuation sticks to the word before it."""
    spm = any(word_start for _, word_start in flags)
    units: list[_Unit] = []
    glue_prev = False
    for surf, (glue, word_start), (t0, t1) in zip(surfaces, flags, times):
        joins_word = (spm and not word_start) or (not spm and _is_punct(surf))
        attach = units and (glue_prev or not surf or joins_word)
        if attach:
            units[-1].text += surf
            units[-1].end = max(units[-1].end, t1)
        else:
            cjk_edge = units and (_wide(units[-1].text[-1:] or "a") or _wide(surf[:1] or "a"))
            units.append(_Unit(t0, t1, surf, "" if not units or cjk_edge else " "))
        glue_prev = glue
    return [u for u in units if u.text] or units[:1]


def _units_from_span(text: str, t0: int, t1: int) -> list[_Unit]:
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
    return [_Unit(t0 + span * off // n, t0 + span * e // n, s, sp) for (off, s, sp), e in zip(pieces, ends)]


# --- cue building ------------------------------------------------------------------------------


def build_cues(
    transcript: Transcript, opts: SubtitleOptions | None = None, *, duration_s: float | None = None
) -> list[Cue]:
    """Cues for one transcript, in order, non-overlapping, at least ``min_gap`` apart.

    Times come from the tokens when every token has them; else from the segments (text spread
    over each segment by character position); else the text is spread over ``duration_s`` (or,
    when that is unknown too, over a reading-speed estimate). Cues break at pauses of ``pause``
    s, after sentence punctuation, and where the text would need more than ``max_lines`` lines of
    ``max_line_width`` or the cue would last more than ``max_duration``; a cut never falls inside
    a token, and prefers punctuation, then pauses. Short or fast cues are extended into the
    following silence (towards ``min_duration`` and ``max_cps``), never into the next cue; a
    cue that cannot reach ``min_duration`` so joins its nearer neighbour when the two fit
    (see ``_merge_short``): no cue is shorter than ``min_duration`` unless the speech is.
    """
    opts = opts or SubtitleOptions()
    cjk = _is_cjk_text(transcript) if opts.cjk is None else opts.cjk
    ctx = _Ctx(
        cjk=cjk,
        line_w=opts.max_line_width or (16 if cjk else 42),
        cps=opts.max_cps or (9 if cjk else 17),
        lines=opts.max_lines,
        min_ms=_ms(opts.min_duration),
        max_ms=_ms(opts.max_duration),
    )
    duration_ms = _ms(duration_s) if duration_s else None
    units = _units(transcript, ctx, _ms(opts.pause), duration_ms)
    for u in units:
        u.w, u.sep_w = _width(u.text, cjk), _width(u.sep, cjk)
    groups = _merge_short(_group(units, ctx), ctx, _ms(opts.min_gap), duration_ms)
    cues = [[g[0].start, max(g[-1].end, g[0].start), _layout(g, ctx)] for g in groups]
    _fix_timing(cues, opts, ctx, duration_ms)
    return [Cue(s / 1000, e / 1000, t) for s, e, t in cues if t.strip()]


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


@dataclass(frozen=True)
class _Ctx:
    cjk: bool
    line_w: float
    cps: float
    lines: int
    min_ms: int
    max_ms: int


def _units(transcript: Transcript, ctx: _Ctx, pause_ms: int, duration_ms: int | None) -> list[_Unit]:
    """The transcript as timed units, from tokens, segments or the bare text (in that order)."""
    text = (transcript.text or "").strip()
    toks = transcript.tokens
    if toks and all(t.start_ms is not None and t.end_ms is not None for t in toks):
        times = [(int(t.start_ms), max(int(t.start_ms), int(t.end_ms))) for t in toks]
        parsed = [_surface(t.text) for t in toks]
        spans = _align(text, [p[0] for p in parsed]) if text else None
        if spans is not None:
            units = _units_from_text(text, spans, times)
        else:
            units = _units_from_tokens([p[0] for p in parsed], [p[1:] for p in parsed], times)
        for prev, u in zip(units, units[1:]):
            u.hard_break = u.start - prev.end >= pause_ms
        _break_at_sentences(units, transcript)
        return units
    segs = [s for s in transcript.segments if s.text.strip()]
    if segs:
        units = []
        for seg in segs:
            t0 = _ms(seg.start_s)
            part = _units_from_span(seg.text.strip(), t0, max(t0, _ms(seg.end_s)))
            part[0].hard_break, part[0].sep = True, ""  # a segment always starts a cue
            units += part
        return units
    if not text:
        return []
    estimate = int(1000 * max(1.0, _width(text, ctx.cjk) / ctx.cps))
    return _units_from_span(text, 0, duration_ms or estimate)


def _break_at_sentences(units: list[_Unit], transcript: Transcript) -> None:
    """A punctuated transcript's segments are sentences (see ``Transcript.raw_text``): a cue
    starts at the first unit of each sentence that follows a full stop or question mark, so
    no cue spans two sentences (a comma ends a segment too, but is only a preferred cut)."""
    if transcript.raw_text is None or len(transcript.segments) < 2:
        return
    starts = [_ms(s.start_s) for prev, s in zip(transcript.segments, transcript.segments[1:])
              if _strength(prev.text) == 2]
    k = 0
    for prev, u in zip(units, units[1:]):
        while k < len(starts) and starts[k] <= prev.start:
            k += 1
        if k < len(starts) and starts[k] <= u.start:  # a sentence begins in (prev, u]
            u.hard_break = True
            k += 1


def _lines_needed(group: Sequence[_Unit], line_w: float) -> int:
    """Lines a greedy fill needs (greedy is optimal for the *number* of lines)."""
    lines, cur = 1, 0.0
    for u in group:
        add = u.w + (u.sep_w if cur else 0)
        if cur and cur + add > line_w:
            lines, cur = lines + 1, u.w
        else:
            cur += add
    return lines


def _too_big(group: Sequence[_Unit], ctx: _Ctx) -> bool:
    if len(group) < 2:
        return False  # one unit cannot be cut, whatever its size
    return group[-1].end - group[0].start > ctx.max_ms or _lines_needed(group, ctx.line_w) > ctx.lines


def _best_cut(group: list[_Unit], ctx: _Ctx) -> int:
    """Where to end an overflowing cue: index k, the cue keeps group[:k].

    Prefer a cut after sentence punctuation, then after a comma, then at a pause, then as late as
    possible; skip cuts that leave a head under 40% of the space or a tail that still overflows.
    """
    total = sum(u.w for u in group)
    need = 0.4 * min(total, ctx.line_w * ctx.lines)
    best, best_score, head = len(group) - 1, (-1, 0), 0.0
    for k in range(1, len(group)):
        head += group[k - 1].w
        if k < len(group) - 1 and (head < need or _too_big(group[k:], ctx)):
            continue
        pause = group[k].start - group[k - 1].end >= 250
        score = (2 * _strength(group[k - 1].text) + pause, k)
        if score > best_score:
            best, best_score = k, score
    return best


def _group(units: list[_Unit], ctx: _Ctx) -> list[list[_Unit]]:
    """Greedy grouping of units into cues, cutting at the best point when a cue overflows."""
    groups: list[list[_Unit]] = []
    cur: list[_Unit] = []
    for u in units:
        if cur and u.hard_break:
            groups.append(cur)
            cur = []
        cur.append(u)
        while _too_big(cur, ctx):
            k = _best_cut(cur, ctx)
            groups.append(cur[:k])
            cur = cur[k:]
        if _strength(u.text) == 2 and cur[-1].end - cur[0].start >= ctx.min_ms:
            groups.append(cur)  # a finished sentence that is long enough ends its cue
            cur = []
    if cur:
        groups.append(cur)
    return groups


def _merge_short(groups: list[list[_Unit]], ctx: _Ctx, gap_ms: int,
                 duration_ms: int | None) -> list[list[_Unit]]:
    """No cue shorter than ``min_duration`` unless the speech is: a cue that cannot reach it by
    extending into the silence after it (the next cue, or the end of the audio, is too close)
    joins the neighbour with the smaller gap, when the joined cue still fits the line and
    duration rules; else it stays as long as the room allows (see ``_fix_timing``)."""
    i = 0
    while i < len(groups):
        g = groups[i]
        start, end = g[0].start, max(g[-1].end, g[0].start)
        if i + 1 < len(groups):
            limit = groups[i + 1][0].start - gap_ms
        else:
            limit = max(end, duration_ms) if duration_ms is not None else start + ctx.min_ms
        if limit - start >= ctx.min_ms or end - start >= ctx.min_ms:
            i += 1
            continue
        near = sorted(([(g[0].start - groups[i - 1][-1].end, i - 1)] if i else [])
                      + ([(groups[i + 1][0].start - g[-1].end, i)] if i + 1 < len(groups) else []))
        for _, j in near:
            if not _too_big(groups[j] + groups[j + 1], ctx):
                groups[j:j + 2] = [groups[j] + groups[j + 1]]
                i = j  # the joined cue is checked again
                break
        else:
            i += 1
    return groups


def _layout(group: list[_Unit], ctx: _Ctx) -> str:
    """Break a cue into the fewest lines, balanced, preferring breaks after punctuation.

    Lines are joined with "\\n"; a line break replaces the separator (never adds a space).
    """
    n, line_w = len(group), ctx.line_w
    if _lines_needed(group, line_w) == 1:
        return _join(group)
    pre = [0.0]  # prefix sums: width of units[i:j] on one line = pre[j] - pre[i] - sep_w[i]
    for u in group:
        pre.append(pre[-1] + u.w + u.sep_w)
    inf = float("inf")
    best = [[(inf, -1)] * (ctx.lines + 1) for _ in range(n + 1)]  # best[j][l]: units[:j] on l lines
    best[0][0] = (0.0, -1)
    for j in range(1, n + 1):
        no_punct = 0 if j == n or _strength(group[j - 1].text) else 0.2 * line_w * line_w
        for i in range(j):
            w = pre[j] - pre[i] - group[i].sep_w
            if w > line_w and j - i > 1:
                continue
            cost = max(0.0, line_w - w) ** 2 + no_punct
            for l in range(1, ctx.lines + 1):
                if best[i][l - 1][0] + cost < best[j][l][0]:
                    best[j][l] = (best[i][l - 1][0] + cost, i)
    used = next((l for l in range(1, ctx.lines + 1) if best[n][l][0] < inf), None)
    if used is None:  # only for a group _group would not make; keep all the text anyway
        return _join(group)
    lines, j = [], n
    for l in range(used, 0, -1):
        i = best[j][l][1]
        lines.append(_join(group[i:j]))
        j = i
    return "\n".join(reversed(lines))


def _join(units: Sequence[_Unit]) -> str:
    return "".join((u.sep if i else "") + u.text for i, u in enumerate(units)).strip()


def _fix_timing(cues: list[list], opts: SubtitleOptions, ctx: _Ctx, duration_ms: int | None) -> None:
    """In place on [start_ms, end_ms, text]: no overlap, ``min_gap`` between cues (by trimming
    the earlier cue's out-time), then short or fast cues extended into the following silence."""
    gap = _ms(opts.min_gap)
    for c, nxt in zip(cues, cues[1:]):
        if nxt[0] - c[1] < gap:
            c[1] = max(c[0] + 1, nxt[0] - gap)
            nxt[0] = max(nxt[0], c[1] + gap)  # only when token times overlap
            nxt[1] = max(nxt[1], nxt[0] + 1)
    for i, c in enumerate(cues):
        if i + 1 < len(cues):
            limit = cues[i + 1][0] - gap
        elif duration_ms is not None:
            limit = max(c[1], duration_ms)
        else:
            limit = c[0] + ctx.max_ms
        reading = c[0] + int(1000 * _width(c[2].replace("\n", ""), ctx.cjk) / ctx.cps)
        want = max(c[0] + ctx.min_ms, min(reading, c[1] + _ms(opts.max_extend)))
        c[1] = max(c[1], min(want, limit))
        c[1] = min(c[1], c[0] + ctx.max_ms)  # a single very long token is cut short on screen only
