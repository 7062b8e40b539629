#!/usr/bin/env python3
"""Where Fun-ASR-Nano's time goes: per-stage wall time (each stage forced with mx.eval) over
length-sorted batches of synthetic audio, full-size architecture, dummy weights, a forced
number of new tokens per clip (no stop token), decoded as generate_continuous does.

    python benchmarks/profile_nano.py --audio-s 600 --batch-seconds 300 [--dtype bfloat16]

Stages (seconds summed over all batches, per timed pass): 1 frontend (asr.features),
2 encoder+adaptor (asr.encode), 3 prompt embeddings, 4 prefill (+ first token), 5 decode
steps (the continuous-batching loop of batchasr.models.blocks.generate.generate_continuous, copied here with
timers). The decode steps are split into: build (Python constructing the step's graph),
submit (mx.async_eval), wait (the .tolist() sync on the previous token) and retire (host
bookkeeping and the lazy filter of finished rows). On the CPU, mx.async_eval itself blocks
once MLX has a few dozen ops outstanding, so there "submit" holds most of the compute and
"wait" only the tail. The token ids of the first batch are checked against asr.transcribe
under the same forced budgets.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict, deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import batchasr  # noqa: E402,F401  (batchasr first: BLAS preload before mlx)
from batchasr.models.blocks import generate as gen  # noqa: E402
import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.bench import synthetic_clips  # noqa: E402


def compiled_decode_forward(llm):
    """The LLM forward of Model.__call__ (L new positions, all logits) with each block's
    post-attention half (norm + MLP + residual) mx.compile'd; attention and the KV cache (host
    state, growing shapes) stay eager."""
    halves = []
    for b in llm.layers:
        def half(h, b=b):
            return h + b.mlp(b.post_attention_layernorm(h))
        halves.append(mx.compile(half, inputs=b.state, shapeless=True))

    def forward(y, cache, mask):
        h = llm.embed(y)
        for b, c, half in zip(llm.layers, cache, halves):
            h = half(h + b.self_attn(b.input_layernorm(h), mask, c))
        return llm.logits(llm.model.norm(h))

    return forward


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--audio-s", type=float, default=600)
    ap.add_argument("--batch-seconds", type=float, default=300)
    ap.add_argument("--dtype", default="bfloat16", help="LLM dtype (encoder/adaptor stay fp32)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--tokens-per-s", type=float, default=4.0,
                    help="forced new tokens per second of audio (no stop token)")
    ap.add_argument("--compile-step", action="store_true",
                    help="decode steps: mx.compile each block's norm+MLP half (shapeless)")
    args = ap.parse_args(argv)

    from batchasr.batches.plan import plan_batches
    from batchasr.models.loader import load_model
    from batchasr.runner.device import setup_device
    from batchasr.models import fun_asr_nano as fan
    from batchasr.models.blocks.guard import GuardOptions

    setup_device(args.device)
    t_load = time.perf_counter()
    asr = load_model("fun-asr-nano", weights="dummy", dtype=getattr(mx, args.dtype))
    load_s = time.perf_counter() - t_load
    print(f"model loaded in {load_s:.1f} s", file=sys.stderr, flush=True)
    # as bench_nano: a fixed number of new tokens per clip, the stop token suppressed
    asr.stop_on_eos = False
    asr.guard = GuardOptions(max_tokens_per_second=args.tokens_per_s, min_tokens=1,
                             detect_loops=False)
    model, llm = asr.model, asr.model.llm
    stop_ids = asr.eos_ids if asr.stop_on_eos else []
    if args.compile_step:
        cforward = compiled_decode_forward(llm)
        forward = lambda y, cache, mask: cforward(y, cache, mask)
    else:
        forward = lambda y, cache, mask: llm(y, cache=cache, mask=mask)

    waves, total = synthetic_clips(args.audio_s)
    batches = plan_batches([len(w) / 16000 for w in waves], max_total=args.batch_seconds)
    times = defaultdict(float)
    dec = defaultdict(float)  # decode detail

    def stage(name, fn):
        t = time.perf_counter()
        out = fn()
        if isinstance(out, (mx.array, tuple, list)):
            mx.eval(out)
        times[name] += time.perf_counter() - t
        return out

    def decode(prompts, budgets):
        """generate_continuous with timers (prefill -> stage 4, steps -> stage 5)."""
        sampler = asr.sampler()
        max_batch = asr.max_batch
        results = [gen.GenerationResult() for _ in prompts]
        waiting = deque(i for i in range(len(prompts)) if budgets[i] > 0)
        for i in range(len(prompts)):
            if budgets[i] <= 0:
                results[i].finish_reason = "length"
        cache, uids, y = None, [], None
        while waiting or uids:
            if waiting and len(uids) < max_batch:  # admit
                t = time.perf_counter()
                take = [waiting.popleft() for _ in range(min(len(waiting), max_batch - len(uids)))]
                logits, new_cache = gen.prefill(llm, [prompts[i] for i in take])
                y_new = sampler(logits, [(i, 0) for i in take])
                mx.eval(y_new, logits, [c.state for c in new_cache])
                if cache is None:
                    cache, y, uids = new_cache, y_new, take
                else:
                    for c, nc in zip(cache, new_cache):
                        c.extend(nc)
                    y, uids = mx.concatenate([y, y_new]), uids + take
                times["4 prefill"] += time.perf_counter() - t
            t0 = time.perf_counter()
            steps = [(u, len(results[u].tokens) + 1) for u in uids]
            nxt = sampler(forward(y[:, None], cache, gen.batch_mask(cache[0], 1))[:, -1, :],
                          steps)
            t1 = time.perf_counter()
            mx.async_eval(nxt)
            t2 = time.perf_counter()
            toks = y.tolist()
            t3 = time.perf_counter()
            dec["steps"] += 1
            dec["live_rows"] += len(uids)
            keep = [r for r, (u, tok) in enumerate(zip(uids, toks))
                    if not gen._finish(results[u], tok, stop_ids, budgets[u], None, u)]
            if len(keep) < len(uids):
                if keep:
                    for c in cache:
                        c.filter(keep)
                    nxt = nxt[mx.array(keep, dtype=mx.int32)]
                    uids = [uids[r] for r in keep]
                else:
                    cache, uids = None, []
            y = nxt
            t4 = time.perf_counter()
            dec["build_s"] += t1 - t0
            dec["submit_s"] += t2 - t1
            dec["wait_s"] += t3 - t2
            dec["retire_s"] += t4 - t3
            times["5 decode steps"] += t4 - t0
        t = time.perf_counter()
        mx.eval(y)  # the last step's unused tokens: still computed (as in generate_continuous)
        dec["wait_s"] += time.perf_counter() - t
        times["5 decode steps"] += time.perf_counter() - t
        return results

    def run_batch(ws):
        """One batch as FunASRNanoASR.transcribe runs it, stage by stage -> token ids per clip."""
        n = len(ws)
        lfr_lens = [asr.frontend_lengths(w) for w in ws]
        order = sorted((i for i in range(n) if lfr_lens[i] > 0), key=lambda i: lfr_lens[i])
        prompts, items = [], []
        for s in range(0, len(order), asr.encode_batch):
            chunk = order[s:s + asr.encode_batch]
            feats, lens = stage("1 frontend", lambda: asr.features([ws[i] for i in chunk]))
            _, adapted, olens, _ = stage("2 encoder+adaptor", lambda: asr.encode(feats, lens))

            def build_prompts():
                out = []
                for r, i in enumerate(chunk):
                    n_speech = min(fan.speech_token_count(lfr_lens[i], model.use_low_frame_rate),
                                   int(olens[r].item()))
                    out.append(asr.prompt_embeddings(adapted[r], n_speech, None))
                    items.append(i)
                return out
            prompts += stage("3 prompt embeddings", build_prompts)
        budgets = [asr.guard.budget(len(ws[i]) / asr.sample_rate, asr.max_new_tokens)
                   for i in items]
        outs = decode(prompts, budgets)
        ids = [None] * n
        for i, out in zip(items, outs):
            ids[i] = out.tokens
        return ids

    first_ids = None
    for rep in range(args.repeats + 1):
        if rep == 1:
            times.clear()
            dec.clear()
            mx.reset_peak_memory()
            t_all = time.perf_counter()
        for k, b in enumerate(batches):
            ids = run_batch([waves[i] for i in b])
            if k == 0:
                first_ids = ids
        print(f"pass {rep} done ({'warm-up' if rep == 0 else 'timed'})", file=sys.stderr,
              flush=True)
    wall = time.perf_counter() - t_all
    peak = mx.get_peak_memory()
    n = args.repeats
    new_tokens = sum(asr.guard.budget(len(w) / asr.sample_rate, asr.max_new_tokens)
                     for w in waves)
    steps = dec["steps"] / n
    decode_s = times["5 decode steps"] / n

    # sanity check: the first batch's ids against asr.transcribe under the same budgets
    ws = [waves[i] for i in batches[0]]
    ref = [[t.id for t in r.tokens] for r in asr.transcribe(ws)]
    match = ref == [list(x) for x in first_ids]

    print(json.dumps({
        "device": str(mx.default_device()), "dtype": args.dtype,
        "compile_step": args.compile_step, "batch_seconds": args.batch_seconds,
        "tokens_per_s_of_audio": args.tokens_per_s, "max_batch": asr.max_batch,
        "encode_batch": asr.encode_batch, "load_s": round(load_s, 1),
        "peak_memory_gb": round(peak / 1e9, 2),
        "env": {k: v for k, v in os.environ.items() if k.startswith("MLX_")},
        "audio_s": round(total, 1), "clips": len(waves), "batches": len(batches),
        "rows_per_batch": [len(b) for b in batches], "repeats": n,
        "wall_per_pass_s": round(wall / n, 4), "rtfx": round(total * n / wall, 2),
        "new_tokens": new_tokens, "tokens_per_s": round(new_tokens * n / wall, 1),
        "stages_s": {k: round(v / n, 4) for k, v in sorted(times.items())},
        "decode": {
            "steps": int(steps), "decode_s": round(decode_s, 4),
            "ms_per_step": round(1000 * decode_s / steps, 2) if steps else None,
            "mean_live_batch": round(dec["live_rows"] / dec["steps"], 2) if steps else None,
            "new_tokens": new_tokens,
            "tokens_per_decode_s": round(new_tokens / decode_s, 1) if decode_s else None,
            "split_s": {k: round(dec[k] / n, 4)
                        for k in ("build_s", "submit_s", "wait_s", "retire_s")},
            "split_ms_per_step": {k.replace("_s", "_ms"): round(1000 * dec[k] / dec["steps"], 2)
                                  for k in ("build_s", "submit_s", "wait_s", "retire_s")}
            if steps else None},
        "check_first_batch_matches_transcribe": match,
    }))


if __name__ == "__main__":
    main()
