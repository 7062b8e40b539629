"""Results: Parquet part files written by the worker, and the job's export.

Contract with the worker:

* :func:`transcript_to_row` turns a queue item and its :class:`Transcript` into one row of
  :data:`PART_SCHEMA`.
* :func:`write_part` writes a list of rows as ``<job_dir>/parts/part-<time>-<uuid>.parquet``,
  atomically, and returns the file name; the worker stores that name in the queue's ``part``
  column in the same transaction that marks the items done.

Export (:func:`export_results`) trusts the queue, not the folder: a done item's row is read from
the part the queue names, so an orphan part left by a killed run, or a second copy of an item in
another part, can never duplicate it. Failed and still-pending items come from the queue.
Parquet and JSON Lines hold exactly one row per queue item, in manifest order (``seq``); the
subtitle and text outputs hold one entry per done item.

Two more kinds of source (``batchasr.runner.processes`` / ``batchasr.runner.ray``):

* An output folder of the Ray engine (a local path or any URI pyarrow opens, e.g.
  ``s3://bucket/jobs/x``): no queue, but ``manifest.parquet`` (every item, in manifest order)
  and parts with deterministic names holding ``done`` and ``failed`` rows. An item may be in
  more than one part (a task retried after its actor died, a failure retried by a later run):
  its row is the ``done`` one if there is any, else a ``failed`` one, the part with the
  smallest name winning a tie; an item in no part is ``pending``.
* Several job folders (the shards of one manifest): their rows one after the other, in the
  order given; an id found in two folders is an error rather than a duplicate row.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import sqlite3
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batchasr.errors import JobError
from batchasr.files import atomic_write, fsync_dir
from batchasr.outputs.subtitles import (
    SubtitleOptions, default_folder, safe_name, write_item_subtitles,
)
from batchasr.transcript import Segment, Token, Transcript

logger = logging.getLogger("batchasr.outputs.results")

__all__ = [
    "PART_SCHEMA", "RESULT_SCHEMA", "FORMATS", "transcript_to_row", "write_part", "read_part",
    "row_to_transcript", "results_table", "export_results",
]

SEGMENT = pa.struct([("start_s", pa.float64()), ("end_s", pa.float64()), ("text", pa.string())])
# Token times are the model's integer milliseconds / 1000: round(t * 1000) gives them back exactly.
TOKEN = pa.struct(
    [("text", pa.string()), ("id", pa.int64()), ("start_s", pa.float64()), ("end_s", pa.float64())]
)
RESULT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("path", pa.string()),
        ("status", pa.string()),  # done / failed / pending
        ("error", pa.string()),
        ("duration_s", pa.float64()),
        ("language", pa.string()),
        ("text", pa.string()),
        # the model's text before punctuation was restored (null when no punctuation model
        # ran: then text is the model's own); parts written before this column read it as null
        ("raw_text", pa.string()),
        ("segments", pa.list_(SEGMENT)),
        ("tokens", pa.list_(TOKEN)),
        ("model", pa.string()),
        ("flags", pa.list_(pa.string())),
    ]
)
# Part files also keep the item's carried manifest columns (JSON), so a part is self-describing;
# the export takes them from the queue and spreads them into string columns.
PART_SCHEMA = RESULT_SCHEMA.append(pa.field("extra", pa.string()))
FORMATS = ("parquet", "srt", "vtt", "txt", "jsonl")
PARTS = "parts"
MANIFEST_TABLE = "manifest.parquet"  # the items of an output folder without a queue (Ray)


def _seconds(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000


def transcript_to_row(item: Mapping | Any, transcript: Transcript, *, model_name: str) -> dict:
    """One :data:`PART_SCHEMA` row for a done item.

    ``item`` is a queue row (a dict, or an object with the same attributes) with ``id, path,
    language, extra, duration_s``; ``extra`` may be a JSON string, a dict or None. The language
    is the model's when it reports one, else the manifest's.
    """
    get = item.get if isinstance(item, Mapping) else (lambda key: getattr(item, key, None))
    extra = get("extra")
    if extra is not None and not isinstance(extra, str):
        extra = json.dumps(extra, ensure_ascii=False)
    return {
        "id": str(get("id")),
        "path": get("path"),
        "status": "done",
        "error": None,
        "duration_s": get("duration_s"),
        "language": transcript.language or get("language"),
        "text": transcript.text,
        "raw_text": transcript.raw_text,
        "segments": [{"start_s": s.start_s, "end_s": s.end_s, "text": s.text} for s in transcript.segments],
        "tokens": [
            {"text": t.text, "id": t.id, "start_s": _seconds(t.start_ms), "end_s": _seconds(t.end_ms)}
            for t in transcript.tokens
        ],
        "model": model_name,
        "flags": list(transcript.flags),
        "extra": extra,
    }


def failure_to_row(item: Mapping | Any, error: str, *, model_name: str) -> dict:
    """One :data:`PART_SCHEMA` row for an item that failed (engines without a queue, such
    as Ray, record failures in their parts)."""
    row = transcript_to_row(item, Transcript(text=""), model_name=model_name)
    return {**row, "status": "failed", "error": error, "text": None,
            "language": row["language"] if row["language"] else None}


def row_to_transcript(row: dict) -> Transcript:
    """Rebuild the Transcript stored in a row (for re-rendering subtitles without a model)."""
    ms = lambda s: None if s is None else int(round(s * 1000))  # noqa: E731
    return Transcript(
        text=row.get("text") or "",
        tokens=[Token(t["text"], t["id"], ms(t["start_s"]), ms(t["end_s"])) for t in row.get("tokens") or []],
        segments=[Segment(s["start_s"], s["end_s"], s["text"]) for s in row.get("segments") or []],
        language=row.get("language"),
        flags=list(row.get("flags") or []),
        raw_text=row.get("raw_text"),
    )


def write_part(job_dir: str | os.PathLike, rows: list[dict], *, name: str | None = None) -> str:
    """Write ``rows`` as one new Parquet file in ``<job_dir>/parts/`` and return its file name
    (``name``, or a new unique one).

    Atomic: the file is written under a temp name in the same folder, fsynced, renamed with
    ``os.replace`` and the folder fsynced, so after a crash the part either exists whole under
    its final name or not at all (a leftover ``.part-*.tmp`` is ignored by everything).
    Raises :class:`JobError` when the disk is full (or any other OS error), naming the folder.
    """
    parts = Path(job_dir) / PARTS
    parts.mkdir(parents=True, exist_ok=True)
    name = name or f"part-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:12]}.parquet"
    table = pa.Table.from_pylist(rows, schema=PART_SCHEMA)
    try:
        atomic_write(parts / name, lambda f: pq.write_table(table, f, compression="zstd"))
    except OSError as e:
        hint = "the disk is full; free space and run the job again (finished items are kept)" \
            if e.errno in (errno.ENOSPC, errno.EDQUOT) else "check the folder and run the job again"
        raise JobError(f"cannot write results part in {parts}: {e.strerror or e} ({hint})") from e
    return name


def read_part(job_dir: str | os.PathLike, name: str) -> pa.Table:
    """One part file as a table of :data:`PART_SCHEMA` (the columns the schema names)."""
    return pq.read_table(Path(job_dir) / PARTS / name, columns=PART_SCHEMA.names, schema=PART_SCHEMA)


# --- segment checkpoints of long files ------------------------------------------------------------
#
# While a long file is transcribed, its finished VAD segments are saved now and then under
# <job_dir>/checkpoints/<safe id>/, so that a run killed mid-file redoes only the segments
# not saved. They are a cache, never a result: the export reads only the parts the queue
# names, and a folder is removed once its item is done.

CHECKPOINTS = "checkpoints"
CHECKPOINT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),  # the audio file's size and mtime: a changed file is redone
        ("index", pa.int64()),
        ("start_ms", pa.int64()),
        ("end_ms", pa.int64()),
        ("text", pa.string()),
        ("tokens", pa.list_(TOKEN)),
        ("segments", pa.list_(SEGMENT)),
        ("language", pa.string()),
        ("flags", pa.list_(pa.string())),
    ]
)


def checkpoint_folder(job_dir: str | os.PathLike, item_id: str) -> Path:
    return Path(job_dir) / CHECKPOINTS / safe_name(item_id)


def write_segment_checkpoint(job_dir: str | os.PathLike, item_id: str, source: str,
                             pieces: Sequence[tuple[int, int, int, Transcript]]) -> Path:
    """Save finished segments ``(index, start_ms, end_ms, transcript)`` of an item (times in
    the transcripts relative to their segment), atomically, as one new file."""
    folder = checkpoint_folder(job_dir, item_id)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, start_ms, end_ms, t in pieces:
        row = transcript_to_row({"id": item_id}, t, model_name="")
        rows.append({"id": str(item_id), "source": source, "index": index, "start_ms": start_ms,
                     "end_ms": end_ms, **{k: row[k] for k in
                                          ("text", "tokens", "segments", "language", "flags")}})
    table = pa.Table.from_pylist(rows, schema=CHECKPOINT_SCHEMA)
    path = folder / f"seg-{uuid.uuid4().hex[:16]}.parquet"
    try:
        atomic_write(path, lambda f: pq.write_table(table, f, compression="zstd"))
    except OSError as e:
        raise JobError(f"cannot write a segment checkpoint in {folder}: {e.strerror or e}") from e
    return path


def read_segment_checkpoints(job_dir: str | os.PathLike, item_id: str,
                             source: str) -> dict[tuple[int, int], Transcript]:
    """The saved segments of an item whose audio still has fingerprint ``source``, keyed by
    their span ``(start_ms, end_ms)``. Unreadable files are skipped (they are only a cache)."""
    folder = checkpoint_folder(job_dir, item_id)
    found: dict[tuple[int, int], Transcript] = {}
    for path in sorted(folder.glob("seg-*.parquet")) if folder.is_dir() else []:
        try:
            rows = pq.read_table(path, schema=CHECKPOINT_SCHEMA).to_pylist()
        except (OSError, pa.ArrowException) as e:
            logger.warning("ignoring unreadable segment checkpoint %s (%s)", path, e)
            continue
        for r in rows:
            if r["id"] == str(item_id) and r["source"] == source:
                found[(r["start_ms"], r["end_ms"])] = row_to_transcript(r)
    return found


def drop_segment_checkpoints(job_dir: str | os.PathLike, item_id: str) -> None:
    """Remove an item's checkpoints (and the checkpoints folder once it is empty)."""
    folder = checkpoint_folder(job_dir, item_id)
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()
    except OSError:  # missing, or other items' checkpoints are in it
        pass


