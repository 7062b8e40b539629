"""File names for per-item outputs: a manifest id made safe as a file name, and the folders.

Invariant: the name of an item's file depends on its id alone (stable across resumes and
workers) and always lies directly inside the output folder, whatever the id holds.
"""
from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from pathlib import Path

__all__ = ["safe_name", "default_folder", "subtitle_path"]

_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}


def safe_name(item_id: str) -> str:
    """A file-name stem for a manifest id: the id itself when it is already a safe name, else a
    readable slug plus ``-`` and 12 hex chars of the id's SHA-256.

    Only letters, digits, ``-``, ``_`` and inner ``.`` survive in a slug, so no id can name a
    parent folder, an absolute path, a hidden file or a Windows device. An id keeps its bare
    name only when making it safe changes nothing and it cannot be mistaken on a case- or
    normalisation-insensitive disk (no capitals, NFC) or for a hashed name (no ``-<12 hex>``
    ending), and it is at most 100 bytes; every other id gets the hash, which keeps ids that
    slug alike (``a/b`` and ``a_b``, ``A`` and ``a``) apart. The name depends on the id alone
    (stable across resumes and workers). At most ~113 bytes, well under NAME_MAX.
    """
    item_id = str(item_id)
    digest = hashlib.sha256(item_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    slug = "".join(c if (c.isalnum() and c.isprintable()) or c in "-_." else "_" for c in item_id)
    slug = re.sub(r"[_.]{2,}", "_", slug[:100]).strip("._-")
    while len(slug.encode("utf-8")) > 100:
        slug = slug[:-1].rstrip("._-")
    if slug.split(".")[0].upper() in _RESERVED:
        slug = "_" + slug
    if (slug and slug == item_id and item_id.casefold() == item_id
            and unicodedata.normalize("NFC", item_id) == item_id
            and not re.search(r"-[0-9a-f]{12}$", item_id)):
        return slug
    return f"{slug or 'item'}-{digest}"


def default_folder(job_dir: str | os.PathLike, fmt: str = "srt") -> Path:
    """Where a job keeps its subtitles: ``subtitles/`` for SRT, ``subtitles-<fmt>/`` otherwise."""
    return Path(job_dir) / ("subtitles" if fmt == "srt" else f"subtitles-{fmt}")


def subtitle_path(folder: str | os.PathLike, item_id: str, fmt: str = "srt") -> Path:
    """Where an item's file of format ``fmt`` goes (a format's name is its file extension, see
    :data:`batchasr.outputs.writers.WRITERS`): always directly inside ``folder``."""
    folder = Path(folder)
    path = folder / f"{safe_name(item_id)}.{fmt}"
    if path.parent != folder or path.name.startswith("."):  # safe_name rules this out; be sure
        raise ValueError(f"unsafe subtitle file name for item id {item_id!r}")
    return path
