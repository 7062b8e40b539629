"""The subtitle files of a run written by a process of their own (runs with reader processes,
the GPU default).

Laying out cues is Python, several files at once on threads: in the model's process it took
the interpreter from the thread that launches the model's kernels (on an H100, 18003 s of
clips end to end ran at 3109 RTFx without subtitles against 2708 with them, one run each).
Here the writer thread sends a batch's result rows (the Parquet part's rows, from which
``export`` renders the same files), writes the part meanwhile, and waits for the reply before
it commits the batch: part and subtitles are both durable before the commit, as before, and
a kill before it leaves an item that is redone.

Rows cross the pipe pickled, between this run's own processes only. A process that dies is
reported and the writer goes on writing subtitles on its own threads, the same way
(``write_subtitle_files``; nothing is lost: the batch asking is written again there).
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from batchasr.files import atomic_write_many, fsync_dir
from batchasr.outputs import writers
from batchasr.outputs.rows import row_to_transcript
from batchasr.runner.read_processes import start_method, start_stage_process

SUBTITLE_WRITERS = 32  # fsyncs in flight at once: each waits on the disk, and the
# journal commits concurrent ones together
PROCESS_NAME = "batchasr-subs"  # what ps shows for it (Linux)


class SubtitleProcessDied(RuntimeError):
    pass


class SubtitleProcess:
    """One process writing subtitle files for the writer thread (one request at a time)."""

    def __init__(self):
        ctx = multiprocessing.get_context(start_method())
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_main, args=(child, os.getpid()),
                                name="batchasr-subtitle-process", daemon=True)
        start_stage_process(self.proc)
        child.close()  # ours is closed: the pipe ends when the process dies

    def send(self, fmt: str, folder: Path, options: Any,
             items: Sequence[tuple[str, dict, float | None]]) -> None:
        """Ask for ``write_subtitle_files``'s work, done in the process, without waiting;
        ``receive`` returns its answer (answers come in the order asked). Both raise
        SubtitleProcessDied when the process is gone (nothing of the request can be relied
        on)."""
        try:
            self.conn.send(("write", fmt, str(folder), options, list(items)))
        except (OSError, EOFError) as e:
            raise SubtitleProcessDied(f"the subtitle process ended ({self._exit()})") from e

    def receive(self) -> tuple[list, OSError | None]:
        try:
            errors, folder_error = self.conn.recv()
        except (OSError, EOFError) as e:
            raise SubtitleProcessDied(f"the subtitle process ended ({self._exit()})") from e
        return ([None if e is None else _rebuilt(e) for e in errors],
                None if folder_error is None else _rebuilt(folder_error))

    def close(self) -> None:
        try:
            self.conn.send(("stop",))
        except (OSError, EOFError):
            pass
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5)
        self.conn.close()

    def _exit(self) -> str:
        self.proc.join(timeout=5)
        code = self.proc.exitcode
        return f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"


def write_subtitle_files(pool: ThreadPoolExecutor, fmt: str, folder: str | Path, options: Any,
                         items: Sequence[tuple[str, dict, float | None]]
                         ) -> tuple[list[BaseException | None], OSError | None]:
    """Write each item ((id, result row, duration)) as a ``fmt`` file into ``folder``, each
    atomically and fsynced (``files.atomic_write_many``: all written, then all fsynced at once
    on ``pool``, since an fsync waits on the disk and the journal commits concurrent ones
    together, then renamed), then fsync the folder once. Returns per item None or the error
    its file met, and the folder fsync's error. The one way a run writes them, here or in the
    subtitle process; from the row, as ``export`` does."""
    folder = Path(folder)
    errors: list[BaseException | None] = [None] * len(items)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return [e] * len(items), None
    files, where = [], []
    for i, (item_id, row, duration_s) in enumerate(items):
        try:
            path, text = writers.item_file(folder, item_id, row_to_transcript(row), options,
                                           duration_s=duration_s, fmt=fmt)
            files.append((path, text.encode("utf-8")))
            where.append(i)
        except Exception as e:
            errors[i] = e
    for i, error in zip(where, atomic_write_many(files, pool)):
        errors[i] = error
    folder_error = None
    if any(e is None for e in errors):  # new names to make durable
        try:
            fsync_dir(folder)
        except OSError as e:
            folder_error = e
    return errors, folder_error


def _rebuilt(error: tuple) -> BaseException:
    """The exception a file met, from what crossed the pipe: OSErrors keep their errno (a
    full disk stops the run, see batchasr.errors.is_disk_full)."""
    kind, errno, message = error
    if kind == "OSError":
        return OSError(errno, message) if errno is not None else OSError(message)
    return RuntimeError(message)


def _described(e: BaseException) -> tuple:
    if isinstance(e, OSError):
        return ("OSError", e.errno, e.strerror or str(e))
    return (type(e).__name__, None, f"{type(e).__name__}: {e}")


# ---- in the subtitle process -------------------------------------------------------------------
def _main(conn, parent: int) -> None:
    import signal

    from batchasr.runner.parent import die_with, set_process_name

    set_process_name(PROCESS_NAME)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the run stops it (Ctrl-C reaches the group)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by the start
    die_with(parent)  # the run's process, not the fork server that is our parent
    with ThreadPoolExecutor(SUBTITLE_WRITERS) as pool:
        while True:
            try:
                msg = conn.recv()
            except (OSError, EOFError):  # the run's process is gone
                return
            if msg[0] != "write":
                return
            _, fmt, folder, options, items = msg
            errors, folder_error = write_subtitle_files(pool, fmt, folder, options, items)
            errors = [None if e is None else _described(e) for e in errors]
            folder_error = None if folder_error is None else _described(folder_error)
            try:
                conn.send((errors, folder_error))
            except (OSError, EOFError):
                return