def checkpointed_items(job_dir: str | os.PathLike) -> dict[str, Path]:
    """Item id -> checkpoint folder, for every folder holding a readable checkpoint."""
    out = {}
    root = Path(job_dir) / CHECKPOINTS
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


# --- export ------------------------------------------------------------------------------------


def _queue_items(job_dir: Path) -> list[dict]:
    """All queue items in manifest order, read through a read-only connection."""
    db = job_dir / "queue.db"
    if not db.exists():
        raise JobError(f"{job_dir}: no queue.db here; is this a job folder?")
    con = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        rows = con.execute(
            "select id, seq, path, language, extra, status, error, duration_s, part from items order by seq"
        ).fetchall()
    finally:
        con.close()
    return [dict(r) for r in rows]


def _done_rows(job_dir: Path, items: list[dict]) -> tuple[pa.Table, dict[str, int]]:
    """Rows of the done items, each read from the part the queue names (each part read once).

    Returns the table and a map id -> row index. Raises JobError when a part is missing or does
    not hold an item the queue says it does: the export would otherwise silently lose results.
    """
    wanted: dict[str, list[str]] = defaultdict(list)
    for it in items:
        if it["status"] == "done":
            wanted[it["part"]].append(str(it["id"]))
    pieces, index, lost = [], {}, []
    offset = 0
    for name, ids in wanted.items():
        try:
            table = read_part(job_dir, name) if name else None
        except FileNotFoundError:
            table = None
        except (OSError, pa.ArrowException) as e:
            raise JobError(f"{job_dir / PARTS / name}: unreadable results part ({e})") from e
        if table is None:
            lost += ids
            continue
        table = table.filter(pc.is_in(table["id"], value_set=pa.array(ids, pa.string())))
        last = {rid: i for i, rid in enumerate(table["id"].to_pylist())}  # a repeat: keep the last
        table = table.take(pa.array(sorted(last.values()), pa.int64()))
        for i, rid in enumerate(table["id"].to_pylist()):
            index[rid] = offset + i
        offset += table.num_rows
        pieces.append(table)
        lost += [i for i in ids if i not in last]
    if lost:
        raise JobError(
            f"{job_dir}: {len(lost)} done item(s) have no result in the part file the queue names "
            f"(first: {lost[:3]}); the parts folder was changed by hand or is damaged"
        )
    table = pa.concat_tables(pieces) if pieces else PART_SCHEMA.empty_table()
    return table, index


