"""The `batchasr` command: a thin click layer over the library.

Exit codes (every command):
  0  everything asked for was done
  1  could not run (bad model folder, unreadable manifest, job locked by another runner, ...)
  2  bad command-line usage
  3  done, but some items failed (listed by `batchasr status --failed`)
  130  `run` stopped by Ctrl-C (SIGINT) with items left (run the same command to continue)
  143  `run` stopped by SIGTERM with items left (run the same command to continue)

Each command parses its options, calls the library (``batchasr.runner.job.run`` for `run`,
``batchasr.queue.status.job_status`` for `status`, ...), prints the result and maps errors to
the exit codes above; option defaults come from the options dataclasses and
``runner.settings.RUN_DEFAULTS``.

Size: above 400 lines only because of the options' help texts.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import sys
from pathlib import Path

import click

from batchasr._version import __version__
from batchasr.errors import BatchasrError
from batchasr.runner import job as jobs
from batchasr.audio.cut import CutOptions
from batchasr.runner.settings import RUN_DEFAULTS
from batchasr.runner.options import RunOptions

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_FAILED_ITEMS = 0, 1, 2, 3
# Option defaults live in the options dataclasses and the job's settings; read them once here.
_RUN = {f.name: f.default for f in dataclasses.fields(RunOptions)}
_CUT = {f.name: f.default for f in dataclasses.fields(CutOptions)}


def model_options(fn=None, *, from_job: bool = False):
    """--model, --weights, --dtype, --device, --download: shared by every model command.
    ``from_job`` (`run`): --model, --weights and --dtype default to None, filled from the
    job's recorded settings (RUN_DEFAULTS for a new job)."""
    if fn is None:
        return functools.partial(model_options, from_job=from_job)
    job = " Default: the job's own when resuming, else {}." if from_job else ""

    @click.option("--model", "-m", default=None if from_job else RUN_DEFAULTS["model"],
                  show_default=not from_job,
                  help="Official FunASR model folder (config.yaml, model.pt, ...) or a known "
                       "name (paraformer-zh, paraformer-en, fun-asr-nano) found in the local "
                       "Hugging Face / ModelScope cache." + job.format(RUN_DEFAULTS["model"]))
    @click.option("--weights", type=click.Choice(["checkpoint", "dummy"]),
                  default=None if from_job else RUN_DEFAULTS["weights"], show_default=not from_job,
                  help="'dummy': full-size architecture with random weights (benchmarks only; "
                       "the text is meaningless)." + job.format(RUN_DEFAULTS["weights"]))
    @click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]),
                  default=None if from_job else RUN_DEFAULTS["dtype"], show_default=not from_job,
                  help="Precision of the network weights. float32 is exact to the official "
                       "outputs; half precision is faster on GPUs and may change rare tokens."
                       + job.format(RUN_DEFAULTS["dtype"]))
    @click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto",
                  show_default=True, help="MLX device (auto: the GPU when MLX has one).")
    @click.option("--download", is_flag=True,
                  help="Allow fetching a known model name from the Hugging Face hub.")
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


def cutting_options(fn=None, *, from_job: bool = False):
    """--vad, --max-segment-s, --max-window-s, --punc: how files are cut and punctuated, the
    same for `run` and `transcribe`. ``from_job`` (`run`): --vad and --punc default to None,
    filled from the job's recorded settings (RUN_DEFAULTS for a new job)."""
    if fn is None:
        return functools.partial(cutting_options, from_job=from_job)
    job = " Default: the job's own when resuming, else {}." if from_job else ""

    @click.option("--vad", default=None if from_job else RUN_DEFAULTS["vad"],
                  show_default=not from_job,
                  metavar="silero|fsmn-vad|DIR|none",
                  help="Voice activity detector that cuts files longer than --max-segment-s "
                       "into speech segments (silence is never transcribed; segments of many "
                       "files share batches): 'silero' (weights included), 'fsmn-vad' (found in "
                       "the local Hugging Face / ModelScope cache), an official fsmn-vad "
                       "folder, or 'none' for equal windows of --max-window-s (a cut may then "
                       "fall inside a word). Shorter files are transcribed whole either way. "
                       "Silero takes about 1/750 of the audio's duration on one core, "
                       "fsmn-vad 1/450; in the reader processes when there are any."
                       + job.format(RUN_DEFAULTS["vad"]))
    @click.option("--max-segment-s", type=click.FloatRange(1), default=None,
                  help="Longest piece sent to the model with a VAD: longer speech segments are "
                       "cut into equal parts; files not longer go whole. Default: 30 "
                       "(Paraformer), 15 (Fun-ASR-Nano, whose LLM degrades on longer "
                       "segments)." + (" When resuming: the job's own." if from_job else ""))
    @click.option("--max-window-s", default=_CUT["max_window_s"], show_default=True,
                  type=click.FloatRange(1),
                  help="With --vad none: files longer than this are cut into equal windows of "
                       "at most this length.")
    @click.option("--punc", default=None if from_job else RUN_DEFAULTS["punc"],
                  show_default=not from_job,
                  metavar="DIR|ct-punc|ct-punc-c|none",
                  help="Punctuation model (CT-Transformer folder, or a known name found in the "
                       "local caches) for models whose text has none (Paraformer): the text is "
                       "punctuated and the results' segments become sentences with times "
                       "(subtitle cues start at sentence ends). Ignored for Fun-ASR-Nano, whose "
                       "text is punctuated." + job.format(RUN_DEFAULTS["punc"]))
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


