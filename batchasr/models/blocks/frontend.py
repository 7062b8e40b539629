"""FunASR's WavFrontend in MLX: Kaldi fbank, LFR stacking and CMVN, batched over padded audio.

Matches `funasr.frontends.wav_frontend` (WavFrontend.forward) with its Kaldi fbank backend
(torchaudio.compliance.kaldi.fbank or kaldi-native-fbank): waveform x 32768, 25 ms Hamming
window every 10 ms, snip_edges, DC removal, pre-emphasis 0.97 (first sample replicated),
512-point power spectrum, 80 Kaldi mel bins from 20 Hz to Nyquist, log floored at float32 eps;
no dither (the official default dithers, which makes its output random; inference must not).
Then LFR (m=7, n=6: 3 copies of frame 0 in front, the last frame repeated at the end,
ceil(T/6) outputs) and CMVN `(x + shift) * scale` from am.mvn, after LFR.

Every row of a batch equals its own unpadded computation: frames, LFR windows and lengths are
computed per row from the row's true sample count, and padded frames are zeros.

`OnlineFrontend` is WavFrontendOnline (fbank -> LFR m, n=1 -> CMVN) fed chunk by chunk, as
fsmn-vad runs it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import mlx.core as mx
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
        _window(self.window, 4)  # unknown window types fail here, not mid-job

    @property
    def frame_ms(self) -> float:
        """Duration of one output (LFR) frame in milliseconds (60 ms for Paraformer)."""
        return self.frame_shift * self.lfr_n


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


def _window_sizes(fs: int, frame_length_ms: float, frame_shift_ms: float) -> tuple[int, int, int]:
    # Same integer rounding as torchaudio's _get_waveform_and_window_properties
    shift = int(fs * frame_shift_ms * 0.001)
    size = int(fs * frame_length_ms * 0.001)
    padded = 1 << max(0, (size - 1).bit_length())  # round_to_power_of_two
    return size, shift, padded


@lru_cache(maxsize=8)
def _mel_banks(n_mels: int, padded_window: int, fs: int, low_freq: float = 20.0,
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
def _window(kind: str, size: int) -> np.ndarray:
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
    size, shift, _ = _window_sizes(conf.fs, frame_length, conf.frame_shift)
    if n_samples <= 0 or size <= 0 or n_samples < size:
        return 0
    return 1 + (n_samples - size) // shift


def num_lfr_frames(n_samples: int, conf: FrontendConfig) -> int:
    t = num_fbank_frames(n_samples, conf)
    return -(-t // conf.lfr_n) if t else 0


def fbank(waveforms: mx.array, lengths: Sequence[int], conf: FrontendConfig,
          frame_length_ms: float | None = None) -> mx.array:
    """Log mel filterbank of padded waveforms (B, N) in [-1, 1] -> (B, T, n_mels).

    Frames past a row's own frame count hold garbage; callers mask them with the lengths.
    """
    size, shift, padded = _window_sizes(conf.fs, frame_length_ms or conf.frame_length,
                                        conf.frame_shift)
    B, N = waveforms.shape
    T = max(1 + (max(lengths) - size) // shift, 0) if max(lengths) >= size else 0
    if T == 0:
        return mx.zeros((B, 0, conf.n_mels), mx.float32)
    x = waveforms.astype(mx.float32)
    if conf.upsacle_samples:
        x = x * WAVEFORM_SCALE
    # (B, T, size) overlapping frames as a strided view: faster than a gather on CPUs
    frames = mx.as_strided(mx.contiguous(x), (B, T, size), (N, shift, 1))
    frames = frames - mx.mean(frames, axis=-1, keepdims=True)  # remove_dc_offset
    prev = mx.concatenate([frames[..., :1], frames[..., :-1]], axis=-1)
    frames = frames - 0.97 * prev  # pre-emphasis, first sample replicated
    frames = frames * mx.array(_window(conf.window, size))
    spectrum = mx.fft.rfft(frames, n=padded, axis=-1)
    power = mx.square(mx.abs(spectrum))  # |X|^2, as torchaudio's abs().pow(2)
    mel = power @ mx.array(_mel_banks(conf.n_mels, padded, conf.fs))
    return mx.log(mx.maximum(mel, LOG_FLOOR))


def lfr(feats: mx.array, frame_counts: Sequence[int], m: int, n: int) -> mx.array:
    """Stack m frames every n (B, T, D) -> (B, ceil(T/n), m*D), per row as FunASR's apply_lfr."""
    B, T, D = feats.shape
    if m == 1 and n == 1:
        return feats
    T_out = max(-(-t // n) for t in frame_counts)
    # output frame i takes padded frames [n*i, n*i + m) where padded[j] = frame[clip(j - (m-1)//2)]
    src = np.arange(T_out)[:, None] * n + np.arange(m)[None, :] - (m - 1) // 2
    counts = np.asarray(frame_counts)[:, None, None]
    src = np.clip(src[None], 0, np.maximum(counts - 1, 0))  # (B, T_out, m), per-row clamp
    gathered = mx.take_along_axis(feats, mx.array(src.reshape(B, -1, 1).astype(np.int32)), axis=1)
    return gathered.reshape(B, T_out, m * D)


class WavFrontend:
    """Waveforms -> padded (B, T_lfr, n_mels * lfr_m) features and their lengths."""

    def __init__(self, conf: FrontendConfig, cmvn: np.ndarray | None = None):
        self.conf = conf
        self.cmvn = None if cmvn is None else mx.array(cmvn)

    def __call__(self, waveforms: Sequence[np.ndarray]) -> tuple[mx.array, mx.array]:
        conf = self.conf
        lengths = [int(len(w)) for w in waveforms]
        B = len(waveforms)
        dim = conf.n_mels * conf.lfr_m
        frame_counts = [num_fbank_frames(n, conf) for n in lengths]
        out_lens = [-(-t // conf.lfr_n) if t else 0 for t in frame_counts]
        T_out = max(out_lens, default=0)
        if T_out == 0:
            return mx.zeros((B, 0, dim)), mx.array(out_lens, dtype=mx.int32)

        regular = [i for i in range(B) if lengths[i] * 1000 >= conf.frame_length * conf.fs]
        short = [i for i in range(B) if i not in set(regular) and frame_counts[i] > 0]
        parts: dict[int, mx.array] = {}  # row index -> its (T, dim) features, unmasked
        if regular:
            n_max = max(lengths[i] for i in regular)
            padded = np.zeros((len(regular), n_max), np.float32)
            for r, i in enumerate(regular):
                padded[r, : lengths[i]] = waveforms[i]
            fb = fbank(mx.array(padded), [lengths[i] for i in regular], conf)
            feats = lfr(fb, [frame_counts[i] for i in regular], conf.lfr_m, conf.lfr_n)
            if len(regular) == B:  # the usual case: one batched graph, no per-row ops
                return self._finish(feats, out_lens, T_out), mx.array(out_lens, dtype=mx.int32)
            for r, i in enumerate(regular):
                parts[i] = feats[r]
        for i in short:  # clips shorter than one window: Kaldi's window shrinks to the clip
            fl = min(conf.frame_length, lengths[i] / conf.fs * 1000)
            w = mx.array(np.asarray(waveforms[i], np.float32)[None])
            fb = fbank(w, [lengths[i]], conf, frame_length_ms=fl)
            parts[i] = lfr(fb, [frame_counts[i]], conf.lfr_m, conf.lfr_n)[0]
        rows = [mx.pad(parts[i][:T_out], [(0, T_out - min(T_out, parts[i].shape[0])), (0, 0)])
                if i in parts else mx.zeros((T_out, dim)) for i in range(B)]
        return self._finish(mx.stack(rows), out_lens, T_out), mx.array(out_lens, dtype=mx.int32)

    def _finish(self, feats: mx.array, out_lens: Sequence[int], T_out: int) -> mx.array:
        """CMVN, then zeros past each row's length (FunASR pads after CMVN)."""
        feats = feats[:, :T_out]
        dim = feats.shape[-1]
        if self.cmvn is not None:
            feats = (feats + self.cmvn[0, :dim]) * self.cmvn[1, :dim]
        mask = mx.arange(T_out)[None, :] < mx.array(out_lens)[:, None]
        return mx.where(mask[..., None], feats, 0.0)


class OnlineFrontend:
    """WavFrontendOnline (fbank -> LFR m, n=1 -> CMVN) fed in chunks, with the official
    frame counts: a non-final chunk emits the LFR frames whose right context it has (all but
    the last (m-1)//2), the final chunk emits the rest with the last frame repeated. Also
    returns each emitted frame's 25 ms of waveform, from which the official decibels come."""

    def __init__(self, conf, cmvn: np.ndarray | None):
        if conf.lfr_n != 1:
            raise ValueError(f"fsmn-vad frontend: lfr_n must be 1, got {conf.lfr_n}")
        self.conf = conf
        self.cmvn = None if cmvn is None else mx.array(cmvn[:, : conf.n_mels * conf.lfr_m])
        self.frame_len = int(conf.fs * conf.frame_length / 1000)
        self.shift = int(conf.fs * conf.frame_shift / 1000)
        self.ctx = (conf.lfr_m - 1) // 2
        self.tail = np.zeros(0, np.float32)  # samples from the next fbank frame's start
        self.n_fbank = 0  # fbank frames so far
        self.hist = None  # the last fbank frames (mx, (k, n_mels)), k <= lfr_m - 1
        self.n_out = 0  # LFR frames emitted so far
        self.wave = np.zeros(0, np.float32)  # samples from frame n_out's start on

    def __call__(self, chunk: np.ndarray, is_final: bool):
        """(LFR+CMVN features (T, n_mels * lfr_m) as mx or None, waveforms (T, frame_len))."""
        buf = np.concatenate([self.tail, chunk]) if len(self.tail) else chunk
        n_new = (len(buf) - self.frame_len) // self.shift + 1 if len(buf) >= self.frame_len else 0
        frames = self.hist  # fbank frames [first, n_fbank) of the file
        first = self.n_fbank - (0 if frames is None else frames.shape[0])
        if n_new:
            used = (n_new - 1) * self.shift + self.frame_len
            fb = fbank(mx.array(buf[None, :used]), [used], self.conf)[0]
            frames = fb if frames is None else mx.concatenate([frames, fb])
            self.n_fbank += n_new
        self.tail = buf[n_new * self.shift :]
        self.wave = np.concatenate([self.wave, chunk]) if len(self.wave) else chunk
        total = self.n_fbank
        # WavFrontendOnline: a non-final call with new frames emits all but the last ctx
        # (their right context is missing); the final call emits the rest
        end = total if is_final else (max(total - self.ctx, self.n_out) if n_new else self.n_out)
        feats = waves = None
        if end > self.n_out:
            m, D = self.conf.lfr_m, self.conf.n_mels
            k = np.arange(self.n_out, end)
            idx = np.clip(k[:, None] + np.arange(m)[None, :] - self.ctx, 0, total - 1) - first
            feats = mx.take(frames, mx.array(idx.reshape(-1).astype(np.int32)), axis=0)
            feats = feats.reshape(len(k), m * D)
            if self.cmvn is not None:
                feats = (feats + self.cmvn[0]) * self.cmvn[1]
            rel = (k - self.n_out)[:, None] * self.shift + np.arange(self.frame_len)[None, :]
            waves = self.wave[rel]
            self.wave = self.wave[len(k) * self.shift :]
            self.n_out = end
        if frames is not None:  # the next call needs frames from n_out - ctx on
            keep = total - max(self.n_out - self.ctx, 0)
            self.hist = frames[frames.shape[0] - keep :] if keep > 0 else None
        return feats, waves
