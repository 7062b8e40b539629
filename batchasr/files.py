"""Durable file writes shared by every stage: all-or-nothing replacement and folder fsync.

Invariant: a reader (or a run resumed after kill -9 or a power cut) sees either the old file or
the whole new one, never a torn write; the temp file of a failed write is removed.
"""
from __future__ import annotations

import os
import uuid
from concurrent.futures import Executor
from pathlib import Path
from typing import Callable, Sequence


def atomic_write(path: str | os.PathLike, write: Callable | bytes | str, *, sync_dir: bool = True) -> None:
    """Write ``path`` all-or-nothing: a temp file in the same folder, fsync, ``os.replace``.

    ``write`` is the content (str is UTF-8 encoded) or a function given the open binary file.
    On any error the temp file is removed and the error re-raised; ``path`` is then untouched.
    With ``sync_dir`` the folder is fsynced too, so the new name survives a power cut.
    """
    path = Path(path)
    tmp = _temp_path(path)
    fd = _create(tmp)
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
        _remove(tmp)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def atomic_write_many(files: Sequence[tuple[str | os.PathLike, bytes]], pool: Executor
                      ) -> list[OSError | None]:
    """``atomic_write`` of many small files at once, in three passes: every temp file
    written, then all fsynced together on ``pool`` (one journal commit can then carry many
    of them, where one file after another waits for a commit each), then each renamed over
    its path. Returns per file None or the OSError it met (that file's path is then
    untouched); no temp file is left behind. The caller fsyncs the folders afterwards."""
    tmps: list[Path | None] = [None] * len(files)
    errors: list[OSError | None] = [None] * len(files)
    try:
        for i, (path, data) in enumerate(files):
            tmp = _temp_path(Path(path))
            try:
                fd = _create(tmp)
            except OSError as e:
                errors[i] = e
                continue
            tmps[i] = tmp
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            except OSError as e:
                errors[i] = e
            finally:
                os.close(fd)
        for i, error in enumerate(pool.map(_fsync_path, [t if e is None else None
                                                         for t, e in zip(tmps, errors)])):
            errors[i] = errors[i] or error
        for i, ((path, _), tmp) in enumerate(zip(files, tmps)):
            if tmp is not None and errors[i] is None:
                try:
                    os.replace(tmp, path)
                    tmps[i] = None
                except OSError as e:
                    errors[i] = e
    finally:
        for tmp in tmps:  # those not renamed: failed, or interrupted
            if tmp is not None:
                _remove(tmp)
    return errors


def _fsync_path(path: Path | None) -> OSError | None:
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        return e
    return None


def _temp_path(path: Path) -> Path:
    """A new hidden name beside ``path`` for its content until the rename."""
    return path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"


def _create(path: Path) -> int:
    # os.open with 0o666 lets the umask decide the mode, as for any new file (mkstemp's 0600
    # would make results unreadable to the rest of a team)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make renames and new names inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
