"""fsmn-vad's network served to the reader processes: the server's side (`runner.vad_network`
starts it and holds the readers' side). A process of its own (``python -m
batchasr.runner.vad_server``) or a thread of the run's process; either batches the waiting
readers' 60 s chunks through `models.fsmn_vad_device.DeviceNetwork` and answers each.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import struct
import sys
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
KEY_VAR = "BATCHASR_VAD_NETWORK_KEY"
CACHE_LIMIT = 1 << 30  # bytes of freed device buffers the server keeps for reuse
MEMORY_LIMIT = 2 << 30  # the server's MLX memory limit: beyond it, freed buffers are released


def serve(vad_spec: str, address: str, key: bytes, parent: int) -> None:
    """The server process's life (``python -m batchasr.runner.vad_network``)."""
    from multiprocessing.connection import Listener

    from batchasr.runner.parent import die_with, set_process_name

    set_process_name("batchasr-vadnet")
    # with the run gone, nobody else would remove the socket's folder
    die_with(parent, cleanup=lambda: shutil.rmtree(os.path.dirname(address), ignore_errors=True))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    listener = Listener(address, family="AF_UNIX", backlog=64, authkey=key)  # readers queue
    import mlx.core as mx

    mx.set_memory_limit(MEMORY_LIMIT)  # the model's process shares the device
    mx.set_cache_limit(CACHE_LIMIT)
    Server(vad_spec, listener, os.path.dirname(address)).run()


def serve_here(vad_spec: str, listener, folder: str, stop: threading.Event, stream) -> None:
    """The server as a thread of the run's process (BATCHASR_VAD_NETWORK=thread), on an MLX
    stream of its own: its kernels and the model's then share one CUDA context, where two
    processes' contexts take turns on the GPU (``stream``: this thread's, made once for the
    process, runner.threads.ServiceThreads). It serves only where this process's float32
    GEMMs are exact (TF32 off: ``tf32_off``); if not, or if it fails, it closes the socket
    and the readers compute the network themselves."""
    import mlx.core as mx

    try:
        with mx.stream(stream):
            if not tf32_off():
                logger.warning("fsmn-vad network thread not started: this process's float32 "
                               "GEMMs run as TF32 (set MLX_ENABLE_TF32=0 before MLX starts)")
                return
            Server(vad_spec, listener, folder, stop).run()
    except Exception as e:  # the readers lose nothing: they compute the network themselves
        logger.warning("fsmn-vad network thread stopped (%s: %s)", type(e).__name__, e)
    finally:
        stop.set()
        listener.close()


def tf32_off() -> bool:
    """Whether float32 GEMMs on MLX's default device keep float32's precision: a product
    whose inputs need more than TF32's 10 mantissa bits, against numpy's."""
    import mlx.core as mx

    a = np.full((4, 64), 1 + 2.0 ** -12, np.float32)  # TF32 rounds it to 1: off by 5e-4
    got = np.array(mx.array(a) @ mx.array(a.T))
    return bool(np.allclose(got, a.astype(np.float64) @ a.T.astype(np.float64), rtol=1e-6))


