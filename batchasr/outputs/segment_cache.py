"""The segment resume cache: finished VAD segments of a long file, saved while it is transcribed.

While a long file is transcribed, its finished segments are saved now and then under
``<job_dir>/checkpoints/<safe id>/`` (one ``seg-<uuid>.parquet`` per save), so that a run killed
mid-file redoes only the segments not saved. The folder name ``checkpoints`` and the file
format are the on-disk contract: jobs started by an earlier version resume from them.

Invariants: the cache is never a result (the export reads only the parts the queue names); a
saved segment is used only while the audio file keeps the fingerprint (``source``) it was saved
with; an item's folder is removed once the item is done; an unreadable file is skipped.
"""
from __future__ import annotations

import logging
import os
import shutil
import uuid
from dataclasses import fields
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from batchasr.errors import JobError
from batchasr.files import atomic_write
from batchasr.outputs.names import safe_name
from batchasr.outputs.rows import RESULT_SCHEMA, row_to_transcript, transcript_to_row
from batchasr.transcript import Transcript

logger = logging.getLogger("batchasr.results")  # the name log lines show (stable)

__all__ = ["CACHE_DIR", "cache_folder", "save_segments", "load_segments", "drop_segments",
           "cached_items"]

CACHE_DIR = "checkpoints"  # the on-disk name; kept so that older jobs resume
# Every Transcript field, in its result-row column (rows.py): a segment read back is the
# transcript that was saved. Files saved before a field had its column read it as null.
TRANSCRIPT_COLUMNS = tuple(f.name for f in fields(Transcript))
SEGMENT_CACHE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),  # the audio file's size and mtime: a changed file is redone
        ("index", pa.int64()),
        ("start_ms", pa.int64()),
        ("end_ms", pa.int64()),
        *(RESULT_SCHEMA.field(name) for name in TRANSCRIPT_COLUMNS),
    ]
)


def cache_folder(job_dir: str | os.PathLike, item_id: str) -> Path:
    """The folder holding an item's saved segments."""
    return Path(job_dir) / CACHE_DIR / safe_name(item_id)


def save_segments(job_dir: str | os.PathLike, item_id: str, source: str,
                  pieces: Sequence[tuple[int, int, int, Transcript]]) -> Path:
    """Save finished segments ``(index, start_ms, end_ms, transcript)`` of an item (times in
    the transcripts relative to their segment), atomically, as one new file."""
    folder = cache_folder(job_dir, item_id)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, start_ms, end_ms, t in pieces:
        row = transcript_to_row({"id": item_id}, t, model_name="")
        rows.append({"id": str(item_id), "source": source, "index": index, "start_ms": start_ms,
                     "end_ms": end_ms, **{k: row[k] for k in TRANSCRIPT_COLUMNS}})
    table = pa.Table.from_pylist(rows, schema=SEGMENT_CACHE_SCHEMA)
    path = folder / f"seg-{uuid.uuid4().hex[:16]}.parquet"
    try:
        atomic_write(path, lambda f: pq.write_table(table, f, compression="zstd"))
    except OSError as e:
        raise JobError(f"cannot save finished segments in {folder}: {e.strerror or e}") from e
    return path


def load_segments(job_dir: str | os.PathLike, item_id: str,
                  source: str) -> dict[tuple[int, int], Transcript]:
    """The saved segments of an item whose audio still has fingerprint ``source``, keyed by
    their span ``(start_ms, end_ms)``. Unreadable files are skipped (they are only a cache)."""
    folder = cache_folder(job_dir, item_id)
    found: dict[tuple[int, int], Transcript] = {}
    for path in sorted(folder.glob("seg-*.parquet")) if folder.is_dir() else []:
        try:
            rows = pq.read_table(path, schema=SEGMENT_CACHE_SCHEMA).to_pylist()
        except (OSError, pa.ArrowException) as e:
            logger.warning("ignoring unreadable saved segments %s (%s)", path, e)
            continue
        for r in rows:
            if r["id"] == str(item_id) and r["source"] == source:
                found[(r["start_ms"], r["end_ms"])] = row_to_transcript(r)
    return found


def drop_segments(job_dir: str | os.PathLike, item_id: str) -> None:
    """Remove an item's saved segments (and the cache folder once it is empty)."""
    folder = cache_folder(job_dir, item_id)
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()
    except OSError:  # missing, or other items' segments are in it
        pass


def cached_items(job_dir: str | os.PathLike) -> dict[str, Path]:
    """Item id -> cache folder, for every folder holding a readable file of saved segments
    (a folder with none is listed under ``"\\0<folder name>"``, an id no item has)."""
    out = {}
    root = Path(job_dir) / CACHE_DIR
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        for path in sorted(folder.glob("seg-*.parquet")):
            try:
                ids = pq.read_table(path, columns=["id"])["id"].to_pylist()
            except (OSError, pa.ArrowException):
                continue
            if ids:
                out[ids[0]] = folder
                break
        else:
            out.setdefault(f"\0{folder.name}", folder)  # empty or unreadable: no item
    return out
