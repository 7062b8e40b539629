"""Writers: one class per output format, found by name in one registry (whisper's ``get_writer``).

Every format an export (:func:`batchasr.outputs.export.export_results`) or the worker writes is a
:class:`ResultWriter` in :data:`WRITERS`, keyed by its name, which is also its file extension:

* a whole-table writer (``parquet``, ``jsonl``, ``txt``) writes the results table into one
  binary file (:meth:`ResultWriter.write_table`);
* a per-item writer (``srt``, ``vtt``, ``txt``) gives the text of one item's file
  (:meth:`ResultWriter.item_text`); :func:`write_item_subtitles` writes it atomically under a
  name from :func:`~batchasr.outputs.names.subtitle_path`, which never leaves the folder.

Subtitle writers only format cues: building them is :mod:`batchasr.outputs.cues`' job.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from batchasr.files import atomic_write
from batchasr.outputs.cues import Cue, SubtitleOptions, build_cues
from batchasr.outputs.names import default_folder, subtitle_path
from batchasr.transcript import Transcript

__all__ = [
    "ResultWriter", "SubtitleWriter", "WriteSRT", "WriteVTT", "WriteTXT", "WriteJSONL",
    "WriteParquet", "WRITERS", "get_writer", "format_timestamp", "render", "write_item_subtitles",
]


class ResultWriter:
    """One output format. ``per_item``: it can write one file per done item (``item_text``);
    ``whole_table``: it can write the whole results table into one file (``write_table``);
    ``streams``: ``write_table`` only appends, so it can write into a pipe."""

    extension = ""
    per_item = False
    whole_table = False
    streams = True

    def write_table(self, table: pa.Table, f: BinaryIO) -> None:
        """Write the results table (one row per item, manifest order) into binary ``f``."""
        raise ValueError(f"{self.extension} writes one file per item into a folder")

    def item_text(self, transcript: Transcript, options: SubtitleOptions | None = None, *,
                  duration_s: float | None = None) -> str:
        """The whole content of one item's file."""
        raise ValueError(f"{self.extension} writes the whole table into one file")


def rows(table: pa.Table) -> Iterator[dict]:
    """The table's rows as dicts, a few thousand at a time (never the whole table as Python)."""
    for batch in table.to_batches(max_chunksize=2048):
        yield from batch.to_pylist()


def _one_line(s: str | None) -> str:
    return " ".join((s or "").split())  # tabs and newlines would break the id<TAB>text layout


class WriteParquet(ResultWriter):
    """The results table as one zstd-compressed Parquet file."""

    extension, whole_table, streams = "parquet", True, False

    def write_table(self, table: pa.Table, f: BinaryIO) -> None:
        pq.write_table(table, f, compression="zstd")


