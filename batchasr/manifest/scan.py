"""Scan a folder for audio files and write them as a manifest the rest of the pipeline reads.

:data:`AUDIO_EXTENSIONS` is the one list of what counts as audio.
Invariant: the order and the ids depend only on the folder's contents (sorted, depth-first,
paths relative to the folder), so scanning the same folder again gives the same ids.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Iterable, Iterator

from batchasr.errors import ManifestError
from batchasr.files import atomic_write

__all__ = ["AUDIO_EXTENSIONS", "MANIFEST_NAME", "iter_audio_files", "scan_folder"]

# The containers libsndfile decodes.
AUDIO_EXTENSIONS = frozenset(
    ".wav .wave .flac .ogg .oga .opus .mp3 .aif .aiff .aifc .au .snd .caf .w64 .rf64".split()
)
MANIFEST_NAME = "manifest.csv"  # what scan_folder() writes into the job folder


def iter_audio_files(folder: str | os.PathLike,
                     extensions: Iterable[str] = AUDIO_EXTENSIONS) -> Iterator[Path]:
    """Audio files under ``folder`` by extension, in a stable (sorted, depth-first) order.
    Hidden files and folders are skipped (e.g. macOS ``._x.wav`` resource forks)."""
    exts = {e.lower() for e in extensions}
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in exts:
                yield Path(root) / name


def scan_folder(folder: str | os.PathLike, job_dir: str | os.PathLike, *,
                extensions: Iterable[str] = AUDIO_EXTENSIONS) -> Path:
    """Write a CSV manifest (``path,id``) of the audio files under ``folder`` into
    ``job_dir/manifest.csv`` and return its path.

    Ids are the paths relative to ``folder``, so scanning the same folder again (to resume,
    or to pick up new files) gives the same ids. Paths are absolute, so the manifest works
    from inside the job folder. The file is replaced atomically.
    """
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise ManifestError(folder, [(0, "not a folder")])
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    out = job_dir / MANIFEST_NAME

    def write(f) -> None:
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        w = csv.writer(text)
        w.writerow(["path", "id"])
        for p in iter_audio_files(folder, extensions):
            w.writerow([str(p), p.relative_to(folder).as_posix()])
        text.flush()
        text.detach()  # atomic_write fsyncs and closes the file itself

    atomic_write(out, write)
    return out
