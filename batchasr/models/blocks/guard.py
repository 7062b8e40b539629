"""Runaway-generation guard of LLM decoding: a token budget per second of audio and a test
for a repeating tail.

A sequence gets at most max(min_tokens, ceil(max_tokens_per_second x duration)) new tokens
(never more than the caller's cap), and a tail that repeats one unit of 1..max_period tokens at
least min_repeats times over at least min_span tokens is cut back to one copy of the unit.
`GuardOptions.off()` disables both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class GuardOptions:
    """Runaway-generation guard. Defaults sit well above real speech (about 4-10 Qwen tokens
    per second of audio); `off()` restores the bare official behaviour."""

    # length: new tokens <= max(min_tokens, ceil(max_tokens_per_second * seconds))
    max_tokens_per_second: float | None = 25.0
    min_tokens: int = 32
    # repetition loop: one unit of <= max_period tokens repeated >= min_repeats times,
    # covering >= min_span tokens, at the end of the output
    max_period: int = 32
    min_repeats: int = 8
    min_span: int = 24
    detect_loops: bool = True

    @classmethod
    def off(cls) -> "GuardOptions":
        return cls(max_tokens_per_second=None, detect_loops=False)

    def budget(self, seconds: float, cap: int) -> int:
        if self.max_tokens_per_second is None:
            return cap
        return min(cap, max(self.min_tokens, math.ceil(self.max_tokens_per_second * seconds)))


class LoopDetector:
    """Incremental periodic-tail test, O(max_period) per token: run[p] counts the trailing
    positions i with tokens[i] == tokens[i - p]."""

    def __init__(self, opts: GuardOptions):
        self.opts = opts
        self.runs: dict[int, list[int]] = {}
        self.cut: dict[int, int] = {}  # uid -> number of tokens to keep

    def __call__(self, uid: int, tokens: list[int]) -> str | None:
        o = self.opts
        run = self.runs.setdefault(uid, [0] * (o.max_period + 1))
        n, last = len(tokens), tokens[-1]
        for p in range(1, o.max_period + 1):
            run[p] = run[p] + 1 if n > p and tokens[n - 1 - p] == last else 0
            span = run[p] + p
            if span >= max(o.min_span, o.min_repeats * p) and run[p] >= (o.min_repeats - 1) * p:
                self.cut[uid] = n - span + p  # text before the loop + one copy of the unit
                return "repetition_loop"
        return None
