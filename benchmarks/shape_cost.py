#!/usr/bin/env python3
"""What a batch shape seen for the first time costs (kernel builds, GEMM plans, allocator
growth) next to the same shape again: Paraformer-large, dummy weights, one batch per shape.

    python benchmarks/shape_cost.py --dtype bfloat16
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import batchasr  # noqa: E402,F401
import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.bench import speechlike  # noqa: E402


def staged_pass(asr, waves) -> dict:
    """One batch through Paraformer stage by stage, each forced with mx.eval: seconds per
    stage and the decoder's token length (a shape of its own)."""
    from batchasr.models.paraformer import DecodeRun

    out = {}
    t = time.perf_counter()
    # as a batch asks for them (paraformer.PendingBatch): padded to the frame bucket
    feats, lengths = asr.features(waves, frame_bucket=asr.frame_bucket)
    feats = feats.astype(asr.dtype)
    mx.eval(feats, lengths)
    out["frontend"] = time.perf_counter() - t
    t = time.perf_counter()
    run = DecodeRun(asr.model, feats, lengths)
    mx.eval(run.enc, run.alphas)
    out["encoder"] = time.perf_counter() - t
    t = time.perf_counter()
    run.launch_decoder()
    if run.ids is not None:
        mx.eval(run.ids)
    out["decoder"] = time.perf_counter() - t
    t = time.perf_counter()
    run.finish()
    out["finish"] = time.perf_counter() - t
    out = {k: round(v, 4) for k, v in out.items()}
    out["tokens"] = int(run.cif.token_num.max())
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--shapes", default="16x10,16x11,17x10,24x12,32x9,8x20,9x20,40x7",
                    help="batch x seconds per clip")
    ap.add_argument("--stages", action="store_true",
                    help="time the frontend, encoder+predictor, decoder and host finish apart "
                         "(each forced with mx.eval)")
    args = ap.parse_args(argv)
    from batchasr.models.loader import load_model
    from batchasr.runner.device import setup_device

    setup_device(args.device)
    asr = load_model("paraformer-zh", weights="dummy", dtype=getattr(mx, args.dtype))
    rng = np.random.default_rng(0)
    asr.transcribe([speechlike(5.0, rng)])  # load-time work out of the way
    rows = []
    for spec in args.shapes.split(","):
        b, sec = spec.split("x")
        waves = [speechlike(float(sec), rng) for _ in range(int(b))]
        times, stages = [], []
        for _ in range(3):
            t = time.perf_counter()
            if args.stages:
                stages.append(staged_pass(asr, waves))
            else:
                asr.transcribe(waves)
            times.append(round(time.perf_counter() - t, 4))
        row = {"batch": int(b), "seconds": float(sec), "first_s": times[0], "again_s": times[1:]}
        if args.stages:
            row["stages_first_s"], row["stages_again_s"] = stages[0], stages[1:]
        rows.append(row)
    print(json.dumps({"device": str(mx.default_device()), "dtype": args.dtype,
                      "shapes": rows}))


if __name__ == "__main__":
    main()
