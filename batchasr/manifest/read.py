"""Read manifests (CSV, TSV, JSON Lines) as a stream of validated rows.

A manifest lists audio files, one per row:

- ``path`` (required): absolute, or relative to the manifest's folder; ``~`` is expanded.
- ``id`` (optional, unique): defaults to the path as written, normalised (``./a/b.wav`` ->
  ``a/b.wav``); an absolute path inside the manifest's folder is made relative to it. The id
  is what results are keyed on, so it must stay the same when a job is resumed.
- ``language`` (optional): passed to the model; empty means "let the model decide".
- every other column is carried through as ``extra`` (a dict of strings). A cell of a column
  that may name a file (``FILE_COLUMNS``: SeACo's ``hotwords``, a file of one hotword a line
  or the hotwords themselves) is resolved as ``path`` is when it names an existing file
  relative to the manifest's folder (or absolute, or under ``~``): ``extra`` then holds the
  absolute path; any other cell (a comma list) is kept as written.

Rows stream: a million-row manifest is never held in memory. Problems with single rows
(empty path, wrong field count, invalid JSON, bytes that are not UTF-8) are collected with
their line numbers in ``Manifest.problems`` while iterating, and the bad rows are skipped;
problems with the whole file (unreadable, no ``path`` column) raise ManifestError at once.
Each problem also goes, with the row's raw text, to ``Manifest.on_problem`` when set (the
queue records every skipped row in the job that way, however many there are). Duplicate ids
need the whole manifest to find, so the queue, which stores every row, finds them: the first
occurrence is kept, each later one is a bad row too. A missing audio file is not a manifest
problem: it fails as an item when it is decoded.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from batchasr.errors import ManifestError

RESERVED = ("path", "id", "language")
FILE_COLUMNS = ("hotwords",)  # carried columns whose cell may name a file (see above)
MAX_PROBLEMS_KEPT = 1000  # beyond this only the count grows, so memory stays bounded
FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl",
           ".ndjson": "jsonl", ".json": "jsonl"}


@dataclass(frozen=True)
class ManifestRow:
    line: int  # 1-based line of the manifest where the row starts
    id: str
    path: str  # absolute
    language: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    raw: str = field(default="", compare=False, repr=False)  # the row as written


class Manifest:
    """A manifest file; iterate it (as often as needed) for :class:`ManifestRow` objects.

    Opening checks what can be checked without reading every row (the file exists, its
    format, the header has a ``path`` column) and raises ManifestError. After an iteration,
    ``problems`` holds the first MAX_PROBLEMS_KEPT ``(line, message)`` pairs and
    ``n_problems`` their count; ``raise_if_problems()`` turns them into a ManifestError.
    """

    def __init__(self, path: str | os.PathLike, *, format: str | None = None):
        self.path = Path(path)
        self.base_dir = self.path.resolve().parent
        if not self.path.is_file():
            raise ManifestError(self.path, [(0, "no such file")])
        self.format = format or _detect_format(self.path)
        if self.format not in ("csv", "tsv", "jsonl"):
            raise ManifestError(self.path, [(0, f"unknown format {self.format!r}")])
        self.problems: list[tuple[int, str]] = []
        self.n_problems = 0
        # called as on_problem(line, message, raw_text) for every problem, kept or not
        self.on_problem = None
        self.header: list[str] | None = None
        if self.format != "jsonl":
            self.header = self._read_header()

    def __iter__(self) -> Iterator[ManifestRow]:
        self.problems, self.n_problems = [], 0
        if self.format == "jsonl":
            yield from self._iter_jsonl()
        else:
            yield from self._iter_delimited()

    def raise_if_problems(self) -> None:
        if self.n_problems:
            raise ManifestError(self.path, self.problems, total=self.n_problems)

    def problem(self, line: int, message: str, raw: str = "") -> None:
        self.n_problems += 1
        if len(self.problems) < MAX_PROBLEMS_KEPT:
            self.problems.append((line, message))
        if self.on_problem is not None:
            self.on_problem(line, message, raw.rstrip("\r\n"))

    def set_problem_sink(self, sink) -> None:
        """Send every problem to ``sink(line, message, raw_text)`` too (None: stop)."""
        self.on_problem = sink

    # ---- reading ---------------------------------------------------------------------

    def _lines(self) -> Iterator[tuple[int, str, bool]]:
        """``(line_number, text, decoded_ok)`` for each physical line; a line that is not
        UTF-8 is reported once and handed on with replacement characters, marked bad."""
        with open(self.path, "rb") as f:
            for n, raw in enumerate(f, start=1):
                if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                try:
                    yield n, raw.decode("utf-8"), True
                except UnicodeDecodeError as e:
                    self.problem(n, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column "
                                    f"{e.start + 1}); save the manifest as UTF-8",
                                 raw.decode("utf-8", errors="backslashreplace"))
                    yield n, raw.decode("utf-8", errors="replace"), False

    def _read_header(self) -> list[str]:
        delimiter = "\t" if self.format == "tsv" else ","
        numbered = self._lines()
        try:
            first = next(csv.reader((t for _, t, _ in numbered), delimiter=delimiter), None)
        finally:
            numbered.close()  # closes the file; rows are read later, by __iter__
        if not first:
            raise ManifestError(self.path, [(1, "empty manifest: expected a header line")])
        header = [h.strip() for h in first]
        problems = []
        lowered = [h.lower() for h in header]
        if "path" not in lowered:
            problems.append((1, f"no 'path' column (header: {', '.join(header)}); the first "
                                "line must name the columns, e.g. 'path,id,language'"))
        dups = sorted({h for h in lowered if h and lowered.count(h) > 1})
        if dups:
            problems.append((1, f"column(s) named twice: {', '.join(dups)}"))
        if problems:
            raise ManifestError(self.path, problems)
        # reserved names match case-insensitively; other columns keep their spelling
        return [h.lower() if h.lower() in RESERVED else h for h in header]

    def _iter_delimited(self) -> Iterator[ManifestRow]:
        delimiter = "\t" if self.format == "tsv" else ","
        last_bad = 0  # newest line that failed to decode; a row touching it is skipped
        numbered = self._lines()
        consumed: list[str] = []  # the physical lines of the record being read

        def text_lines():
            nonlocal last_bad
            for n, text, ok in numbered:
                if not ok:
                    last_bad = n
                consumed.append(text)
                yield text

        reader = csv.reader(text_lines(), delimiter=delimiter)
        header = self.header
        prev_end = 0
        for record in reader:
            start, prev_end = prev_end + 1, reader.line_num
            raw = "".join(consumed)
            consumed.clear()
            if start == 1:
                continue  # the header, checked at open
            if last_bad >= start:
                continue  # already reported as not UTF-8
            if not record or all(not v.strip() for v in record):
                continue  # blank line
            if len(record) != len(header):
                self.problem(start, f"{len(record)} fields, the header has {len(header)} "
                                    "(check the delimiter and quoting)", raw)
                continue
            row = self._make_row(start, dict(zip(header, record)), raw)
            if row is not None:
                yield row

    def _iter_jsonl(self) -> Iterator[ManifestRow]:
        for n, text, ok in self._lines():
            if not ok or not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                self.problem(n, f"invalid JSON ({e.msg} at column {e.colno})", text)
                continue
            if not isinstance(obj, dict):
                self.problem(n, f"expected a JSON object, got {type(obj).__name__}", text)
                continue
            if "path" not in obj:
                self.problem(n, "no 'path' field", text)
                continue
            fields = {k: _json_value_to_str(v) for k, v in obj.items()}
            row = self._make_row(n, fields, text)
            if row is not None:
                yield row

    def _make_row(self, line: int, fields: dict[str, str | None],
                  raw: str = "") -> ManifestRow | None:
        written = (fields.pop("path", None) or "").strip()
        if not written:
            self.problem(line, "empty path", raw)
            return None
        item_id = (fields.pop("id", None) or "").strip() or default_id(written, self.base_dir)
        language = (fields.pop("language", None) or "").strip() or None
        extra = {k: resolve_file_cell(v, self.base_dir) if k in FILE_COLUMNS else v
                 for k, v in fields.items() if v is not None}
        return ManifestRow(line, item_id, resolve_path(written, self.base_dir), language, extra,
                           raw.rstrip("\r\n"))


def open_manifest(path: str | os.PathLike, *, format: str | None = None) -> Manifest:
    """Open a manifest for streaming (raises ManifestError for whole-file problems)."""
    return Manifest(path, format=format)


def resolve_path(written: str, base_dir: str | os.PathLike) -> str:
    """The absolute, normalised path of a manifest entry (relative = to ``base_dir``)."""
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(written)))


def resolve_file_cell(cell: str, base_dir: str | os.PathLike) -> str:
    """A ``FILE_COLUMNS`` cell: the absolute path of the file it names (relative = to
    ``base_dir``, as :func:`resolve_path`) when that file exists, else the cell as written."""
    text = cell.strip()
    if not text or "\n" in text:
        return cell
    resolved = resolve_path(text, base_dir)
    try:
        return resolved if os.path.isfile(resolved) else cell
    except (OSError, ValueError):  # e.g. a name too long for a path, a NUL byte
        return cell


def default_id(written: str, base_dir: str | os.PathLike) -> str:
    """A stable id for a row without one: the path relative to the manifest's folder
    (POSIX separators), or the absolute path when the file lies outside that folder."""
    p = os.path.normpath(os.path.expanduser(written))
    if os.path.isabs(p):
        rel = os.path.relpath(p, base_dir)
        p = p if rel.startswith(os.pardir) else rel
    return p.replace(os.sep, "/")


def _detect_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt:
        return fmt
    # Unknown extension: sniff the first non-blank line.
    with open(path, "rb") as f:
        for raw in f:
            line = raw.lstrip(b"\xef\xbb\xbf").strip()
            if line:
                return "jsonl" if line.startswith(b"{") else "tsv" if b"\t" in line else "csv"
    return "csv"


def _json_value_to_str(v) -> str | None:
    if v is None or isinstance(v, str):
        return v
    return json.dumps(v, ensure_ascii=False)
