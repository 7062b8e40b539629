"""The job lock: at most one live run per job folder, and whether that run still lives.

``<job_dir>/lock`` is flocked by the run for as long as it runs; the kernel drops the lock
when the process dies, however it dies, so a killed run never leaves a stale lock. The file
holds the holder's pid (for the error message and :func:`run_is_alive`) and is never deleted.
"""
from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

from batchasr.errors import JobError

LOCK_NAME = "lock"

_held: dict[str, list] = {}  # realpath of a lock file -> [fd, depth]: held by this process
_held_guard = threading.Lock()


class JobLock:
    """At most one live run per job folder.

    ``flock(LOCK_EX | LOCK_NB)`` on ``<job_dir>/lock``, held for as long as the runner runs:
    the kernel drops it when the process dies, however it dies, so a lock left by a
    ``kill -9`` never blocks the next run. The holder's pid is written into the file for
    the error message. Re-entrant within one process (the CLI can hold it around enqueue
    and run_job, and run_job takes it again). The file is never deleted: unlinking a lock
    file lets two processes lock two different files.

    A run with several worker processes (``batchasr run --workers N``) takes the lock once
    and hands its descriptor to each worker (``pass_fds``), which calls :meth:`adopt`: the
    lock then lives as long as any process of that run does, and a second, independent
    ``batchasr run`` is refused while any of them is alive.
    """

    def __init__(self, job_dir: str | os.PathLike):
        self.job_dir = Path(job_dir)
        self.path = self.job_dir / LOCK_NAME
        self._key: str | None = None

    def acquire(self) -> JobLock:
        if self._key is not None:
            raise RuntimeError("this JobLock is already acquired")
        self.job_dir.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.path)
        with _held_guard:
            if key in _held:
                _held[key][1] += 1
            else:
                fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by children
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                    os.close(fd)
                    raise JobError(
                        f"{self.job_dir} is being processed by another batchasr process "
                        f"(pid {holder}). Wait for it to finish, or stop it first "
                        "(Ctrl-C, or kill <pid>); a killed runner never leaves a stale lock."
                    ) from None
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                _held[key] = [fd, 1]
        self._key = key
        return self

    @property
    def fd(self) -> int:
        """The locked descriptor, to pass to worker processes (see :meth:`adopt`)."""
        if self._key is None:
            raise RuntimeError("this JobLock is not acquired")
        return _held[self._key][0]

    @classmethod
    def adopt(cls, job_dir: str | os.PathLike, fd: int) -> JobLock:
        """Take over the lock that the process which started this one holds for
        ``job_dir`` and passed down as descriptor ``fd``. Raises JobError unless ``fd`` is
        that job's lock file, locked by the run that started us."""
        lock = cls(job_dir)
        key = os.path.realpath(lock.path)
        try:
            held, path = os.fstat(fd), os.stat(key)
            same = (held.st_dev, held.st_ino) == (path.st_dev, path.st_ino)
            # flock on the same open file description as the holder's succeeds at once;
            # on any other it would block (so nothing changes if it is not ours).
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB) if same else None
        except (OSError, BlockingIOError) as e:
            raise JobError(f"{lock.job_dir}: descriptor {fd} is not this job's lock ({e})") from None
        if not same:
            raise JobError(f"{lock.job_dir}: descriptor {fd} is not this job's lock file")
        with _held_guard:
            if key in _held:
                _held[key][1] += 1
            else:
                _held[key] = [fd, 1]
        lock._key = key
        return lock

    def release(self) -> None:
        if self._key is None:
            return
        with _held_guard:
            entry = _held[self._key]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[self._key]
                os.close(entry[0])  # closing the only descriptor releases the flock
        self._key = None

    def __enter__(self) -> JobLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def run_is_alive(job_dir: str | os.PathLike) -> bool:
    """Whether the process that last took the job lock is still alive (same host). Reads
    the pid in the lock file; never takes the lock (a starting run must not see it held)."""
    try:
        pid = int((Path(job_dir) / LOCK_NAME).read_text().strip() or 0)
    except (OSError, ValueError):
        return False
    return pid > 0 and pid_alive(pid)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

