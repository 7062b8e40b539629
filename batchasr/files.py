"""Durable file writes shared by every stage: all-or-nothing replacement and folder fsync.

Invariant: a reader (or a run resumed after kill -9 or a power cut) sees either the old file or
the whole new one, never a torn write; the temp file of a failed write is removed.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable | bytes | str, *, sync_dir: bool = True) -> None:
    """Write ``path`` all-or-nothing: a temp file in the same folder, fsync, ``os.replace``.

    ``write`` is the content (str is UTF-8 encoded) or a function given the open binary file.
    On any error the temp file is removed and the error re-raised; ``path`` is then untouched.
    With ``sync_dir`` the folder is fsynced too, so the new name survives a power cut.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    # os.open with 0o666 lets the umask decide the mode, as for any new file (mkstemp's 0600
    # would make results unreadable to the rest of a team)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(write):
                write(f)
            else:
                f.write(write.encode("utf-8") if isinstance(write, str) else write)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if sync_dir:
        fsync_dir(path.parent)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make renames and new names inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
