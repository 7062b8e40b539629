"""Kaldi fbank in numpy: the frontend settings every family shares, and WavFrontendOnline.

The settings of `funasr.frontends.wav_frontend` (`FrontendConfig`, am.mvn, Kaldi's window
sizes, mel banks and windows, frame counts) and a numpy Kaldi fbank, for the stages that run
on the host: fsmn-vad's `OnlineFrontend` (WavFrontendOnline: fbank -> LFR m, n=1 -> CMVN, fed
chunk by chunk) runs in reader processes, which never import MLX (its CUDA backend gives
every process that makes an array a device context and device memory). The batched MLX
frontend of the recognizers (batchasr.models.blocks.frontend) computes the same fbank on the
accelerator from the same settings.

fbank: waveform x 32768, 25 ms window every 10 ms, snip_edges, DC removal, pre-emphasis 0.97
(first sample replicated), power spectrum of the window zero-padded to a power of two, Kaldi
mel bins from 20 Hz to Nyquist, log floored at float32 eps, no dither; float32 throughout,
as torchaudio.compliance.kaldi.fbank computes it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from batchasr.audio.decode import SAMPLE_RATE
from batchasr.models.base import BaseModelArgs

WAVEFORM_SCALE = float(1 << 15)  # FunASR's `upsacle_samples`: fbank sees int16-range samples
LOG_FLOOR = float(np.finfo(np.float32).eps)  # Kaldi/torchaudio floor inside log()


@dataclass(frozen=True)
class FrontendConfig(BaseModelArgs):
    """The `frontend_conf` block of config.yaml (WavFrontend keys, official names)."""

    fs: int = SAMPLE_RATE
    window: str = "hamming"
    n_mels: int = 80
    frame_length: float = 25.0  # ms
    frame_shift: float = 10.0  # ms
    lfr_m: int = 1
    lfr_n: int = 1
    snip_edges: bool = True
    upsacle_samples: bool = True  # sic, the official key

    def __post_init__(self):
        if not self.snip_edges:
            raise ValueError("frontend_conf snip_edges: false is not supported (Kaldi framing "
                             "without snipped edges); the published FunASR models use true")
        window_function(self.window, 4)  # unknown window types fail here, not mid-job

    @property
    def frame_ms(self) -> float:
        """Duration of one output (LFR) frame in milliseconds (60 ms for Paraformer)."""
        return self.frame_shift * self.lfr_n

    @property
    def frame_samples(self) -> int:
        """Samples per output (LFR) frame (960 for Paraformer at 16 kHz)."""
        return self.lfr_n * int(self.fs * self.frame_shift / 1000)


def load_cmvn(path: str | Path) -> np.ndarray:
    """Read Kaldi nnet1 text CMVN (am.mvn) -> float32 array (2, dim): shift row, scale row."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    shift = scale = None
    for i, line in enumerate(lines):
        items = line.split()
        if not items or i + 1 >= len(lines):
            continue
        nxt = lines[i + 1].split()
        if items[0] == "<AddShift>" and nxt and nxt[0] == "<LearnRateCoef>":
            shift = nxt[3:-1]
        elif items[0] == "<Rescale>" and nxt and nxt[0] == "<LearnRateCoef>":
            scale = nxt[3:-1]
    if shift is None or scale is None:
        raise ValueError(f"{path}: no <AddShift>/<Rescale> blocks found (not a Kaldi am.mvn file)")
    return np.array([np.array(shift, np.float32), np.array(scale, np.float32)])


def window_sizes(fs: int, frame_length_ms: float, frame_shift_ms: float) -> tuple[int, int, int]:
    # Same integer rounding as torchaudio's _get_waveform_and_window_properties
    shift = int(fs * frame_shift_ms * 0.001)
    size = int(fs * frame_length_ms * 0.001)
    padded = 1 << max(0, (size - 1).bit_length())  # round_to_power_of_two
    return size, shift, padded


