"""Reader processes: decoding, resampling, the VAD and the cutting into pieces, many files at
once, off the process that runs the model.

The model's process keeps only what needs the model. A reader thread there leases one reader
process per file (:meth:`ReadProcesses.read`) and forwards what it sends to the Feed stage;
the process opens the file, plans it (``audio.cut.planned_windows``), decodes it window by
window, runs it through the VAD when it is long (the same streaming ``SegmentCutter`` as in
the model's process, so the pieces are identical) and hands each piece over.

Waveforms never cross the boundary as pickles: each process owns a ring of shared memory
(created and unlinked by the model's process) into which it writes a piece's samples; only
``(index, offset, span, where in the ring)`` travels through the pipe, and the reader thread
copies the samples out and frees their room. The ring is bounded (its size in audio seconds
is the process's whole buffer), and a process whose ring is full waits, so memory stays flat
whatever the length of the files; the Feed's prefetch buffer bounds the rest.

Failures stay local: a file the process cannot decode fails its item as it would in the
model's process (``AudioError``), a VAD error is a ``VADError``. A reader process that dies
(``kill -9``, a decoder crash on a hostile file) is replaced and the file read again from the
start, its pieces already forwarded skipped (cutting is deterministic); a file on which a
process dies twice fails with a clear error instead of crashing the run. The processes are
started on first use (forked from a fork server that has imported their modules, where the
platform has one), load the VAD once (numpy: they never import MLX, and the accelerator is
hidden from them, since it belongs to the model), ignore Ctrl-C (the run decides when to
stop) and die with the run, however it dies.

Size: above 400 lines because both sides of one protocol (the model's process and the
reader process, the ring and its pipe messages) belong together to be checked together.
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue as queue_mod
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Callable, Iterator

import numpy as np

from batchasr.audio.cut import CutOptions, Cut, SegmentCutter, planned_windows
from batchasr.audio.decode import SAMPLE_RATE
from batchasr.errors import AudioError
from batchasr.runner import vad_network
from batchasr.runner.hooks import reader_dies_on

logger = logging.getLogger("batchasr.worker")  # the name log lines show (stable)

MIN_RING_S = 1000.0  # audio seconds a process may hand over before the model's side frees them
DEATHS_PER_FILE = 2  # a file on which this many processes died fails
PROCESS_NAME = "batchasr-reader"  # what ps shows for a reader process (Linux)


class Cancelled(Exception):
    """The processes were closed while a file was being read."""


class ReaderDied(Exception):
    """The reader process died while reading a file (the message says how often)."""


@dataclass(frozen=True)
class Plan:
    """First event of a file: whether it goes through the VAD (its pieces are then ``Cut``s
    with their spans)."""

    through_vad: bool


@dataclass(frozen=True)
class Window:
    """A piece of a file read whole or in equal windows."""

    index: int
    offset_s: float
    audio: np.ndarray


@dataclass(frozen=True)
class VADWindow:
    """A window of a long file for the caller's VAD (``vad_here``), in file order."""

    index: int
    offset_s: float
    audio: np.ndarray


@dataclass(frozen=True)
class End:
    """Last event of a file read to its end."""

    n_pieces: int
    duration_s: float


class VADFailedRemote(Exception):
    """The VAD raised in a reader process; the message names the exception."""


def ring_samples(cut: CutOptions) -> int:
    """A ring holds at least two of the longest pieces ``cut`` can make, and MIN_RING_S."""
    longest = max(cut.max_segment_s, cut.max_window_s, cut.vad_window_s)
    return int(max(MIN_RING_S, 2 * longest + 1) * SAMPLE_RATE)


