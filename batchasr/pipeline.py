"""The transcription steps every engine shares: window, batch, run the model, stitch, row.

The local worker (``batchasr.worker``, streaming pieces from reader threads) and the Ray
actors (``batchasr.ray_engine``, handed blocks of decoded items) both call these functions,
so a file is cut into windows, its pieces batched, the model's failures retried one by one
and the windows stitched back into a result row in exactly one way, whichever engine runs.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from batchasr import audio, results
from batchasr.batching import plan_batches, stitch
from batchasr.errors import JobError
from batchasr.transcript import ASRModel, Transcript

logger = logging.getLogger("batchasr.pipeline")

SR = audio.SAMPLE_RATE
# A function that transcribes one batch: (waveforms, languages) -> one Transcript each.
RunBatch = Callable[[list[np.ndarray], list[str | None]], list[Transcript]]


def window_seconds(n_samples: int, max_window_s: float) -> float:
    """Window length for a file of ``n_samples`` (at 16 kHz): equal windows of at most
    ``max_window_s`` (31 s -> 2 x 15.5 s, not 30 s + 1 s)."""
    max_n = int(max_window_s * SR)
    if n_samples <= max_n:
        return max_window_s
    return math.ceil(n_samples / math.ceil(n_samples / max_n)) / SR


def decode_windows(path: str, max_window_s: float) -> tuple[list[tuple[float, np.ndarray]], float]:
    """A whole file as ``[(offset_s, waveform), ...]`` windows and its duration in seconds
    (raises AudioError). Holds the whole file in memory: for engines that hand decoded
    items between processes; the local worker streams windows instead."""
    with audio.open_audio(path) as f:
        windows = list(f.windows(window_seconds(f.info.n_samples(SR), max_window_s)))
    return windows, sum(len(w) for _, w in windows) / SR


def batch_plan(lengths: Sequence[int], *, batch_seconds: float,
               padded_seconds: float | None = None, max_items: int | None = None) -> list[list[int]]:
    """Length-sorted batches of pieces (lengths in samples) under the run's budgets."""
    return plan_batches(lengths, max_total=int(batch_seconds * SR),
                        max_padded=int((padded_seconds or batch_seconds) * SR),
                        max_items=max_items)


def run_model(model: ASRModel, waves: list[np.ndarray],
              languages: list[str | None]) -> list[Transcript]:
    """One model call on a batch, the zip guarded (as whisper's DecodingTask.run does)."""
    outs = model.transcribe(waves, languages=languages if any(languages) else None)
    if len(outs) != len(waves):
        raise ValueError(f"model returned {len(outs)} transcripts for {len(waves)} inputs")
    return outs


def run_or_each(run: RunBatch, waves: list[np.ndarray],
                languages: list[str | None]) -> list[Transcript | Exception]:
    """Run a batch; if the call raises, run each piece alone, so that only the pieces the
    model fails on even alone fail. One Transcript or the exception per piece, in order."""
    try:
        return list(run(waves, languages))
    except Exception as e:
        if len(waves) == 1:
            return [e]
        logger.warning("batch of %d failed in the model (%s: %s); retrying one by one",
                       len(waves), type(e).__name__, e)
    outs: list[Transcript | Exception] = []
    for wave, lang in zip(waves, languages):
        try:
            [out] = run([wave], [lang])
        except Exception as e1:
            outs.append(e1)
        else:
            outs.append(out)
    return outs


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


@dataclass
class DecodedItem:
    """An item with its whole audio decoded into windows (or the error that stopped it).
    ``item`` has the queue/manifest fields ``id, path, language, extra`` (see
    :func:`results.transcript_to_row`)."""

    item: Mapping[str, Any]
    windows: list[tuple[float, np.ndarray]] = field(default_factory=list)
    duration_s: float | None = None
    error: str | None = None


def transcribe_items(model: ASRModel, items: Sequence[DecodedItem], *, batch_seconds: float,
                     padded_seconds: float | None = None, max_items: int | None = None,
                     max_failures_in_a_row: int = 20, run: RunBatch | None = None) -> list[dict]:
    """Transcribe decoded items as length-sorted batches of their windows and return one
    result row per item (:data:`results.PART_SCHEMA`): ``done`` with the stitched
    transcript, or ``failed`` with the decode or model error. Rows in input order.

    ``run`` replaces the plain model call (e.g. to time it). Raises JobError when the model
    fails on ``max_failures_in_a_row`` pieces in a row.
    """
    run = run or (lambda waves, langs: run_model(model, waves, langs))
    pieces = [(k, j) for k, it in enumerate(items) if it.error is None
              for j in range(len(it.windows))]
    got: list[dict[int, tuple[float, Transcript]]] = [{} for _ in items]
    errors = [it.error for it in items]
    streak = FailureStreak(max_failures_in_a_row)
    lengths = [len(items[k].windows[j][1]) for k, j in pieces]
    for batch in batch_plan(lengths, batch_seconds=batch_seconds, padded_seconds=padded_seconds,
                            max_items=max_items):
        chosen = [pieces[i] for i in batch if errors[pieces[i][0]] is None]
        if not chosen:
            continue
        outs = run_or_each(run, [items[k].windows[j][1] for k, j in chosen],
                           [items[k].item.get("language") for k, _ in chosen])
        for (k, j), out in zip(chosen, outs):
            if isinstance(out, Exception):
                logger.error("model failed on %s: %s", items[k].item["id"], out, exc_info=out)
                errors[k] = errors[k] or model_error(out)
                streak.failed(out)
            else:
                streak.ok()
                got[k][j] = (items[k].windows[j][0], out)
    rows = []
    for k, it in enumerate(items):
        item = {**it.item, "duration_s": it.duration_s}
        if errors[k] is not None:
            rows.append(results.failure_to_row(item, errors[k], model_name=model.name))
        else:
            rows.append(results.transcript_to_row(item, stitch(list(got[k].values())),
                                                  model_name=model.name))
    return rows
