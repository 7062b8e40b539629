"""Export: a job's results, in one of the writers' formats, to a file, a folder or stdout.

The rows come from :func:`~batchasr.outputs.parquet.results_table` (exactly one per queue item,
in manifest order, done rows from the parts the queue names). Parquet and JSON Lines hold one
row per item; the subtitle and text outputs hold one entry per done item. Every file is
written atomically.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from batchasr.errors import JobError
from batchasr.files import atomic_write, fsync_dir
from batchasr.outputs.cues import SubtitleOptions
from batchasr.outputs.names import default_folder
from batchasr.outputs.parquet import results_table
from batchasr.outputs.rows import row_to_transcript
from batchasr.outputs.writers import WRITERS, get_writer, rows, write_item_subtitles

__all__ = ["FORMATS", "export_results"]

FORMATS = tuple(WRITERS)  # ("parquet", "srt", "vtt", "txt", "jsonl")


def export_results(
    job_dir: str | os.PathLike | Sequence[str | os.PathLike],
    fmt: str = "parquet",
    out: str | os.PathLike | None = None,
    *,
    subtitle_options: SubtitleOptions | None = None,
) -> Path:
    """Export a job's results and return where they went.

    * ``parquet``: one file, default ``<job_dir>/results.parquet``, one row per queue item.
    * ``jsonl``: one JSON object per queue item, default ``<job_dir>/results.jsonl``.
    * ``srt`` / ``vtt``: re-rendered from the stored results (no model), one file per done item
      named by :func:`~batchasr.outputs.names.safe_name`, into ``out`` (default: where the worker
      writes them, ``<job_dir>/subtitles`` for SRT and ``<job_dir>/subtitles-vtt`` for VTT).
    * ``txt``: ``out`` a folder (existing, or no suffix): one ``<safe name>.txt`` per done item;
      otherwise (default ``<job_dir>/results.txt``) one file of ``id<TAB>text`` lines for the done
      items, with tabs and newlines inside the text folded to spaces.

    ``out="-"`` writes to stdout (jsonl and txt as UTF-8 text, parquet as its bytes) and
    returns ``Path("-")``; srt/vtt, which write a folder, refuse it (ValueError).

    ``job_dir`` may also be a Ray output folder or URI, or a list of job folders (shards, merged
    as :func:`~batchasr.outputs.parquet.results_table` says); outputs then need ``out`` unless
    ``job_dir`` is one local folder. Raises ValueError for an unknown format and JobError when a
    folder is not a job, a stored result is missing, or an id is in two folders.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; available formats = {list(FORMATS)}")
    writer = get_writer(fmt)
    sources = [job_dir] if isinstance(job_dir, (str, os.PathLike)) else list(job_dir)
    if out is None and (len(sources) != 1 or "://" in str(sources[0])):
        raise ValueError("exporting several job folders (or a URI) needs an output path (-o)")
    if str(out) == "-" and not writer.whole_table:
        raise ValueError(f"{fmt} export writes one file per item into a folder; it cannot go "
                         f"to stdout (-o -): give a folder, or use --format jsonl, txt or parquet")
    table = results_table(sources)
    job_dir = Path(sources[0])
    if str(out) == "-":
        stream = sys.stdout.buffer
        if writer.streams:
            writer.write_table(table, stream)
        else:
            buf = pa.BufferOutputStream()  # a pipe cannot seek; build the file, then write it
            writer.write_table(table, buf)
            stream.write(buf.getvalue().to_pybytes())
        stream.flush()
        return Path("-")
    if not writer.whole_table or (
            writer.per_item and out is not None and (Path(out).is_dir() or not Path(out).suffix)):
        folder = Path(out) if out else default_folder(job_dir, fmt)
        return _export_items(table, fmt, folder, subtitle_options)
    path = Path(out) if out else job_dir / f"results.{fmt}"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: writer.write_table(table, f))
    return path


def _export_items(table: pa.Table, fmt: str, folder: Path, options) -> Path:
    """One file per done item into ``folder``, re-rendered from the stored rows (no model)."""
    folder.mkdir(parents=True, exist_ok=True)
    for row in rows(table.filter(pc.equal(table["status"], "done"))):
        write_item_subtitles(None, row["id"], row_to_transcript(row), options, duration_s=row["duration_s"],
                             fmt=fmt, folder=folder, sync_dir=False)
    fsync_dir(folder)  # once for the whole folder, not once per file
    return folder


def expand_job_dirs(patterns: Sequence[str]) -> list[str]:
    """``--job-dir`` values with shell patterns expanded (``jobs/archive.shard-*``), each in
    natural order (shard-2 before shard-10); JobError when a pattern matches nothing."""
    import glob

    sources = []
    for pattern in patterns:
        found = sorted(glob.glob(pattern), key=_natural) if glob.has_magic(pattern) else []
        if glob.has_magic(pattern) and not found:
            raise JobError(f"--job-dir {pattern}: no folder matches")
        sources += found or [pattern]
    return sources


def _natural(text: str) -> list:
    """Sort key putting shard-2 before shard-10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]