class _Slot:
    """One reader process, its pipe and its ring (owned by the model's process)."""

    def __init__(self, ctx, vad_spec: str | None, cut_fields: dict, n_samples: int,
                 settings: dict[str, str] | None = None):
        self.closed = False
        self.shm = shared_memory.SharedMemory(create=True, size=n_samples * 4)
        self.ring = np.ndarray((n_samples,), np.float32, self.shm.buf)
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_reader_main, name="batchasr-reader-process",
                                args=(child, self.shm.name, n_samples, vad_spec, cut_fields,
                                      os.getpid(), {**_run_settings(), **(settings or {})}),
                                daemon=True)
        start_stage_process(self.proc)
        child.close()  # ours is closed: the pipe ends when the process dies

    def close(self) -> None:
        """Kill the process and free its ring; closing twice does nothing more."""
        if self.closed:
            return
        self.closed = True
        try:
            self.proc.kill()
        except Exception:
            pass
        self.proc.join(timeout=5)
        self.conn.close()
        self.ring = None
        try:
            self.shm.close()
            self.shm.unlink()
        except Exception:  # already gone
            pass


_SPAWN_LOCK = threading.Lock()
# Threads of the BLAS/OpenMP libraries in a reader process: many processes share the cores,
# and the VAD's operations are small.
READER_THREADS = int(os.environ.get("BATCHASR_READER_THREADS", "1"))
# A reader's niceness (BATCHASR_READER_NICE): the model's process (its launches, the host
# steps between them) must not wait for a core behind a reader; the readers share what it
# leaves.
READER_NICE = 10
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# glibc's malloc in a reader: arrays under 32 MiB from the heap, and freed memory kept for the
# next chunk. The VADs make the same large temporaries chunk after chunk (frames, spectra,
# activations); by default glibc maps and unmaps them, and each fresh mapping pays its page
# faults: one pass of silero over 600 s took 0.71-0.75 s of a core with the defaults and
# 0.50-0.58 s with these (benchmarks/vad_scaling.py; the same peak memory).
READER_MALLOC = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296"
# What a reader imports, imported once by the readers' fork server: a reader forked from it
# starts in milliseconds, where a spawned one spends ~0.2 CPU-s importing these, 14 of them
# competing for the cores at the start of every run.
_PRELOAD = ["numpy", "soundfile", "soxr", "batchasr.audio.cut", "batchasr.models.vads",
            "batchasr.models.fsmn_vad", "batchasr.models.silero_vad",
            "batchasr.runner.read_processes", "batchasr.runner.vad_network",
            "batchasr.runner.subtitle_process"]
_server = None  # this process's fork server for readers (multiprocessing.forkserver.ForkServer)


def start_method() -> str:
    """How reader processes start: "forkserver" (default where the platform has it) or
    "spawn" (BATCHASR_READER_START=spawn)."""
    wanted = os.environ.get("BATCHASR_READER_START", "forkserver")
    if wanted == "forkserver" and "forkserver" in multiprocessing.get_all_start_methods():
        return "forkserver"
    return "spawn"


def _fork_server():
    """The readers' own fork server (not multiprocessing's shared one: it runs with the
    readers' environment, whatever else in this process uses forkserver)."""
    global _server
    if _server is None:
        from multiprocessing.forkserver import ForkServer

        _server = ForkServer()
        _server.set_forkserver_preload(_PRELOAD)
    return _server


def prestart(processes: int | None = None) -> None:
    """Start the readers' fork server now, if ``processes`` readers (None: the device's
    default) will fork from it: it imports their modules while this process does something
    else (loads the model), so the run's readers start at once."""
    if processes is None:
        from batchasr.runner.device import default_reader_processes

        processes = default_reader_processes()
    if processes > 0 and start_method() == "forkserver":
        with _reader_start_context():
            _fork_server().ensure_running()


def _reader_environment() -> dict[str, str]:
    """What a reader process's environment changes: few BLAS threads, and no GPU. A reader,
    a CPU stage, never needs one, and never imports MLX (the VADs are numpy): hiding the
    device makes sure no library it loads takes a context and device memory there, as MLX's
    CUDA backend did in every VAD reader (16 of them ran an H200's model process out of
    memory). No BLAS preload for MLX either (batchasr._blas): numpy has its own. glibc's
    malloc keeps freed memory (READER_MALLOC), unless GLIBC_TUNABLES sets malloc already."""
    env = {k: str(READER_THREADS) for k in _THREAD_VARIABLES}
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["BATCHASR_BLAS"] = "reference"
    have = os.environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc." not in have:
        env["GLIBC_TUNABLES"] = f"{have}:{READER_MALLOC}" if have else READER_MALLOC
    return env


