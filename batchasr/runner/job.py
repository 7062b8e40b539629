"""One `batchasr run`: prepare a job folder, then run its pending items on an engine.

:func:`run` is the whole command below its option parsing: :func:`prepare_job` fills the
settings (given, else the job's record, else ``settings.RUN_DEFAULTS``), checks them against
the job's record and loads (or, for worker processes, finds) the models; :func:`run_prepared`
takes the job lock, enqueues the manifest, probes durations, records the settings and hands
the pending items to the local worker, to worker processes (after the runner's startup
recovery) or, with ``engine="ray"``, to :func:`run_on_ray`.

Invariants: nothing is written to the job folder until the models are found and loaded (a
failed start leaves no folder, no queue, no settings); settings are recorded only inside the
job lock and only when a run starts. Messages for the person go through ``say`` (one line
each, the CLI prints them on stderr); the result is a :class:`RunOutcome`, which the CLI maps
to its exit code. A full disk is raised as one ``DiskFullError`` naming the job folder.
"""
from __future__ import annotations

import dataclasses
import json
import signal
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from batchasr.errors import BatchasrError, DiskFullError, JobError, disk_full, is_disk_full
from batchasr.queue.status import RUNS_FILE
from batchasr.audio.cut import CutOptions
from batchasr.runner.settings import (DECODING_OPTIONS, check_longform_models, check_settings,
                                      job_settings, record_settings, recorded_settings,
                                      resolve_job_model)
from batchasr.runner.options import RunOptions

MAX_WARNINGS = 1000  # skipped manifest rows said by `run` (all are in `status --failed`)
_RUN = {f.name: f.default for f in dataclasses.fields(RunOptions)}
_CUT = {f.name: f.default for f in dataclasses.fields(CutOptions)}


class UsageError(BatchasrError):
    """The command was given a combination it cannot run (the CLI's exit code 2)."""


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended, for the caller's exit code."""

    job: str  # the job folder (or --engine ray's output location)
    summary: Any = None  # options.RunSummary (None: nothing was run)
    stopped_by: int = 0  # the signal that stopped the run with items left (0: not stopped)
    incomplete: bool = False  # items failed or manifest rows were skipped


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def job_dir_for(source: str | None, job_dir: str | None) -> Path:
    """``job_dir``, else jobs/<name of the manifest or folder>."""
    if job_dir:
        return Path(job_dir)
    if source is None:
        raise UsageError("give a manifest or folder, or --job-dir of an existing job")
    src = Path(source.rstrip("/"))
    return Path("jobs") / (src.name if src.is_dir() else src.stem)


@dataclass
class PreparedJob:
    """A job whose settings are checked and whose models are loaded (or found)."""

    job: Path
    settings: dict[str, Any]  # recorded with the job when the run starts
    model_args: dict[str, Any]  # device.open_model arguments, for worker processes
    longform: dict[str, Any]  # vad, max_segment_s, punc: as recorded, passed to every worker
    devices: list[str | None]  # [None]: one worker, in this process
    asr: Any = None  # the loaded model, VAD and punctuator when devices == [None]
    vad: Any = None
    punc: Any = None


