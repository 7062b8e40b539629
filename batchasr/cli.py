"""The `batchasr` command: a thin click layer over the library.

Exit codes (every command):
  0  everything asked for was done
  1  could not run (bad model folder, unreadable manifest, job locked by another runner, ...)
  2  bad command-line usage
  3  done, but some items failed (listed by `batchasr status --failed`)
"""
from __future__ import annotations

import functools
import json
import logging
import sys

import click

from batchasr import __version__
from batchasr.errors import BatchasrError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_FAILED_ITEMS = 0, 1, 2, 3


def model_options(fn):
    """--model, --weights, --dtype, --device, --download: shared by every model command."""

    @click.option("--model", "-m", default="paraformer-zh", show_default=True,
                  help="Official FunASR model folder (config.yaml, model.pt, ...) or a known "
                       "name (paraformer-zh, paraformer-en, fun-asr-nano) found in the local "
                       "Hugging Face / ModelScope cache.")
    @click.option("--weights", type=click.Choice(["checkpoint", "dummy"]), default="checkpoint",
                  show_default=True,
                  help="'dummy': full-size architecture with random weights (benchmarks only; "
                       "the text is meaningless).")
    @click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]),
                  default="float32", show_default=True,
                  help="Precision of the network weights. float32 is exact to the official "
                       "outputs; half precision is faster on GPUs and may change rare tokens.")
    @click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto",
                  show_default=True, help="MLX device (auto: the GPU when MLX has one).")
    @click.option("--download", is_flag=True,
                  help="Allow fetching a known model name from the Hugging Face hub.")
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


def open_model(model, weights, dtype, device, download, **options):
    import mlx.core as mx

    from batchasr.checkpoints import load_model
    from batchasr.device import setup_device

    setup_device(device)
    return load_model(model, weights=weights, dtype=getattr(mx, dtype), download=download,
                      **options)


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
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--batch-size", "-b", default=8, show_default=True, type=click.IntRange(1),
              help="Files decoded and run through the model together.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per file per line: path, text, tokens, token_ids, "
                   "timestamps ([start_ms, end_ms] per token), ...")
@click.option("--max-new-tokens", type=click.IntRange(1), default=None,
              help="LLM models: generation cap, counting the stop token (funasr's max_length; "
                   "512 by default).")
@click.option("--language", default=None, help="LLM models: language named in the prompt.")
@click.option("--hotwords", default=None,
              help="LLM models: comma-separated words to favour, as the official prompt does.")
def transcribe(files, model, weights, dtype, device, download, batch_size, as_json,
               max_new_tokens, language, hotwords):
    """Transcribe audio files and print the text (or JSON lines).

    Files that cannot be decoded are reported on stderr (and as JSON objects with an
    "error" key) without stopping the others; the exit code is then 3.

    \b
    Example:
      batchasr transcribe --model ./paraformer-zh --json clip1.wav clip2.flac
    """
    from batchasr.audio import load
    from batchasr.transcript import to_record

    options = {k: v for k, v in (("max_new_tokens", max_new_tokens), ("hotwords", hotwords))
               if v is not None}
    try:
        asr = open_model(model, weights, dtype, device, download, **options)
    except (BatchasrError, ValueError) as e:
        fail(str(e))
    failures = 0
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        decoded: dict[int, object] = {}
        errors: dict[int, BatchasrError] = {}
        for i, path in enumerate(chunk):
            try:
                decoded[i] = load(path)
            except BatchasrError as e:
                errors[i] = e
        order = sorted(decoded)
        results = dict(zip(order, asr.transcribe([decoded[i] for i in order],
                                                  languages=[language] * len(order))))
        for i, path in enumerate(chunk):  # report in input order
            if i in errors:
                failures += 1
                click.echo(f"Error: {errors[i]}", err=True)
                if as_json:
                    click.echo(json.dumps({"path": path, "error": str(errors[i])},
                                          ensure_ascii=False))
            elif as_json:
                record = to_record(results[i], path=path, duration_s=len(decoded[i]) / 16000,
                                   asr=asr)
                click.echo(json.dumps(record, ensure_ascii=False))
            else:
                click.echo(results[i].text if len(files) == 1 else f"{path}\t{results[i].text}")
    sys.exit(EXIT_FAILED_ITEMS if failures else EXIT_OK)


def main():
    cli(prog_name="batchasr")


if __name__ == "__main__":
    main()