def _run_settings() -> dict[str, str]:
    """The run's BATCHASR_* settings as they are now, for a reader to take on: a fork server
    keeps the environment it started with, so settings made since would not reach it."""
    env = {k: v for k, v in os.environ.items() if k.startswith("BATCHASR_")}
    env.update(_reader_environment())
    return env


@contextlib.contextmanager
def _reader_start_context():
    """Around a reader's start (or its fork server's): the reader environment, SIGINT
    blocked, and spawn's preparation data without the parent's ``__main__``."""
    from multiprocessing import forkserver, spawn

    with _SPAWN_LOCK:
        original, connect = spawn.get_preparation_data, forkserver.connect_to_new_process

        # A reader needs nothing of the parent's __main__ (what spawn imports first by
        # default), and a script's main module may import MLX and reach for the GPU (a
        # benchmark's does), seconds of start-up per process.
        def preparation_data(name):
            data = original(name)
            data.pop("init_main_from_name", None)
            data.pop("init_main_from_path", None)
            return data

        changes = _reader_environment()
        saved = {k: os.environ.get(k) for k in changes}
        # Ctrl-C reaches the whole process group: blocked from the start (a blocked mask
        # survives fork and exec, and the fork server's children inherit its mask), so a
        # reader still starting cannot die of it; the reader ignores it once it runs.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            spawn.get_preparation_data = preparation_data
            if start_method() == "forkserver":  # a forkserver Process asks the module's server
                forkserver.connect_to_new_process = _fork_server().connect_to_new_process
            os.environ.update(changes)
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            spawn.get_preparation_data, forkserver.connect_to_new_process = original, connect
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def start_stage_process(proc) -> None:
    """Start a reader process, or another CPU stage's (the subtitle process), from the
    readers' fork server with their environment (see _reader_start_context)."""
    with _reader_start_context():
        proc.start()


