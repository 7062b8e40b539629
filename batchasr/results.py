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
"""
from __future__ import annotations

import errno
import json
import os
import sqlite3
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchasr.errors import JobError
from batchasr.subtitles import (
    SubtitleOptions, atomic_write, default_folder, fsync_dir, safe_name, write_item_subtitles,
)
from batchasr.transcript import Segment, Token, Transcript

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
        "segments": [{"start_s": s.start_s, "end_s": s.end_s, "text": s.text} for s in transcript.segments],
        "tokens": [
            {"text": t.text, "id": t.id, "start_s": _seconds(t.start_ms), "end_s": _seconds(t.end_ms)}
            for t in transcript.tokens
        ],
        "model": model_name,
        "flags": list(transcript.flags),
        "extra": extra,
    }


def row_to_transcript(row: dict) -> Transcript:
    """Rebuild the Transcript stored in a row (for re-rendering subtitles without a model)."""
    ms = lambda s: None if s is None else int(round(s * 1000))  # noqa: E731
    return Transcript(
        text=row.get("text") or "",
        tokens=[Token(t["text"], t["id"], ms(t["start_s"]), ms(t["end_s"])) for t in row.get("tokens") or []],
        segments=[Segment(s["start_s"], s["end_s"], s["text"]) for s in row.get("segments") or []],
        language=row.get("language"),
        flags=list(row.get("flags") or []),
    )


def write_part(job_dir: str | os.PathLike, rows: list[dict]) -> str:
    """Write ``rows`` as one new Parquet file in ``<job_dir>/parts/`` and return its file name.

    Atomic: the file is written under a temp name in the same folder, fsynced, renamed with
    ``os.replace`` and the folder fsynced, so after a crash the part either exists whole under
    its final name or not at all (a leftover ``.part-*.tmp`` is ignored by everything).
    Raises :class:`JobError` when the disk is full (or any other OS error), naming the folder.
    """
    parts = Path(job_dir) / PARTS
    parts.mkdir(parents=True, exist_ok=True)
    name = f"part-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:12]}.parquet"
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


def results_table(job_dir: str | os.PathLike) -> pa.Table:
    """Exactly one row per queue item, in manifest order: :data:`RESULT_SCHEMA` plus the carried
    manifest columns as strings. Holds the whole result in memory (Arrow buffers)."""
    job_dir = Path(job_dir)
    items = _queue_items(job_dir)
    done, index = _done_rows(job_dir, items)
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
    job_dir: str | os.PathLike,
    fmt: str = "parquet",
    out: str | os.PathLike | None = None,
    *,
    subtitle_options: SubtitleOptions | None = None,
) -> Path:
    """Export a job's results and return where they went.

    * ``parquet``: one file, default ``<job_dir>/results.parquet``, one row per queue item.
    * ``jsonl``: one JSON object per queue item, default ``<job_dir>/results.jsonl``.
    * ``srt`` / ``vtt``: re-rendered from the stored results (no model), one file per done item
      named by :func:`~batchasr.subtitles.safe_name`, into ``out`` (default: where the worker
      writes them, ``<job_dir>/subtitles`` for SRT and ``<job_dir>/subtitles-vtt`` for VTT).
    * ``txt``: ``out`` a folder (existing, or no suffix): one ``<safe name>.txt`` per done item;
      otherwise (default ``<job_dir>/results.txt``) one file of ``id<TAB>text`` lines for the done
      items, with tabs and newlines inside the text folded to spaces.

    Every file is written atomically. Raises ValueError for an unknown format and JobError when
    the folder is not a job or a stored result is missing.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; available formats = {list(FORMATS)}")
    job_dir = Path(job_dir)
    table = results_table(job_dir)
    if fmt in ("srt", "vtt"):
        folder = Path(out) if out else default_folder(job_dir, fmt)
        return _export_subtitles(table, fmt, folder, subtitle_options)
    if fmt == "txt" and out is not None and (Path(out).is_dir() or not Path(out).suffix):
        return _export_txt_folder(table, Path(out))
    path = Path(out) if out else job_dir / f"results.{fmt}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        atomic_write(path, lambda f: pq.write_table(table, f, compression="zstd"))
    elif fmt == "jsonl":
        atomic_write(path, lambda f: f.writelines(
            (json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8") for r in _rows(table)))
    else:
        atomic_write(path, lambda f: f.writelines(
            f"{_one_line(r['id'])}\t{_one_line(r['text'])}\n".encode("utf-8")
            for r in _rows(table) if r["status"] == "done"))
    return path


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
