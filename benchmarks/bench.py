#!/usr/bin/env python3
"""Speed of batchasr next to the official FunASR, measured in the same run.

Full-size architectures with random ("dummy") weights, synthetic speech-like audio with a
realistic duration mix (2-20 s utterances), written as 16 kHz WAV files:

* batchasr end to end: `run_job` over a manifest of the files (decode -> features -> model
  -> Parquet + SRT outputs -> queue), the way `batchasr run` works; time per stage;
* batchasr in memory: `model.transcribe` over length-sorted batches of the decoded arrays
  (the same starting point as the baseline);
* the baseline: the official funasr 1.4.16 on the same model folder (same weights) and the
  same audio (benchmarks/baseline_funasr.py, in a subprocess with torch).

Each figure is appended to benchmarks/results.json with the date, machine, command and the
ratio to the baseline. Examples:

    python benchmarks/bench.py paraformer --audio-s 1800 --baseline          # GPU machine
    python benchmarks/bench.py paraformer --audio-s 160 --device cpu --baseline --ncpu 2
    python benchmarks/bench.py sensevoice --audio-s 160 --device cpu --baseline --ncpu 2
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import batchasr  # noqa: E402,F401  (first: preloads the CPU BLAS before mlx)
import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.gpu_busy import GPUBusy  # noqa: E402

FS = 16000
RESULTS = ROOT / "benchmarks" / "results.json"


def speechlike(seconds: float, rng) -> np.ndarray:
    n = int(seconds * FS)
    t = np.arange(n) / FS
    f0 = rng.uniform(100, 220) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t))
    phase = 2 * np.pi * np.cumsum(f0) / FS
    x = sum(np.sin(h * phase) / h for h in range(1, 11))
    env = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6.3)))
    x = x * env + 0.03 * rng.standard_normal(n)
    return (0.3 * x / (np.abs(x).max() + 1e-9)).astype(np.float32)


def synthetic_clips(total_s: float, seed: int = 0, dmin=2.0, dmax=20.0):
    """Speech-like clips of uniform dmin-dmax s adding up to total_s, in memory, and their
    total duration (the profilers' audio; make_audio writes the same mix as WAV files)."""
    rng = np.random.default_rng(seed)
    waves, total = [], 0.0
    while total < total_s:
        d = float(rng.uniform(dmin, dmax))
        waves.append(speechlike(d, rng))
        total += d
    return waves, total


def make_audio(folder: Path, total_s: float, seed: int = 0, dmin=2.0, dmax=20.0) -> Path:
    """WAV files of 2-20 s utterances adding up to total_s, plus their manifest."""
    import soundfile as sf

    manifest = folder / "manifest.csv"
    if manifest.exists():
        return manifest
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, total, i = [], 0.0, 0
    while total < total_s:
        d = round(float(rng.uniform(dmin, dmax)), 3)
        path = folder / f"utt{i:05d}.wav"
        sf.write(path, speechlike(d, rng), FS, subtype="PCM_16")
        rows.append(f"{path.name},{path}")
        total += d
        i += 1
    manifest.write_text("id,path\n" + "\n".join(rows) + "\n")
    return manifest


def machine() -> str:
    gpu = ""
    if mx.default_device() == mx.gpu:
        try:
            gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            gpu = "Apple GPU" if sys.platform == "darwin" else "GPU"
    return f"{gpu or platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def timed_job(asr, manifest: Path, args, tag: str):
    """`run_job` over the manifest twice (fresh job folders): the first pass warms kernels,
    compiled graphs and caches for every batch shape, as the baseline's warm-up pass does;
    the second is timed. Returns its RunSummary and the GPU busy % over it (None without
    nvidia-smi)."""
    fresh_job(asr, manifest, args, f"job-{tag}-warmup")
    return fresh_job(asr, manifest, args, f"job-{tag}-timed")


def fresh_job(asr, manifest: Path, args, name: str):
    """`run_job` over the manifest in a new job folder ``name`` of ``args.workdir``, with the
    bench's job options. Returns its RunSummary and the GPU busy % over it."""
    return job_in_new_folder(asr, manifest, Path(args.workdir) / name,
                             batch_seconds=job_batch_seconds(args), readers=args.readers,
                             reader_processes=args.reader_processes,
                             subtitle_formats=subtitle_formats(args))


def job_in_new_folder(asr, manifest: Path, job: Path, **options):
    """`run_job(job, asr, progress=False, **options)` over the manifest, the folder ``job``
    made anew; peak memory counted from its start. Returns its RunSummary and the GPU busy %
    over it (None without nvidia-smi)."""
    from batchasr.manifest.read import open_manifest
    from batchasr.queue.store import JobQueue
    from batchasr.runner.local import run_job

    shutil.rmtree(job, ignore_errors=True)
    job.mkdir(parents=True)
    with JobQueue(job) as q:
        q.enqueue(open_manifest(manifest))
    mx.reset_peak_memory()
    with GPUBusy() as busy:
        summary = run_job(job, asr, progress=False, **options)
    return summary, busy.percent


def job_batch_seconds(args) -> float | None:
    """The end-to-end job's batch budget: ``--job-batch-seconds`` ("auto": None, the
    runner's default for the model on this device), else ``--batch-seconds``."""
    if args.job_batch_seconds is None:
        return args.batch_seconds
    return None if args.job_batch_seconds == "auto" else float(args.job_batch_seconds)


def resolved_job_batch_seconds(args, asr) -> float:
    """The budget the end-to-end job ran with (what ``job_batch_seconds`` left to the runner)."""
    from batchasr.runner.device import default_batch_seconds

    return job_batch_seconds(args) or default_batch_seconds("auto", asr)


def subtitle_formats(args) -> tuple[str, ...]:
    """The job's subtitle formats (``--subtitles``; "none" writes none)."""
    return tuple(f for f in args.subtitles.split(",") if f and f != "none")


def decoded_batches(manifest: Path, batch_seconds: float):
    """The manifest's audio decoded in memory and planned into length-sorted batches."""
    from batchasr.audio.decode import load
    from batchasr.batches.plan import plan_batches

    paths = [line.split(",", 1)[1] for line in manifest.read_text().splitlines()[1:]]
    waves = [load(p) for p in paths]
    batches = plan_batches([len(w) / FS for w in waves], max_total=batch_seconds)
    return waves, sum(len(w) for w in waves) / FS, batches


class _Piece:
    def __init__(self, audio):
        self.audio, self.language, self.options = audio, None, ()


class _CountTokens:
    """A ModelStage sink that counts the tokens of the results."""

    def __init__(self):
        self.tokens = 0

    def is_failed(self, piece):
        return False

    def model_failed(self, piece, error):
        raise error

    def record(self, piece, transcript):
        self.tokens += len(transcript.tokens)

    def flush(self):
        pass


def pipelined_walls(asr, waves, batches, repeats: int) -> tuple[list[float], int]:
    """Wall times of ``repeats`` passes over ``batches`` through the runner's ModelStage, as
    `run` keeps them in flight (GPU: batch k+1 on the device while batch k's host work runs;
    CPU: ``cpu_lanes()`` batches at once on threads of their own), and the tokens of the last
    pass."""
    from batchasr.runner.device import cpu_lanes
    from batchasr.runner.stages.model import ModelStage

    walls = []
    for _ in range(repeats):
        sink = _CountTokens()
        stage = ModelStage(asr, sink, lanes=cpu_lanes())
        t = time.perf_counter()
        for b in batches:
            stage.step([_Piece(waves[i]) for i in b])
        stage.shutdown()
        walls.append(time.perf_counter() - t)
        stage.close()
    return walls, sink.tokens


def end_to_end_record(s, **extra) -> dict:
    """The record of a timed ``run_job`` (its RunSummary ``s``)."""
    return dict(metric="rtfx_end_to_end", value=round(s.audio_s / s.wall_s, 2),
                wall_s=round(s.wall_s, 3), stages_s=dict(
                    model=round(s.model_s, 3), waiting_for_audio=round(s.wait_s, 3),
                    decode_threads=round(s.decode_s, 3), write_thread=round(s.write_s, 3),
                    first_batch=round(s.first_batch_s, 3), drain=round(s.drain_s, 3)),
                batches=s.batches, **extra, done=s.done,
                peak_memory_gb=round(mx.get_peak_memory() / 1e9, 3),
                peak_rss_gb=round(peak_rss_gb(), 3))


def bench_paraformer(args, model_dir: Path | None, manifest: Path, dtype: str) -> list[dict]:
    from batchasr.models.loader import load_model

    out = []
    asr = load_model(model_dir or "paraformer-zh", weights="checkpoint" if model_dir else "dummy",
                     dtype=getattr(mx, dtype))
    waves, audio_s, batches = decoded_batches(manifest, args.batch_seconds)
    # warm-up over every batch shape (kernels, plans, allocator), as the baseline's warm-up
    # pass; timed too: against a warm pass it is what a job's first use of its shapes costs
    t = time.perf_counter()
    for b in batches:
        asr.transcribe([waves[i] for i in b])
    cold = time.perf_counter() - t
    mx.reset_peak_memory()

    # in memory: same starting point as the baseline; one batch in flight, as the runner
    # keeps it (batch k+1 on the device while batch k's host work runs)
    walls, n_tok = pipelined_walls(asr, waves, batches, args.repeats)
    wall = sorted(walls)[len(walls) // 2]
    out.append(dict(metric="rtfx_in_memory", value=round(audio_s / wall, 2),
                    wall_s=[round(w, 3) for w in walls], tokens=n_tok,
                    cold_pass_s=round(cold, 3), batches=len(batches),
                    peak_memory_gb=round(mx.get_peak_memory() / 1e9, 3)))

    # end to end through the job runner, from the files
    s, busy = timed_job(asr, manifest, args, f"paraformer-{dtype}")
    out.append(end_to_end_record(s, gpu_busy_percent=busy, padding=round(s.padding, 3),
                                 job_batch_budget_s=resolved_job_batch_seconds(args, asr),
                                 reader_processes=s.reader_processes))
    for r in out:
        r["audio_s"] = round(audio_s, 2)
    return out


def bench_sensevoice(args, model_dir: Path | None, manifest: Path, dtype: str) -> list[dict]:
    """SenseVoice-Small, full size: the official folder make-sensevoice writes (the baseline's
    weights) or dummy weights without one; language auto, no ITN, no timestamps (the official
    call's options). In memory (one batch in flight, as the runner keeps it) and end to end."""
    from batchasr.models.loader import load_model

    asr = load_model(model_dir or "sensevoice-small",
                     weights="checkpoint" if model_dir else "dummy", dtype=getattr(mx, dtype))
    asr.language, asr.itn, asr.timestamps = "auto", False, False
    waves, audio_s, batches = decoded_batches(manifest, args.batch_seconds)
    for b in batches:  # warm-up over every batch shape, as the baseline's warm-up pass
        asr.transcribe([waves[i] for i in b])
    mx.reset_peak_memory()
    walls, n_tok = pipelined_walls(asr, waves, batches, args.repeats)
    wall = sorted(walls)[len(walls) // 2]
    out = [dict(metric="rtfx_in_memory", value=round(audio_s / wall, 2),
                wall_s=[round(w, 3) for w in walls], tokens=n_tok, batches=len(batches),
                peak_memory_gb=round(mx.get_peak_memory() / 1e9, 3))]
    s, busy = timed_job(asr, manifest, args, f"sensevoice-{dtype}")
    out.append(end_to_end_record(s, gpu_busy_percent=busy, padding=round(s.padding, 3),
                                 job_batch_budget_s=resolved_job_batch_seconds(args, asr),
                                 reader_processes=s.reader_processes))
    for r in out:
        r["audio_s"] = round(audio_s, 2)
    return out


def run_sensevoice_baseline(args, model_dir: Path, audio_dir: Path,
                            manifest: Path) -> dict | None:
    """The official SenseVoice on the same folder and audio: generate(list of waveforms,
    batch_size=N) with N utterances of the mean duration per batch_seconds, in file order and
    sorted longest first; the faster of the two is kept."""
    import soundfile as sf

    paths = [line.split(",", 1)[1] for line in manifest.read_text().splitlines()[1:]]
    mean_s = sum(sf.info(p).duration for p in paths) / len(paths)
    n = max(1, int(args.batch_seconds // mean_s))
    best = None
    for sort in (False, True):
        cmd = [args.baseline_python, str(ROOT / "benchmarks" / "baseline_funasr.py"),
               "run-sensevoice", str(model_dir), str(audio_dir), "--batch-size", str(n),
               "--device", "cpu" if args.device == "cpu" else "cuda:0",
               "--repeats", str(args.repeats), "--ncpu", str(args.ncpu)] + (["--sort"] if sort else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print("baseline path:", json.dumps(r), flush=True)
        if best is None or r["rtfx"] > best["rtfx"]:
            best = r
    return best


def bench_nano(args, manifest: Path, dtype: str) -> list[dict]:
    """Fun-ASR-Nano, full size, dummy weights, a fixed number of new tokens per clip
    (args.tokens_per_s x seconds; the stop token is suppressed, as the official baseline's
    logits processor forces it): RTFx and LLM tokens/s per decoding mode, and end to end."""
    from batchasr.models.loader import load_model
    from batchasr.models.blocks.guard import GuardOptions

    asr = load_model("fun-asr-nano", weights="dummy", dtype=getattr(mx, dtype))
    asr.stop_on_eos = False
    asr.guard = GuardOptions(max_tokens_per_second=args.tokens_per_s, min_tokens=1,
                             detect_loops=False)
    waves, audio_s, batches = decoded_batches(manifest, args.batch_seconds)
    out = []
    for mode in args.modes.split(","):
        asr.decode_mode = mode
        for b in batches:  # warm-up over every batch shape, as the baseline's warm-up pass
            asr.transcribe([waves[i] for i in b])
        mx.reset_peak_memory()
        t = time.perf_counter()
        n_tok = 0
        for b in batches:
            n_tok += sum(len(r.tokens) for r in asr.transcribe([waves[i] for i in b]))
        wall = time.perf_counter() - t
        out.append(dict(metric=f"rtfx_in_memory_{mode}", value=round(audio_s / wall, 2),
                        wall_s=round(wall, 3), tokens=n_tok,
                        llm_tokens_per_s=round(n_tok / wall, 1),
                        peak_memory_gb=round(mx.get_peak_memory() / 1e9, 3)))
    asr.decode_mode = "continuous"
    s, busy = timed_job(asr, manifest, args, f"nano-{dtype}")
    out.append(end_to_end_record(s, gpu_busy_percent=busy, padding=round(s.padding, 3),
                                 job_batch_budget_s=resolved_job_batch_seconds(args, asr)))
    for r in out:
        r["audio_s"] = round(audio_s, 2)
    return out


def run_nano_baseline(args) -> dict | None:
    """The official funasr Fun-ASR-Nano on the same architecture, audio mix and token counts
    (benchmarks/official/funasr_nano_gpu.py: random weights of its own, stub VAD, forced
    lengths), batched as the official code batches without a CTC decoder."""
    out = Path(args.workdir) / "nano_baseline.json"
    cmd = [args.baseline_python, str(ROOT / "benchmarks" / "official" / "funasr_nano_gpu.py"),
           "--budgets", str(int(args.batch_seconds)), "--repeats", "1",
           "--total-audio-s", str(args.audio_s), "--tokens-per-s", str(args.tokens_per_s),
           "--out", str(out), "--device", "cpu" if args.device == "cpu" else "cuda:0"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        print(proc.stderr[-3000:], file=sys.stderr)
        return None
    rec = json.loads(out.read_text())
    r = [x for x in rec["results"] if "error" not in x]
    if not r:
        print(json.dumps(rec["results"])[-2000:], file=sys.stderr)
        return None
    r = r[0]
    return {"implementation": f"funasr {rec['funasr']} (PyTorch {rec['torch']})",
            "path": r["path"] + f", batch_size_s={r['batch_size_s']}", "rtfx": r["rtfx_median"],
            "llm_tokens_per_s": r["llm_new_tokens_per_wall_s"], "audio_s": r["audio_s"],
            "new_tokens": r["new_tokens"], "peak_gpu_memory_gib": r["peak_mem_allocated_gib"]}


def run_baseline(args, model_dir: Path, audio_dir: Path) -> dict | None:
    """The official code's faster path on this device: its VAD path (sorted, packed by
    batch_size_s) or a list batched by count; both are timed and the better one is kept."""
    best = None
    for path in ("vad", "list"):
        r = _run_baseline_path(args, model_dir, audio_dir, path)
        if r and (best is None or r["rtfx"] > best["rtfx"]):
            best = r
    return best


def _run_baseline_path(args, model_dir: Path, audio_dir: Path, path: str) -> dict | None:
    cmd = [args.baseline_python, str(ROOT / "benchmarks" / "baseline_funasr.py"),
           "run-paraformer", str(model_dir), str(audio_dir), "--batch-size-s",
           str(int(args.batch_seconds)), "--device", "cpu" if args.device == "cpu" else "cuda:0",
           "--repeats", str(args.repeats), "--ncpu", str(args.ncpu), "--path", path]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        return None
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print("baseline path:", json.dumps(result), flush=True)
    return result


def append_results(records: list[dict]) -> None:
    existing = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    RESULTS.write_text(json.dumps(existing + records, indent=1, ensure_ascii=False) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", choices=["paraformer", "nano", "sensevoice"])
    ap.add_argument("--tokens-per-s", type=float, default=4.0, help="nano: forced new tokens")
    ap.add_argument("--modes", default="continuous,sequential", help="nano decoding modes")
    ap.add_argument("--audio-s", type=float, default=1800.0)
    ap.add_argument("--batch-seconds", type=float, default=300.0)
    ap.add_argument("--job-batch-seconds", default=None,
                    help="end to end: the job's batch budget (default: --batch-seconds; auto: "
                         "the runner's default for the model)")
    ap.add_argument("--dtypes", default="float32", help="comma-separated: float32,float16,bfloat16")
    ap.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--readers", type=int, default=4)
    ap.add_argument("--reader-processes", type=int, default=None,
                    help="run --reader-processes (default: the runner's default for the device)")
    ap.add_argument("--workdir", default="/tmp/batchasr-bench")
    ap.add_argument("--baseline", action="store_true",
                    help="also time the official funasr on the same folder and audio")
    ap.add_argument("--baseline-python", default=sys.executable,
                    help="python with torch + funasr (default: this one)")
    ap.add_argument("--ncpu", type=int, default=4, help="torch threads of the baseline")
    ap.add_argument("--no-append", action="store_true", help="do not write results.json")
    ap.add_argument("--note", default=None, help="a note kept in every record written")
    ap.add_argument("--subtitles", default="srt",
                    help="end to end: the job's subtitle formats, comma-separated, or none")
    ap.add_argument("--switch-interval", type=float, default=None,
                    help="the interpreter's thread switch interval (s), for the whole bench")
    args = ap.parse_args(argv)
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)

    from batchasr.runner.device import setup_device

    setup_device(args.device)
    work = Path(args.workdir)
    audio_dir = work / f"audio-{int(args.audio_s)}s"
    manifest = make_audio(audio_dir, args.audio_s)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    command = "python benchmarks/" + " ".join([Path(sys.argv[0]).name] + sys.argv[1:])
    records = []
    if args.model == "paraformer":
        model_dir = None
        if args.baseline:
            model_dir = work / "paraformer-large-random"
            subprocess.run([args.baseline_python, str(ROOT / "benchmarks" / "baseline_funasr.py"),
                            "make-paraformer", str(model_dir)], check=True)
        base = run_baseline(args, model_dir, audio_dir) if args.baseline else None
        model_name = "paraformer-large (dummy weights)"
        runs = lambda dtype: bench_paraformer(args, model_dir, manifest, dtype)
    elif args.model == "sensevoice":
        model_dir = None
        if args.baseline:
            model_dir = work / "sensevoice-small-random"
            subprocess.run([args.baseline_python, str(ROOT / "benchmarks" / "baseline_funasr.py"),
                            "make-sensevoice", str(model_dir)], check=True)
        base = run_sensevoice_baseline(args, model_dir, audio_dir, manifest) \
            if args.baseline else None
        model_name = "sensevoice-small (random weights, official folder)" if model_dir else \
            "sensevoice-small (dummy weights)"
        runs = lambda dtype: bench_sensevoice(args, model_dir, manifest, dtype)
    else:
        base = run_nano_baseline(args) if args.baseline else None
        model_name = "fun-asr-nano (dummy weights, %g new tokens/s of audio)" % args.tokens_per_s
        runs = lambda dtype: bench_nano(args, manifest, dtype)
    if base:
        print("baseline:", json.dumps(base), flush=True)
    for dtype in args.dtypes.split(","):
        try:
            results = runs(dtype)
        except Exception as e:  # e.g. out of memory: keep the other precisions' figures
            import traceback

            traceback.print_exc()
            results = [dict(metric="error", value=None, error=f"{type(e).__name__}: {e}")]
        for r in results:
            metric = r.pop("metric")
            rec = dict(date=date, machine=machine(), model=model_name,
                       device=str(mx.default_device()), precision=dtype,
                       batch_budget_s=args.batch_seconds, metric=metric,
                       batchasr=r.pop("value"), baseline=base["rtfx"] if base else None,
                       ratio=None, command=command, details=r)
            if args.note:
                rec["note"] = args.note
            if base and rec["batchasr"]:
                rec["ratio"] = round(rec["batchasr"] / base["rtfx"], 2)
                rec["baseline_details"] = base
            print(json.dumps(rec), flush=True)
            records.append(rec)
            if "llm_tokens_per_s" in r:
                tok = dict(rec, metric=metric.replace("rtfx", "llm_tokens_per_s"),
                           batchasr=r["llm_tokens_per_s"],
                           baseline=base.get("llm_tokens_per_s") if base else None)
                tok["ratio"] = round(tok["batchasr"] / tok["baseline"], 2) if tok["baseline"] else None
                records.append(tok)
        if not args.no_append:
            append_results(records)
            records = []


if __name__ == "__main__":
    main()
