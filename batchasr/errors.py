"""Domain exceptions. The CLI maps each to a one-line ``Error: ...`` and exit code 1.

Every message says *which* file/row/job is concerned and, where there is one, what to do.
"""
from __future__ import annotations


class BatchasrError(Exception):
    """Base class for every error batchasr reports to the user."""


class AudioError(BatchasrError):
    """An audio file cannot be used: missing, empty, truncated, not audio, unsupported codec.

    ``path`` is the file and ``reason`` a short machine-readable word (``"missing"``,
    ``"empty"``, ``"truncated"``, ``"corrupt"``, ``"not_audio"``, ``"unsupported"``,
    ``"not_a_file"``, ``"unreadable"``);
    ``str(err)`` names both, plus the decoder's own message when there is one.
    """

    def __init__(self, path, reason: str, detail: str = ""):
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        msg = f"{self.path}: {reason.replace('_', ' ')}"
        super().__init__(f"{msg} ({detail})" if detail else msg)


class ManifestError(BatchasrError):
    """A manifest cannot be used. ``problems`` lists ``(line_number, message)`` pairs
    (line 0 = the whole file, e.g. a missing ``path`` column); ``total`` counts them all
    when only the first ones were kept."""

    def __init__(self, source, problems: list[tuple[int, str]], *, total: int | None = None,
                 max_shown: int = 20):
        self.source = str(source)
        self.problems = sorted(problems)
        self.total = max(total or 0, len(self.problems))
        shown = [f"  line {n}: {m}" if n else f"  {m}" for n, m in self.problems[:max_shown]]
        if self.total > max_shown:
            shown.append(f"  ... and {self.total - max_shown} more")
        super().__init__(
            f"{self.source}: {self.total} problem(s) in the manifest:\n" + "\n".join(shown)
        )


class JobError(BatchasrError):
    """A job folder cannot be used as asked: locked by a live runner, a different model than
    it was started with, or a manifest that contradicts items already queued."""


class CheckpointError(BatchasrError):
    """A model checkpoint is missing pieces, has unexpected keys, or fails its checksum."""


class DiskFullError(BatchasrError):
    """The job folder's disk (or quota) is full. Nothing written is lost: the run stopped
    cleanly and the same command continues it once there is room (see :func:`disk_full`)."""


_FULL_ERRNOS = {28, 122}  # ENOSPC, EDQUOT (Linux; errno.EDQUOT differs on macOS)


def is_disk_full(exc: BaseException | None) -> bool:
    """True when ``exc`` (or an exception it was raised from) says the disk or quota is
    full: an OSError ENOSPC/EDQUOT, or sqlite3's "database or disk is full"."""
    import errno
    import sqlite3

    codes = _FULL_ERRNOS | {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFullError):
            return True
        if isinstance(exc, OSError) and exc.errno in codes:
            return True
        if isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def disk_full(folder, exc: BaseException | None = None) -> DiskFullError:
    """The :class:`DiskFullError` to raise for ``folder`` (the job folder): names it, its
    mount point and the space free there now, and what to do."""
    import os
    import shutil

    if isinstance(exc, DiskFullError):
        return exc
    path = os.path.abspath(folder)
    mount = path
    while not os.path.ismount(mount) and os.path.dirname(mount) != mount:
        mount = os.path.dirname(mount)
    try:
        free = f"{_size(shutil.disk_usage(path).free)} free on {mount}"
    except OSError:
        free = f"free space on {mount} unknown"
    return DiskFullError(f"{folder}: the disk is full ({free}); the run stopped, finished "
                         "items are kept: free some space and run the same command to continue")
