"""Parquet parts of a job and the one table of its results.

Contract with the worker:

* :func:`write_part` writes a list of :data:`~batchasr.outputs.rows.PART_SCHEMA` rows as
  ``<job_dir>/parts/part-<time>-<uuid>.parquet``, atomically, and returns the file name; the
  worker stores that name in the queue's ``part`` column in the same transaction that marks the
  items done.

:func:`results_table` trusts the queue, not the folder: a done item's row is read from the part
the queue names, so an orphan part left by a killed run, or a second copy of an item in another
part, can never duplicate it. Failed and still-pending items come from the queue. The table
holds exactly one row per queue item, in manifest order (``seq``).

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
import os
import sqlite3
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batchasr.errors import JobError
from batchasr.files import atomic_write
from batchasr.outputs.rows import PART_SCHEMA, RESULT_SCHEMA

__all__ = [
    "PARTS", "MANIFEST_TABLE", "write_part", "read_part", "open_location", "is_queue_job",
    "results_table",
]

PARTS = "parts"
MANIFEST_TABLE = "manifest.parquet"  # the items of an output folder without a queue (Ray)


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