def prepare_job(source: str | None, job: Path, given: dict[str, Any], *, device: str,
                download: bool, devices: list[str | None], shard: str | None,
                allow_network_fs: bool, say: Callable[[str], None] = _stderr) -> PreparedJob:
    """Check the job folder and the settings, and load the models; writes nothing."""
    from batchasr.queue.disk import check_local_disk
    from batchasr.queue.lock import JobLock
    from batchasr.batches.assemble import model_punctuates
    from batchasr.runner.options import open_punctuator, open_vad
    from batchasr.runner.device import open_model

    if (job / "job.json").exists() and not (job / "queue.db").exists():
        raise JobError(f"{job} is the output of an --engine ray run; continue it with "
                       "--engine ray, or give the local engine a job folder of its own")
    if source is None and not (job / "queue.db").exists():
        raise UsageError(f"{job} is not a job folder; give a manifest")
    check_local_disk(job, allow_network=allow_network_fs)
    if (job / "queue.db").exists():  # a job being run by another process: say that first
        JobLock(job).acquire().release()
    recorded = recorded_settings(job)
    filled = job_settings(given, recorded)
    model, weights, dtype = str(filled["model"]), filled["weights"], filled["dtype"]
    options = {k: filled[k] for k in DECODING_OPTIONS if filled[k] is not None}
    longform = {"vad": str(filled["vad"]), "max_segment_s": filled["max_segment_s"],
                "punc": str(filled["punc"])}
    identity = resolve_job_model(job, model, weights, download,
                                 from_job=given["model"] is None and "model" in recorded)
    settings = {"model": identity, "weights": weights, "dtype": dtype, **options,
                **longform, **({"shard": shard} if shard else {})}
    check_settings(job, recorded, settings)
    prepared = PreparedJob(job, settings, {"model": model, "weights": weights, "dtype": dtype,
                                           "device": device, "download": download, **options},
                           longform, devices)
    if devices == [None]:  # one worker, in this process: load everything now
        say(f"loading model {model} ...")
        prepared.asr = open_model(model, weights, dtype, device, download, **options)
        prepared.vad = open_vad(longform["vad"])
        prepared.punc = (longform["punc"] if model_punctuates(prepared.asr)
                         else open_punctuator(longform["punc"]))
    else:  # the workers load them; a name that cannot be found fails here, first
        check_longform_models(longform["vad"], longform["punc"])
    return prepared


def run_prepared(prepared: PreparedJob, source: str | None, *, batch_seconds: float | None,
                 limit: int | None, max_window_s: float, readers: int, strict_manifest: bool,
                 vad_processes: int = _RUN["vad_processes"],
                 reader_processes: int | None = _RUN["reader_processes"],
                 progress: bool, shard_i: int | None = None, shard_n: int | None = None,
                 say: Callable[[str], None] = _stderr) -> RunOutcome:
    """Lock, enqueue ``source`` (a manifest or folder; None: the job's queue as it is),
    record the settings and run the pending items."""
    from batchasr.audio import decode as audio
    from batchasr.manifest.read import open_manifest
    from batchasr.manifest.scan import scan_folder
    from batchasr.manifest.shard import ShardedManifest
    from batchasr.queue.lock import JobLock
    from batchasr.queue.store import JobQueue
    from batchasr.runner.local import run_job

    job, settings, longform = prepared.job, prepared.settings, prepared.longform
    skipped, summary = 0, None
    job.mkdir(parents=True, exist_ok=True)
    with JobLock(job) as lock:
        with JobQueue(job) as queue:
            if source is not None:
                manifest_path = scan_folder(source, job) if Path(source).is_dir() else source
                manifest = open_manifest(manifest_path)
                rows = ShardedManifest(manifest, shard_i, shard_n) if shard_n else manifest
                added = queue.enqueue(rows, strict=strict_manifest)
                skipped = added.skipped
                shown = min(len(added.problems), MAX_WARNINGS)
                for line, problem in added.problems[:MAX_WARNINGS]:
                    say(f"Warning: {manifest.path}:{line}: {problem} (row skipped)")
                if skipped > shown:
                    say(f"Warning: {manifest.path}: ... and {skipped - shown} more row(s) "
                        f"skipped (all listed by `batchasr status --job-dir {job} --failed`)")
                say(f"{job}: {added.added} new item(s), {added.existing} already queued"
                    + (f", {skipped} bad row(s) skipped" if skipped else ""))
            queue.probe_durations(lambda path: audio.probe(path)[0])  # the bar's total
            pending = queue.counts()
            if pending["pending"] + pending["running"]:  # a run starts: record its settings
                record_settings(job, queue, settings)
        if pending["pending"] + pending["running"] == 0:
            say(f"{job}: nothing to do ({pending['done']} done, {pending['failed']} failed)")
        elif prepared.devices == [None]:
            summary = run_job(job, prepared.asr, batch_seconds=batch_seconds, limit=limit,
                              max_window_s=max_window_s, progress=progress, readers=readers,
                              vad_processes=vad_processes, reader_processes=reader_processes,
                              meta=settings, vad=prepared.vad, punc=prepared.punc,
                              max_segment_s=longform["max_segment_s"])
            record_run(job, summary)
            say(f"{job}: {summary}")
        else:
            from batchasr.runner.device import default_reader_processes
            from batchasr.runner.local import recover
            from batchasr.runner.processes import run_workers

            if reader_processes is None:  # the cores shared between the workers
                reader_processes = default_reader_processes(workers=len(prepared.devices))

            with JobQueue(job) as queue:  # we hold the lock: whatever runs is orphaned
                requeued, _ = recover(job, queue)
            summary = run_workers(
                job, lock, devices=prepared.devices, model_args=prepared.model_args,
                progress=progress,
                run_args={"batch_seconds": batch_seconds, "limit": limit,
                          "max_window_s": max_window_s, "readers": readers,
                          "vad_processes": vad_processes,
                          "reader_processes": reader_processes, "meta": settings, **longform})
            summary.requeued = requeued
            record_run(job, summary)
            say(f"{job}: {summary}")
        with JobQueue(job) as queue:
            counts = queue.counts()
    left = counts["pending"] + counts["running"]
    if summary is not None and summary.stopped and summary.signal and left:
        return RunOutcome(str(job), summary, stopped_by=summary.signal)
    if counts["failed"] or skipped:
        said = ", ".join(x for x in (counts["failed"] and f"{counts['failed']} failed item(s)",
                                     skipped and f"{skipped} manifest row(s) skipped") if x)
        say(f"{said}: see `batchasr status --job-dir {job} --failed`")
        return RunOutcome(str(job), summary, incomplete=True)
    return RunOutcome(str(job), summary)


