#!/usr/bin/env python3
"""A large job of short clips through the `batchasr run` command, as a user runs it.

The bench's clips (bench.py's 2-20 s speech-like WAVs, 1800 s in 165 files) listed again and
again under new ids until the manifest holds `--hours` of audio; then `batchasr run <manifest>
--model <model> --weights dummy --dtype <dtype>` with the defaults (reader processes, batch
budget) and any `--run-args`, GPU busy % sampled by nvidia-smi over the whole command (model
load included). The runner's own summary line gives RTFx (load excluded) and its time per
stage; the record goes to benchmarks/results.json.

    python benchmarks/bigjob.py --hours 50
    python benchmarks/bigjob.py --hours 0.2 --model tests/fixtures/paraformer/zh_mixed --weights checkpoint
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench import append_results, make_audio, machine  # noqa: E402
from benchmarks.gpu_busy import GPUBusy  # noqa: E402

SUMMARY = re.compile(r"(\d+) done, (\d+) failed, ([\d.]+) h of audio in ([\d.]+) s "
                     r"\(([\d.]+)x real time\)(.*)")


def big_manifest(folder: Path, hours: float) -> tuple[Path, int, float]:
    """The clips of bench.make_audio repeated under new ids up to ``hours``."""
    import soundfile as sf

    clips = make_audio(folder / "audio-1800s", 1800.0)
    rows = [line.split(",", 1) for line in clips.read_text().splitlines()[1:]]
    durations = [sf.info(path).duration for _, path in rows]
    out, total, n, k = [], 0.0, 0, 0
    while total < hours * 3600:
        for (cid, path), d in zip(rows, durations):
            out.append(f"r{k:04d}_{cid},{path}")
            total += d
            n += 1
        k += 1
    manifest = folder / f"big-{hours:g}h.csv"
    manifest.write_text("id,path\n" + "\n".join(out) + "\n")
    return manifest, n, total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=50.0)
    ap.add_argument("--model", default="paraformer-zh")
    ap.add_argument("--weights", default="dummy")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--run-args", default="", help="more `batchasr run` options, one string")
    ap.add_argument("--workdir", default="/tmp/batchasr-bigjob")
    ap.add_argument("--no-append", action="store_true", help="do not write results.json")
    ap.add_argument("--profile", metavar="FILE", help="sample the run's threads with py-spy "
                    "(raw stacks to FILE; needs the py-spy package)")
    ap.add_argument("--native", action="store_true",
                    help="with --profile: C/C++ frames too (where MLX's launches spend it)")
    args = ap.parse_args(argv)

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    manifest, items, audio_s = big_manifest(work, args.hours)
    job = work / "job"
    shutil.rmtree(job, ignore_errors=True)
    cmd = [sys.executable, "-m", "batchasr.cli", "run", str(manifest), "--model", args.model,
           "--weights", args.weights, "--dtype", args.dtype, "--job-dir", str(job),
           "--no-progress", *args.run_args.split()]
    if args.profile:
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        cmd = [spy, "record", "-f", "raw", "-r", "100",
               "--threads", "--idle",  # native frames need the process paused per sample
               *(["--native"] if args.native else ["--nonblocking"]),
               "-o", args.profile, "--", *cmd]
    t = time.perf_counter()
    with GPUBusy() as busy:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t
    sys.stderr.write(proc.stderr[-4000:])
    found = [SUMMARY.search(line) for line in proc.stderr.splitlines()]
    found = [m for m in found if m]
    if proc.returncode not in (0, 3) or not found:
        raise SystemExit(f"run failed (exit {proc.returncode})")
    m = found[-1]
    record = dict(
        metric="rtfx_big_job", value=float(m.group(5)), done=int(m.group(1)),
        failed=int(m.group(2)), audio_h=float(m.group(3)), runner_wall_s=float(m.group(4)),
        command_wall_s=round(wall, 2), rtfx_command=round(audio_s / wall, 1),
        runner_stages=m.group(6).strip("; "), gpu_busy_percent=busy.percent, items=items,
        model=args.model, weights=args.weights, dtype=args.dtype, machine=machine(),
        env={k: v for k, v in os.environ.items() if k.startswith("BATCHASR_")},
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        command="python benchmarks/" + " ".join([Path(sys.argv[0]).name] + sys.argv[1:]))
    print(json.dumps(record), flush=True)
    if not args.no_append:
        append_results([record])


if __name__ == "__main__":
    main()