class WriteJSONL(ResultWriter):
    """One JSON object per item (every item, whatever its status)."""

    extension, whole_table = "jsonl", True

    def write_table(self, table: pa.Table, f: BinaryIO) -> None:
        f.writelines((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8") for r in rows(table))


class WriteTXT(ResultWriter):
    """The text of the done items: ``id<TAB>text`` lines (tabs and newlines inside the text
    folded to spaces) for a whole table, or the bare text per item."""

    extension, whole_table, per_item = "txt", True, True

    def write_table(self, table: pa.Table, f: BinaryIO) -> None:
        f.writelines(f"{_one_line(r['id'])}\t{_one_line(r['text'])}\n".encode("utf-8")
                     for r in rows(table) if r["status"] == "done")

    def item_text(self, transcript: Transcript, options: SubtitleOptions | None = None, *,
                  duration_s: float | None = None) -> str:
        return (transcript.text or "").strip() + "\n"


def format_timestamp(seconds: float, always_include_hours: bool = False, decimal_marker: str = ".") -> str:
    """``HH:MM:SS,mmm``-style time; rounded to whole milliseconds *before* splitting."""
    assert seconds >= 0, "non-negative timestamp expected"
    ms = int(round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    hh = f"{hours:02d}:" if always_include_hours or hours > 0 else ""
    return f"{hh}{minutes:02d}:{secs:02d}{decimal_marker}{ms:03d}"


class SubtitleWriter(ResultWriter):
    """A subtitle format: cues from :func:`~batchasr.outputs.cues.build_cues`, one file per item."""

    per_item = True
    always_include_hours = False
    decimal_marker = "."
    header = ""

    def clean(self, text: str) -> str:
        # "-->" would read as a timing line; a blank line would end the cue early
        lines = (ln.strip().replace("-->", "->") for ln in text.split("\n"))
        return "\n".join(ln for ln in lines if ln)

    def cue(self, index: int, cue: Cue) -> str:
        start = format_timestamp(cue.start_s, self.always_include_hours, self.decimal_marker)
        end = format_timestamp(cue.end_s, self.always_include_hours, self.decimal_marker)
        return f"{start} --> {end}\n{self.clean(cue.text)}\n"

    def render(self, cues: Sequence[Cue]) -> str:
        """The whole file; cues with no text left after cleaning are dropped before numbering."""
        kept = (c for c in cues if self.clean(c.text))
        return self.header + "".join(self.cue(i, c) + "\n" for i, c in enumerate(kept, start=1))

    def item_text(self, transcript: Transcript, options: SubtitleOptions | None = None, *,
                  duration_s: float | None = None) -> str:
        return self.render(build_cues(transcript, options, duration_s=duration_s))


class WriteSRT(SubtitleWriter):
    extension, always_include_hours, decimal_marker = "srt", True, ","

    def cue(self, index: int, cue: Cue) -> str:
        return f"{index}\n" + super().cue(index, cue)


class WriteVTT(SubtitleWriter):
    extension, header = "vtt", "WEBVTT\n\n"

    def clean(self, text: str) -> str:  # "<" and "&" start tags and entities in WebVTT
        return super().clean(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# in the order the export lists its formats
WRITERS: dict[str, type[ResultWriter]] = {
    "parquet": WriteParquet, "srt": WriteSRT, "vtt": WriteVTT, "txt": WriteTXT, "jsonl": WriteJSONL,
}


def get_writer(fmt: str) -> ResultWriter:
    """The writer of format ``fmt`` (ValueError naming the formats for an unknown one)."""
    try:
        return WRITERS[fmt]()
    except KeyError:
        raise ValueError(f"unknown output format {fmt!r}; available formats = {sorted(WRITERS)}") from None


def render(cues: Sequence[Cue], fmt: str = "srt") -> str:
    """Cues as the text of a subtitle file of format ``fmt`` (``srt`` or ``vtt``)."""
    return get_writer(fmt).render(cues)


def write_item_subtitles(
    job_dir: str | os.PathLike | None,
    item_id: str,
    transcript: Transcript,
    options: SubtitleOptions | None = None,
    *,
    duration_s: float | None = None,
    fmt: str = "srt",
    folder: str | os.PathLike | None = None,
    sync_dir: bool = True,
) -> Path:
    """Write one item's file of a per-item format (subtitles, or ``txt``) atomically and return
    the path: into ``folder``, or else ``default_folder(job_dir, fmt)`` (``<job_dir>/subtitles/``
    for SRT), named ``<safe_name(item_id)>.<fmt>``. ``duration_s`` is the item's length, used
    when the transcript has no times. An empty transcript gives a subtitle file with no cues.
    ``sync_dir=False`` skips the per-file folder fsync (the caller fsyncs the folder once)."""
    folder = Path(folder) if folder is not None else default_folder(job_dir, fmt)
    folder.mkdir(parents=True, exist_ok=True)
    path, text = item_file(folder, item_id, transcript, options, duration_s=duration_s, fmt=fmt)
    atomic_write(path, text, sync_dir=sync_dir)
    return path


def item_file(folder: str | os.PathLike, item_id: str, transcript: Transcript,
              options: SubtitleOptions | None = None, *, duration_s: float | None = None,
              fmt: str = "srt") -> tuple[Path, str]:
    """The path and text ``write_item_subtitles`` writes (nothing is written)."""
    return (subtitle_path(folder, item_id, fmt),
            get_writer(fmt).item_text(transcript, options, duration_s=duration_s))
