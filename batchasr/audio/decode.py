"""Decode audio files into 16 kHz mono float32 waveforms.

The path is the one FunASR takes without torchaudio: soundfile float32 -> mean over
channels -> ``soxr.resample(x, sr, 16000, "HQ")``. Whatever libsndfile reads is accepted
(WAV in every PCM/float width, FLAC, OGG Vorbis/Opus, MP3, AIFF, ...).

Every file that cannot be used raises :class:`~batchasr.errors.AudioError` with the file and
a reason: ``missing``, ``not_a_file``, ``empty``, ``truncated``, ``corrupt`` (a known
container that fails to parse, usually cut off), ``not_audio``, ``unsupported`` (a codec or
container libsndfile cannot decode) or ``unreadable``.

Long files are read in bounded blocks and resampled with a streaming resampler whose output
is bit-identical to the one-shot call, so a multi-hour file never sits in memory at its
source rate (:meth:`AudioFile.windows`).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import soundfile as sf
import soxr

from batchasr.errors import AudioError

SAMPLE_RATE = 16000  # what every FunASR model consumes
SAMPLES_PER_MS = SAMPLE_RATE // 1000
RESAMPLE_QUALITY = "HQ"  # librosa's "soxr_hq", the official FunASR path

# Common audio containers libsndfile cannot decode: a clearer message than "not audio".
UNSUPPORTED_EXTENSIONS = frozenset(".m4a .mp4 .aac .wma .amr .webm .mkv .mov .3gp .ac3".split())

# Sizes a streaming writer puts in a WAV/AIFF header when it cannot seek back: not truncation.
_PLACEHOLDER_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF}
# libsndfile's parser log line for a data chunk that claims more bytes than the file holds.
_SHORT_CHUNK = re.compile(r"^\s*(data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# For formats whose frame count is an estimate (MP3 without a Xing/LAME header),
# a read this much shorter than announced still counts as whole.
_ESTIMATED_LENGTH_SLACK = 0.02


@dataclass(frozen=True)
class AudioInfo:
    """What the file's header says (``frames`` may be 0 when the header does not know)."""

    path: str
    samplerate: int
    channels: int
    frames: int
    format: str
    subtype: str

    @property
    def duration_s(self) -> float:
        return self.frames / self.samplerate if self.samplerate else 0.0

    def n_samples(self, sr: int = SAMPLE_RATE) -> int:
        """Length after resampling to ``sr`` (soxr gives round(frames * sr / samplerate))."""
        return round(self.frames * sr / self.samplerate) if self.samplerate else 0


def to_mono(x: np.ndarray) -> np.ndarray:
    """(frames, channels) -> (frames,) float32, averaging the channels as FunASR does."""
    if x.ndim == 1:
        return x.astype(np.float32, copy=False)
    if x.shape[1] == 1:
        return np.ascontiguousarray(x[:, 0], dtype=np.float32)
    return x.mean(axis=1, dtype=np.float32)


