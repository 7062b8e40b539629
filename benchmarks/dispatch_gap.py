#!/usr/bin/env python3
"""Why a job's batches take longer in the model than the same audio in memory.

One process, one model (full-size Paraformer-large, dummy weights, or a folder):

1. ``job``: ``run_job`` over bench.py's clips twice (the first warms the shapes, as
   bench.py's end-to-end figure does); in the second, every model call is timed
   (``submit``: frontend and encoder launched; ``advance``: CIF on the host and the decoder
   launched; ``result``: waiting for the ids, timestamps, text) and each batch's audio kept;
2. ``replay``: the job's own batches, the same pieces in the same order, through the
   runner's ModelStage in memory, twice (nothing else running in the process);
3. ``plan``: bench.py's in-memory figure (its own length-sorted plan of the same clips).

The per-call sums side by side say whether the job's extra time is in the batches
themselves (their shapes: replay as slow as the job) or in what runs beside them (replay as
fast as in memory). ``--save``/``--load`` keep the job's batches on disk, so that the two
can be profiled in separate processes (py-spy).

    python benchmarks/dispatch_gap.py --audio-s 18000
    python benchmarks/dispatch_gap.py --audio-s 60 --device cpu --batch-seconds 30
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench import (FS, decoded_batches, fresh_job, machine, make_audio,  # noqa: E402
                              pipelined_walls)

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

CALLS = ("submit", "advance", "result")


class TimedPending:
    """A pending batch whose advance() and result() are timed into its record."""

    def __init__(self, pending, record: dict):
        self.pending, self.record = pending, record

    def _timed(self, call: str):
        t = time.perf_counter()
        try:
            return getattr(self.pending, call)()
        finally:
            self.record[call] += time.perf_counter() - t

    def advance(self):
        return self._timed("advance")

    def result(self):
        return self._timed("result")


class TimedModel:
    """The recognizer with its submit() timed per batch (and the batch's audio kept when
    ``keep``); every other attribute is the recognizer's."""

    def __init__(self, asr, keep: bool = False):
        self.__dict__["_asr"] = asr
        self.__dict__["records"] = []
        self.__dict__["batches"] = [] if keep else None

    def __getattr__(self, name):
        return getattr(self._asr, name)

    def _record(self, waves) -> dict:
        rec = dict(rows=len(waves), samples=max(len(w) for w in waves),
                   audio=sum(len(w) for w in waves), submit=0.0, advance=0.0, result=0.0,
                   at=time.perf_counter())
        self.records.append(rec)
        if self.batches is not None:
            self.batches.append([np.array(w, np.float32) for w in waves])
        return rec

    def transcribe(self, waves, **options):
        """A whole batch at once (CPU lanes): its time counts as submit."""
        rec = self._record(waves)
        t = time.perf_counter()
        try:
            return self._asr.transcribe(waves, **options)
        finally:
            rec["submit"] = time.perf_counter() - t

    def submit(self, waves, **options):
        rec = self._record(waves)
        t = time.perf_counter()
        pending = self._asr.submit(waves, **options)
        rec["submit"] = time.perf_counter() - t
        return TimedPending(pending, rec)


def summary(name: str, records: list[dict], wall: float) -> dict:
    audio = sum(r["audio"] for r in records) / FS
    out = dict(arm=name, batches=len(records), audio_s=round(audio, 1), wall_s=round(wall, 3),
               rtfx=round(audio / wall, 1) if wall else None,
               padding=round(1 - sum(r["audio"] for r in records)
                             / max(1, sum(r["rows"] * r["samples"] for r in records)), 3))
    for c in CALLS:
        out[c + "_s"] = round(sum(r[c] for r in records), 3)
    out["model_s"] = round(sum(out[c + "_s"] for c in CALLS), 3)
    return out


def run_jobs(asr, manifest: Path, args) -> tuple[TimedModel, float]:
    """The warm-up job, then the timed one through a TimedModel that keeps the batches."""
    fresh_job(asr, manifest, args, "gap-job-warmup")
    timed = TimedModel(asr, keep=True)
    summary, _ = fresh_job(timed, manifest, args, "gap-job-timed")
    return timed, summary.wall_s


