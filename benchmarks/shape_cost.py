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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--shapes", default="16x10,16x11,17x10,24x12,32x9,8x20,9x20,40x7",
                    help="batch x seconds per clip")
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
        times = []
        for _ in range(3):
            t = time.perf_counter()
            asr.transcribe(waves)
            times.append(round(time.perf_counter() - t, 4))
        rows.append({"batch": int(b), "seconds": float(sec), "first_s": times[0],
                     "again_s": times[1:]})
    print(json.dumps({"device": str(mx.default_device()), "dtype": args.dtype,
                      "shapes": rows}))


if __name__ == "__main__":
    main()