def run(source: str | None = None, *, job_dir: str | None = None, model: str | None = None,
        weights: str | None = None, dtype: str | None = None, device: str = "auto",
        download: bool = False, batch_seconds: float | None = None, limit: int | None = None,
        max_window_s: float = _CUT["max_window_s"], vad: str | None = None,
        max_segment_s: float | None = None, punc: str | None = None,
        readers: int = _RUN["readers"], vad_processes: int = _RUN["vad_processes"],
        reader_processes: int | None = _RUN["reader_processes"],
        strict_manifest: bool = False, progress: bool = True,
        max_new_tokens: int | None = None, hotwords: str | None = None, no_guard: bool = False,
        language: str | None = None, itn: bool | None = None,
        workers: int | None = None, gpus: str | None = None, shard: str | None = None,
        engine: str = "local", address: str | None = None, allow_network_fs: bool = False,
        say: Callable[[str], None] = _stderr) -> RunOutcome:
    """`batchasr run`: transcribe every pending item of a manifest's job, resumably.

    Settings left None come from the job's record, else ``settings.RUN_DEFAULTS``. Raises
    UsageError for options that do not go together, BatchasrError (or ValueError) when the
    job cannot run. Ctrl-C twice (or SIGTERM twice) stops at once: the outcome's
    ``stopped_by`` is then that signal.
    """
    from batchasr.manifest.shard import parse_shard
    from batchasr.queue.store import JobQueue
    from batchasr.runner.processes import plan_devices
    from batchasr.runner.options import stop_line

    given = {"model": model, "weights": weights, "dtype": dtype, "vad": vad,
             "max_segment_s": max_segment_s, "punc": punc, "max_new_tokens": max_new_tokens,
             "hotwords": hotwords, "no_guard": no_guard or None, "language": language,
             "itn": itn}
    try:
        shard_i, shard_n = parse_shard(shard) if shard else (None, None)
        devices = plan_devices(workers, gpus) if engine == "local" else []
    except (BatchasrError, ValueError) as e:
        raise UsageError(str(e)) from None
    if engine == "ray":
        if shard or gpus:
            raise UsageError("--shard and --gpus are for --engine local; Ray places one actor "
                             "per GPU itself")
        filled = job_settings(given, {})
        options = {k: filled[k] for k in DECODING_OPTIONS if filled[k] is not None}
        model_args = {"model": str(filled["model"]), "weights": filled["weights"],
                      "dtype": filled["dtype"], "device": device, "download": download,
                      **options}
        longform = {k: filled[k] if k == "max_segment_s" else str(filled[k])
                    for k in ("vad", "max_segment_s", "punc")}
        if batch_seconds is None:  # the device's (the actors' models are not loaded here)
            from batchasr.runner.device import default_batch_seconds

            batch_seconds = default_batch_seconds(device)
        return run_on_ray(source, job_dir, model_args, batch_seconds=batch_seconds,
                          limit=limit, max_window_s=max_window_s,
                          strict_manifest=strict_manifest, progress=progress, actors=workers,
                          address=address, longform=longform, say=say)
    job = job_dir_for(source, job_dir)
    if shard and not job_dir:
        job = job.with_name(f"{job.name}.shard-{shard_i}-of-{shard_n}")
    if devices == [None]:  # readers of this process: their fork server starts during the load
        from batchasr.runner.read_processes import prestart

        prestart(reader_processes)
    try:
        prepared = prepare_job(source, job, given, device=device, download=download,
                               devices=devices, shard=shard, allow_network_fs=allow_network_fs,
                               say=say)
        return run_prepared(prepared, source, batch_seconds=batch_seconds, limit=limit,
                            max_window_s=max_window_s, readers=readers,
                            vad_processes=vad_processes, reader_processes=reader_processes,
                            strict_manifest=strict_manifest, progress=progress,
                            shard_i=shard_i, shard_n=shard_n, say=say)
    except (BatchasrError, ValueError, OSError, sqlite3.OperationalError) as e:
        if not is_disk_full(e) or isinstance(e, DiskFullError):  # e.g. enqueueing on a full disk
            raise
        raise disk_full(job, e) from e
    except KeyboardInterrupt as e:  # a second Ctrl-C / SIGTERM: stopped at once
        if (job / "queue.db").exists():
            with JobQueue(job) as queue:
                counts = queue.counts()
            say(f"{job}: {stop_line(counts['pending'] + counts['running'])}")
        return RunOutcome(str(job), stopped_by=getattr(e, "signum", signal.SIGINT))


