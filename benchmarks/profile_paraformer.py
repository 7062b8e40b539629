#!/usr/bin/env python3
"""Where Paraformer's time goes: per-stage wall time (each stage forced with mx.eval) over
length-sorted batches of synthetic audio, full-size architecture, dummy weights.

    python benchmarks/profile_paraformer.py --audio-s 1800 --batch-seconds 300 [--dtype float16]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import batchasr  # noqa: E402,F401  (BLAS preload before mlx)
import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.bench import synthetic_clips  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--audio-s", type=float, default=600)
    ap.add_argument("--batch-seconds", type=float, default=300)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="mx.compile each encoder/decoder layer")
    ap.add_argument("--fsmn", default=None, choices=["auto", "conv", "shift"],
                    help="FSMN method (default: the library's, see FSMNBlock)")
    args = ap.parse_args(argv)

    from batchasr.batches.plan import plan_batches
    from batchasr.models.loader import load_model
    from batchasr.runner.device import setup_device
    from batchasr.models.blocks.cif import cif_embeddings, cif_fire, token_timestamps

    setup_device(args.device)
    from batchasr.models.blocks.tuning import Tuning

    if args.fsmn:  # read once at load (batchasr.models.blocks.tuning)
        os.environ["BATCHASR_FSMN"] = args.fsmn
    asr = load_model("paraformer-zh", weights="dummy", dtype=getattr(mx, args.dtype))
    model = asr.model
    model.compile(args.compile)
    waves, total = synthetic_clips(args.audio_s)
    batches = plan_batches([len(w) / 16000 for w in waves], max_total=args.batch_seconds)
    times = defaultdict(float)

    def stage(name, fn):
        t = time.perf_counter()
        out = fn()
        if isinstance(out, (mx.array, tuple, list)):
            mx.eval(out)
        times[name] += time.perf_counter() - t
        return out

    for rep in range(args.repeats + 1):
        if rep == 1:
            times.clear()
            t_all = time.perf_counter()
        for b in batches:
            ws = [waves[i] for i in b]
            feats, lens = stage("1 frontend", lambda: asr.features(ws))
            feats = feats.astype(asr.dtype)
            enc = stage("2 encoder", lambda: model.encoder(feats, lens))
            mask = mx.arange(feats.shape[1])[None, :] < lens[:, None]
            alphas = stage("3 predictor", lambda: model.predictor.alphas(enc, mask))
            p = model.predictor.args
            lens_np = np.array(lens)
            cif = stage("4 cif (host)", lambda: cif_fire(np.array(alphas.astype(mx.float32)),
                                                         lens_np, p.tail_threshold, p.tail_mask))
            hidden = mx.pad(enc, [(0, 0), (0, 1), (0, 0)])
            emb = stage("5 cif embeddings", lambda: cif_embeddings(hidden, cif))
            tm = mx.arange(emb.shape[1])[None, :] < mx.array(cif.token_num)[:, None]
            logp = stage("6 decoder", lambda: model.decoder(enc, mask, emb.astype(enc.dtype), tm))
            ids = stage("7 argmax->host", lambda: np.array(mx.argmax(logp, axis=-1)))

            def post():
                for r in range(len(b)):
                    n = int(cif.token_num[r])
                    row = [int(i) for i in ids[r, :n] if i > 2]
                    if row:
                        m = min(lens_np[r] + 1, cif.alphas.shape[1])
                        t = token_timestamps(cif.fires[r, :m], cif.alphas[r, :m], len(row))
                        asr.to_transcript(row, t)
            stage("8 timestamps+text", post)
    wall = time.perf_counter() - t_all
    n = args.repeats
    out = {k: round(v / n, 4) for k, v in sorted(times.items())}

    print(json.dumps({"device": str(mx.default_device()), "dtype": args.dtype,
                      "compile": args.compile, "batch_seconds": args.batch_seconds,
                      "fsmn": Tuning.from_env().fsmn, "peak_memory_gb": round(mx.get_peak_memory() / 1e9, 2),
                      "env": {k: v for k, v in os.environ.items() if k.startswith("MLX_")},
                      "audio_s": round(total, 1), "batches": len(batches),
                      "wall_per_pass_s": round(wall / n, 4), "rtfx": round(total * n / wall, 1),
                      "stages_s": out}))


if __name__ == "__main__":
    main()