def fail(message: str, code: int = EXIT_ERROR):
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="batchasr")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose):
    """Batch speech transcription with FunASR models on MLX."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@cli.command()
@model_options
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--batch-seconds", default=None, type=click.FloatRange(1),
              help="Audio seconds per model batch, as for `run` (default 1000 on GPUs, 30 on "
                   "CPUs). Pieces of consecutive files share length-sorted batches.")
@click.option("--batch-size", "-b", default=None, type=click.IntRange(1),
              help="At most this many pieces per model batch (default: only --batch-seconds "
                   "bounds a batch).")
@cutting_options
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per file per line: path, text, tokens, token_ids, "
                   "timestamps ([start_ms, end_ms] per token), ...")
@click.option("--max-new-tokens", type=click.IntRange(1), default=None,
              help="LLM models: generation cap, counting the stop token (funasr's max_length; "
                   "512 by default).")
@click.option("--no-guard", is_flag=True,
              help="LLM models: turn the runaway guard off (the token ceiling per second of "
                   "audio and the repetition-loop cut), so the generated ids are exactly the "
                   "official ones up to --max-new-tokens.")
@click.option("--language", default=None,
              help="LLM models: language named in the prompt. SenseVoice: auto (default), zh, "
                   "en, yue, ja, ko (nospeech).")
@click.option("--itn/--no-itn", default=None,
              help="Inverse text normalisation (SenseVoice: official use_itn, default off; "
                   "Fun-ASR-Nano: itn, default on).")
@click.option("--hotwords", default=None,
              help="Fun-ASR-Nano and SeACo-Paraformer: words to favour, a comma list or (SeACo) "
                   "a file of one hotword a line.")
@click.option("--vad-processes", default=_RUN["vad_processes"], show_default=True,
              type=click.IntRange(0),
              help="Processes running the VAD of the next long files while earlier ones are "
                   "transcribed (0: the VAD runs here, file by file). Not used with "
                   "--reader-processes, which run the VAD themselves.")
@click.option("--reader-processes", type=click.IntRange(0), default=None,
              help="Processes decoding, running the VAD and cutting the next files (that "
                   "many at a time, in input order) while earlier ones are transcribed, as "
                   "for `run`; same output (0: here, file by file). Default: on a GPU, the "
                   "spare cores; on a CPU, 0.")
def transcribe(files, model, weights, dtype, device, download, batch_seconds, batch_size, vad,
               max_segment_s, max_window_s, punc, as_json, max_new_tokens, no_guard, language,
               itn, hotwords, vad_processes, reader_processes):
    """Transcribe audio files or folders and print the text (or JSON lines).

    Files are cut, batched and put back together as `batchasr run` does (same VAD,
    --max-segment-s and length-sorted batches), so a file gives the same text, tokens and
    segments as its row in a job, in bounded memory whatever its length. Folders are
    scanned for audio files as `run` scans them. Output is in input order, one line (or
    JSON object) per file.

    Files that cannot be decoded are reported on stderr (and as JSON objects with an
    "error" key) without stopping the others; the exit code is then 3.

    \b
    Example:
      batchasr transcribe --model ./paraformer-zh --json clip1.wav clip2.flac
      batchasr transcribe --model ./paraformer-zh --punc ./ct-punc meeting.wav recordings/
    """
    from batchasr.runner.transcribe import open_for_files, transcribe_paths
    from batchasr.transcript import to_record

    options = {k: v for k, v in (("max_new_tokens", max_new_tokens), ("hotwords", hotwords),
                                 ("no_guard", no_guard or None), ("itn", itn)) if v is not None}
    from batchasr.runner.read_processes import prestart

    prestart(reader_processes)  # the readers' fork server starts during the model's load
    try:
        asr, cut, punctuator = open_for_files(
            model, weights, dtype, device, download, vad=vad, punc=punc,
            max_segment_s=max_segment_s, max_window_s=max_window_s, **options)
    except (BatchasrError, ValueError) as e:
        fail(str(e))
    if batch_seconds is None:  # the device's default, or what the model asks for there
        from batchasr.runner.device import default_batch_seconds

        batch_seconds = default_batch_seconds("auto", asr)
    single = len(files) == 1 and not Path(files[0]).is_dir()
    failures = 0
    try:
        for r in transcribe_paths(asr, files, cut, language=language, batch_seconds=batch_seconds,
                                  max_items=batch_size, punctuator=punctuator,
                                  vad_processes=vad_processes,
                                  reader_processes=reader_processes):  # input order
            if r.error is not None:
                failures += 1
                click.echo(f"Error: {r.error}", err=True)
                if as_json:
                    click.echo(json.dumps({"path": r.path, "error": r.error}, ensure_ascii=False))
            elif as_json:
                record = to_record(r.transcript, path=r.path, duration_s=r.duration_s, asr=asr)
                click.echo(json.dumps(record, ensure_ascii=False))
            else:
                click.echo(r.transcript.text if single else f"{r.path}\t{r.transcript.text}")
    except (BatchasrError, ValueError) as e:
        fail(str(e))
    sys.exit(EXIT_FAILED_ITEMS if failures else EXIT_OK)


# --------------------------------------------------------------------------------------------
# jobs
# --------------------------------------------------------------------------------------------
def job_option(required: bool = True):
    return click.option("--job-dir", "-j", required=required, type=click.Path(file_okay=False),
                        help="Job folder (queue.db, parts/, subtitles/, results).")


@cli.command()
@click.argument("source", required=False, type=click.Path(exists=True))
@model_options(from_job=True)
@job_option(required=False)
@click.option("--batch-seconds", default=None, type=click.FloatRange(1),
              help="Audio seconds per model batch (padded length x count is bounded too), like "
                   "FunASR's batch_size_s. Default 1000 on GPUs (larger is faster there and uses "
                   "more memory: ~10 GB for Paraformer-large) and 30 on CPUs (measured: less "
                   "padding, ~30% faster than 160).")
@click.option("--limit", type=click.IntRange(1), default=None,
              help="Transcribe at most N items in this invocation (the whole manifest is still "
                   "enqueued; run again to continue).")
@cutting_options(from_job=True)
@click.option("--readers", default=_RUN["readers"], show_default=True, type=click.IntRange(1),
              help="Threads decoding and resampling audio ahead of the model.")
@click.option("--vad-processes", default=_RUN["vad_processes"], show_default=True,
              type=click.IntRange(0),
              help="Processes running the VAD of long files, several files at once, off the "
                   "model's process (0: the VAD runs on the model's thread). Up to --readers "
                   "files are cut at a time, so give as many readers. Not needed with "
                   "--reader-processes, which run the VAD themselves.")
@click.option("--reader-processes", type=click.IntRange(0), default=None,
              help="Processes decoding, resampling, running the VAD and cutting files into "
                   "pieces, many "
                   "files at once, their audio handed to the model's process through shared "
                   "memory (0: reader threads in the model's process). Default: on a GPU, the "
                   "cores the workers leave over; on a CPU, 0.")
@click.option("--strict-manifest", is_flag=True,
              help="Refuse the whole manifest when any row is bad (default: report bad rows "
                   "with their line numbers, enqueue the rest, exit 3).")
@click.option("--progress/--no-progress", default=True, help="Show the progress bar.")
@click.option("--max-new-tokens", type=click.IntRange(1), default=None,
              help="LLM models: generation cap, counting the stop token.")
@click.option("--hotwords", default=None,
              help="Fun-ASR-Nano and SeACo-Paraformer: a comma list of hotwords or (SeACo) a "
                   "file of one a line; for SeACo a manifest `hotwords` column wins per row.")
@click.option("--language", default=None,
              help="SenseVoice: language of the rows whose manifest gives none: auto "
                   "(default), zh, en, yue, ja, ko (a manifest `language` column wins per row).")
@click.option("--itn/--no-itn", default=None,
              help="Inverse text normalisation (SenseVoice: official use_itn, default off; "
                   "Fun-ASR-Nano: itn, default on).")
@click.option("--no-guard", is_flag=True,
              help="LLM models: turn the runaway guard off (token ceiling per second of audio, "
                   "repetition-loop cut): the generated ids are exactly the official ones up "
                   "to --max-new-tokens.")
@click.option("--workers", "-w", type=click.IntRange(1), default=None,
              help="Worker processes on this host sharing the job's queue, each loading the "
                   "model once (default 1; with --gpus, one per GPU). With --engine ray: model "
                   "actors (default one per GPU of the cluster).")
@click.option("--gpus", default=None, metavar="all|0,1,...",
              help="CUDA: one worker per listed GPU, each seeing only its own "
                   "(CUDA_VISIBLE_DEVICES); 'all' lists them with nvidia-smi.")
@click.option("--shard", default=None, metavar="I/N",
              help="Only the items whose id hashes to shard I of N (0 <= I < N), in a job "
                   "folder of their own (default jobs/<name>.shard-I-of-N): one per Slurm "
                   "array task; `batchasr export` merges the N folders.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local",
              show_default=True,
              help="'ray': run on a Ray cluster with Ray Data (needs batchasr[ray]); "
                   "--job-dir is then the output location, a path every node sees or a "
                   "URI such as s3://bucket/jobs/x.")
@click.option("--address", default=None,
              help="--engine ray: the cluster to join ('auto': the one this node belongs to; "
                   "default: start a local Ray).")
@click.option("--allow-network-fs", is_flag=True,
              help="Run even though the job folder is on a network filesystem (NFS, SMB, "
                   "sshfs...), where SQLite's locking is unreliable: one host only.")
def run(source, **options):
    """Transcribe every file of a manifest (CSV, TSV, JSONL) or folder, resumably.

    The manifest is enqueued into <job-dir>/queue.db (default jobs/<manifest name>/); only
    items not yet done are transcribed. Run the same command again after a crash, a reboot
    or Ctrl-C to continue: nothing is done twice, nothing is lost. Results go to Parquet part
    files (consolidate with `batchasr export`) and one SRT per file under <job-dir>/subtitles.
    To use several GPUs or hosts, see --workers, --gpus, --shard and --engine ray.

    \b
    Example:
      batchasr run archive.csv --model ~/models/paraformer-zh
      batchasr run /mnt/nas/recordings --model paraformer-zh --job-dir jobs/nas
      batchasr run --job-dir jobs/nas      # resume: manifest, model and settings known
      batchasr run archive.csv --model ~/models/paraformer-zh --gpus all
      batchasr run archive.csv --model /shared/paraformer-zh --engine ray --address auto \\
          --job-dir /shared/jobs/archive
    """
    try:
        outcome = jobs.run(source, **options, say=lambda line: click.echo(line, err=True))
    except jobs.UsageError as e:
        raise click.UsageError(str(e))
    except (BatchasrError, ValueError) as e:
        fail(str(e))
    sys.exit(128 + outcome.stopped_by if outcome.stopped_by
             else EXIT_FAILED_ITEMS if outcome.incomplete else EXIT_OK)


@cli.command()
@job_option()
@click.option("--failed", "show_failed", is_flag=True,
              help="List the failed items and errors, and the skipped manifest rows.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the counts per status as one JSON object (with --failed, plus "
                   "'failed_items' and 'skipped_rows' lists).")
def status(job_dir, show_failed, as_json):
    """Show a job's progress: counts, audio hours done, throughput, ETA, failures.

    "running" counts only items held by a live run; items a stopped or killed run left
    running are "interrupted" (counted as pending: the next run takes them).

    \b
    Example:
      batchasr status --job-dir jobs/archive --failed
    """
    from batchasr.queue.status import job_status

    try:
        st = job_status(job_dir, failures=show_failed, counts_only=as_json)
    except BatchasrError as e:
        fail(str(e))
    counts, job, left = st.counts, st.job_dir, st.left
    if as_json:
        out = dict(counts)
        if show_failed:
            out["failed_items"] = [{"id": i.id, "path": i.path, "error": i.error}
                                   for i in st.failed]
            out["skipped_rows"] = [{"manifest": r.manifest, "line": r.line,
                                    "reason": r.reason, "raw": r.raw} for r in st.skipped_rows]
        click.echo(json.dumps(out, ensure_ascii=False))
        return
    click.echo(f"job      {job}  (model {st.model})")
    click.echo(f"items    {counts['pending']} pending"
               + (f" ({counts['interrupted']} interrupted)" if counts["interrupted"] else "")
               + f", {counts['running']} running, {counts['done']} done, "
               f"{counts['failed']} failed / {st.total}")
    if counts["skipped"]:
        click.echo(f"skipped  {counts['skipped']} manifest row(s) not queued: see `batchasr "
                   f"status --job-dir {job} --failed`")
    click.echo(f"audio    {st.done_s / 3600:.3f} h done" +
               (f", {st.left_s / 3600:.3f} h left" if left else ""))
    speed = 0.0
    if st.live:  # figures of the run in progress, rewritten by its workers every few seconds
        audio, wall = st.live_figures()
        if audio > 0 and wall > 0:
            speed = audio / wall
            click.echo(f"speed    {speed:.1f}x real time in the run in progress "
                       f"({audio / 3600:.3f} h of audio in {wall / 60:.1f} min)")
        else:
            click.echo("speed    (the run in progress has not finished its first items yet)")
    else:
        audio, wall = st.past_figures()
        if wall > 0 and audio > 0:
            speed = audio / wall
            click.echo(f"speed    {speed:.1f} audio-hours per hour over {len(st.runs)} run(s)")
    if speed > 0 and left:
        click.echo(f"eta      {st.left_s / speed / 3600:.2f} h for {left} item(s) left "
                   f"({st.left_s / 3600:.3f} h of audio)")
    for item in st.failed:  # the error names the file already when it is about the file
        error = item.error or ""
        where = "" if error.startswith(item.path) else f"{item.path}: "
        click.echo(f"failed   {item.id}\t{where}{error}")
    for r in st.skipped_rows:
        click.echo(f"skipped  {r.manifest}:{r.line}: {r.reason}\t{r.raw}")


@cli.command()
@click.option("--job-dir", "-j", "job_dirs", required=True, multiple=True,
              help="Job folder (repeat it, or give a glob such as 'jobs/x.shard-*', to merge "
                   "the shards of one manifest), or the output location of --engine ray.")
@click.option("--format", "fmt", type=click.Choice(["parquet", "srt", "vtt", "txt", "jsonl"]),
              default="parquet", show_default=True)
@click.option("-o", "--output", default=None, type=click.Path(),
              help="Output file (parquet, jsonl, txt) or folder (srt, vtt, txt per item); "
                   "default inside the job folder (needed when merging several). '-' writes "
                   "to stdout (parquet, jsonl, txt only: srt/vtt write a folder of files).")
def export(job_dirs, fmt, output):
    """Export a job's results from the stored parts, without running any model.

    Parquet and JSONL hold exactly one row per manifest item (done, failed or pending) in
    manifest order; srt/vtt/txt render the done items. Several job folders (shards) are
    merged one after the other; an id in two of them is refused, never duplicated.

    \b
    Example:
      batchasr export --job-dir jobs/archive --format parquet -o archive.parquet
      batchasr export --job-dir jobs/archive --format vtt
      batchasr export --job-dir 'jobs/archive.shard-*' -o archive.parquet
      batchasr export --job-dir jobs/archive --format jsonl -o - | head
    """
    from batchasr.outputs.export import expand_job_dirs, export_results

    try:
        sources = expand_job_dirs(job_dirs)
    except BatchasrError as e:
        fail(str(e))
    if output == "-" and fmt in ("srt", "vtt"):
        raise click.UsageError(f"-o - (stdout) needs --format parquet, jsonl or txt: {fmt} "
                               f"writes one file per item, so -o must be a folder")
    try:
        path = export_results(sources, fmt, output)
    except (BatchasrError, ValueError) as e:
        fail(str(e))
    if output != "-":  # stdout holds the export itself
        click.echo(str(path))


@cli.command("retry-failed")
@job_option()
def retry_failed(job_dir):
    """Put a job's failed items back in the queue; the next `batchasr run` retries them.

    \b
    Example:
      batchasr retry-failed --job-dir jobs/archive && batchasr run --job-dir jobs/archive
    """
    try:
        n = jobs.retry_failed(job_dir)
    except BatchasrError as e:
        fail(str(e))
    click.echo(f"{n} failed item(s) requeued")


@cli.command()
@click.option("--model", "-m", default="ct-punc", show_default=True,
              help="Official CT-Transformer folder (config.yaml, model.pt, tokens.json) or a "
                   "known name (ct-punc, ct-punc-c) found in the local Hugging Face / "
                   "ModelScope cache.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per input line: text, punctuated, punc_ids (one "
                   "punctuation class id per token).")
@click.option("--batch-size", "-b", default=64, show_default=True, type=click.IntRange(1),
              help="Lines read and run through the model together.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]),
              default="float32", show_default=True,
              help="Precision of the network weights; float32 is exact to the official outputs.")
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto",
              show_default=True, help="MLX device (auto: the GPU when MLX has one).")
@click.option("--download", is_flag=True,
              help="Allow fetching a known model name from the Hugging Face hub.")
def punctuate(model, as_json, batch_size, dtype, device, download):
    """Punctuate text lines read on stdin and print them, one output line per input line.

    Separate tokens by spaces where the model's tokenizer expects them (English words);
    Chinese characters need none. Empty lines stay empty.

    \b
    Example:
      echo "今天天气很好 we went out 你呢" | batchasr punctuate --model ./ct-punc --json
    """
    import itertools

    import mlx.core as mx

    from batchasr.runner.device import setup_device
    from batchasr.models.loader import load_punctuator

    try:
        setup_device(device)
        punctuator = load_punctuator(model, dtype=getattr(mx, dtype), download=download)
    except (BatchasrError, ValueError) as e:
        fail(str(e))
    while True:
        lines = [line.rstrip("\r\n") for line in itertools.islice(sys.stdin, batch_size)]
        if not lines:
            break
        for line, (text, ids) in zip(lines, punctuator.punctuate_many(lines,
                                                                      batch_size=batch_size)):
            if as_json:
                click.echo(json.dumps({"text": line, "punctuated": text, "punc_ids": ids},
                                      ensure_ascii=False))
            else:
                click.echo(text)


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--vad", "vad_name", default="auto", show_default=True,
              help="'silero' (weights included), 'fsmn-vad' (found in the local Hugging Face / "
                   "ModelScope cache), an official fsmn-vad folder, or 'auto': fsmn-vad when its "
                   "checkpoint is cached, else silero.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per file per line: path, segments ([start_ms, end_ms] "
                   "lists).")
@click.option("--max-segment-ms", type=click.IntRange(1), default=None,
              help="Cut longer speech segments into equal parts no longer than this.")
@click.option("--download", is_flag=True,
              help="Allow fetching fsmn-vad from the Hugging Face hub.")
def segment(files, vad_name, as_json, max_segment_ms, download):
    """Print each file's speech segments (start and end in ms, tab-separated).

    Files are decoded a window at a time, so any length fits in memory. Files that cannot
    be decoded are reported on stderr (and as JSON objects with an "error" key); the exit
    code is then 3.

    \b
    Example:
      batchasr segment --vad silero --json meeting.flac talk.wav
    """
    from batchasr.models.loader import load_vad

    try:
        vad = load_vad(vad_name, download=download)
    except (BatchasrError, ValueError) as e:
        fail(str(e))
    failures = 0
    for path in files:
        try:
            segments = vad.segment_file(path, max_segment_ms=max_segment_ms)
        except BatchasrError as e:
            failures += 1
            click.echo(f"Error: {e}", err=True)
            if as_json:
                click.echo(json.dumps({"path": path, "error": str(e)}, ensure_ascii=False))
            continue
        if as_json:
            click.echo(json.dumps({"path": path, "segments": [list(s) for s in segments]},
                                  ensure_ascii=False))
        else:
            for start, end in segments:
                click.echo(f"{start}\t{end}" if len(files) == 1 else f"{path}\t{start}\t{end}")
    sys.exit(EXIT_FAILED_ITEMS if failures else EXIT_OK)


def main():
    cli(prog_name="batchasr")


if __name__ == "__main__":
    main()
