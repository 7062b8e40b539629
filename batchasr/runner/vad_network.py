"""fsmn-vad's network served to the reader processes by one process on the accelerator.

Opt-in: BATCHASR_VAD_NETWORK=device serves it for an fsmn-vad folder given as the run's VAD
(tests use it on the CPU), =auto only where the run's model is on a GPU, =thread from a thread
of the run's own process (one CUDA context with the model's, on a stream of its own); the
default, host, keeps the network in every reader. Why not the default: on an H200 host the served run took
15.8 s for 16 files of 20 min against 10.8 s with the readers' own network, its readers
waiting 4.6 s for audio against 1.4 s (`benchmarks/README.md`; likely because the server's
kernels and the model's share the GPU by time slices). A reader
keeps all of fsmn-vad but its network: decoding, the frontend (fbank, LFR, CMVN), the
endpoint state machine and the cutting. For each 60 s chunk it sends its fbank rows and
which rows each LFR frame stacks (`kaldi_fbank.LFRFrames`: 2 MB, where the stacked features
are 9.6 MB) with its FSMN cache, and gets back the silence posteriors and the new cache; the
server stacks the frames of all waiting chunks with one gather on the device, applies CMVN,
and runs them as one padded batch (`models.fsmn_vad_device.DeviceNetwork`). Why: the numpy
FSMN is most of a reader's CPU in a long-recording run, and 16 readers on 16 cores bound it
(benchmarks/README.md), where the GPU does every stream's GEMMs in milliseconds. The server
runs with MLX_ENABLE_TF32=0 (posteriors within ~1e-6 of the numpy network's; TF32 would move
them by ~1e-3).

The wire carries raw float32 behind a fixed header (`send_bytes`/`recv_bytes`), never a
pickle; the socket lives in a private (0700) folder and the Listener authenticates each
reader with a random key. The server dies with the run's process, however it dies. Until
it has loaded and warmed up (it then writes `ready` beside its socket), readers compute each
chunk themselves, so a run's first chunks wait for no start-up; a reader that cannot reach it,
or loses it, goes on with its own numpy network for good (the same network, the same cache)
and logs it once: the run never fails for want of the server.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import wait

import numpy as np

from batchasr.runner.threads import ServiceThreads
from batchasr.runner.vad_server import HEADER, KEY_VAR, MAGIC, serve_here, write_small

logger = logging.getLogger("batchasr.worker")

ADDRESS_VAR = "BATCHASR_VAD_NETWORK_ADDRESS"
PREFIX = "batchasr-vadnet-"  # the socket folders' names, in the temp folder
REPLY_WAIT_S = 120.0  # for a reply, before a reader gives up on the server
# what the run's own process leaves to the server on their GPU: the server's limit, its CUDA
# context and the kernels' workspaces
SERVER_ROOM = 4 << 30
# the thread server's thread (BATCHASR_VAD_NETWORK=thread), made once: one MLX stream for
# every run of the process (runner.threads.ServiceThreads)
SERVER_THREAD = ServiceThreads("batchasr-vadnet")


def wanted(vad_spec: str | None) -> bool:
    """Whether a run with the VAD ``vad_spec`` serves fsmn-vad's network from the device
    (asked in the run's process, after its device is set)."""
    mode = os.environ.get("BATCHASR_VAD_NETWORK", "host")
    if mode not in ("auto", "device", "thread") or not vad_spec:
        return False
    from batchasr.models.vads import SILERO_NAMES

    if vad_spec in SILERO_NAMES or not os.path.isdir(vad_spec):
        return False
    if mode in ("device", "thread"):
        return True
    import mlx.core as mx

    from batchasr.runner.device import gpu_available

    return gpu_available() and mx.default_device() == mx.gpu


class NetworkServer:
    """The server (in the run's process): start, the readers' settings, close. A process of
    its own, or with BATCHASR_VAD_NETWORK=thread a thread of this process (``thread``)."""

    def __init__(self, vad_spec: str, environ: dict[str, str] | None = None):
        """``environ``: the run's environment (default os.environ), the GPU it sees included."""
        from batchasr.runner.device import leave_gpu_memory

        environ = dict(os.environ if environ is None else environ)
        _remove_orphans()
        self.dir = tempfile.mkdtemp(prefix=PREFIX)  # mode 0700
        write_small(os.path.join(self.dir, "owner"), str(os.getpid()))
        self.address = os.path.join(self.dir, "socket")
        self.key = os.urandom(32)
        self.proc = self.thread = None
        if environ.get("BATCHASR_VAD_NETWORK") == "thread":
            from multiprocessing.connection import Listener

            self._stop = threading.Event()
            listener = Listener(self.address, family="AF_UNIX", backlog=64, authkey=self.key)
            SERVER_THREAD.ensure(1)
            folder, stop = self.dir, self._stop
            self.thread = SERVER_THREAD.submit(lambda: serve_here(
                vad_spec, listener, folder, stop, SERVER_THREAD.stream()))
            return
        leave_gpu_memory(SERVER_ROOM)  # this process shares its GPU with the server
        # this package importable there however this process found it (a script's sys.path)
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
        path = os.pathsep.join(p for p in (package_root, environ.get("PYTHONPATH")) if p)
        env = dict(environ, MLX_ENABLE_TF32="0", PYTHONPATH=path, **{KEY_VAR: self.key.hex()})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "batchasr.runner.vad_server", vad_spec, self.address,
             str(os.getpid())], env=env, stdin=subprocess.DEVNULL,
            start_new_session=True)  # the terminal's Ctrl-C is the run's to handle

    def settings(self) -> dict[str, str]:
        """What a reader needs to reach the server (added to its BATCHASR_* settings)."""
        return {ADDRESS_VAR: self.address, KEY_VAR: self.key.hex()}

    def wait_ready(self, timeout: float = 120.0) -> bool:
        """Wait until the server answers (its weights loaded, its kernels warm); False if it
        died or the time ran out."""
        deadline = time.monotonic() + timeout
        while not os.path.exists(os.path.join(self.dir, "ready")):
            if not self.alive() or time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def served(self) -> tuple[int, int]:
        """(chunks, batches) the server has answered so far."""
        try:
            with open(os.path.join(self.dir, "served")) as f:
                chunks, batches = f.read().split()
            return int(chunks), int(batches)
        except (OSError, ValueError):
            return 0, 0

    def alive(self) -> bool:
        if self.thread is not None:
            return not self.thread.done() and not self._stop.is_set()
        return self.proc.poll() is None

    def close(self) -> None:
        if self.thread is not None:
            self._stop.set()
            try:  # wakes the accept thread's wait (its handshake then fails)
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(self.address)
            except OSError:
                pass
            wait([self.thread], timeout=30)
        else:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _remove_orphans() -> None:
    """Remove the socket folders of runs killed with a thread server (a server process
    removes its own when its run dies): this user's, whose owner process is gone."""
    from batchasr.queue.lock import pid_alive

    root = tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(root) if n.startswith(PREFIX)]
    except OSError:
        return
    for name in names:
        folder = os.path.join(root, name)
        try:
            if os.stat(folder).st_uid != os.getuid():
                continue
            with open(os.path.join(folder, "owner")) as f:
                owner = int(f.read())
        except (OSError, ValueError):
            continue  # being made
        if owner != os.getpid() and not pid_alive(owner):
            shutil.rmtree(folder, ignore_errors=True)


