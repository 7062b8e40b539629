"""The Model stage: a batch of pieces through the recognizer, its one-by-one retry and the
failure streak. Every engine runs its batches through :class:`ModelStage`.

A recognizer with ``submit`` (pipelined: ``submit(waves) -> pending``, ``pending.advance()``,
``pending.result()``) keeps one batch in flight: the next batch is started on the device,
then the previous one is finished on the host while the device works. Any other is called
with ``transcribe``. With ``lanes`` (on a CPU, ``runner.stages.lanes``) up to that many
batches run at once, each on a thread of its own, their results taken as they finish.
Invariants: when a batch fails in the model, each of its pieces is run
alone (:func:`each_alone`), so only the pieces the model fails on even alone fail; a piece
whose item has already failed is dropped, not counted; ``max_failures_in_a_row`` failed
pieces in a row mean the model is broken and raise JobError.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from batchasr.audio.decode import SAMPLE_RATE
from batchasr.errors import JobError
from batchasr.runner.device import cpu_cores
from batchasr.runner.hooks import slow_batch
from batchasr.runner.options import DEFAULT_MAX_FAILURES_IN_A_ROW
from batchasr.runner.stages.lanes import Lanes, materialize
from batchasr.transcript import ASRModel, Transcript

logger = logging.getLogger("batchasr.worker")  # the name log lines show (stable)

# A function that transcribes one batch: (waveforms, languages) -> one Transcript each.
RunBatch = Callable[[list[np.ndarray], list[str | None]], list[Transcript]]


def model_languages(languages: list[str | None]) -> list[str | None] | None:
    """The `languages` argument of a model call: None when no piece names one."""
    return languages if any(languages) else None


def checked(outs, n: int) -> list[Transcript]:
    """A model's outputs for n inputs, the zip guarded (as whisper's DecodingTask.run does)."""
    outs = list(outs)
    if len(outs) != n:
        raise ValueError(f"model returned {len(outs)} transcripts for {n} inputs")
    return outs


def run_model(model: ASRModel, waves: list[np.ndarray],
              languages: list[str | None], **options) -> list[Transcript]:
    """One model call on a batch (``options``: the batch's item options, see Piece)."""
    return checked(model.transcribe(waves, languages=model_languages(languages), **options),
                   len(waves))


def each_alone(run: RunBatch, waves: list[np.ndarray], languages: list[str | None],
               error: Exception) -> list[Transcript | Exception]:
    """After a batch failed with ``error``: each piece run alone (a batch of one fails with
    ``error`` itself). One Transcript or the exception per piece, in order."""
    if len(waves) == 1:
        return [error]
    logger.warning("batch of %d failed in the model (%s: %s); retrying one by one",
                   len(waves), type(error).__name__, error)
    outs: list[Transcript | Exception] = []
    for wave, lang in zip(waves, languages):
        try:
            [out] = run([wave], [lang])
        except Exception as e1:
            outs.append(e1)
        else:
            outs.append(out)
    return outs


def run_or_each(run: RunBatch, waves: list[np.ndarray],
                languages: list[str | None]) -> list[Transcript | Exception]:
    """Run a batch; if the call raises, run each piece alone (:func:`each_alone`)."""
    try:
        return list(run(waves, languages))
    except Exception as e:
        return each_alone(run, waves, languages, e)


def model_error(e: Exception) -> str:
    """The error recorded for an item the model failed on."""
    return f"model error: {type(e).__name__}: {e}"


class FailureStreak:
    """Counts model failures in a row: that many means the model, not the items, is
    broken, so the run stops (JobError) instead of failing the whole job."""

    def __init__(self, limit: int):
        self.limit, self.n = limit, 0

    def ok(self) -> None:
        self.n = 0

    def failed(self, e: Exception) -> None:
        self.n += 1
        if self.n >= self.limit:
            raise JobError(
                f"the model failed on {self.n} items in a row, last with {type(e).__name__}: "
                f"{e}. Stopping; the items not reached stay pending (retry failed ones with "
                "retry_failed)."
            ) from e


class ResultSink(Protocol):
    """Where a ModelStage's results go (pieces have ``audio`` and ``language``)."""

    def is_failed(self, piece: Any) -> bool: ...  # its item failed: drop the piece

    def model_failed(self, piece: Any, error: Exception) -> None: ...

    def record(self, piece: Any, transcript: Transcript) -> None: ...

    def flush(self) -> None: ...  # after the results of a batch in flight were recorded


class ModelStage:
    """The batch in flight. ``step(batch)`` runs a batch (pipelined: starts it, finishes the
    previous one); ``shutdown()`` finishes the batch in flight. Results go to ``sink``.
    ``run`` replaces the plain model call; ``pipelined`` (default: the model has
    ``submit`` and no ``run`` is given) keeps one batch in flight; ``lanes`` > 1 runs that
    many batches at once on threads of their own instead (CPUs). Call ``close()`` when
    done. Times and counts: ``model_s``, ``first_batch_at``, ``batches``, ``transcribed_s``,
    ``padding``."""

    def __init__(self, model: ASRModel, sink: ResultSink, *,
                 max_failures_in_a_row: int = DEFAULT_MAX_FAILURES_IN_A_ROW,
                 run: RunBatch | None = None, pipelined: bool | None = None,
                 crash: Callable[[str], None] | None = None, slow_s: float = 0.0,
                 lanes: int = 1):
        self.model, self.sink = model, sink
        self.options: dict = {}  # the item options of the batch being run (Piece.options)
        self.custom_run = run
        self.run = run or (lambda waves, langs: run_model(model, waves, langs, **self.options))
        self.lanes = Lanes(lanes, cpu_cores()) if lanes > 1 else None
        if self.lanes is not None:
            materialize(model)
        # a caller's ``run`` is called as it is: the pipelined path calls the model's submit
        self.pipelined = (run is None and callable(getattr(model, "submit", None))
                          if pipelined is None else pipelined)
        self.streak = FailureStreak(max_failures_in_a_row)
        self.crash = crash or (lambda point: None)
        self.slow_s = slow_s
        self.inflight: tuple[list, Any] | None = None  # (pieces, pending or its exception)
        self.current: list = []  # the batch being started or run on the main thread
        self.model_s = 0.0
        self.first_batch_at: float | None = None  # perf_counter() when the first batch came
        self.batches = 0
        self.transcribed_s = 0.0
        self.padded = self.useful = 0  # samples in batches once padded / of real audio

    @property
    def busy(self) -> bool:
        """A batch is in flight (started, results not taken)."""
        return self.inflight is not None or bool(self.lanes and self.lanes.inflight)

    def finish_oldest(self) -> None:
        """Take the results of one batch in flight (with lanes: the first to finish)."""
        if self.lanes is not None and self.lanes.inflight:
            self._finish_lane()
        else:
            self.shutdown()

    @property
    def padding(self) -> float:
        """Share of the batches' padded size that was padding."""
        return 1.0 - self.useful / self.padded if self.padded else 0.0

    def step(self, batch: Sequence) -> None:
        batch = [p for p in batch if not self.sink.is_failed(p)]
        if not batch:
            return
        if self.first_batch_at is None:
            self.first_batch_at = time.perf_counter()
        self.crash("batch")
        waves, langs = [p.audio for p in batch], [p.language for p in batch]
        options = dict(getattr(batch[0], "options", ()))  # a batch's pieces share them
        self.options = options
        self.current = batch
        if self.slow_s:
            slow_batch(self.slow_s)
        if self.lanes is not None:
            self._start_in_lane(batch, waves, langs, options)
            return
        if not self.pipelined:
            try:
                self._apply(batch, run_or_each(self._transcribe, waves, langs))
            finally:
                self.current = []
            return
        # Keep one batch in flight: start this one on the device, then finish the previous
        # one on the host while the device works (see ParaformerASR.submit).
        t = time.perf_counter()
        try:
            pending = self.model.submit(waves, languages=model_languages(langs), **options)
        except Exception as e:  # the pieces are retried one by one by shutdown()
            pending = e
        self.model_s += time.perf_counter() - t
        self.shutdown()
        self.options = options
        t = time.perf_counter()
        if not isinstance(pending, Exception):
            try:
                pending.advance()
            except Exception as e:
                pending = e
        self.model_s += time.perf_counter() - t
        self.inflight = (batch, pending, options)
        self.current = []

    def _start_in_lane(self, batch: list, waves: list, langs: list, options: dict) -> None:
        run = self.custom_run
        call = ((lambda: list(run(waves, langs))) if run is not None else
                (lambda: run_model(self.model, waves, langs, **options)))
        try:
            while self.lanes.full:  # every lane busy: take the first results to come back
                self._finish_lane()
            self.lanes.start((batch, options), call)
        finally:
            self.current = []

    def _finish_lane(self) -> None:
        t = time.perf_counter()
        (batch, options), outs = self.lanes.next_done()
        self.model_s += time.perf_counter() - t
        self._finish(batch, options, outs)

    def _finish(self, batch: list, options: dict, outs) -> None:
        """A batch's transcripts (or the exception its call raised) to the sink; a failed
        batch (or a wrong number of transcripts) is run again piece by piece."""
        waves, langs = [p.audio for p in batch], [p.language for p in batch]
        if not isinstance(outs, Exception):
            try:
                outs = checked(outs, len(batch))
            except ValueError as e:
                outs = e
        if isinstance(outs, Exception):
            self.options = options
            outs = each_alone(self._timed, waves, langs, outs)
        self._count(waves)
        self._apply(batch, outs)
        self.sink.flush()

    def close(self) -> None:
        """Stop the lanes' threads (after the batches in flight: call shutdown() first to
        take their results)."""
        if self.lanes is not None:
            self.lanes.close()

    def shutdown(self) -> None:
        """Results of the batches in flight (if any) to the sink; if a batch failed, each
        piece alone."""
        if self.lanes is not None:
            while self.lanes.inflight:
                self._finish_lane()
            return
        if self.inflight is None:
            return
        batch, outs, options = self.inflight
        self.inflight = None
        t = time.perf_counter()
        if not isinstance(outs, Exception):
            try:
                outs = outs.result()
            except Exception as e:
                outs = e
        self.model_s += time.perf_counter() - t
        self._finish(batch, options, outs)

    def expected_wait(self) -> tuple[float, float | None]:
        """(audio seconds in the model now, the model seconds they should take at this run's
        speed so far, None before any is measured): what a stop after the batch in flight
        waits for. Read from another thread (the signal watcher)."""
        pieces = list(self.current) + (list(self.inflight[0]) if self.inflight else [])
        if self.lanes is not None:
            pieces += [p for batch, _ in self.lanes.tags() for p in batch]
        audio_s = sum(len(p.audio) for p in pieces) / SAMPLE_RATE
        per_s = self.model_s / self.transcribed_s if self.transcribed_s else None
        return audio_s, None if per_s is None else audio_s * per_s

    def _apply(self, batch: list, outs: list) -> None:
        for p, out in zip(batch, outs):
            if self.sink.is_failed(p):  # an earlier piece of the same item failed
                continue
            if isinstance(out, Exception):
                self.sink.model_failed(p, out)
                self.streak.failed(out)  # raises JobError when the model looks broken
            else:
                self.streak.ok()
                self.sink.record(p, out)

    def _timed(self, waves: list[np.ndarray], langs: list[str | None]) -> list[Transcript]:
        t = time.perf_counter()
        try:
            return self.run(waves, langs)
        finally:
            self.model_s += time.perf_counter() - t

    def _transcribe(self, waves: list[np.ndarray], langs: list[str | None]) -> list[Transcript]:
        outs = self._timed(waves, langs)
        self._count(waves)
        return outs

    def _count(self, waves: list[np.ndarray]) -> None:
        self.batches += 1
        self.padded += max(len(w) for w in waves) * len(waves)
        self.useful += sum(len(w) for w in waves)
        self.transcribed_s += sum(len(w) for w in waves) / SAMPLE_RATE
