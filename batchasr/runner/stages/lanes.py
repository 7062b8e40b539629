"""CPU lanes: several batches through the model at once, each on a thread of its own.

MLX's CPU backend runs element-wise ops, reductions and softmax on one thread per stream;
only the GEMMs (BLAS) use more cores. So on a CPU one batch at a time leaves cores idle
(2-core machine: 11.2 s per pass with two BLAS threads, 17.5 s with one, so about 4.9 s of
every pass ran on one core). Lanes run that many batches at once, each in a thread of its
own with an MLX stream of its own, and share the cores out between the lanes that are busy
for their BLAS calls (``runner.device.cpu_lanes``). benchmarks/README.md has the figures.

A batch's results are taken as soon as it is done (a short batch does not wait behind a
long one), so lanes change when results come back, never what they are.
"""
from __future__ import annotations

import collections
import threading
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any, Callable

import mlx.core as mx

from batchasr import _blas
from batchasr.runner.threads import ServiceThreads


def materialize(obj: Any, depth: int = 8) -> None:
    """Evaluate every MLX array reachable from ``obj`` (attributes, containers, modules) on
    this thread: MLX cannot evaluate, on a lane's thread, a lazy array built on another
    thread's stream (a cast or slice made when the model was loaded)."""
    found: list = []
    seen: set[int] = set()

    def walk(x: Any, d: int) -> None:
        if id(x) in seen or d < 0:
            return
        seen.add(id(x))
        if isinstance(x, mx.array):
            found.append(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v, d - 1)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v, d - 1)
        if hasattr(x, "__dict__") and not isinstance(x, type):
            for v in vars(x).values():
                walk(v, d - 1)

    walk(obj, depth)
    mx.eval(found)


# The process's lane threads (runner.threads.ServiceThreads: made once, reused by every run)
LANE_THREADS = ServiceThreads("batchasr-lane")


class Lanes:
    """``n`` threads running model calls; at most ``n`` batches in flight (the caller takes
    a finished one before it gives another). The threads are the process's
    (:data:`LANE_THREADS`)."""

    def __init__(self, n: int, cores: int):
        self.n, self.cores = n, cores
        self.running = 0
        self.lock = threading.Lock()
        self.blas_before = _blas.get_threads()  # given back by close()
        LANE_THREADS.ensure(n)
        self.inflight: collections.deque[tuple[Any, Future]] = collections.deque()

    def _share_blas(self, change: int) -> None:
        # The cores go to the lanes that are busy: all of them to the last one running
        # (a job's tail), half each to two. The BLAS reads its count at every call.
        with self.lock:
            self.running += change
            if self.blas_before is not None:
                share = max(1, self.cores // max(1, self.running))
                _blas.set_threads(min(self.blas_before, share))

    def _run(self, call: Callable[[], Any]) -> Any:
        self._share_blas(+1)
        try:
            with mx.stream(LANE_THREADS.stream()):
                return call()
        finally:
            self._share_blas(-1)

    def start(self, tag: Any, call: Callable[[], Any]) -> None:
        self.inflight.append((tag, LANE_THREADS.submit(lambda: self._run(call))))

    @property
    def full(self) -> bool:
        return len(self.inflight) >= self.n

    def next_done(self) -> tuple[Any, Any]:
        """(tag, result or the exception the call raised) of a batch in flight that has
        finished, waiting for the first to finish (the oldest when several have)."""
        wait([f for _, f in self.inflight], return_when=FIRST_COMPLETED)
        k = next(i for i, (_, f) in enumerate(self.inflight) if f.done())
        tag, future = self.inflight[k]
        del self.inflight[k]
        try:
            return tag, future.result()
        except Exception as e:
            return tag, e

    def tags(self) -> list:
        return [tag for tag, _ in list(self.inflight)]  # one C call: safe from other threads

    def close(self) -> None:
        """Wait for the calls in flight (take their results first: shutdown()) and give the
        BLAS its threads back. The lane threads stay for the process's next run."""
        wait([f for _, f in self.inflight])
        if self.blas_before is not None:
            _blas.set_threads(self.blas_before)