# ---- the reader's side ------------------------------------------------------------------------

def attach(vad) -> None:
    """In a reader: route ``vad``'s network to the server when the run started one."""
    address, key = os.environ.get(ADDRESS_VAR), os.environ.get(KEY_VAR)
    if address and key and hasattr(vad, "network") and hasattr(vad, "own_network"):
        vad.network = RemoteNetwork(address, bytes.fromhex(key), vad.own_network)


class RemoteNetwork:
    """`FsmnVAD.network`'s call (one stream), answered by the server once it is ready (until
    then each chunk is computed here: a run's first chunks wait for no start-up);
    ``fallback`` for good once the server cannot answer. LFR features travel as their fbank
    rows and row index (LFRFrames), a fifth of the stacked features' bytes; anything else
    (stacked features) is computed here."""

    def __init__(self, address: str, key: bytes, fallback):
        self.address, self.key, self.fallback = address, key, fallback
        self.ready_path = os.path.join(os.path.dirname(address), "ready")
        self.conn = None
        self.failed = False

    def __call__(self, feats, cache: list[np.ndarray], ids):
        from batchasr.models.blocks.kaldi_fbank import LFRFrames

        if isinstance(feats, LFRFrames) and not self.failed and (
                self.conn is not None or os.path.exists(self.ready_path)):
            try:
                return self._ask(feats, cache, len(ids))
            except (OSError, EOFError, ValueError, TimeoutError) as e:
                self._fail(e)
        return self.fallback(feats, cache, ids)

    def _ask(self, feats, cache: list[np.ndarray], n_ids: int):
        from multiprocessing.connection import Client

        rows = np.ascontiguousarray(feats.frames, np.float32)
        index = np.ascontiguousarray(feats.index, np.int32)
        (F, w), (T, m), cmvn = rows.shape, index.shape, feats.cmvn is not None
        if self.conn is None:
            self.conn = Client(self.address, family="AF_UNIX", authkey=self.key)
        body = [np.ascontiguousarray(c, np.float32).tobytes() for c in cache]
        header = HEADER.pack(MAGIC, F, T, m, w, n_ids, int(cmvn))
        self.conn.send_bytes(b"".join([header, rows.tobytes(), index.tobytes()] + body))
        if not self.conn.poll(REPLY_WAIT_S):
            raise TimeoutError("the VAD network server did not answer")
        data = self.conn.recv_bytes()
        magic, t, _, _, _, n, _ = HEADER.unpack_from(data)
        sizes = [T * n_ids] + [c.size for c in cache]
        if magic != MAGIC or t != T or n != n_ids or len(data) != HEADER.size + 4 * sum(sizes):
            raise ValueError("a malformed reply from the VAD network server")
        flat = np.frombuffer(data, np.float32, offset=HEADER.size)
        probs = flat[: sizes[0]].reshape(T, n_ids)
        at, new_cache = sizes[0], []
        for c in cache:
            new_cache.append(flat[at : at + c.size].reshape(c.shape).copy())
            at += c.size
        return probs, new_cache

    def _fail(self, error: BaseException) -> None:
        self.failed = True
        logger.warning("fsmn-vad network server unreachable (%s): this reader computes the "
                       "network itself from now on", error)
        if self.conn is not None:
            try:
                self.conn.close()
            except OSError:
                pass
            self.conn = None
