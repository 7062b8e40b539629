"""Child processes of a run die with it, however it dies (``kill -9`` included): a worker or
VAD process must never outlive the run that started it, holding its GPU or its job."""
from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time

from batchasr.queue.lock import pid_alive


def die_with_parent(parent: int) -> None:
    """Be killed when the ``run`` process that started us dies, however it dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    else:
        def watch():
            while os.getppid() == parent:
                time.sleep(1.0)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=watch, name="batchasr-parent-watch", daemon=True).start()
    if os.getppid() != parent:  # it died before we could ask
        os._exit(1)


def die_with(pid: int, cleanup=None) -> None:
    """Be killed when process ``pid`` dies, however it dies, where ``pid`` need not be our
    parent (a reader forked by a fork server, whose parent is the server). A thread waits on
    a pidfd (Linux 5.3+), else polls the pid once a second; ``cleanup()`` runs first."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:  # it died before we could watch it
        os._exit(1)
    except (AttributeError, OSError):
        fd = None

    def watch():
        if fd is not None:
            select.select([fd], [], [])
        else:
            while pid_alive(pid):
                time.sleep(1.0)
        if cleanup is not None:
            try:
                cleanup()
            except Exception:
                pass
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="batchasr-run-watch", daemon=True).start()


def set_process_name(name: str) -> None:
    """The name ``ps`` and /proc/<pid>/comm show for this process (Linux; 15 bytes kept)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_NAME = 15
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