@lru_cache(maxsize=8)
def mel_banks(n_mels: int, padded_window: int, fs: int, low_freq: float = 20.0,
               high_freq: float = 0.0) -> np.ndarray:
    """Kaldi triangular mel filters, (padded_window // 2 + 1, n_mels), float32 like torchaudio."""
    n_fft_bins = padded_window // 2
    nyquist = 0.5 * fs
    if high_freq <= 0.0:
        high_freq += nyquist
    mel = lambda f: 1127.0 * math.log(1.0 + f / 700.0)
    mel_low, mel_high = mel(low_freq), mel(high_freq)
    delta = (mel_high - mel_low) / (n_mels + 1)
    b = np.arange(n_mels, dtype=np.float32)[:, None]
    left = np.float32(mel_low) + b * np.float32(delta)
    center = np.float32(mel_low) + (b + 1) * np.float32(delta)
    right = np.float32(mel_low) + (b + 2) * np.float32(delta)
    freqs = np.float32(fs / padded_window) * np.arange(n_fft_bins, dtype=np.float32)
    mels = (np.float32(1127.0) * np.log1p(freqs / np.float32(700.0))).astype(np.float32)[None, :]
    up = (mels - left) / (center - left)
    down = (right - mels) / (right - center)
    banks = np.maximum(np.float32(0.0), np.minimum(up, down)).astype(np.float32)
    banks = np.pad(banks, ((0, 0), (0, 1)))  # the Nyquist bin gets no weight
    return np.ascontiguousarray(banks.T)


@lru_cache(maxsize=8)
def window_function(kind: str, size: int) -> np.ndarray:
    n = np.arange(size, dtype=np.float64)
    if kind == "hamming":
        w = 0.54 - 0.46 * np.cos(2 * np.pi * n / (size - 1))
    elif kind == "hanning":
        w = 0.5 - 0.5 * np.cos(2 * np.pi * n / (size - 1))
    elif kind == "povey":
        w = (0.5 - 0.5 * np.cos(2 * np.pi * n / (size - 1))) ** 0.85
    elif kind == "rectangular":
        w = np.ones(size)
    else:
        raise ValueError(f"unsupported window type {kind!r}")
    return w.astype(np.float32)


def num_fbank_frames(n_samples: int, conf: FrontendConfig) -> int:
    """Frames Kaldi's snip_edges framing gives for n_samples (0 when shorter than a window)."""
    frame_length = min(conf.frame_length, n_samples / conf.fs * 1000)
    size, shift, _ = window_sizes(conf.fs, frame_length, conf.frame_shift)
    if n_samples <= 0 or size <= 0 or n_samples < size:
        return 0
    return 1 + (n_samples - size) // shift


def num_lfr_frames(n_samples: int, conf: FrontendConfig) -> int:
    t = num_fbank_frames(n_samples, conf)
    return -(-t // conf.lfr_n) if t else 0


def fbank(wave: np.ndarray, conf: FrontendConfig) -> np.ndarray:
    """Log mel filterbank of one waveform in [-1, 1] -> (T, n_mels) float32 (T = 0 when it is
    shorter than one window)."""
    size, shift, padded = window_sizes(conf.fs, conf.frame_length, conf.frame_shift)
    x = np.asarray(wave, np.float32)
    T = 1 + (len(x) - size) // shift if len(x) >= size else 0
    if T == 0:
        return np.zeros((0, conf.n_mels), np.float32)
    if conf.upsacle_samples:
        x = x * np.float32(WAVEFORM_SCALE)
    frames = np.lib.stride_tricks.sliding_window_view(x, size)[::shift][:T]
    frames = frames - frames.mean(axis=-1, keepdims=True, dtype=np.float32)  # remove_dc_offset
    prev = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = frames - np.float32(0.97) * prev  # pre-emphasis, first sample replicated
    frames *= window_function(conf.window, size)
    # in float64: numpy 2's float32 FFT is 2.4x slower than its float64 one (and numpy 1
    # computes in float64 anyway); the power is rounded to float32 after
    spectrum = np.fft.rfft(frames.astype(np.float64), n=padded, axis=-1)
    power = np.square(np.abs(spectrum)).astype(np.float32)  # torchaudio's abs().pow(2)
    mel = power @ mel_banks(conf.n_mels, padded, conf.fs)
    return np.log(np.maximum(mel, np.float32(LOG_FLOOR)))


class LFRFrames:
    """LFR + CMVN features of consecutive frames, not yet stacked: the fbank rows they use
    and, per output frame, the m rows it stacks. ``np.asarray`` stacks them (then CMVN) into
    (T, m * n_mels) float32; a consumer elsewhere (runner.vad_network) is sent the rows and
    the index, 5 times fewer bytes than the stacked features."""

    def __init__(self, frames: np.ndarray, index: np.ndarray, cmvn: np.ndarray | None):
        lo, hi = int(index.min()), int(index.max()) + 1
        self.frames = frames[lo:hi]  # (F, n_mels)
        self.index = (index - lo).astype(np.int32)  # (T, m) rows of `frames`
        self.cmvn = cmvn  # (2, m * n_mels) shift and scale, or None

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.index), self.index.shape[1] * self.frames.shape[1]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        feats = self.frames[self.index.reshape(-1)].reshape(self.shape)
        if self.cmvn is not None:
            feats = (feats + self.cmvn[0]) * self.cmvn[1]
        return feats if dtype is None else feats.astype(dtype, copy=False)