def replay(asr, batches: list[list[np.ndarray]]) -> tuple[TimedModel, float]:
    """The batches through the runner's ModelStage in memory, as a job keeps them in flight."""
    waves = [w for b in batches for w in b]
    ends = np.cumsum([len(b) for b in batches])
    timed = TimedModel(asr)
    [wall], _ = pipelined_walls(timed, waves, [range(e - len(b), e) for b, e in
                                               zip(batches, ends)], 1)
    return timed, wall


def save_batches(path: Path, batches: list[list[np.ndarray]]) -> None:
    flat = [w for b in batches for w in b]
    np.savez(path, audio=np.concatenate(flat), lengths=np.array([len(w) for w in flat]),
             sizes=np.array([len(b) for b in batches]))


def load_batches(path: Path) -> list[list[np.ndarray]]:
    z = np.load(path)
    ends = np.cumsum(z["lengths"])
    flat = [z["audio"][e - n:e] for e, n in zip(ends, z["lengths"])]
    out, k = [], 0
    for size in z["sizes"]:
        out.append(flat[k:k + size])
        k += size
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--audio-s", type=float, default=18000.0)
    ap.add_argument("--batch-seconds", type=float, default=1000.0)
    ap.add_argument("--model", default=None, help="a model folder (default: dummy weights)")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto")
    ap.add_argument("--readers", type=int, default=8)
    ap.add_argument("--reader-processes", type=int, default=None)
    ap.add_argument("--subtitles", default="srt")
    ap.add_argument("--arms", default="job,replay,replay,plan",
                    help="comma-separated, in order: job, replay, plan")
    ap.add_argument("--save", default=None, help="write the job's batches to this .npz")
    ap.add_argument("--load", default=None, help="replay these batches (no job)")
    ap.add_argument("--workdir", default="/tmp/batchasr-bench")
    ap.add_argument("--per-batch", action="store_true", help="print every batch's record")
    ap.set_defaults(job_batch_seconds=None)  # bench.fresh_job: the job runs --batch-seconds
    args = ap.parse_args(argv)

    from batchasr.models.loader import load_model
    from batchasr.runner.device import setup_device

    setup_device(args.device)
    manifest = make_audio(Path(args.workdir) / f"audio-{int(args.audio_s)}s", args.audio_s)
    asr = load_model(args.model or "paraformer-zh",
                     weights="checkpoint" if args.model else "dummy",
                     dtype=getattr(mx, args.dtype))
    batches = load_batches(Path(args.load)) if args.load else None
    results, job_records = [], None
    for arm in args.arms.split(","):
        if arm == "job":
            timed, wall = run_jobs(asr, manifest, args)
            batches, job_records = timed.batches, timed.records
            if args.save:
                save_batches(Path(args.save), batches)
        elif arm == "replay":
            if batches is None:  # warm the shapes first, as the job's warm-up does
                raise SystemExit("replay needs a job arm before it, or --load")
            timed, wall = replay(asr, batches)
        elif arm == "plan":
            waves, _, plan = decoded_batches(manifest, args.batch_seconds)
            pipelined_walls(asr, waves, plan, 1)  # its shapes warmed, as bench.py does
            timed = TimedModel(asr)
            [wall], _ = pipelined_walls(timed, waves, plan, 1)
        else:
            raise SystemExit(f"unknown arm {arm}")
        results.append(summary(arm, timed.records, wall))
        print(json.dumps(results[-1]), flush=True)
        if args.per_batch:
            for r in timed.records:
                print("  ", {k: (round(v, 4) if isinstance(v, float) else v)
                             for k, v in r.items() if k != "at"})
    print(json.dumps(dict(machine=machine(), device=str(mx.default_device()),
                          dtype=args.dtype, arms=results)))


if __name__ == "__main__":
    main()
