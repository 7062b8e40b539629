"""Child processes of a run die with it, however it dies (``kill -9`` included): a worker or
VAD process must never outlive the run that started it, holding its GPU or its job."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time


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
