"""fsmn-vad's network served to the reader processes by one process on the accelerator.

Opt-in: BATCHASR_VAD_NETWORK=device serves it for an fsmn-vad folder given as the run's VAD
(tests use it on the CPU), =auto only where the run's model is on a GPU; the default, host,
keeps the network in every reader. Why not the default: on an H200 host the served run took
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
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

logger = logging.getLogger("batchasr.worker")

# request: magic, fbank rows F, output frames T, rows per frame m, row width w, classes,
# CMVN to apply (1) or not (0, a folder without am.mvn); then F x w float32 rows, T x m int32
# row indices, the FSMN cache (float32). Reply: magic, T, 0, 0, 0, classes, 0; T x classes float32
# posteriors, the new cache.
MAGIC = b"FSV2"
HEADER = struct.Struct("<4sIIIIII")
ADDRESS_VAR, KEY_VAR = "BATCHASR_VAD_NETWORK_ADDRESS", "BATCHASR_VAD_NETWORK_KEY"
REPLY_WAIT_S = 120.0  # for a reply, before a reader gives up on the server
CACHE_LIMIT = 1 << 30  # bytes of freed device buffers the server keeps for reuse
MEMORY_LIMIT = 2 << 30  # the server's MLX memory limit: beyond it, freed buffers are released
# what the run's own process leaves to the server on their GPU: the server's limit, its CUDA
# context and the kernels' workspaces
SERVER_ROOM = 4 << 30


def wanted(vad_spec: str | None) -> bool:
    """Whether a run with the VAD ``vad_spec`` serves fsmn-vad's network from the device
    (asked in the run's process, after its device is set)."""
    mode = os.environ.get("BATCHASR_VAD_NETWORK", "host")
    if mode not in ("auto", "device") or not vad_spec:
        return False
    from batchasr.models.vads import SILERO_NAMES

    if vad_spec in SILERO_NAMES or not os.path.isdir(vad_spec):
        return False
    if mode == "device":
        return True
    import mlx.core as mx

    from batchasr.runner.device import gpu_available

    return gpu_available() and mx.default_device() == mx.gpu


class NetworkServer:
    """The server process (in the run's process): start, the readers' settings, close."""

    def __init__(self, vad_spec: str, environ: dict[str, str] | None = None):
        """``environ``: the run's environment (default os.environ), the GPU it sees included."""
        from batchasr.runner.device import leave_gpu_memory

        leave_gpu_memory(SERVER_ROOM)  # this process shares its GPU with the server
        environ = dict(os.environ if environ is None else environ)
        self.dir = tempfile.mkdtemp(prefix="batchasr-vadnet-")  # mode 0700
        self.address = os.path.join(self.dir, "socket")
        self.key = os.urandom(32)
        # this package importable there however this process found it (a script's sys.path)
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
        path = os.pathsep.join(p for p in (package_root, environ.get("PYTHONPATH")) if p)
        env = dict(environ, MLX_ENABLE_TF32="0", PYTHONPATH=path, **{KEY_VAR: self.key.hex()})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "batchasr.runner.vad_network", vad_spec, self.address,
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
            if self.proc.poll() is not None or time.monotonic() > deadline:
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

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


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


# ---- the server process -----------------------------------------------------------------------

def serve(vad_spec: str, address: str, key: bytes, parent: int) -> None:
    from multiprocessing.connection import Listener, wait

    from batchasr.runner.parent import die_with, set_process_name

    set_process_name("batchasr-vadnet")
    # with the run gone, nobody else would remove the socket's folder
    die_with(parent, cleanup=lambda: shutil.rmtree(os.path.dirname(address), ignore_errors=True))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    listener = Listener(address, family="AF_UNIX", backlog=64, authkey=key)  # readers queue
    conns, lock = [], threading.Lock()  # while MLX and the weights load

    def accept():
        while True:
            try:
                conn = listener.accept()
            except Exception:  # a client that failed to authenticate, or hung up
                time.sleep(0.01)
                continue
            with lock:
                conns.append(conn)

    threading.Thread(target=accept, name="batchasr-vadnet-accept", daemon=True).start()

    import mlx.core as mx

    from batchasr.models.fsmn_vad_device import DeviceNetwork
    from batchasr.models.vads import open_vad

    mx.set_memory_limit(MEMORY_LIMIT)  # the model's process shares the device
    mx.set_cache_limit(CACHE_LIMIT)
    vad = open_vad(vad_spec)
    net = DeviceNetwork(vad.model)
    ids = list(vad.options.sil_pdf_ids)
    a = vad.model.args
    D, ctx = a.input_dim, a.context
    cache_size = ctx * a.proj_dim
    # the readers' OnlineFrontend applies the same am.mvn (cut to D)
    cmvn = None if vad.cmvn is None else np.asarray(vad.cmvn[:, :D], np.float32)
    lfr_m = vad.frontend_conf.lfr_m  # every request: rows of D // lfr_m, lfr_m per frame
    folder = os.path.dirname(address)
    # the kernels built before the first reader is sent here (a full 60 s chunk's shape)
    mx.eval(net.silence(mx.zeros((1, 6000, D)), net.make_cache(1), ids, [6000]))
    _write(os.path.join(folder, "ready"), "")
    served = [0, 0]  # chunks, batches: written beside the socket after each batch
    stats = os.path.join(folder, "served")

    def parse(data: bytes):
        """(rows (F, w), index (T, m), apply CMVN, caches (layers, ctx, proj)) of a request."""
        magic, F, T, m, w, n, with_cmvn = HEADER.unpack_from(data)
        if (magic != MAGIC or n != len(ids) or not T or not F or (m, w) != (lfr_m, D // lfr_m)
                or with_cmvn not in (0, 1) or (with_cmvn and cmvn is None)
                or len(data) != HEADER.size + 4 * (F * w + T * m + a.fsmn_layers * cache_size)):
            raise ValueError("malformed request")
        at = HEADER.size
        rows = np.frombuffer(data, np.float32, F * w, at).reshape(F, w)
        at += 4 * F * w
        index = np.frombuffer(data, np.int32, T * m, at).reshape(T, m)
        at += 4 * T * m
        if index.min() < 0 or index.max() >= F:
            raise ValueError("row index out of range")
        caches = np.frombuffer(data, np.float32, a.fsmn_layers * cache_size, at)
        return rows, index, bool(with_cmvn), caches.reshape(a.fsmn_layers, ctx, a.proj_dim)

    while True:
        with lock:
            current = list(conns)
        if not current:
            time.sleep(0.05)
            continue
        batch = []
        for conn in wait(current, timeout=0.05):
            try:
                batch.append((conn, *parse(conn.recv_bytes())))
            except (EOFError, OSError, ValueError, struct.error):
                with lock:
                    conns.remove(conn)
                conn.close()
        if not batch:
            continue
        # every request's rows in one array, each frame's rows found by one gather on the
        # device (padding frames take row 0: their outputs are never read)
        lengths = [len(b[2]) for b in batch]
        T_max = max(lengths)
        rows = np.concatenate([b[1] for b in batch])
        index = np.zeros((len(batch), T_max, lfr_m), np.int32)
        shift = np.zeros((len(batch), 1, D), np.float32)
        scale = np.ones((len(batch), 1, D), np.float32)
        first = 0
        for i, (_, r, idx, with_cmvn, _) in enumerate(batch):
            index[i, : len(idx)] = idx + first
            first += len(r)
            if with_cmvn:
                shift[i, 0], scale[i, 0] = cmvn[0], cmvn[1]
        x = mx.take(mx.array(rows), mx.array(index.reshape(-1)), axis=0)
        x = (x.reshape(len(batch), T_max, D) + mx.array(shift)) * mx.array(scale)
        cache = [mx.array(np.stack([b[4][layer] for b in batch]))
                 for layer in range(a.fsmn_layers)]
        probs, new_cache = net.silence(x, cache, ids, lengths)
        mx.eval(probs, new_cache)
        probs, new_cache = np.array(probs), [np.array(c) for c in new_cache]
        for i, (conn, *_) in enumerate(batch):
            T = lengths[i]
            reply = [HEADER.pack(MAGIC, T, 0, 0, 0, len(ids), 0), probs[i, :T].tobytes()]
            reply += [c[i].tobytes() for c in new_cache]
            try:
                conn.send_bytes(b"".join(reply))
            except OSError:
                with lock:
                    conns.remove(conn)
                conn.close()
        served[0] += len(batch)
        served[1] += 1
        _write(stats, f"{served[0]} {served[1]}")


def _write(path: str, text: str) -> None:
    """Replace the small file ``path`` at once (readers and tests read it)."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], bytes.fromhex(os.environ.pop(KEY_VAR)), int(sys.argv[3]))
