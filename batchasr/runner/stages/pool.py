"""The Pool stage: decoded pieces waiting for the model, cut into length-sorted batches.

Invariants: the batch taken is always the planned batch that holds the oldest piece in the
pool, so no piece starves; a batch holds at most ``batch_seconds`` of audio and at most
``padded_seconds`` once padded to its longest piece (``batchasr.batches.plan``; with a
``quantum``, its size depends only on its padded length); a batch holds only pieces with the
same item options (``Piece.options``, see :meth:`Pool.options_of`).
"""
from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

from batchasr.audio.decode import SAMPLE_RATE
from batchasr.batches.plan import plan_batches
from batchasr.runner.stages.work import Piece


def batch_plan(lengths: Sequence[int], *, batch_seconds: float,
               padded_seconds: float | None = None, max_items: int | None = None,
               quantum: int | None = None) -> list[list[int]]:
    """Length-sorted batches of pieces (lengths in samples) under the run's budgets;
    ``quantum`` (samples): stable shapes (``batches.plan.plan_batches``)."""
    return plan_batches(lengths, max_total=int(batch_seconds * SAMPLE_RATE),
                        max_padded=int((padded_seconds or batch_seconds) * SAMPLE_RATE),
                        max_items=max_items, quantum=quantum)


def item_options(names: Sequence[str], extra: dict | None) -> tuple:
    """(name, value) pairs of the item columns ``names`` that are set and not empty."""
    if isinstance(extra, str):  # the queue's JSON text of an item's carried columns
        extra = json.loads(extra or "{}")
    extra = extra or {}
    return tuple((k, str(extra[k])) for k in names
                 if extra.get(k) is not None and str(extra[k]).strip())


class Pool:
    """Pieces in arrival order; ``next_batch`` takes one batch out. ``target`` (samples) is
    how much the loop lets in before it runs a batch. ``arrival_order``: a batch's pieces
    in pool order (else in the plan's order). ``item_options``: the names of the per-item
    model options the recognizer declares (its ``item_options``), read from each item's
    manifest columns."""

    def __init__(self, *, batch_seconds: float, target: int,
                 padded_seconds: float | None = None, max_items: int | None = None,
                 arrival_order: bool = False, item_options: Sequence[str] = (),
                 quantum: int | None = None):
        self.item_options = tuple(item_options)
        self.quantum = quantum  # stable shapes (batch_plan), or None
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
            language: str | None, span: tuple[int, int] | None = None,
            options: tuple = ()) -> Piece:
        p = Piece(work, index, offset_s, audio, language, self.arrivals, span, options)
        self.pieces.append(p)
        self.samples += len(audio)
        self.arrivals += 1
        return p

    def options_of(self, extra: dict | None) -> tuple:
        """An item's model options: its non-empty manifest columns named in item_options."""
        return item_options(self.item_options, extra)

    def drop(self, work: Any) -> None:
        """Remove the pieces of an item (it failed)."""
        if any(p.work is work for p in self.pieces):
            self.pieces = [p for p in self.pieces if p.work is not work]
            self.samples = sum(len(p.audio) for p in self.pieces)

    def next_batch(self) -> list[Piece]:
        """The planned batch that holds the oldest piece in the pool, taken out of it."""
        oldest = min(range(len(self.pieces)), key=lambda i: self.pieces[i].arrival)
        options = self.pieces[oldest].options
        alike = [i for i, p in enumerate(self.pieces) if p.options == options]
        plan = batch_plan([len(self.pieces[i].audio) for i in alike],
                          batch_seconds=self.batch_seconds,
                          padded_seconds=self.padded_seconds, max_items=self.max_items,
                          quantum=self.quantum)
        chosen = [alike[j] for j in next(b for b in plan if alike.index(oldest) in b)]
        if self.arrival_order:
            chosen = sorted(chosen)
        taken = set(chosen)
        batch = [self.pieces[i] for i in chosen]
        self.pieces = [p for i, p in enumerate(self.pieces) if i not in taken]
        self.samples -= sum(len(p.audio) for p in batch)
        return batch