class ReadProcesses:
    """``processes`` reader processes cutting files as ``cut`` says; the VAD, when ``cut``
    has one, is loaded in each process from ``vad_spec`` (a name or folder)."""

    def __init__(self, processes: int, cut: CutOptions, vad_spec: str | None = None, *,
                 vad_here: bool = False):
        if processes < 1:
            raise ValueError("processes must be at least 1")
        if cut.vad is not None and vad_spec is None and not vad_here:
            raise ValueError("a VAD for reader processes must be given by name or folder")
        self.processes = processes
        # vad_here: the caller runs the VAD (the processes then send a long file's windows,
        # VADWindow events)
        self.vad_here = vad_here and cut.vad is not None
        self.vad_spec = vad_spec if cut.vad is not None and not self.vad_here else None
        self.cut_fields = {"max_segment_s": cut.max_segment_s, "max_window_s": cut.max_window_s,
                           "vad_window_s": cut.vad_window_s, "memory_s": cut.memory_s,
                           "spill_dir": cut.spill_dir, "vad_elsewhere": self.vad_here}
        self.n_samples = ring_samples(cut)
        self._ctx = multiprocessing.get_context(start_method())
        self._free: queue_mod.Queue[_Slot] = queue_mod.Queue()
        self._slots: list[_Slot] = []
        self._lock = threading.Lock()
        self.started = 0  # processes started (replacements included)
        self._starting = 0  # processes being started, not yet in _slots
        self.closed = False
        self.busy_s = 0.0  # CPU seconds the processes spent reading, summed
        # fsmn-vad's network on the device for every reader (opt-in, runner.vad_network)
        self._network = None
        self.network_chunks = 0  # chunks the served network answered (counted at close)
        if vad_network.wanted(self.vad_spec):
            with _SPAWN_LOCK:  # not the environment a reader's start changes for a moment
                environ = dict(os.environ)
            self._network = vad_network.NetworkServer(self.vad_spec, environ)

    def start(self) -> None:
        """Start every process now (each boots while the run gets ready, and a file's first
        piece waits for no start-up); leasing starts any missing later."""
        with self._lock:
            missing = max(0, self.processes - len(self._slots) - self._starting)
            self._starting += missing
        for _ in range(missing):
            self._free.put(self._new_slot())

    # ---- leasing processes ----------------------------------------------------------------

    def _new_slot(self) -> _Slot:
        """A new process for a place reserved in ``_starting`` (under the lock, by the
        caller: a process takes a while to start, and two callers must not both see room)."""
        try:
            slot = _Slot(self._ctx, self.vad_spec, self.cut_fields, self.n_samples,
                         self._network.settings() if self._network else None)
        except BaseException:
            with self._lock:
                self._starting -= 1
            raise
        with self._lock:
            self._starting -= 1
            if self.closed:
                slot.close()
                raise Cancelled()
            self._slots.append(slot)
            self.started += 1
        return slot

    def _lease(self) -> _Slot:
        with self._lock:
            grow = (len(self._slots) + self._starting < self.processes
                    and self._free.empty())
            self._starting += grow
        if grow:
            return self._new_slot()
        while True:
            if self.closed:
                raise Cancelled()
            try:
                return self._free.get(timeout=0.2)
            except queue_mod.Empty:
                pass

    def _give_back(self, slot: _Slot) -> None:
        with self._lock:
            alive = slot in self._slots  # not replaced meanwhile
        if alive:
            self._free.put(slot)

    def _replace(self, slot: _Slot) -> None:
        with self._lock:
            if slot in self._slots:
                self._slots.remove(slot)
        slot.close()

    def pids(self) -> list[int]:
        """The live reader processes (for tests and diagnostics)."""
        with self._lock:
            return [s.proc.pid for s in self._slots if s.proc.is_alive()]

    def close(self) -> None:
        """Stop at once: reading files end with Cancelled, the processes are killed and
        their shared memory unlinked."""
        with self._lock:
            self.closed = True
            slots, self._slots = self._slots, []
            network, self._network = self._network, None
        for slot in slots:
            slot.close()
        if network is not None:
            self.network_chunks = network.served()[0]
            network.close()

    # ---- reading a file -------------------------------------------------------------------

    def read(self, path: str, abandon: Callable[[], bool] = lambda: False
             ) -> Iterator[Plan | Window | Cut | End]:
        """A file's events in order: one :class:`Plan`, its pieces (``Window`` or, through
        the VAD, ``audio.cut.Cut``), then one :class:`End`. Raises AudioError,
        VADFailedRemote, ReaderDied or Cancelled. Stop iterating (or let ``abandon()``
        become true) to drop the rest of the file."""
        forwarded = 0  # pieces already given to the caller: a retry skips them
        deaths = 0
        planned = False
        while True:
            slot = self._lease()
            events = self._read_once(slot, path, forwarded)
            try:
                for ev in events:
                    if isinstance(ev, Plan):
                        if planned:
                            continue
                        planned = True
                    elif isinstance(ev, (Window, Cut, VADWindow)):
                        forwarded += 1
                    yield ev
                    if abandon():
                        return
                return
            except _Died:
                deaths += 1
                self._replace(slot)
                slot = None
                if self.closed:
                    raise Cancelled() from None
                if deaths >= DEATHS_PER_FILE:
                    raise ReaderDied(f"the reader process died {deaths} times on this file "
                                     f"(last: {self._last_exit})") from None
                logger.warning("a reader process died (%s) reading %s; reading it again in "
                               "a new one", self._last_exit, path)
            finally:
                events.close()
                if slot is not None:
                    self._give_back(slot)

    _last_exit = ""

    def _read_once(self, slot: _Slot, path: str, skip: int):
        """One process's reading of a file; raises _Died when the process dies. On an early
        close (the caller stopped), tells the process to drop the file and waits for it."""
        conn = slot.conn
        finished = False
        try:
            try:
                conn.send(("file", path, skip))
            except (OSError, EOFError):
                raise self._died(slot) from None
            while True:
                try:
                    msg = conn.recv()
                except (OSError, EOFError):
                    raise self._died(slot) from None
                kind = msg[0]
                if kind == "plan":
                    yield Plan(msg[1])
                elif kind == "piece":
                    _, index, offset_s, span, at, n, used = msg
                    audio = self._take(slot, at, n, used)
                    if span is None:
                        yield Window(index, offset_s, audio)
                    elif span == "vad":
                        yield VADWindow(index, offset_s, audio)
                    else:
                        yield Cut(index, span[0], span[1], audio)
                elif kind == "end":
                    finished = True
                    self._account(msg[3])
                    yield End(msg[1], msg[2])
                    return
                elif kind == "error":
                    finished = True
                    _, what, value, busy = msg
                    self._account(busy)
                    if what == "audio":
                        raise AudioError(*value)
                    if what == "vad":
                        raise VADFailedRemote(value)
                    raise RuntimeError(value)
        finally:
            if not finished and slot.proc.is_alive():
                self._drop(slot)

    def _take(self, slot: _Slot, at: int, n: int, used: int) -> np.ndarray:
        audio = slot.ring[at : at + n].copy()
        try:
            slot.conn.send(("free", used))
        except (OSError, EOFError):
            pass  # it died: the next recv says so
        return audio

    def _drop(self, slot: _Slot) -> None:
        """Make the process drop its file; its remaining pieces are freed unread."""
        try:
            slot.conn.send(("cancel",))
            while True:
                msg = slot.conn.recv()
                if msg[0] == "piece":
                    slot.conn.send(("free", msg[6]))
                elif msg[0] in ("end", "error", "cancelled"):
                    if msg[0] != "cancelled":
                        self._account(msg[-1])
                    return
        except (OSError, EOFError):
            self._replace(slot)

    def _died(self, slot: _Slot) -> "_Died":
        slot.proc.join(timeout=5)
        code = slot.proc.exitcode
        self._last_exit = (f"killed by signal {-code}" if code is not None and code < 0
                           else f"exit code {code}")
        return _Died()

    def _account(self, busy: float) -> None:
        with self._lock:
            self.busy_s += busy


