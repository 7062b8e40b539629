#!/usr/bin/env python3
"""What one MLX operation costs the host: Python's call, the launch in ``mx.async_eval`` and
the wait, per kind of operation, on a small array (the device's work negligible), then what
the full-size Paraformer-large encoder and decoder are made of (their graph's operations by
primitive) and what a realistic batch costs in each step.

A model whose GPU idles while its thread launches is bound by the number of launches times
their cost: this says which operations to remove or fuse first.

    python benchmarks/op_cost.py                 # the default device (a GPU)
    python benchmarks/op_cost.py --device cpu --n 100
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import batchasr  # noqa: E402,F401
import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import numpy as np  # noqa: E402


def chain_cost(step, x, n: int, repeats: int = 3) -> dict:
    """µs per operation of a chain of ``n`` ``step``s: building it, launching it
    (async_eval), and then waiting for it; the best of ``repeats``."""
    best = None
    for _ in range(repeats + 1):  # the first pass builds the kernels
        t0 = time.perf_counter()
        y = x
        for _ in range(n):
            y = step(y)
        t1 = time.perf_counter()
        mx.async_eval(y)
        t2 = time.perf_counter()
        mx.eval(y)
        t3 = time.perf_counter()
        cost = dict(build=(t1 - t0) / n * 1e6, launch=(t2 - t1) / n * 1e6,
                    wait=(t3 - t2) / n * 1e6)
        if best is None or cost["build"] + cost["launch"] < best["build"] + best["launch"]:
            best = cost
    return {k: round(v, 2) for k, v in best.items()}


def op_kinds(dtype):
    """name -> (step, input): each step maps an array to one of the same shape."""
    B, T, D = 4, 64, 512
    x = mx.random.normal((B, T, D)).astype(dtype)
    w = (mx.random.normal((D, D)) * D ** -0.5).astype(dtype)
    lin = nn.Linear(D, D)
    lin.set_dtype(dtype)
    norm = nn.LayerNorm(D, eps=1e-12)
    norm.set_dtype(dtype)
    mask = mx.arange(T)[None, :] < mx.array([T, T - 8, T - 16, T - 32])[:, None]
    minf = mx.array(-float("inf"), dtype)
    mx.eval(x, w, lin.parameters(), norm.parameters(), mask, minf)
    xh = x.reshape(B, T, 4, D // 4).transpose(0, 2, 1, 3)  # (B, H, T, d) as attention has it
    kinds = {
        "add": (lambda y: y + x, x),
        "multiply by a scalar": (lambda y: y * 0.5, x),
        "relu": (nn.relu, x),
        "astype float32 and back": (lambda y: y.astype(mx.float32).astype(dtype), x),
        "layer_norm (fast)": (norm, x),
        "linear 512x512 (addmm)": (lin, x),
        "matmul 512x512": (lambda y: y @ w, x),
        "transpose to contiguous": (lambda y: mx.contiguous(y.swapaxes(0, 1)).swapaxes(0, 1), x),
        "where mask, -inf": (lambda y: mx.where(mask[:, :, None], y, minf), x),
        "where mask, new -inf scalar": (
            lambda y: mx.where(mask[:, :, None], y, mx.array(-float("inf"), dtype)), x),
        "softmax precise": (lambda y: mx.softmax(y, axis=-1, precise=True), x),
        "batched matmul (B,H,T,d)@(B,H,d,T)->@v": (lambda y: (y @ xh.swapaxes(-1, -2)) @ xh, xh),
    }
    try:
        from batchasr.models.blocks import fsmn_kernel

        if fsmn_kernel.available():
            fw = mx.random.normal((D, 1, 11)).astype(dtype)
            mx.eval(fw)
            kinds["fsmn kernel"] = (lambda y: fsmn_kernel.fsmn_memory(y, mask, fw, 5), x)
    except ImportError:
        pass
    return kinds


def upload_cost(rows: int, seconds: float, iters: int = 8) -> dict:
    """ms per batch of ``rows`` clips of ``seconds`` to make the padded waveforms an MLX array
    (make) and to run a first kernel over them that writes a same-size output, as the
    frontend's scaling does (run), by each upload; and µs to read a small device result
    back to numpy (what the host steps do after each batch)."""
    from batchasr.models.blocks.frontend import CACHE_SPACING, filled_batch

    width = int(seconds * 16000)
    n = rows * width
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(width - 7 * r)).astype(np.float32) for r in range(rows)]
    host = np.zeros((rows, width), np.float32)
    spaced = np.zeros(n + CACHE_SPACING, np.float32)
    for r, w in enumerate(waves):
        host[r, : len(w)] = w
        spaced[r * width: r * width + len(w)] = w

    def padded_copy():  # the inline upload: pad into the host array, then mx.array copies it
        for r, w in enumerate(waves):
            host[r, : len(w)] = w
            host[r, len(w):] = 0.0
        return mx.array(host)

    arms = {
        "inline (pad + mx.array)": padded_copy,
        "mx.array of the padded array": lambda: mx.array(host),
        "mx.array, spaced from same-size outputs": lambda: mx.array(spaced)[:n].reshape(rows, width),
        "fill (zeros on the CPU stream, rows copied in)": lambda: filled_batch(waves, width),
    }
    out = {}
    for name, make in arms.items():
        times = collections.defaultdict(list)
        for _ in range(iters):
            t0 = time.perf_counter()
            x = make()
            mx.eval(x)
            t1 = time.perf_counter()
            y = x * 32768.0
            mx.eval(y.sum(axis=-1))
            t2 = time.perf_counter()
            del x, y  # their buffers go back to MLX's cache, as a finished batch's do
            times["make"].append(t1 - t0)
            times["run"].append(t2 - t1)
        out[name] = {k: round(float(np.median(v[1:])) * 1e3, 2) for k, v in times.items()}
        print(f"upload {name:48s} {out[name]} ms", flush=True)
    small = mx.random.normal((rows, 260))
    mx.eval(small)
    reads = []
    for _ in range(50):
        y = small * 2.0
        mx.eval(y)
        t0 = time.perf_counter()
        np.array(y)
        reads.append(time.perf_counter() - t0)
    out["read (rows, 260) float32 to numpy, us"] = round(float(np.median(reads)) * 1e6, 1)
    print(f"read back: {out['read (rows, 260) float32 to numpy, us']} us", flush=True)
    return out


def graph_ops(out) -> dict:
    """Operations (primitives) of the graph that computes ``out``, by name."""
    path = tempfile.mktemp(suffix=".dot")
    mx.export_to_dot(path, out)
    labels = re.findall(r'label ="([^"]+)"', Path(path).read_text())
    Path(path).unlink()
    return dict(collections.Counter(labels).most_common())


def model_cost(dtype, rows: int, seconds: float, repeats: int = 3) -> dict:
    """The full-size model on one batch of ``rows`` clips of ``seconds`` (the features made
    on the host): the encoder's and decoder's operations, and each step's host time."""
    from batchasr.models.loader import load_model
    from batchasr.models.paraformer import DecodeRun

    asr = load_model("paraformer-zh", weights="dummy", dtype=dtype)
    model = asr.model
    # structure: a small batch (the graph's operations do not depend on its size)
    feats = mx.random.normal((2, 50, 560)).astype(dtype)
    lengths = mx.array([50, 40], mx.int32)
    mx.eval(feats, lengths)
    enc, alphas = model(feats, lengths)
    out = dict(encoder_and_predictor_ops=graph_ops([enc, alphas]))
    run = DecodeRun(model, feats, lengths)
    run.launch_decoder()
    if run.ids is not None:
        out["decoder_ops"] = graph_ops(run.ids)
    out["encoder_and_predictor_op_count"] = sum(out["encoder_and_predictor_ops"].values())
    out["decoder_op_count"] = sum(out.get("decoder_ops", {}).values())

    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
             for _ in range(rows)]
    steps = collections.defaultdict(list)
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        f, n = asr.features(waves, frame_bucket=asr.frame_bucket)
        t1 = time.perf_counter()
        mx.eval(f, n)
        t2 = time.perf_counter()
        f = f.astype(dtype)
        enc, alphas = model(f, n)
        t3 = time.perf_counter()
        mx.async_eval(enc, alphas)
        t4 = time.perf_counter()
        mx.eval(enc, alphas)
        t5 = time.perf_counter()
        run = DecodeRun.__new__(DecodeRun)
        run.model, run.lengths, (run.B, run.T) = model, n, f.shape[:2]
        run.lens, run.enc, run.alphas, run.cif, run.ids = np.array(n), enc, alphas, None, None
        run.launch_decoder()
        t6 = time.perf_counter()
        if run.ids is not None:
            mx.eval(run.ids)
        t7 = time.perf_counter()
        for k, v in dict(features_build=t1 - t0, features_run=t2 - t1, encoder_build=t3 - t2,
                         encoder_launch=t4 - t3, encoder_wait=t5 - t4,
                         cif_and_decoder_build_launch=t6 - t5, decoder_wait=t7 - t6).items():
            steps[k].append(v)
    out["batch"] = dict(rows=rows, seconds=seconds, shape=list(f.shape))
    out["steps_ms"] = {k: round(min(v[1:]) * 1e3, 2) for k, v in steps.items()}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--n", type=int, default=400, help="operations per chain")
    ap.add_argument("--rows", type=int, default=64, help="clips in the model's batch")
    ap.add_argument("--seconds", type=float, default=15.0, help="each clip's length")
    ap.add_argument("--no-model", action="store_true")
    args = ap.parse_args(argv)
    from batchasr.runner.device import setup_device

    setup_device(args.device)
    dtype = getattr(mx, args.dtype)
    result = dict(device=str(mx.default_device()), dtype=args.dtype, n=args.n, ops={})
    for name, (step, x) in op_kinds(dtype).items():
        result["ops"][name] = chain_cost(step, x, args.n)
        print(f"{name:45s} {result['ops'][name]}", flush=True)
    result["upload"] = upload_cost(args.rows, args.seconds)
    if not args.no_model:
        result["model"] = model_cost(dtype, args.rows, args.seconds)
        print(json.dumps(result["model"], indent=1), flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
