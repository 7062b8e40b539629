"""The run's options, each default once, and what a run reports.

:class:`RunOptions` holds every setting of a local run (batching, cutting, pipeline depth,
robustness, leases, outputs) with its one default; the cutting defaults are
``batchasr.audio.cut``'s (``DEFAULT_MAX_WINDOW_S``, ``DEFAULT_MAX_SEGMENT_S``) and the
sample rate is ``batchasr.audio.decode.SAMPLE_RATE``. :func:`open_vad` and
:func:`open_punctuator` turn the ``vad``/``punc`` option (a name, a folder, a loaded model,
or none) into the loaded model the stages are handed. :class:`RunSummary` is what one run
did and where its time went.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from batchasr.audio.cut import DEFAULT_MAX_SEGMENT_S, DEFAULT_MAX_WINDOW_S, CutOptions
from batchasr.audio.decode import SAMPLE_RATE as SR
from batchasr.transcript import ASRModel

DEFAULT_MAX_FAILURES_IN_A_ROW = 20
DEFAULT_MAX_ATTEMPTS = 5
PREFETCH_BATCHES = 2  # decoded audio buffered ahead of the model, in batches
# Decoded pieces sorted into batches at once, in batches. A large pool sorts lengths well:
# over 50 h of 2-20 s clips, 1000 s batches, the runner's Pool with 16 batches makes 194
# batches padded 9 % (4 batches: 225, 20 %), and with stable shapes 26 distinct shapes
# (4 batches: 45) -- fewer launches, less padding and fewer first uses of a shape on GPUs.
# It costs memory only: 16 x 1000 s of float32 audio is 1 GB. The runner does not wait for
# a full pool while the model is idle (runner.local.Runner._idle_start).
POOL_BATCHES = 16
# ... but never more than this much audio (1 GB of float32) beyond 4 batches: a model with
# large batches (Fun-ASR-Nano's 4000 s) sorts its pool of 4 batches.
POOL_MAX_S = 16000.0
POOL_MIN_BATCHES = 4
# The streaming API (runner.transcribe) yields files in input order as they finish, and runs
# a batch only when its pool is full: a small pool gives the first results sooner.
STREAM_POOL_BATCHES = 4


def pool_samples(pool_seconds: float | None, batch_seconds: float,
                 batches: int = POOL_BATCHES) -> int:
    """The sorting pool's size in samples (default: ``batches`` batches, capped at
    POOL_MAX_S unless that is less than POOL_MIN_BATCHES batches)."""
    if not pool_seconds:
        pool_seconds = min(batches * batch_seconds,
                           max(POOL_MAX_S, min(batches, POOL_MIN_BATCHES) * batch_seconds))
    return int(pool_seconds * SR)


def default_max_segment_s(model: ASRModel) -> float:
    """The longest piece that suits the model, as it declares (``max_segment_s``)."""
    return float(getattr(model, "max_segment_s", DEFAULT_MAX_SEGMENT_S))


def open_vad(vad: Any, *, download: bool = False):
    """A VAD from a name or folder (``batchasr.models.loader.load_vad``); None or "none": no VAD; a
    loaded VAD is returned as it is."""
    if vad is None or (isinstance(vad, str) and vad.lower() == "none"):
        return None
    if isinstance(vad, (str, os.PathLike)):
        from batchasr.models.loader import load_vad

        return load_vad(vad, download=download)
    return vad


def open_punctuator(punc: Any, *, download: bool = False):
    """A punctuation model from a name or folder (``load_punctuator``); None or "none": none;
    a loaded one is returned as it is."""
    if punc is None or (isinstance(punc, str) and punc.lower() == "none"):
        return None
    if isinstance(punc, (str, os.PathLike)):
        from batchasr.models.loader import load_punctuator

        return load_punctuator(punc, download=download)
    return punc


@dataclass(frozen=True)
class RunOptions:
    # Batching. A batch holds at most batch_seconds of audio, and at most
    # max_padded_seconds once padded to its longest piece (default: batch_seconds).
    batch_seconds: float
    max_padded_seconds: float | None = None
    max_batch_items: int | None = None
    # Longer files are cut into windows of at most this length (equal lengths per file).
    max_window_s: float = DEFAULT_MAX_WINDOW_S
    # Long recordings. vad: a loaded VAD (open_vad), or None for the windows above;
    # files longer than max_segment_s (None: the model's default, 30 s; 15 s for Nano) are
    # then cut into its speech segments of at most that length. punctuator: a punctuation
    # model for models whose text has none (open_punctuator). A long file's
    # finished segments are saved every segment_cache_s seconds of audio (None: never).
    vad: Any = None
    # VAD processes for long files (0: the VAD runs in this process, on the main thread).
    # Only a VAD loaded by name or folder (it has a ``spec``) can be spawned.
    vad_processes: int = 0
    max_segment_s: float | None = None
    punctuator: Any = None
    segment_cache_s: float | None = 120.0
    # Reader processes decoding, resampling, running the VAD and cutting files into pieces,
    # many files at once, off this process (runner.read_processes); 0: the reader threads
    # below do it here; None: the default for the device (runner.device).
    reader_processes: int | None = None
    # Whether those processes run the VAD too (None: unless MLX runs on CUDA, see
    # runner.device.vad_in_reader_processes); if not, the main thread runs it.
    vad_in_readers: bool | None = None
    # Pipeline. Readers decode ahead into a buffer of prefetch_seconds (default 2 batches)
    # plus what the pool lacks; the main thread sorts a pool of pool_seconds (default
    # POOL_BATCHES) into batches. Pool and buffer hold at most the two sizes together.
    readers: int = 2
    prefetch_seconds: float | None = None
    pool_seconds: float | None = None
    # Items claimed per queue transaction. A claim commits (an fsync) on the model's thread,
    # where it may also wait for the writer's transaction: few, large claims (a worker among
    # several is given smaller ones, runner.processes).
    claim_size: int = 256
    # Robustness. An item claimed max_attempts times by runs that died is failed at start;
    # this many items failing in the model in a row means the model, not the items, is
    # broken: the run stops instead of failing the whole job.
    max_attempts: int | None = DEFAULT_MAX_ATTEMPTS
    max_model_failures_in_a_row: int = DEFAULT_MAX_FAILURES_IN_A_ROW
    # Leases: a claimed item is this worker's for lease_s seconds, renewed every
    # heartbeat_s (default lease_s / 4) while the process lives; after a worker dies, the
    # others take its items over when the lease runs out (at once when the coordinating
    # run sees it die).
    lease_s: float = 60.0
    heartbeat_s: float | None = None
    # Outputs written next to each part (besides the Parquet rows): subtitles per item.
    subtitle_formats: tuple[str, ...] = ("srt",)
    subtitle_options: Any = None  # outputs.cues.SubtitleOptions
    # Subtitle files written by a process of their own (runner.subtitle_process); None: where
    # the readers are processes
    subtitle_process: bool | None = None

    def __post_init__(self):
        if self.batch_seconds <= 0 or self.max_window_s <= 0:
            raise ValueError("batch_seconds and max_window_s must be positive")
        if self.max_segment_s is not None and self.max_segment_s <= 0:
            raise ValueError("max_segment_s must be positive")
        if self.reader_processes is not None and self.reader_processes < 0:
            raise ValueError("reader_processes must not be negative")
        if self.readers < 1 or self.claim_size < 1:
            raise ValueError("readers and claim_size must be at least 1")
        if self.lease_s <= 0 or (self.heartbeat_s is not None
                                 and not 0 < self.heartbeat_s < self.lease_s):
            raise ValueError("lease_s must be positive and heartbeat_s below it")

    @property
    def padded_seconds(self) -> float:
        return self.max_padded_seconds or self.batch_seconds

    @property
    def prefetch_samples(self) -> int:
        return int((self.prefetch_seconds or PREFETCH_BATCHES * self.batch_seconds) * SR)

    @property
    def pool_samples(self) -> int:
        return pool_samples(self.pool_seconds, self.batch_seconds)

    def cut(self, model: ASRModel, spill_dir: str | None = None) -> CutOptions:
        """How this run cuts files for ``model`` (its own segment length when none is set)."""
        return CutOptions(vad=self.vad, max_window_s=self.max_window_s, spill_dir=spill_dir,
                          max_segment_s=self.max_segment_s or default_max_segment_s(model))


@dataclass
class RunSummary:
    """What one run did, and where its time went (seconds)."""

    done: int = 0
    failed: int = 0
    audio_s: float = 0.0  # audio of the items completed
    wall_s: float = 0.0
    decode_s: float = 0.0  # reader threads (or processes) decoding, resampling (VAD), summed
    reader_processes: int = 0  # reader processes that did the decoding (0: threads)
    wait_s: float = 0.0  # the main thread waiting for decoded audio: the model idle on I/O
    model_s: float = 0.0
    first_batch_s: float = 0.0  # from the run's start to its first batch sent to the model
    drain_s: float = 0.0  # from the model's last batch to the run's end (readers, writer drained)
    write_s: float = 0.0  # parts, subtitles, queue commits (on the writer thread)
    batches: int = 0
    padding: float = 0.0  # share of the batches' padded size that was padding
    vad_s: float = 0.0  # the main thread in the VAD
    vad_processes_s: float = 0.0  # CPU seconds of the VAD processes (summed)
    vad_network_chunks: int = 0  # readers' chunks whose fsmn-vad network was served (opt-in)
    punc_s: float = 0.0  # the main thread putting items together and punctuating them
    segments_reused: int = 0  # segments of long files found saved by an earlier run
    model_audio_s: float = 0.0  # audio sent to the model (VAD segments or windows)
    requeued: int = 0  # items a previous run left running, put back at start
    taken_over: int = 0  # items finished here but committed by another worker (lease lost)
    workers: int = 1  # worker processes (the figures above are their sums)
    stopped: bool = False  # stopped early (Ctrl-C / stop_event), not out of work
    signal: int = 0  # the signal that stopped it (SIGINT, SIGTERM), 0 if none
    remaining: dict[str, int] = field(default_factory=dict)  # queue counts at the end

    @property
    def items(self) -> int:
        return self.done + self.failed

    @property
    def speed(self) -> float:
        """Audio seconds per wall second (= audio hours per hour)."""
        return self.audio_s / self.wall_s if self.wall_s else 0.0

    @property
    def overhead_per_item_s(self) -> float:
        """Wall time not spent in the model, per item."""
        return (self.wall_s - self.model_s) / self.items if self.items else 0.0

    def __str__(self) -> str:
        head = (f"{self.done} done, {self.failed} failed, {self.audio_s / 3600:.2f} h of audio "
                f"in {self.wall_s:.1f} s ({self.speed:.1f}x real time)")
        extra = "".join(f", {name} {value:.1f} s" for name, value in
                        (("VAD", self.vad_s), ("punctuation", self.punc_s)) if value)
        vad_processes = (f", VAD processes {self.vad_processes_s:.1f} s"
                         if self.vad_processes_s else "")
        where = (f"in {self.reader_processes} reader processes (VAD included) and on other "
                 f"threads" if self.reader_processes else "on other threads")
        times = (f"model {self.model_s:.1f} s{extra}, waiting for audio {self.wait_s:.1f} s; "
                 f"{where}: decoding {self.decode_s:.1f} s, writing "
                 f"{self.write_s:.1f} s{vad_processes}; {self.batches} batches, "
                 f"{self.padding:.0%} padding")
        if self.segments_reused:
            times += f"; {self.segments_reused} saved segment(s) reused"
        if self.vad_network_chunks:
            times += f"; fsmn-vad's network served {self.vad_network_chunks} chunk(s)"
        left = self.remaining.get("pending", 0) + self.remaining.get("running", 0)
        stop = f"\n{stop_line(left)}" if self.stopped and left else ""
        if self.workers > 1:
            return f"{head} on {self.workers} workers; summed over them: {times}{stop}"
        return f"{head}; {times}; {self.overhead_per_item_s * 1000:.1f} ms overhead/item{stop}"


def stop_line(left: int) -> str:
    """What a run stopped with items left says (the summary's last line)."""
    return f"stopped: {left} item(s) left, run the same command to continue"