class _Died(Exception):
    pass


# ---- in the reader process ---------------------------------------------------------------------


class _Ring:
    """The process's side of its ring: where the next piece goes, and waiting for room."""

    def __init__(self, conn, buf: np.ndarray):
        self.conn, self.buf = conn, buf
        self.size = len(buf)
        self.head = 0  # where the next piece starts
        self.in_use = 0  # samples handed over and not freed yet (wasted ends included)
        self.cancelled = False

    def control(self, block: bool) -> None:
        """Handle the model's side's messages: frees, a cancel (of the current file)."""
        while block or self.conn.poll():
            block = False
            msg = self.conn.recv()
            if msg[0] == "free":
                self.in_use -= msg[1]
            elif msg[0] == "cancel":
                self.cancelled = True

    def put(self, index: int, offset_s: float, span, wave: np.ndarray) -> bool:
        """Hand one piece over; False when the file was cancelled meanwhile."""
        n = len(wave)
        used = n
        at = self.head
        if at + n > self.size:  # the end of the ring is too short: start again at 0
            used += self.size - at
            at = 0
        self.control(block=False)
        while not self.cancelled and self.in_use + used > self.size:
            self.control(block=True)
        if self.cancelled:
            return False
        self.buf[at : at + n] = wave
        self.head = at + n
        self.in_use += used
        self.conn.send(("piece", index, offset_s, span, at, n, used))
        return True


