#!/usr/bin/env python3
"""Where the Paraformer frontend's time goes (fbank -> LFR -> CMVN), per sub-stage, each
forced with mx.eval; how far the device's features are from the float32 CPU ones; and four
ways to upload a batch of waveforms.

    python benchmarks/profile_frontend.py --audio-s 1800 --batch-seconds 1000
"""
from __future__ import annotations

import argparse
import json
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
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)

    from batchasr.models.blocks import frontend as F
    from batchasr.batches.plan import plan_batches
    from batchasr.runner.device import setup_device

    setup_device(args.device)
    conf = F.FrontendConfig(n_mels=80, lfr_m=7, lfr_n=6)
    rng = np.random.default_rng(1)
    cmvn = np.stack([rng.standard_normal(560), rng.uniform(0.5, 2, 560)]).astype(np.float32)
    fe = F.WavFrontend(conf, cmvn)
    waves, total = synthetic_clips(args.audio_s)
    batches = plan_batches([len(w) / 16000 for w in waves], max_total=args.batch_seconds)
    size, shift, padded = F.window_sizes(conf.fs, conf.frame_length, conf.frame_shift)
    first = [waves[i] for i in batches[0]]
    with mx.stream(mx.cpu):  # reference: the first batch's features on the CPU
        ref = np.array(fe(first)[0])

    times = defaultdict(float)

    def stage(name, fn):
        t = time.perf_counter()
        out = fn()
        mx.eval(out)
        times[name] += time.perf_counter() - t
        return out

    for rep in range(args.repeats + 1):
        if rep == 1:
            times.clear()
        for b in batches:
            ws = [waves[i] for i in b]
            lengths = [len(w) for w in ws]
            t = time.perf_counter()
            mx.eval(fe(ws))
            times["0 whole frontend"] += time.perf_counter() - t

            def host():
                x = np.zeros((len(ws), max(lengths)), np.float32)
                for r, w in enumerate(ws):
                    x[r, : len(w)] = w
                return mx.array(x)
            x = stage("1 host pad + to device", host)
            T = 1 + (max(lengths) - size) // shift

            def framing():
                y = x * F.WAVEFORM_SCALE
                fr = mx.as_strided(y, (len(ws), T, size), (y.shape[1], shift, 1))
                fr = fr - mx.mean(fr, axis=-1, keepdims=True)
                prev = mx.concatenate([fr[..., :1], fr[..., :-1]], axis=-1)
                return (fr - 0.97 * prev) * mx.array(F.window_function(conf.window, size))
            frames = stage("2 framing", framing)
            power = stage("3 power spectrum", lambda: mx.square(mx.abs(
                mx.fft.rfft(frames, n=padded, axis=-1))))
            fb = stage("4 mel + log", lambda: mx.log(mx.maximum(
                power @ mx.array(F.mel_banks(conf.n_mels, padded, conf.fs)), F.LOG_FLOOR)))
            counts = [F.num_fbank_frames(n, conf) for n in lengths]
            out_lens = [-(-c // conf.lfr_n) for c in counts]
            stage("5 lfr + cmvn + mask", lambda: fe._finish(
                F.lfr(fb, counts, conf.lfr_m, conf.lfr_n), out_lens, max(out_lens)))
    report = {"device": str(mx.default_device()), "audio_s": round(total, 1),
              "batches": len(batches),
              "stages_s": {k: round(v / args.repeats, 4) for k, v in sorted(times.items())},
              "max_abs_diff_vs_cpu": float(np.abs(np.array(fe(first)[0]) - ref).max())}
    report["upload_s"] = upload_strategies(waves, batches, args.repeats)
    print(json.dumps(report))


def upload_strategies(waves, batches, repeats) -> dict:
    """Ways to get a batch of waveforms onto the device as a padded (B, N) array, each
    forced by a reduction on the device (so a lazy migration is paid too)."""
    staging = [np.zeros(0, np.float32)]

    def padded_host(ws):
        n = max(len(w) for w in ws)
        x = np.zeros((len(ws), n), np.float32)
        for r, w in enumerate(ws):
            x[r, : len(w)] = w
        return mx.array(x)

    def staged_host(ws):
        n, B = max(len(w) for w in ws), len(ws)
        if staging[0].size < B * n:
            staging[0] = np.empty(B * n, np.float32)
        x = staging[0][: B * n].reshape(B, n)
        for r, w in enumerate(ws):
            x[r, : len(w)] = w
            x[r, len(w):] = 0
        return mx.array(x)

    def flat_gather(ws):
        lens = np.array([len(w) for w in ws])
        n = int(lens.max())
        flat = mx.array(np.concatenate(ws + [np.zeros(1, np.float32)]))
        offsets = mx.array(np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int32))
        pos = mx.arange(n, dtype=mx.int32)[None, :]
        idx = mx.where(pos < mx.array(lens.astype(np.int32))[:, None],
                       offsets[:, None] + pos, int(lens.sum()))
        return flat[idx]

    def rows_then_pad(ws):
        n = max(len(w) for w in ws)
        return mx.stack([mx.pad(mx.array(w), (0, n - len(w))) for w in ws])

    out = {}
    for name, fn in [("padded_host", padded_host), ("staged_host", staged_host),
                     ("flat_gather", flat_gather), ("rows_then_pad", rows_then_pad)]:
        total = 0.0
        for rep in range(repeats + 1):
            for b in batches:
                ws = [waves[i] for i in b]
                t = time.perf_counter()
                x = fn(ws)
                mx.eval(mx.sum(x, axis=1))
                if rep:
                    total += time.perf_counter() - t
        out[name] = round(total / repeats, 4)
    return out


if __name__ == "__main__":
    main()
