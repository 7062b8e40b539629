"""Many hosts: ``batchasr run --engine ray``, a Ray Data pipeline around the worker's code.

The driver (the ``batchasr run`` process) writes the validated manifest once into the output
location (``batchasr.outputs.location``) as ``manifest.parquet`` (``id, seq, path, language, extra``: the same parsing and
checks as the queue), records the job's settings in ``job.json``, and builds::

    read_parquet(manifest)                      Ray Data reads the items
      -> map_batches(skip done ids)             ids with a done row in <out>/parts/
      -> map_batches(decode, CPU tasks)         audio.cut.decode_pieces per file: windows,
                                                or the VAD's speech segments of a long file
      -> map_batches(Transcriber, actor pool)   one actor per accelerator, model (and
                                                punctuation model) loaded once;
                                                runner.transcribe.transcribe_items (the worker's
                                                batching, retry, reassembly and
                                                punctuation), then one Parquet part per
                                                call, named by its ids

The output location is a local path or any URI pyarrow opens (``s3://...``); ``batchasr
export --job-dir <out> -o results.parquet`` consolidates it (``batchasr.outputs.parquet``).

Exactly once, and what it means here: Ray restarts a dead actor and retries its task, so an
item can be *transcribed* twice, but a retried call writes the same part name again
(atomically on a local or shared POSIX path; object stores replace whole objects), and the
export keeps one row per id, so an item is never *in the results* twice. Failed items
(undecodable files, model errors) are recorded as ``failed`` rows and tried again by the
next run; done ids are skipped. A long file is redone whole when its call is retried (the
local engine saves finished segments; here a call's items are its unit of work).

Every node needs batchasr installed (``pip install 'batchasr[ray]'``), the model folder
and the audio files at the same paths (a shared mount), and the output location.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batchasr.audio.cut import (DEFAULT_MAX_SEGMENT_S, DEFAULT_MAX_WINDOW_S, CutOptions,
                                decode_pieces)
from batchasr.batches.assemble import model_punctuates
from batchasr.outputs import parquet
from batchasr.outputs.location import (MANIFEST_SCHEMA, done_ids, ensure_settings, part_name,
                                       write_manifest)
from batchasr.outputs.rows import PART_SCHEMA
from batchasr.errors import JobError
from batchasr.runner.hooks import crash_hook_from_env
from batchasr.runner.options import DEFAULT_MAX_FAILURES_IN_A_ROW, open_punctuator, open_vad
from batchasr.runner.transcribe import DecodedItem, transcribe_items

logger = logging.getLogger("batchasr.ray_engine")  # the name log lines show (stable)

DECODED_SCHEMA = MANIFEST_SCHEMA.append(pa.field("duration_s", pa.float64())).append(
    pa.field("error", pa.string())).append(pa.field("offsets", pa.list_(pa.float64()))).append(
    pa.field("audio", pa.list_(pa.large_binary())))
STATUS_SCHEMA = pa.schema([("id", pa.string()), ("status", pa.string()),
                           ("duration_s", pa.float64()), ("part", pa.string())])
FORWARDED_ENV = ("BATCHASR_CACHE", "BATCHASR_TEST_CRASH_AT", "BATCHASR_TEST_CRASH_ONCE",
                 "MLX_ENABLE_TF32")


@dataclass
class RaySummary:
    done: int = 0
    failed: int = 0
    skipped: int = 0  # already done in the output location
    audio_s: float = 0.0
    wall_s: float = 0.0
    actors: int = 0

    def __str__(self) -> str:
        speed = self.audio_s / self.wall_s if self.wall_s else 0.0
        return (f"{self.done} done, {self.failed} failed, {self.skipped} already done; "
                f"{self.audio_s / 3600:.2f} h of audio in {self.wall_s:.1f} s "
                f"({speed:.1f}x real time) on {self.actors} actor(s)")


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise JobError("--engine ray needs Ray Data: pip install 'batchasr[ray]' "
                       f"(on every node of the cluster) ({e})") from None
    return ray


def estimate_items_per_call(fs: pafs.FileSystem, root: str, batch_seconds: float, *,
                            sample: int = 32, default: int = 32, most: int = 256) -> int:
    """Items per actor call so that a call holds about two batches of audio: few for long
    files (a call's audio is in memory at once), many for short clips (full batches). The
    mean duration comes from the headers of ``sample`` files spread over the manifest."""
    from batchasr.audio.decode import probe

    paths = pq.read_table(f"{root}/{parquet.MANIFEST_TABLE}", filesystem=fs,
                          columns=["path"])["path"].to_pylist()
    durations = []
    for path in paths[:: max(1, len(paths) // sample)][:sample]:
        try:
            durations.append(probe(path)[0])
        except Exception:  # missing or broken: it will fail as an item, not here
            continue
    mean = sum(durations) / len(durations) if durations else 0.0
    if mean <= 0:
        return default
    return max(1, min(most, round(2 * batch_seconds / mean)))


# ---- the pipeline's stages (run in Ray tasks and actors) ---------------------------------------


def skip_done(batch: pa.Table, done: pa.Array) -> pa.Table:
    if not len(done):
        return batch
    return batch.filter(pc.invert(pc.is_in(batch["id"], value_set=done)))


_VADS: dict[str, Any] = {}  # per process: a decode task's VAD is loaded once


def _task_vad(name: str | None):
    """The VAD of a decode task (numpy: the task holds no accelerator and makes no MLX array)."""
    if name is None or name.lower() == "none":
        return None
    if name not in _VADS:
        _VADS[name] = open_vad(name)
    return _VADS[name]


def decode_batch(batch: pa.Table, max_window_s: float, vad: str | None = None,
                 max_segment_s: float = DEFAULT_MAX_SEGMENT_S) -> pa.Table:
    """CPU task: each file decoded into pieces (audio.cut.decode_pieces: windows, or the VAD's
    speech segments of a file longer than max_segment_s), or its error."""
    from batchasr.errors import AudioError

    cut = CutOptions(vad=_task_vad(vad), max_segment_s=max_segment_s,
                              max_window_s=max_window_s)
    out = {name: batch[name].to_pylist() for name in MANIFEST_SCHEMA.names}
    out.update(duration_s=[], error=[], offsets=[], audio=[])
    for path in out["path"]:
        try:
            windows, duration = decode_pieces(path, cut)
            error = None
        except AudioError as e:
            windows, duration, error = [], None, str(e)
        except Exception as e:  # a decoder bug fails the item, not the job
            windows, duration, error = [], None, f"{type(e).__name__}: {e}"
        out["duration_s"].append(duration)
        out["error"].append(error)
        out["offsets"].append([o for o, _ in windows])
        out["audio"].append([np.ascontiguousarray(w, np.float32).tobytes() for _, w in windows])
    return pa.Table.from_pydict(out, schema=DECODED_SCHEMA)


class Transcriber:
    """The actor: loads the model (and punctuation model) once (``device.open_model``, as a
    worker process does), then per call transcribes a block of decoded items with
    ``runner.transcribe.transcribe_items`` and writes their rows as one part."""

    def __init__(self, model_args: dict, out: str, batch_seconds: float,
                 max_failures_in_a_row: int = DEFAULT_MAX_FAILURES_IN_A_ROW,
                 punc: str | None = None):
        from batchasr.runner.device import open_model

        self.model = open_model(**model_args)
        self.punctuator = None if model_punctuates(self.model) else open_punctuator(punc)
        self.fs, self.root = parquet.open_location(out)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.batch_seconds = batch_seconds
        self.max_failures = max_failures_in_a_row
        self.crash = crash_hook_from_env()

    def __call__(self, batch: pa.Table) -> pa.Table:
        cols = {name: batch[name].to_pylist() for name in DECODED_SCHEMA.names}
        items = [
            DecodedItem(
                item={"id": cols["id"][k], "path": cols["path"][k],
                      "language": cols["language"][k], "extra": cols["extra"][k]},
                windows=[(o, np.frombuffer(a, np.float32))
                         for o, a in zip(cols["offsets"][k], cols["audio"][k])],
                duration_s=cols["duration_s"][k], error=cols["error"][k])
            for k in range(batch.num_rows)
        ]
        self.crash("batch")
        rows = transcribe_items(self.model, items, batch_seconds=self.batch_seconds,
                                         max_failures_in_a_row=self.max_failures,
                                         punctuator=self.punctuator)
        name = part_name([r["id"] for r in rows])
        if self.local:
            parquet.write_part(self.root, rows, name=name)
        else:
            self.fs.create_dir(f"{self.root}/{parquet.PARTS}", recursive=True)
            table = pa.Table.from_pylist(rows, schema=PART_SCHEMA)
            with self.fs.open_output_stream(f"{self.root}/{parquet.PARTS}/{name}") as f:
                pq.write_table(table, f, compression="zstd")
        self.crash("after_part")
        return pa.Table.from_pydict(
            {"id": [r["id"] for r in rows], "status": [r["status"] for r in rows],
             "duration_s": [r["duration_s"] for r in rows], "part": [name] * len(rows)},
            schema=STATUS_SCHEMA)


# ---- the driver ------------------------------------------------------------------------------


def _default_max_segment_s(model_args: dict[str, Any]) -> float:
    """The model's default segment length, as its recognizer declares (the driver loads no
    model); the common default when the driver cannot read the config."""
    from batchasr.models.loader import recognizer_traits
    from batchasr.runner.settings import DECODING_OPTIONS

    options = {k: v for k, v in model_args.items() if k in DECODING_OPTIONS}
    try:
        return recognizer_traits(model_args.get("model", ""), **options)["max_segment_s"]
    except Exception:
        return DEFAULT_MAX_SEGMENT_S


def run_ray(manifest, out: str, *, model_args: dict[str, Any], settings: dict[str, Any],
            batch_seconds: float, max_window_s: float = DEFAULT_MAX_WINDOW_S,
            vad: str | None = "silero",
            max_segment_s: float | None = None, punc: str | None = None,
            address: str | None = None, actors: int | None = None, actor_cpus: float = 0.5,
            actor_gpus: float | None = None, items_per_call: int | None = None,
            limit: int | None = None, strict: bool = False,
            progress: bool = True) -> tuple[RaySummary, list[tuple[int, str]]]:
    """Transcribe a manifest (or, with ``manifest`` None, the one recorded in ``out``) on a
    Ray cluster into the output location ``out``; return the summary and the manifest rows
    skipped as bad. ``address``: None starts a local Ray (or uses the one this process
    started), ``auto`` joins the cluster this node belongs to, or ``ray://host:10001``.
    ``actors``: model replicas (default: one per GPU in the cluster, else 1), each with
    ``actor_gpus`` GPUs (default 1 when the cluster has GPUs) and ``actor_cpus`` CPUs.
    ``items_per_call``: items handed to an actor at once, which it cuts into batches
    (default: about two batches' worth, from the headers of a sample of the files).
    ``vad``, ``max_segment_s``, ``punc``: as ``batchasr run`` (the defaults are its
    defaults: silero; 30 s, or 15 s for a Fun-ASR-Nano model folder; no punctuation).
    """
    ray = _import_ray()
    fs, root = parquet.open_location(out)
    if fs.get_file_info(f"{root}/queue.db").type == pafs.FileType.File:
        raise JobError(f"{out} is a job folder of the local engine (it has a queue.db); give "
                       "--engine ray an output location of its own")
    fs.create_dir(root, recursive=True)
    ensure_settings(fs, root, {"engine": "ray", **settings})
    problems: list[tuple[int, str]] = []
    if manifest is not None:
        _, problems = write_manifest(fs, root, manifest, strict=strict)
    elif fs.get_file_info(f"{root}/{parquet.MANIFEST_TABLE}").type != pafs.FileType.File:
        raise JobError(f"{out} holds no manifest yet; give one")
    done = done_ids(fs, root)
    if items_per_call is None:
        items_per_call = estimate_items_per_call(fs, root, batch_seconds)

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    gpus = ray.cluster_resources().get("GPU", 0)
    if actor_gpus is None:
        actor_gpus = 1.0 if gpus else 0.0
    if actors is None:
        actors = max(1, int(gpus // actor_gpus)) if actor_gpus else 1
    if actor_gpus * actors > gpus:
        raise JobError(f"{actors} actor(s) x {actor_gpus} GPU need more GPUs than the cluster "
                       f"has ({gpus:g})")

    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}  # to the actors
    t0 = time.perf_counter()
    ds = ray.data.read_parquet(f"{root}/{parquet.MANIFEST_TABLE}", filesystem=fs)
    ds = ds.map_batches(skip_done, fn_kwargs={"done": done}, batch_format="pyarrow",
                        batch_size=None, num_cpus=0.25)
    if limit is not None:
        ds = ds.limit(limit)
    if max_segment_s is None:
        max_segment_s = _default_max_segment_s(model_args)
    ds = ds.map_batches(decode_batch, fn_kwargs={"max_window_s": max_window_s, "vad": vad,
                                                 "max_segment_s": max_segment_s},
                        batch_format="pyarrow", batch_size=8, num_cpus=0.5)
    ds = ds.map_batches(
        Transcriber,
        fn_constructor_kwargs={"model_args": model_args, "out": out,
                               "batch_seconds": batch_seconds, "punc": punc},
        compute=ray.data.ActorPoolStrategy(size=actors), batch_size=items_per_call,
        batch_format="pyarrow", num_cpus=actor_cpus, num_gpus=actor_gpus,
        runtime_env={"env_vars": env} if env else None,
    )
    summary = RaySummary(skipped=len(done), actors=actors)
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        status = batch["status"].to_pylist()
        summary.done += status.count("done")
        summary.failed += status.count("failed")
        durations = pc.if_else(pc.equal(batch["status"], "done"), batch["duration_s"], 0.0)
        summary.audio_s += pc.sum(durations).as_py() or 0.0
    summary.wall_s = time.perf_counter() - t0
    return summary, problems