def resample(x: np.ndarray, from_sr: int, to_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 at ``from_sr`` -> mono float32 at ``to_sr`` (soxr HQ; a no-op when equal)."""
    if from_sr == to_sr:
        return x.astype(np.float32, copy=False)
    return soxr.resample(x, from_sr, to_sr, RESAMPLE_QUALITY).astype(np.float32, copy=False)


class AudioFile:
    """An open audio file. Use as a context manager; raises AudioError on open.

    ``read()`` gives the whole file; ``windows(window_s)`` gives it in bounded pieces.
    Each AudioFile is read once (it is a stream, not a random-access view).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        _check_file(self.path)
        try:
            self._f = sf.SoundFile(self.path)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise _open_error(self.path, e) from None
        self.info = AudioInfo(
            self.path, self._f.samplerate, self._f.channels, self._f.frames,
            self._f.format, self._f.subtype,
        )
        self._log = self._f.extra_info  # libsndfile's header-parser log
        note = _truncation_note(self._log)
        if note:
            self.close()
            raise AudioError(self.path, "truncated", note)

    def __enter__(self) -> AudioFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()

    def read(self, sr: int = SAMPLE_RATE) -> np.ndarray:
        """The whole file as mono float32 at ``sr``."""
        x = self._read_frames(-1)
        self._check_length(len(x))
        return resample(to_mono(x), self.info.samplerate, sr)

    def windows(
        self, window_s: float, *, sr: int = SAMPLE_RATE, block_s: float = 10.0
    ) -> Iterator[tuple[float, np.ndarray]]:
        """Yield ``(offset_s, waveform)`` pieces of exactly ``window_s`` seconds at ``sr``
        (the last one shorter), concatenating to exactly ``read(sr)``.

        Memory stays at about ``window_s + block_s`` seconds of audio whatever the file's
        length. A decode error part-way raises AudioError at that point.
        """
        window = int(round(window_s * sr))
        if window <= 0:
            raise ValueError(f"window_s must be positive, got {window_s}")
        block = max(1, int(block_s * self.info.samplerate))
        stream = (
            soxr.ResampleStream(self.info.samplerate, sr, 1, dtype="float32",
                                quality=RESAMPLE_QUALITY)
            if self.info.samplerate != sr else None
        )
        pending: list[np.ndarray] = []  # resampled audio not yet emitted
        n_pending = 0
        emitted = 0  # samples at sr already yielded
        n_read = 0  # source frames read
        while True:
            x = self._read_frames(block)
            n_read += len(x)
            last = len(x) < block
            if last:
                self._check_length(n_read)
            y = to_mono(x)
            if stream is not None:
                y = stream.resample_chunk(y, last=last)
            if len(y):
                pending.append(y)
                n_pending += len(y)
            while n_pending >= window:
                buf = np.concatenate(pending)
                yield emitted / sr, buf[:window]
                emitted += window
                pending, n_pending = [buf[window:]], len(buf) - window
            if last:
                break
        if n_pending:
            yield emitted / sr, np.concatenate(pending)
        elif emitted == 0:
            raise AudioError(self.path, "empty", "no audio frames")

    def _read_frames(self, n: int) -> np.ndarray:
        try:
            return self._f.read(n, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as e:
            # The header parsed but the data did not decode: almost always a cut-off file.
            raise AudioError(self.path, "truncated", _libsndfile_reason(e)) from None

    def _check_length(self, n_read: int) -> None:
        declared = self.info.frames
        if n_read == 0:
            reason = "truncated" if "ended unexpectedly" in self._log else "empty"
            raise AudioError(self.path, reason, "no audio frames")
        slack = _ESTIMATED_LENGTH_SLACK if self.info.format == "MP3" else 0.0
        if declared and n_read < declared * (1.0 - slack):
            raise AudioError(
                self.path, "truncated",
                f"header announces {declared} frames, only {n_read} could be read",
            )


def open_audio(path: str | os.PathLike) -> AudioFile:
    """Open ``path`` for decoding (raises AudioError); close it or use ``with``."""
    return AudioFile(path)


def load(path: str | os.PathLike, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a whole file to mono float32 at ``sr`` (16 kHz)."""
    with AudioFile(path) as f:
        return f.read(sr)


def iter_windows(
    path: str | os.PathLike, window_s: float, *, sr: int = SAMPLE_RATE, block_s: float = 10.0
) -> Iterator[tuple[float, np.ndarray]]:
    """Yield ``(offset_s, waveform)`` windows of a file of any length in bounded memory."""
    with AudioFile(path) as f:
        yield from f.windows(window_s, sr=sr, block_s=block_s)


def probe(path: str | os.PathLike) -> tuple[float, int, int]:
    """``(duration_s, samplerate, channels)`` from the header, without decoding."""
    _check_file(str(path))
    try:
        i = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as e:
        raise _open_error(str(path), e) from None
    return i.frames / i.samplerate, i.samplerate, i.channels


# ---- error classification ------------------------------------------------------------------


def _check_file(path: str) -> None:
    """Reasons visible from the file system, before libsndfile gets a chance to be vague."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise AudioError(path, "missing", "no such file") from None
    except OSError as e:
        raise AudioError(path, "unreadable", e.strerror or str(e)) from None
    if not os.path.isfile(path):
        raise AudioError(path, "not_a_file", "a folder or special file")
    if st.st_size == 0:
        raise AudioError(path, "empty", "0 bytes")
    if not os.access(path, os.R_OK):
        raise AudioError(path, "unreadable", "permission denied")


def _libsndfile_reason(e: Exception) -> str:
    # LibsndfileError's str() is "Error opening 'x': " + a vague code; error_string is the text.
    return (getattr(e, "error_string", "") or str(e)).strip()


def _open_error(path: str, e: Exception) -> AudioError:
    why = _libsndfile_reason(e)
    low = why.lower()
    ext = os.path.splitext(path)[1].lower()
    if ext in UNSUPPORTED_EXTENSIONS:
        return AudioError(
            path, "unsupported",
            f"libsndfile cannot decode {ext} files; convert first, e.g. "
            f"ffmpeg -i in{ext} out.flac",
        )
    if "not recognised" in low or "not recognized" in low:
        return AudioError(path, "not_audio", why)
    if "malformed 'fmt" in low or "unsupported encoding" in low:
        return AudioError(path, "unsupported", why)  # a container we read, a codec we don't
    if "no 'data' chunk" in low or "ended unexpectedly" in low or "lost sync" in low:
        return AudioError(path, "truncated", why)
    if _has_audio_magic(path):
        # A known container whose parse failed ("malformed", "unimplemented format", or the
        # MP3 reader's "does not exist"): damaged, most often cut off while being written.
        return AudioError(path, "corrupt", why)
    if "unimplemented" in low or "unsupported" in low:
        return AudioError(path, "unsupported", why)
    return AudioError(path, "unreadable", why)


_MAGICS = (b"RIFF", b"RIFX", b"RF64", b"FORM", b"fLaC", b"OggS", b"ID3", b"caff", b".snd")


def _has_audio_magic(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    mpeg_sync = len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0
    return head.startswith(_MAGICS) or mpeg_sync


def _truncation_note(log: str) -> str:
    """A reason if libsndfile's parser log shows a data chunk larger than the file, else ''."""
    for m in _SHORT_CHUNK.finditer(log):
        declared, actual = int(m.group(2)), int(m.group(3))
        if declared not in _PLACEHOLDER_SIZES and declared > actual:
            return f"header announces {declared} bytes of audio, the file holds {actual}"
    return ""