def run_on_ray(source, out, model_args, *, batch_seconds, limit, max_window_s,
               strict_manifest, progress, actors, address, longform,
               say: Callable[[str], None] = _stderr) -> RunOutcome:
    """`run --engine ray`: the manifest through a Ray Data pipeline into ``out``."""
    from batchasr.manifest.read import open_manifest
    from batchasr.manifest.scan import scan_folder
    from batchasr.runner.ray import run_ray

    out = out or str(job_dir_for(source, None))
    settings = {**{k: v for k, v in model_args.items() if k not in ("device", "download")},
                **longform}
    manifest = None
    if source is not None:
        if Path(source).is_dir():
            if "://" in out:
                raise UsageError("a folder source needs a local --job-dir with --engine ray "
                                 "(or give a manifest)")
            source = scan_folder(source, out)
        manifest = open_manifest(source)
    summary, problems = run_ray(
        manifest, out, model_args=model_args, settings=settings,
        batch_seconds=batch_seconds, max_window_s=max_window_s, address=address,
        actors=actors, limit=limit, strict=strict_manifest, progress=progress, **longform)
    for line, problem in problems:
        say(f"Warning: {source}:{line}: {problem} (row skipped)")
    say(f"{out}: {summary}")
    say(f"export with: batchasr export --job-dir {out} -o results.parquet")
    return RunOutcome(out, summary, incomplete=bool(summary.failed or problems))


def record_run(job: Path, summary) -> None:
    """Append the run's figures to <job>/runs.jsonl (throughput and ETA for `status`)."""
    rec = {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           **dataclasses.asdict(summary)}
    with open(job / RUNS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")


def retry_failed(job_dir: str | Path) -> int:
    """`batchasr retry-failed`: put the job's failed items back to pending, under the job
    lock (JobError while a run holds it); returns how many."""
    from batchasr.queue.lock import JobLock
    from batchasr.queue.store import JobQueue

    with JobLock(job_dir), JobQueue(job_dir) as queue:
        return queue.retry_failed()
