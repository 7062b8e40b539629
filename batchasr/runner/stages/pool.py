"""The Pool stage: decoded pieces waiting for the model, cut into length-sorted batches.

Invariants: the batch taken is always the planned batch that holds the oldest piece in the
pool, so no piece starves; a batch holds at most ``batch_seconds`` of audio and at most
``padded_seconds`` once padded to its longest piece (``batchasr.batches.plan``).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from batchasr.audio.decode import SAMPLE_RATE
from batchasr.batches.plan import plan_batches
from batchasr.runner.stages.work import Piece


def batch_plan(lengths: Sequence[int], *, batch_seconds: float,
               padded_seconds: float | None = None,
               max_items: int | None = None) -> list[list[int]]:
    """Length-sorted batches of pieces (lengths in samples) under the run's budgets."""
    return plan_batches(lengths, max_total=int(batch_seconds * SAMPLE_RATE),
                        max_padded=int((padded_seconds or batch_seconds) * SAMPLE_RATE),
                        max_items=max_items)


class Pool:
    """Pieces in arrival order; ``next_batch`` takes one batch out. ``target`` (samples) is
    how much the loop lets in before it runs a batch. ``arrival_order``: a batch's pieces
    in pool order (else in the plan's order)."""

    def __init__(self, *, batch_seconds: float, target: int,
                 padded_seconds: float | None = None, max_items: int | None = None,
                 arrival_order: bool = False):
        self.batch_seconds, self.padded_seconds = batch_seconds, padded_seconds
        self.max_items, self.target, self.arrival_order = max_items, target, arrival_order
        self.pieces: list[Piece] = []
        self.samples = 0
        self.arrivals = 0

    def __bool__(self) -> bool:
        return bool(self.pieces)

    @property
    def full(self) -> bool:
        return self.samples >= self.target

    def add(self, work: Any, index: int, offset_s: float, audio: np.ndarray,
            language: str | None, span: tuple[int, int] | None = None) -> Piece:
        p = Piece(work, index, offset_s, audio, language, self.arrivals, span)
        self.pieces.append(p)
        self.samples += len(audio)
        self.arrivals += 1
        return p

    def drop(self, work: Any) -> None:
        """Remove the pieces of an item (it failed)."""
        if any(p.work is work for p in self.pieces):
            self.pieces = [p for p in self.pieces if p.work is not work]
            self.samples = sum(len(p.audio) for p in self.pieces)

    def next_batch(self) -> list[Piece]:
        """The planned batch that holds the oldest piece in the pool, taken out of it."""
        lengths = [len(p.audio) for p in self.pieces]
        plan = batch_plan(lengths, batch_seconds=self.batch_seconds,
                          padded_seconds=self.padded_seconds, max_items=self.max_items)
        oldest = min(range(len(self.pieces)), key=lambda i: self.pieces[i].arrival)
        chosen = next(b for b in plan if oldest in b)
        if self.arrival_order:
            chosen = sorted(chosen)
        taken = set(chosen)
        batch = [self.pieces[i] for i in chosen]
        self.pieces = [p for i, p in enumerate(self.pieces) if i not in taken]
        self.samples -= sum(len(p.audio) for p in batch)
        return batch
