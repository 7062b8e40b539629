#!/usr/bin/env python3
"""fsmn-vad's network on the MLX device against the numpy network the readers run.

For each WAV: the numpy VAD (as a reader runs it) gives the reference segments, per-frame
silence posteriors and the time of its network; the same stream with the device network
(`batchasr.models.fsmn_vad_device.DeviceNetwork`, one stream) must give the same segments.
Then all files at once, as one device process would serve 16 readers: the frontend's
features chunk by chunk (numpy), and per 60 s chunk index one batched device call over every
file (padded to the longest), timed with every result forced to the host. Each TF32 setting
runs in a process of its own (MLX reads MLX_ENABLE_TF32 once).

    python benchmarks/fsmn_device.py --fsmn-vad <published folder> \\
        --wavs /tmp/batchasr-longform/audio-16x20min
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _features(vad, audio):
    """The stream's frontend over the file, chunk by chunk: [(feats (T, D), is_final)]."""
    from batchasr.models.blocks.kaldi_fbank import OnlineFrontend
    from batchasr.models.fsmn_vad import CHUNK_MS

    front = OnlineFrontend(vad.frontend_conf, vad.cmvn)
    chunk = int(CHUNK_MS * vad.sample_rate / 1000)  # the stream's chunks
    out = []
    for a in range(0, max(len(audio), 1), chunk):
        part = audio[a : a + chunk]
        final = a + chunk >= len(audio)
        feats, _ = front(part, final)
        if feats is not None:
            out.append(feats)
    return out


def arm(args) -> dict:
    """One TF32 setting (this process): exactness per file, then the batched timing."""
    import mlx.core as mx
    import numpy as np
    import soundfile as sf

    from batchasr.models.fsmn_vad import DYNAMIC_SPEECH_NOISE_THRES
    from batchasr.models.fsmn_vad_device import DeviceNetwork
    from batchasr.models.vads import open_vad

    vad = open_vad(args.fsmn_vad)
    ids = list(vad.options.sil_pdf_ids)
    device_net = DeviceNetwork(vad.model)
    wavs = sorted(Path(args.wavs).glob("*.wav"))[: args.files] if Path(args.wavs).is_dir() \
        else [Path(args.wavs)]
    files, numpy_s, audio_s = [], 0.0, 0.0
    feats_all = []
    for wav in wavs:
        audio, _ = sf.read(wav, dtype="float32")
        audio_s += len(audio) / vad.sample_rate
        vad.network = vad.own_network
        t = time.perf_counter()
        st = vad.stream(keep_probs=True)
        ref = st.feed(audio) + st.finish()
        whole_s = time.perf_counter() - t
        ref_probs = np.concatenate(st.frame_probs)
        vad.network = device_net
        st = vad.stream(keep_probs=True)
        got = st.feed(audio) + st.finish()
        got_probs = np.concatenate(st.frame_probs)
        # frames whose speech test (1 - p >= p + threshold, the schedule's 0.5) differs
        speech = [(1 - p) >= p + DYNAMIC_SPEECH_NOISE_THRES for p in (ref_probs, got_probs)]
        flips = int(np.sum(speech[0] != speech[1]))
        files.append({"file": wav.name, "segments": len(ref), "identical": ref == got,
                      "max_abs_diff": float(np.abs(ref_probs - got_probs).max()),
                      "decision_flips": flips, "numpy_stream_s": round(whole_s, 3)})
        numpy_s += whole_s
        feats_all.append(_features(vad, audio))
        print(json.dumps(files[-1]), flush=True)
    # batched: per chunk index, every file that has that chunk, padded to the longest
    n_chunks = max(len(f) for f in feats_all)
    cache = device_net.make_cache(len(feats_all))
    mx.eval(cache)
    t = time.perf_counter()
    for c in range(n_chunks):
        rows = [f[c] if c < len(f) else np.zeros((0, f[0].shape[1]), np.float32)
                for f in feats_all]
        T = max(len(r) for r in rows)
        x = np.zeros((len(rows), T, rows[0].shape[1]), np.float32)
        for i, r in enumerate(rows):
            x[i, : len(r)] = r
        probs, cache = device_net.silence(mx.array(x), cache, ids, [len(r) for r in rows])
        mx.eval(probs, cache)
        np.array(probs)
    batched_s = time.perf_counter() - t
    return {"device": str(mx.default_device()), "tf32": os.environ.get("MLX_ENABLE_TF32", "1"),
            "files": len(files), "audio_s": round(audio_s, 1),
            "identical_files": sum(f["identical"] for f in files),
            "max_abs_diff": max(f["max_abs_diff"] for f in files),
            "numpy_vad_s": round(numpy_s, 3), "device_network_batched_s": round(batched_s, 3),
            "chunks": n_chunks, "per_file": files}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fsmn-vad", required=True, help="an official fsmn-vad folder")
    ap.add_argument("--wavs", required=True, help="a WAV, or a folder of them")
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--tf32", default="0,1", help="MLX_ENABLE_TF32 settings, one process each")
    ap.add_argument("--arm", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.arm:
        print("ARM " + json.dumps(arm(args)), flush=True)
        return
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as in a reader process
    record = {"metric": "fsmn_device", "arms": [],
              "command": "python benchmarks/fsmn_device.py " + " ".join(argv or sys.argv[1:])}
    for tf32 in args.tf32.split(","):
        env = dict(os.environ, MLX_ENABLE_TF32=tf32)
        out = subprocess.run([sys.executable, __file__, "--arm", "--fsmn-vad", args.fsmn_vad,
                              "--wavs", args.wavs, "--files", str(args.files)],
                             env=env, capture_output=True, text=True)
        sys.stderr.write(out.stderr)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("ARM ")]
        if out.returncode or not lines:
            raise SystemExit(f"arm MLX_ENABLE_TF32={tf32} failed ({out.returncode})")
        a = json.loads(lines[-1][4:])
        print(json.dumps({k: v for k, v in a.items() if k != "per_file"}), flush=True)
        record["arms"].append(a)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
