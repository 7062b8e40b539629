#!/usr/bin/env python3
"""Interleaved A/B rounds on a CPU whose speed drifts: the official Paraformer, then batchasr
in memory through the runner's ModelStage with one CPU lane and with two, repeated.

Uses the model folder and audio that `bench.py paraformer --device cpu --baseline` wrote
into its work folder (same weights, same files as the baseline):

    python benchmarks/cpu_ab.py --workdir /tmp/bench_cpu --batch-seconds 30 --rounds 2 \\
        --baseline-python /path/to/venv-with-funasr/bin/python
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import batchasr  # noqa: E402,F401  (first: preloads the CPU BLAS before mlx)
import mlx.core as mx  # noqa: E402

from benchmarks.bench import decoded_batches, pipelined_walls  # noqa: E402


def official(args, model_dir: Path, audio_dir: Path) -> float:
    cmd = [args.baseline_python, str(ROOT / "benchmarks" / "baseline_funasr.py"),
           "run-paraformer", str(model_dir), str(audio_dir), "--batch-size-s",
           str(int(args.batch_seconds)), "--device", "cpu", "--repeats", "2", "--ncpu",
           str(args.ncpu), "--path", "vad"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["rtfx"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--audio", default="audio-160s")
    ap.add_argument("--batch-seconds", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--ncpu", type=int, default=2)
    ap.add_argument("--baseline-python", default=sys.executable)
    args = ap.parse_args()
    from batchasr.models.loader import load_model

    mx.set_default_device(mx.cpu)
    model_dir, audio_dir = args.workdir / "paraformer-large-random", args.workdir / args.audio
    asr = load_model(model_dir, weights="checkpoint", dtype=mx.float32)
    waves, audio_s, batches = decoded_batches(audio_dir / "manifest.csv", args.batch_seconds)
    for b in batches:  # warm-up
        asr.transcribe([waves[i] for i in b])
    for r in range(args.rounds):
        row = {"round": r, "batch_seconds": args.batch_seconds,
               "frame_bucket": asr.frame_bucket, "official": official(args, model_dir, audio_dir)}
        for lanes in (1, 2):
            os.environ["BATCHASR_CPU_LANES"] = str(lanes)
            walls, _ = pipelined_walls(asr, waves, batches, 2)
            row[f"lanes_{lanes}"] = round(audio_s / min(walls), 2)
        row["ratio"] = round(row["lanes_2"] / row["official"], 2)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
