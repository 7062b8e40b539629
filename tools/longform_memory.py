"""Peak memory of `batchasr run` on long recordings: does it grow with the file's length?

Synthesises recordings of the given lengths from the real (espeak-ng) sample clips in
sample_manifests/audio/, joined with pauses of 0.4-4 s and, every 30 minutes, 10 minutes of
silence (a VAD holds a finished segment back until the next one ends, so silence is what
would make a naive runner keep audio). Files are written block by block (16 kHz PCM_16 WAV)
to --out (default /tmp), never held whole. Then runs, for each file, one `batchasr run` in a
fresh job folder under `/usr/bin/time -v` and prints its peak resident memory:

    .venv/bin/python tools/longform_memory.py 600 10800
    .venv/bin/python tools/longform_memory.py 600 10800 -- --punc tests/fixtures/punc/zh

Arguments after `--` go to `batchasr run` (default model: the fixture Paraformer).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ["en_16k_mono.wav", "zh_44k_stereo.flac", "en_8k.wav", "zh_22k.ogg", "en_24bit.wav"]
SR = 16000


def synthesize(path: Path, seconds: float, seed: int = 0) -> list[tuple[float, float]]:
    """Write a recording of ``seconds``; returns its speech spans (start_s, end_s)."""
    sys.path.insert(0, str(ROOT))
    from batchasr.audio.decode import load

    audio = ROOT / "sample_manifests" / "audio"
    clips = [load(audio / name) for name in CLIPS] + [load(audio / "long_45s.ogg")]
    rng = np.random.default_rng(seed)
    total, n, k, spans, next_quiet = int(seconds * SR), 0, 0, [], 1800 * SR
    with sf.SoundFile(path, "w", SR, 1, subtype="PCM_16") as f:
        while n < total:
            pause = rng.uniform(0.4, 4.0)
            if n >= next_quiet:  # every 30 minutes, 10 minutes of silence
                pause, next_quiet = 600.0, next_quiet + 1800 * SR
            gap = np.zeros(int(pause * SR), np.float32)
            clip = clips[k % len(clips)]
            for piece, speech in ((gap, False), (clip, True)):
                piece = piece[: total - n]
                if speech and len(piece):
                    spans.append((n / SR, (n + len(piece)) / SR))
                f.write(piece)
                n += len(piece)
            k += 1
    return spans


def peak_rss_mb(args: list[str]) -> tuple[float, float, str]:
    """(peak RSS in MB, wall seconds, stderr) of a command run under /usr/bin/time -v."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return kb / 1024, wall, proc.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("seconds", type=float, nargs="+", help="lengths of the recordings")
    ap.add_argument("--out", type=Path, default=Path("/tmp/batchasr-longform"))
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = ap.parse_args(argv[:cut])
    extra = argv[cut + 1 :]
    if "--model" not in extra:
        extra += ["--model", str(ROOT / "tests" / "fixtures" / "paraformer" / "zh_mixed")]
    args.out.mkdir(parents=True, exist_ok=True)
    for seconds in args.seconds:
        wav = args.out / f"long_{int(seconds)}s.wav"
        if not wav.exists():
            synthesize(wav, seconds)
        manifest = args.out / f"long_{int(seconds)}s.csv"
        manifest.write_text(f"id,path\nlong,{wav}\n")
        job = args.out / f"job_{int(seconds)}s_{time.strftime('%H%M%S')}"
        mb, wall, err = peak_rss_mb([sys.executable, "-m", "batchasr.cli", "run", str(manifest),
                                     "--job-dir", str(job), "--no-progress", *extra])
        summary = [line for line in err.splitlines() if " done, " in line]
        print(f"{seconds / 60:7.1f} min  peak RSS {mb:7.1f} MB  wall {wall:6.1f} s  "
              f"{summary[-1] if summary else ''}", flush=True)


if __name__ == "__main__":
    main()