class OnlineFrontend:
    """WavFrontendOnline (fbank -> LFR m, n=1 -> CMVN) fed in chunks, with the official
    frame counts: a non-final chunk emits the LFR frames whose right context it has (all but
    the last (m-1)//2), the final chunk emits the rest with the last frame repeated. Also
    returns each emitted frame's 25 ms of waveform, from which the official decibels come."""

    def __init__(self, conf: FrontendConfig, cmvn: np.ndarray | None):
        if conf.lfr_n != 1:
            raise ValueError(f"fsmn-vad frontend: lfr_n must be 1, got {conf.lfr_n}")
        self.conf = conf
        self.cmvn = None if cmvn is None else np.asarray(
            cmvn[:, : conf.n_mels * conf.lfr_m], np.float32)
        self.frame_len = int(conf.fs * conf.frame_length / 1000)
        self.shift = int(conf.fs * conf.frame_shift / 1000)
        self.ctx = (conf.lfr_m - 1) // 2
        self.tail = np.zeros(0, np.float32)  # samples from the next fbank frame's start
        self.n_fbank = 0  # fbank frames so far
        self.hist = None  # the last fbank frames ((k, n_mels)), k <= lfr_m - 1
        self.n_out = 0  # LFR frames emitted so far
        self.wave = np.zeros(0, np.float32)  # samples from frame n_out's start on

    def __call__(self, chunk: np.ndarray, is_final: bool):
        """(LFR+CMVN features (LFRFrames: T x n_mels * lfr_m) or None, waveforms
        (T, frame_len))."""
        buf = np.concatenate([self.tail, chunk]) if len(self.tail) else chunk
        n_new = (len(buf) - self.frame_len) // self.shift + 1 if len(buf) >= self.frame_len else 0
        frames = self.hist  # fbank frames [first, n_fbank) of the file
        first = self.n_fbank - (0 if frames is None else frames.shape[0])
        if n_new:
            used = (n_new - 1) * self.shift + self.frame_len
            fb = fbank(buf[:used], self.conf)
            frames = fb if frames is None else np.concatenate([frames, fb])
            self.n_fbank += n_new
        self.tail = buf[n_new * self.shift :]
        self.wave = np.concatenate([self.wave, chunk]) if len(self.wave) else chunk
        total = self.n_fbank
        # WavFrontendOnline: a non-final call with new frames emits all but the last ctx
        # (their right context is missing); the final call emits the rest
        end = total if is_final else (max(total - self.ctx, self.n_out) if n_new else self.n_out)
        feats = waves = None
        if end > self.n_out:
            m = self.conf.lfr_m
            k = np.arange(self.n_out, end)
            idx = np.clip(k[:, None] + np.arange(m)[None, :] - self.ctx, 0, total - 1) - first
            feats = LFRFrames(frames, idx, self.cmvn)
            # each frame's samples as a strided view (a gather copied 25 ms per 10 ms frame)
            waves = np.lib.stride_tricks.sliding_window_view(
                self.wave, self.frame_len)[:: self.shift][: len(k)]
            if len(waves) != len(k):  # cannot happen: every emitted frame has its samples
                raise RuntimeError(f"fsmn-vad frontend: {len(waves)} frames of samples for "
                                   f"{len(k)} frames")
            self.wave = self.wave[len(k) * self.shift :]
            self.n_out = end
        if frames is not None:  # the next call needs frames from n_out - ctx on
            keep = total - max(self.n_out - self.ctx, 0)
            self.hist = frames[frames.shape[0] - keep :] if keep > 0 else None
        return feats, waves
