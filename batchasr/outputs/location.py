"""A Ray output location: ``manifest.parquet`` (the validated manifest), ``job.json`` (the
job's settings) and ``parts/`` (one Parquet part per transcriber call), on a local path or any
URI pyarrow opens (``s3://...``).

Invariants: a part is named by its item ids, so a retried call replaces its own part rather
than adding a copy; each file is written whole or not at all (atomically on a local path;
object stores replace whole objects); an id keeps the file it was first given.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batchasr.errors import JobError, ManifestError
from batchasr.files import atomic_write
from batchasr.outputs import parquet

JOB_FILE = "job.json"
MANIFEST_SCHEMA = pa.schema([("id", pa.string()), ("seq", pa.int64()), ("path", pa.string()),
                             ("language", pa.string()), ("extra", pa.string())])


def part_name(ids: list[str]) -> str:
    """The part of one transcriber call: named by its item ids, so a retried call (same
    items) replaces its own part instead of adding a copy."""
    digest = hashlib.sha256("\0".join(sorted(ids)).encode("utf-8")).hexdigest()[:24]
    return f"part-r{digest}.parquet"


def _read_json(fs: pafs.FileSystem, path: str) -> dict | None:
    try:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        return None


def _write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    if isinstance(fs, pafs.LocalFileSystem):
        atomic_write(path, data)
    else:
        with fs.open_output_stream(path) as f:  # object stores: the whole object or none
            f.write(data)


def ensure_settings(fs: pafs.FileSystem, root: str, settings: dict[str, Any]) -> None:
    """Record the settings in ``job.json``; on resume, refuse different values (as the
    queue's ``ensure_meta`` does)."""
    path = f"{root}/{JOB_FILE}"
    recorded = _read_json(fs, path) or {}
    diffs = [(k, recorded[k], v) for k, v in settings.items() if k in recorded and recorded[k] != v]
    if diffs:
        said = "; ".join(f"{k}={old!r} (now {new!r})" for k, old, new in diffs)
        raise JobError(f"{root} was started with different settings: {said}. Resume it with the "
                       "same settings or choose another --job-dir.")
    if any(k not in recorded for k in settings):
        _write_bytes(fs, path, json.dumps({**recorded, **settings}, indent=1).encode())


def write_manifest(fs: pafs.FileSystem, root: str, manifest, *, strict: bool,
                   chunk: int = 10_000) -> tuple[int, list[tuple[int, str]]]:
    """Stream a manifest's rows into ``<root>/manifest.parquet``; returns (rows, skipped
    problems). Raises ManifestError for duplicate ids (and for bad rows when ``strict``), and
    JobError when an id recorded by an earlier run now names another file."""
    old = {}
    if fs.get_file_info(f"{root}/{parquet.MANIFEST_TABLE}").type == pafs.FileType.File:
        t = pq.read_table(f"{root}/{parquet.MANIFEST_TABLE}", filesystem=fs, columns=["id", "path"])
        old = dict(zip(t["id"].to_pylist(), t["path"].to_pylist()))
    sink = pa.BufferOutputStream()
    seen: dict[str, int] = {}
    dups, moved, n = [], [], 0
    with pq.ParquetWriter(sink, MANIFEST_SCHEMA, compression="zstd") as writer:
        rows: list[dict] = []
        for r in manifest:
            if r.id in seen:
                dups.append((r.line, f"duplicate id {r.id!r} (first used on line {seen[r.id]})"))
                continue
            seen[r.id] = r.line
            if old.get(r.id, r.path) != r.path:
                moved.append(f"  line {r.line}: id {r.id!r} was {old[r.id]}, now {r.path}")
            rows.append({"id": r.id, "seq": n, "path": r.path, "language": r.language,
                         "extra": json.dumps(r.extra, ensure_ascii=False)})
            n += 1
            if len(rows) >= chunk:
                writer.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA))
                rows = []
        if rows:
            writer.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA))
    problems = list(getattr(manifest, "problems", []))
    if dups or (strict and problems):
        raise ManifestError(getattr(manifest, "path", "manifest"),
                            (problems if strict else []) + dups[:1000])
    if moved:
        raise JobError(f"{len(moved)} manifest row(s) reuse an id of this job for a different "
                       "file:\n" + "\n".join(moved[:20]) + "\nGive those rows their own ids, or "
                       "choose another --job-dir.")
    _write_bytes(fs, f"{root}/{parquet.MANIFEST_TABLE}", sink.getvalue().to_pybytes())
    return n, [] if strict else problems


def done_ids(fs: pafs.FileSystem, root: str) -> pa.Array:
    """Ids with a ``done`` row in the output location's parts."""
    selector = pafs.FileSelector(f"{root}/{parquet.PARTS}", allow_not_found=True)
    found = []
    for info in fs.get_file_info(selector):
        if info.type == pafs.FileType.File and info.base_name.startswith("part-") \
                and info.base_name.endswith(".parquet"):
            t = pq.read_table(info.path, filesystem=fs, columns=["id", "status"])
            found += t.filter(pc.equal(t["status"], "done"))["id"].chunks
    return pc.unique(pa.chunked_array(found, pa.string()))