def _reader_main(conn, shm_name: str, n_samples: int, vad_spec: str | None, cut_fields: dict,
                 parent: int, settings: dict[str, str]) -> None:
    from batchasr.runner.parent import die_with, set_process_name

    set_process_name(PROCESS_NAME)
    for key in [k for k in os.environ if k.startswith("BATCHASR_")]:
        del os.environ[key]
    os.environ.update(settings)
    nice = int(os.environ.get("BATCHASR_READER_NICE", READER_NICE))
    if nice > 0:
        try:
            os.nice(nice)
        except OSError:  # not allowed here: the same priority as the run
            pass
    die_with(parent)  # the run's process (our parent, or the parent of our fork server)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's Ctrl-C is the run's to handle
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by the start
    vad = None
    if vad_spec is not None:
        # numpy only, never MLX: the accelerator, its memory above all, belongs to the
        # model's process
        from batchasr.models.vads import open_vad

        vad = open_vad(vad_spec)
        vad_network.attach(vad)  # the network on the device, when the run serves it
    vad_elsewhere = cut_fields.pop("vad_elsewhere", False)
    # The caller's VAD: files are planned as with a VAD, a long one sent as its windows.
    cut = CutOptions(vad=_VAD_ELSEWHERE if vad_elsewhere else vad, **cut_fields)
    shm = shared_memory.SharedMemory(name=shm_name)
    ring = _Ring(conn, np.ndarray((n_samples,), np.float32, shm.buf))
    try:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return
            if msg[0] == "file":
                ring.cancelled = False
                _read_file(conn, ring, cut, msg[1], msg[2])
            elif msg[0] == "free":
                ring.in_use -= msg[1]
            # a "cancel" between files has nothing to cancel
    finally:
        del ring
        shm.close()


def _read_file(conn, ring: _Ring, cut: CutOptions, path: str, skip: int) -> None:
    """Read one file, sending its events; ends with one "end", "error" or "cancelled"."""
    from batchasr.audio import decode as audio

    t = time.process_time()
    n = samples = 0
    reader_dies_on(path)  # a no-op outside fault-injection tests
    try:
        with audio.open_audio(path) as f:
            through_vad, windows = planned_windows(f, cut)
            conn.send(("plan", through_vad))
            elsewhere = cut.vad is _VAD_ELSEWHERE
            cutter = SegmentCutter(cut.vad, cut) if through_vad and not elsewhere else None
            kind = "vad" if through_vad and elsewhere else None
            try:
                for offset_s, wave in windows:
                    samples += len(wave)
                    if cutter is None:
                        if n >= skip and not ring.put(n, offset_s, kind, wave):
                            conn.send(("cancelled",))
                            return
                        n += 1
                        continue
                    try:
                        cuts = cutter.feed(wave)
                    except Exception as e:
                        raise _VADRaised(e) from e
                    if not _send_cuts(ring, cuts, skip):
                        conn.send(("cancelled",))
                        return
                if cutter is not None:
                    try:
                        cuts = cutter.finish()
                    except Exception as e:
                        raise _VADRaised(e) from e
                    if not _send_cuts(ring, cuts, skip):
                        conn.send(("cancelled",))
                        return
                    n = cutter.count
            finally:
                if cutter is not None:
                    cutter.close()
        conn.send(("end", n, samples / SAMPLE_RATE, time.process_time() - t))
    except AudioError as e:
        conn.send(("error", "audio", (e.path, e.reason, e.detail), time.process_time() - t))
    except _VADRaised as e:
        inner = e.args[0]
        conn.send(("error", "vad", f"{type(inner).__name__}: {inner}", time.process_time() - t))
    except Exception as e:  # a decoder bug fails the file, not the process
        conn.send(("error", "other", f"{type(e).__name__}: {e}", time.process_time() - t))


class _VADRaised(Exception):
    pass


# Stands for a VAD the caller runs: plan_file plans with it; nothing here calls it.
_VAD_ELSEWHERE = object()


def _send_cuts(ring: _Ring, cuts: list[Cut], skip: int) -> bool:
    for c in cuts:
        if c.index >= skip and not ring.put(c.index, c.start_s, (c.start_ms, c.end_ms),
                                            c.audio):
            return False
    return True