class Server:
    """Batches the waiting readers' chunks through `DeviceNetwork` (MLX's default stream of
    the calling thread) and answers each; ``stop`` ends it (a thread's server)."""

    def __init__(self, vad_spec: str, listener, folder: str,
                 stop: threading.Event | None = None):
        import mlx.core as mx

        from batchasr.models.fsmn_vad_device import DeviceNetwork
        from batchasr.models.vads import open_vad

        self.listener, self.folder = listener, folder
        self.stop = stop or threading.Event()
        self.conns, self.lock = [], threading.Lock()
        # readers connect while the weights load
        threading.Thread(target=self._accept, name="batchasr-vadnet-accept", daemon=True).start()
        vad = open_vad(vad_spec)
        self.net = DeviceNetwork(vad.model)
        self.ids = list(vad.options.sil_pdf_ids)
        a = self.args = vad.model.args
        self.D, self.cache_size = a.input_dim, a.context * a.proj_dim
        # the readers' OnlineFrontend applies the same am.mvn (cut to D)
        self.cmvn = None if vad.cmvn is None else np.asarray(vad.cmvn[:, :self.D], np.float32)
        self.lfr_m = vad.frontend_conf.lfr_m  # every request: rows of D // lfr_m, lfr_m a frame
        # the kernels built before the first reader is sent here (a full 60 s chunk's shape)
        mx.eval(self.net.silence(mx.zeros((1, 6000, self.D)), self.net.make_cache(1), self.ids,
                                 [6000]))
        self.served = [0, 0]  # chunks, batches: written beside the socket after each batch
        write_small(os.path.join(folder, "ready"), "")

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn = self.listener.accept()
            except Exception:  # a client that failed to authenticate, or hung up; closed
                time.sleep(0.01)
                continue
            with self.lock:
                self.conns.append(conn)

    def _drop(self, conn) -> None:
        with self.lock:
            self.conns.remove(conn)
        conn.close()

    def parse(self, data: bytes):
        """(rows (F, w), index (T, m), apply CMVN, caches (layers, ctx, proj)) of a request."""
        a = self.args
        magic, F, T, m, w, n, with_cmvn = HEADER.unpack_from(data)
        if (magic != MAGIC or n != len(self.ids) or not T or not F
                or (m, w) != (self.lfr_m, self.D // self.lfr_m) or with_cmvn not in (0, 1)
                or (with_cmvn and self.cmvn is None)
                or len(data) != HEADER.size + 4 * (F * w + T * m + a.fsmn_layers * self.cache_size)):
            raise ValueError("malformed request")
        at = HEADER.size
        rows = np.frombuffer(data, np.float32, F * w, at).reshape(F, w)
        at += 4 * F * w
        index = np.frombuffer(data, np.int32, T * m, at).reshape(T, m)
        at += 4 * T * m
        if index.min() < 0 or index.max() >= F:
            raise ValueError("row index out of range")
        caches = np.frombuffer(data, np.float32, a.fsmn_layers * self.cache_size, at)
        return rows, index, bool(with_cmvn), caches.reshape(a.fsmn_layers, a.context, a.proj_dim)

    def run(self) -> None:
        from multiprocessing.connection import wait

        try:
            while not self.stop.is_set():
                with self.lock:
                    current = list(self.conns)
                if not current:
                    time.sleep(0.05)
                    continue
                batch = []
                for conn in wait(current, timeout=0.05):
                    try:
                        batch.append((conn, *self.parse(conn.recv_bytes())))
                    except (EOFError, OSError, ValueError, struct.error):
                        self._drop(conn)
                if batch:
                    self.answer(batch)
        finally:
            with self.lock:
                for conn in self.conns:
                    conn.close()

    def answer(self, batch) -> None:
        import mlx.core as mx

        D, lfr_m, a = self.D, self.lfr_m, self.args
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
                shift[i, 0], scale[i, 0] = self.cmvn[0], self.cmvn[1]
        x = mx.take(mx.array(rows), mx.array(index.reshape(-1)), axis=0)
        x = (x.reshape(len(batch), T_max, D) + mx.array(shift)) * mx.array(scale)
        cache = [mx.array(np.stack([b[4][layer] for b in batch]))
                 for layer in range(a.fsmn_layers)]
        probs, new_cache = self.net.silence(x, cache, self.ids, lengths)
        mx.eval(probs, new_cache)
        probs, new_cache = np.array(probs), [np.array(c) for c in new_cache]
        for i, (conn, *_) in enumerate(batch):
            T = lengths[i]
            reply = [HEADER.pack(MAGIC, T, 0, 0, 0, len(self.ids), 0), probs[i, :T].tobytes()]
            reply += [c[i].tobytes() for c in new_cache]
            try:
                conn.send_bytes(b"".join(reply))
            except OSError:
                self._drop(conn)
        self.served[0] += len(batch)
        self.served[1] += 1
        write_small(os.path.join(self.folder, "served"), f"{self.served[0]} {self.served[1]}")


def write_small(path: str, text: str) -> None:
    """Replace the small file ``path`` at once (readers and tests read it)."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], bytes.fromhex(os.environ.pop(KEY_VAR)), int(sys.argv[3]))
