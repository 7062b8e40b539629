"""A job's settings: what `batchasr run` fills in, checks against the job's record and records.

A job folder records the settings it was started with (model identity, weights, dtype, the
LLM decoding options, how files are cut and punctuated, the shard) in its queue's meta table.
Resuming fills every setting not given from that record, and refuses any given setting that
differs from it (the model compared as the folder it resolves to), so one job's results all
come from one configuration. ``RUN_DEFAULTS`` are the settings of a new job when none is given.
Nothing here writes to the job folder except :func:`record_settings`, called under the lock.
"""
from __future__ import annotations

from pathlib import Path

from batchasr.errors import JobError

# `batchasr run`'s job settings when neither the command line nor the job's record has one
RUN_DEFAULTS = {"model": "paraformer-zh", "weights": "checkpoint", "dtype": "float32",
                "vad": "silero", "max_segment_s": None, "punc": "none"}
# decoding options of `run`: recorded with the job's settings, passed to every worker
# (LLM models: max_new_tokens, hotwords, no_guard; SenseVoice: language, the default of rows
# without one, and itn; Fun-ASR-Nano: itn)
DECODING_OPTIONS = ("max_new_tokens", "hotwords", "no_guard", "language", "itn")


def recorded_settings(job: Path) -> dict:
    """The settings a job folder was started with ({} for a new job); reads only."""
    if not (job / "queue.db").exists():
        return {}
    from batchasr.queue.store import JobQueue

    with JobQueue(job) as queue:
        return queue.meta()


def job_settings(given: dict, recorded: dict) -> dict:
    """`run`'s settings: those given on the command line, else the job's recorded ones, else
    RUN_DEFAULTS. A known model name the job was started with stays that name."""
    from batchasr.models.loader import DUMMY_SUFFIX, KNOWN_MODELS, CheckpointError, model_identity

    filled = {k: v if v is not None else recorded.get(k, RUN_DEFAULTS.get(k))
              for k, v in given.items()}
    label = recorded.get("model_name")
    if isinstance(label, str) and filled["weights"] == "dummy":
        label = label.removesuffix(DUMMY_SUFFIX)
    if given["model"] is None and "model" in recorded and label != recorded["model"]:
        if label in KNOWN_MODELS:
            try:
                if model_identity(label, weights=filled["weights"]) == recorded["model"]:
                    filled["model"] = label
            except CheckpointError:
                pass
    return filled


def resolve_job_model(job: Path, model: str, weights: str, download: bool, *,
                      from_job: bool) -> str:
    """The job's identity of ``model`` (``loader.model_identity``); CheckpointError when it
    cannot be found, JobError saying so when the model is the job's own."""
    from batchasr.models.loader import CheckpointError, model_identity

    try:
        return model_identity(model, weights=weights, download=download)
    except CheckpointError as e:
        if not from_job:
            raise
        raise JobError(f"{job} was started with --model {model}, which is not found from "
                       f"here ({e}); give its --model") from None


def check_settings(job: Path, recorded: dict, settings: dict) -> None:
    """JobError naming each setting that differs from the job's recorded one (the model
    compared as the folder it resolves to), and how to resume or start a new job."""
    from batchasr.models.loader import same_model

    weights = settings.get("weights", "checkpoint")
    diffs = [(k, recorded[k], v) for k, v in settings.items() if k in recorded
             and recorded[k] != v
             and not (k == "model" and same_model(recorded[k], v, weights=weights))]
    if not diffs:
        return
    said = "; ".join(f"{k} {old!r} (now {new!r})" for k, old, new in diffs)
    same = " ".join(f"--{k.replace('_', '-')} {old}" if old is not None
                    else f"no --{k.replace('_', '-')}" for k, old, _ in diffs)
    raise JobError(f"{job} was started with different settings: {said}. To resume it, leave "
                   f"these options out (`batchasr run --job-dir {job}` uses the job's own "
                   f"settings) or give the same ones ({same}); to start a new job with the new "
                   f"settings, give another --job-dir.")


def record_settings(job: Path, queue, settings: dict) -> None:
    """Record the settings of a run that starts (inside the job lock): checked again, then
    the model rewritten as its identity where an older version recorded what was typed."""
    recorded = queue.meta()
    check_settings(job, recorded, settings)
    if "model" in recorded and recorded["model"] != settings["model"]:
        queue.set_meta({"model": settings["model"]})
    queue.ensure_meta(settings)


def check_longform_models(vad: str, punc: str) -> None:
    """CheckpointError when the VAD or punctuation model named cannot be found (without
    loading them)."""
    from batchasr.models.loader import resolve
    from batchasr.models.loader import SILERO_NAMES

    if vad.lower() not in ("none", "auto") and vad not in SILERO_NAMES \
            and not (Path(vad).is_file() and Path(vad).suffix == ".safetensors"):
        resolve(vad)
    if punc.lower() != "none":
        resolve(punc)