def _extra_columns(items: list[dict]) -> dict[str, list[str | None]]:
    """The carried manifest columns, as strings, in first-seen order. A name that clashes with a
    result column gets a ``manifest_`` prefix; non-string JSON values are written as JSON."""
    parsed = []
    names: dict[str, None] = {}
    for it in items:
        extra = json.loads(it["extra"]) if it.get("extra") else {}
        extra = extra if isinstance(extra, dict) else {"extra": extra}
        parsed.append(extra)
        names.update(dict.fromkeys(extra))
    cols: dict[str, list[str | None]] = {}
    for key in names:
        out = key
        while out in RESULT_SCHEMA.names or out in cols:
            out = f"manifest_{out}"
        vals = (p.get(key) for p in parsed)
        cols[out] = [v if v is None or isinstance(v, str) else json.dumps(v, ensure_ascii=False)
                     for v in vals]
    return cols


def open_location(location: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for a local path or a URI pyarrow supports (``s3://``,
    ``gs://``, ``hdfs://``, ``file://``...)."""
    text = str(location)
    if "://" in text:
        return pafs.FileSystem.from_uri(text)
    return pafs.LocalFileSystem(), str(Path(text).absolute())


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _part_rows(location: str | os.PathLike) -> tuple[list[dict], pa.Table, dict[str, int]]:
    """Items and done rows of an output folder without a queue (see the module docstring)."""
    fs, root = open_location(location)
    manifest = pq.read_table(f"{root}/{MANIFEST_TABLE}", filesystem=fs).to_pylist()
    selector = pafs.FileSelector(f"{root}/{PARTS}", allow_not_found=True)
    names = sorted(i.path for i in fs.get_file_info(selector)
                   if i.type == pafs.FileType.File and i.base_name.startswith("part-")
                   and i.base_name.endswith(".parquet"))
    best: dict[str, tuple[bool, int, int]] = {}  # id -> (failed?, part, row): smallest wins
    tables, columns = [], []
    for p, name in enumerate(names):
        try:
            table = pq.read_table(name, filesystem=fs, columns=PART_SCHEMA.names, schema=PART_SCHEMA)
        except (OSError, pa.ArrowException) as e:
            raise JobError(f"{name}: unreadable results part ({e})") from e
        cols = {c: table[c].to_pylist() for c in ("id", "status", "error", "duration_s")}
        tables.append(table)
        columns.append(cols)
        for r, (rid, status) in enumerate(zip(cols["id"], cols["status"])):
            key = (status != "done", p, r)
            if rid not in best or key < best[rid]:
                best[rid] = key
    items, taken = [], defaultdict(list)
    for m in manifest:
        item = {**m, "status": "pending", "error": None, "duration_s": None, "part": None}
        got = best.get(str(m["id"]))
        if got is not None:
            failed, p, r = got
            item["duration_s"] = columns[p]["duration_s"][r]
            if failed:
                item.update(status="failed", error=columns[p]["error"][r])
            else:
                item["status"] = "done"
                taken[p].append(r)
        items.append(item)
    pieces = [tables[p].take(pa.array(rows, pa.int64())) for p, rows in sorted(taken.items())]
    done = pa.concat_tables(pieces) if pieces else PART_SCHEMA.empty_table()
    index = {rid: i for i, rid in enumerate(done["id"].to_pylist())}
    return items, done, index


def is_queue_job(location: str | os.PathLike) -> bool:
    return "://" not in str(location) and (Path(location) / "queue.db").exists()


def results_table(job_dir: str | os.PathLike | Sequence[str | os.PathLike]) -> pa.Table:
    """Exactly one row per item, in manifest order: :data:`RESULT_SCHEMA` plus the carried
    manifest columns as strings. Holds the whole result in memory (Arrow buffers).

    ``job_dir``: a job folder, an output folder of the Ray engine, or a list of them (shards
    of one manifest: their rows in the order given). Raises JobError for an id in two of them.
    """
    if not isinstance(job_dir, (str, os.PathLike)):
        sources = list(job_dir)
        if len(sources) == 1:
            return results_table(sources[0])
        tables = [results_table(j) for j in sources]
        seen: dict[str, int] = {}
        for k, t in enumerate(tables):
            for rid in t["id"].to_pylist():
                if seen.setdefault(rid, k) != k:
                    raise JobError(f"item {rid!r} is in both {sources[seen[rid]]} and {sources[k]}; "
                                   "merge only the shards of one manifest, each once")
        return pa.concat_tables(tables, promote_options="default")
    if is_queue_job(job_dir):
        job_dir = Path(job_dir)
        items = _queue_items(job_dir)
        done, index = _done_rows(job_dir, items)
    else:
        fs, root = open_location(job_dir)
        if not _exists(fs, f"{root}/{MANIFEST_TABLE}"):
            raise JobError(f"{job_dir}: no queue.db (or {MANIFEST_TABLE} of a Ray run) here; "
                           "is this a job folder?")
        items, done, index = _part_rows(job_dir)
    others = [
        {
            "id": str(it["id"]),
            "path": it["path"],
            "status": "failed" if it["status"] == "failed" else "pending",  # running = not done yet
            "error": it["error"] if it["status"] == "failed" else None,
            "duration_s": it["duration_s"],
            "language": it["language"],
            "segments": [], "tokens": [], "flags": [],
        }
        for it in items
        if it["status"] != "done"
    ]
    table = pa.concat_tables(
        [done.select(RESULT_SCHEMA.names), pa.Table.from_pylist(others, schema=RESULT_SCHEMA)]
    )
    order, k = [], done.num_rows
    for it in items:
        if it["status"] == "done":
            order.append(index[str(it["id"])])
        else:
            order.append(k)
            k += 1
    table = table.take(pa.array(order, pa.int64()))
    # the queue learns a duration when the item is decoded; the part may have been written
    # from the claimed item, before that
    queued = pa.array([it["duration_s"] for it in items], pa.float64())
    table = table.set_column(table.schema.get_field_index("duration_s"), "duration_s",
                             pc.coalesce(queued, table["duration_s"]))
    for name, values in _extra_columns(items).items():
        table = table.append_column(pa.field(name, pa.string()), pa.array(values, pa.string()))
    return table


def _rows(table: pa.Table) -> Iterator[dict]:
    for batch in table.to_batches(max_chunksize=2048):
        yield from batch.to_pylist()


def _one_line(s: str | None) -> str:
    return " ".join((s or "").split())  # tabs and newlines would break the id<TAB>text layout


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
      named by :func:`~batchasr.outputs.subtitles.safe_name`, into ``out`` (default: where the worker
      writes them, ``<job_dir>/subtitles`` for SRT and ``<job_dir>/subtitles-vtt`` for VTT).
    * ``txt``: ``out`` a folder (existing, or no suffix): one ``<safe name>.txt`` per done item;
      otherwise (default ``<job_dir>/results.txt``) one file of ``id<TAB>text`` lines for the done
      items, with tabs and newlines inside the text folded to spaces.

    ``out="-"`` writes to stdout (jsonl and txt as UTF-8 text, parquet as its bytes) and
    returns ``Path("-")``; srt/vtt, which write a folder, refuse it (ValueError).

    ``job_dir`` may also be a Ray output folder or URI, or a list of job folders (shards, merged
    as :func:`results_table` says); outputs then need ``out`` unless ``job_dir`` is one local
    folder. Every file is written atomically. Raises ValueError for an unknown format and
    JobError when a folder is not a job, a stored result is missing, or an id is in two folders.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; available formats = {list(FORMATS)}")
    sources = [job_dir] if isinstance(job_dir, (str, os.PathLike)) else list(job_dir)
    if out is None and (len(sources) != 1 or "://" in str(sources[0])):
        raise ValueError("exporting several job folders (or a URI) needs an output path (-o)")
    if str(out) == "-" and fmt in ("srt", "vtt"):
        raise ValueError(f"{fmt} export writes one file per item into a folder; it cannot go "
                         f"to stdout (-o -): give a folder, or use --format jsonl, txt or parquet")
    table = results_table(sources)
    job_dir = Path(sources[0])
    if str(out) == "-":  # stdout: jsonl and txt as UTF-8 text, parquet as bytes
        stream = sys.stdout.buffer
        if fmt == "parquet":
            buf = pa.BufferOutputStream()  # a pipe cannot seek; build the file, then write it
            pq.write_table(table, buf, compression="zstd")
            stream.write(buf.getvalue().to_pybytes())
        else:
            _write_lines(table, fmt, stream)
        stream.flush()
        return Path("-")
    if fmt in ("srt", "vtt"):
        folder = Path(out) if out else default_folder(job_dir, fmt)
        return _export_subtitles(table, fmt, folder, subtitle_options)
    if fmt == "txt" and out is not None and (Path(out).is_dir() or not Path(out).suffix):
        return _export_txt_folder(table, Path(out))
    path = Path(out) if out else job_dir / f"results.{fmt}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        atomic_write(path, lambda f: pq.write_table(table, f, compression="zstd"))
    else:
        atomic_write(path, lambda f: _write_lines(table, fmt, f))
    return path


def _write_lines(table: pa.Table, fmt: str, f) -> None:
    """jsonl (one object per item) or txt (``id<TAB>text`` per done item) into binary ``f``."""
    if fmt == "jsonl":
        f.writelines((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8") for r in _rows(table))
    else:
        f.writelines(f"{_one_line(r['id'])}\t{_one_line(r['text'])}\n".encode("utf-8")
                     for r in _rows(table) if r["status"] == "done")


def _export_subtitles(table: pa.Table, fmt: str, folder: Path, options) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for row in _rows(table.filter(pc.equal(table["status"], "done"))):
        write_item_subtitles(None, row["id"], row_to_transcript(row), options, duration_s=row["duration_s"],
                             fmt=fmt, folder=folder, sync_dir=False)
    fsync_dir(folder)  # once for the whole folder, not once per file
    return folder


def _export_txt_folder(table: pa.Table, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for row in _rows(table.filter(pc.equal(table["status"], "done"))):
        text = (row["text"] or "").strip() + "\n"
        atomic_write(folder / f"{safe_name(row['id'])}.txt", text, sync_dir=False)
    fsync_dir(folder)
    return folder
