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

The units a cue may be cut between come from :mod:`batchasr.outputs.cue_units`; this module
groups them into cues, lays out their lines and fixes their timing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from batchasr.outputs.cue_units import (
    Unit, align, display_width, is_cjk_text, strength, surface, units_from_span,
    units_from_text, units_from_tokens,
)
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
    cjk = is_cjk_text(transcript) if opts.cjk is None else opts.cjk
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
        u.w, u.sep_w = display_width(u.text, cjk), display_width(u.sep, cjk)
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


def _units(transcript: Transcript, ctx: _Ctx, pause_ms: int, duration_ms: int | None) -> list[Unit]:
    """The transcript as timed units, from tokens, segments or the bare text (in that order)."""
    text = (transcript.text or "").strip()
    toks = transcript.tokens
    if toks and all(t.start_ms is not None and t.end_ms is not None for t in toks):
        times = [(int(t.start_ms), max(int(t.start_ms), int(t.end_ms))) for t in toks]
        parsed = [surface(t.text) for t in toks]
        spans = align(text, [p[0] for p in parsed]) if text else None
        if spans is not None:
            units = units_from_text(text, spans, times)
        else:
            units = units_from_tokens([p[0] for p in parsed], [p[1:] for p in parsed], times)
        for prev, u in zip(units, units[1:]):
            u.hard_break = u.start - prev.end >= pause_ms
        _break_at_sentences(units, transcript)
        return units
    segs = [s for s in transcript.segments if s.text.strip()]
    if segs:
        units = []
        for seg in segs:
            t0 = _ms(seg.start_s)
            part = units_from_span(seg.text.strip(), t0, max(t0, _ms(seg.end_s)))
            part[0].hard_break, part[0].sep = True, ""  # a segment always starts a cue
            units += part
        return units
    if not text:
        return []
    estimate = int(1000 * max(1.0, display_width(text, ctx.cjk) / ctx.cps))
    return units_from_span(text, 0, duration_ms or estimate)


def _break_at_sentences(units: list[Unit], transcript: Transcript) -> None:
    """A punctuated transcript's segments are sentences (see ``Transcript.raw_text``): a cue
    starts at the first unit of each sentence that follows a full stop or question mark, so
    no cue spans two sentences (a comma ends a segment too, but is only a preferred cut)."""
    if transcript.raw_text is None or len(transcript.segments) < 2:
        return
    starts = [_ms(s.start_s) for prev, s in zip(transcript.segments, transcript.segments[1:])
              if strength(prev.text) == 2]
    k = 0
    for prev, u in zip(units, units[1:]):
        while k < len(starts) and starts[k] <= prev.start:
            k += 1
        if k < len(starts) and starts[k] <= u.start:  # a sentence begins in (prev, u]
            u.hard_break = True
            k += 1


def _lines_needed(group: Sequence[Unit], line_w: float) -> int:
    """Lines a greedy fill needs (greedy is optimal for the *number* of lines)."""
    lines, cur = 1, 0.0
    for u in group:
        add = u.w + (u.sep_w if cur else 0)
        if cur and cur + add > line_w:
            lines, cur = lines + 1, u.w
        else:
            cur += add
    return lines


def _too_big(group: Sequence[Unit], ctx: _Ctx) -> bool:
    if len(group) < 2:
        return False  # one unit cannot be cut, whatever its size
    return group[-1].end - group[0].start > ctx.max_ms or _lines_needed(group, ctx.line_w) > ctx.lines


def _best_cut(group: list[Unit], ctx: _Ctx) -> int:
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
        score = (2 * strength(group[k - 1].text) + pause, k)
        if score > best_score:
            best, best_score = k, score
    return best


def _group(units: list[Unit], ctx: _Ctx) -> list[list[Unit]]:
    """Greedy grouping of units into cues, cutting at the best point when a cue overflows."""
    groups: list[list[Unit]] = []
    cur: list[Unit] = []
    for u in units:
        if cur and u.hard_break:
            groups.append(cur)
            cur = []
        cur.append(u)
        while _too_big(cur, ctx):
            k = _best_cut(cur, ctx)
            groups.append(cur[:k])
            cur = cur[k:]
        if strength(u.text) == 2 and cur[-1].end - cur[0].start >= ctx.min_ms:
            groups.append(cur)  # a finished sentence that is long enough ends its cue
            cur = []
    if cur:
        groups.append(cur)
    return groups


def _merge_short(groups: list[list[Unit]], ctx: _Ctx, gap_ms: int,
                 duration_ms: int | None) -> list[list[Unit]]:
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


def _layout(group: list[Unit], ctx: _Ctx) -> str:
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
        no_punct = 0 if j == n or strength(group[j - 1].text) else 0.2 * line_w * line_w
        # Lines ending at j, the longest last: a line's width only grows as it starts
        # earlier, so the first too wide ends the search. Among equal costs the earliest
        # start wins (visited last, hence <=), as in a scan from the left.
        for i in range(j - 1, -1, -1):
            w = pre[j] - pre[i] - group[i].sep_w
            if w > line_w and j - i > 1:
                break
            cost = max(0.0, line_w - w) ** 2 + no_punct
            for l in range(1, ctx.lines + 1):
                prev = best[i][l - 1][0]
                if prev < inf and prev + cost <= best[j][l][0]:
                    best[j][l] = (prev + cost, i)
    used = next((l for l in range(1, ctx.lines + 1) if best[n][l][0] < inf), None)
    if used is None:  # only for a group _group would not make; keep all the text anyway
        return _join(group)
    lines, j = [], n
    for l in range(used, 0, -1):
        i = best[j][l][1]
        lines.append(_join(group[i:j]))
        j = i
    return "\n".join(reversed(lines))


def _join(units: Sequence[Unit]) -> str:
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
        reading = c[0] + int(1000 * display_width(c[2].replace("\n", ""), ctx.cjk) / ctx.cps)
        want = max(c[0] + ctx.min_ms, min(reading, c[1] + _ms(opts.max_extend)))
        c[1] = max(c[1], min(want, limit))
        c[1] = min(c[1], c[0] + ctx.max_ms)  # a single very long token is cut short on screen only
