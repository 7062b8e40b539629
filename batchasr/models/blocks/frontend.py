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

The settings (`FrontendConfig`, am.mvn, window sizes, mel banks) live in
batchasr.models.blocks.kaldi_fbank, with the numpy fbank and WavFrontendOnline of fsmn-vad.
"""
from __future__ import annotations

import functools
import threading
from typing import Sequence

import mlx.core as mx
import numpy as np

from batchasr.models.blocks.kaldi_fbank import (  # noqa: F401 (the frontend's settings, shared)
    LOG_FLOOR,
    WAVEFORM_SCALE,
    FrontendConfig,
    load_cmvn,
    mel_banks,
    num_fbank_frames,
    num_lfr_frames,
    window_function,
    window_sizes,
)


def fbank(waveforms: mx.array, lengths: Sequence[int], conf: FrontendConfig,
          frame_length_ms: float | None = None, dft: str = "fft",
          n_frames: int | None = None) -> mx.array:
    """Log mel filterbank of padded waveforms (B, N) in [-1, 1] -> (B, T, n_mels).

    Frames past a row's own frame count hold garbage; callers mask them with the lengths.
    ``dft``: the power spectrum by FFT ("fft"), or by one GEMM with the real DFT's cosine and
    sine rows ("matmul", BATCHASR_DFT): the same values within float32 rounding, and no FFT
    plan per new batch shape on GPUs. ``n_frames``: compute this many frames (at least the
    longest row's; the waveforms must be wide enough), so that the shapes follow a bucket.
    """
    size, shift, padded = window_sizes(conf.fs, frame_length_ms or conf.frame_length,
                                        conf.frame_shift)
    B, N = waveforms.shape
    T = max(1 + (max(lengths) - size) // shift, 0) if max(lengths) >= size else 0
    if T == 0:
        return mx.zeros((B, 0, conf.n_mels), mx.float32)
    if n_frames is not None:
        T = max(T, n_frames)
        if (T - 1) * shift + size > N:
            raise ValueError(f"{T} frames need {(T - 1) * shift + size} samples, not {N}")
    x = waveforms.astype(mx.float32)
    if conf.upsacle_samples:
        x = x * WAVEFORM_SCALE
    # (B, T, size) overlapping frames as a strided view: faster than a gather on CPUs
    frames = mx.as_strided(mx.contiguous(x), (B, T, size), (N, shift, 1))
    frames = frames - mx.mean(frames, axis=-1, keepdims=True)  # remove_dc_offset
    prev = mx.concatenate([frames[..., :1], frames[..., :-1]], axis=-1)
    frames = frames - 0.97 * prev  # pre-emphasis, first sample replicated
    frames = frames * mx.array(window_function(conf.window, size))
    if dft == "matmul":
        re_im = frames @ mx.array(dft_matrix(size, padded))  # (B, T, 2 * bins)
        bins = padded // 2 + 1
        power = mx.square(re_im[..., :bins]) + mx.square(re_im[..., bins:])
    else:
        spectrum = mx.fft.rfft(frames, n=padded, axis=-1)
        power = mx.square(mx.abs(spectrum))  # |X|^2, as torchaudio's abs().pow(2)
    mel = power @ mx.array(mel_banks(conf.n_mels, padded, conf.fs))
    return mx.log(mx.maximum(mel, LOG_FLOOR))


@functools.lru_cache(maxsize=8)
def dft_matrix(size: int, n_fft: int) -> np.ndarray:
    """(size, 2 * (n_fft // 2 + 1)) float32: the real and imaginary parts of the n_fft-point
    real DFT of a frame of ``size`` samples zero-padded to n_fft (cosines, then minus sines),
    computed in float64."""
    k = np.arange(n_fft // 2 + 1)
    angle = 2.0 * np.pi * np.outer(np.arange(size), k) / n_fft
    return np.concatenate([np.cos(angle), -np.sin(angle)], axis=1).astype(np.float32)


UPLOADS = ("inline", "fill", "stream")

# MLX's CUDA buffer cache hands out a cached buffer up to two 16 KiB pages larger than asked
# for, device and managed alike: a buffer three pages larger than any same-shape kernel
# output is never swapped with one.
CACHE_SPACING = 3 * 16384 // 4  # float32 elements


def filled_batch(rows: Sequence[np.ndarray], width: int) -> mx.array:
    """(len(rows), width) float32: each row's samples from its start, zeros after, written
    by numpy into a zeroed MLX buffer made on the CPU stream (host-resident managed memory
    on CUDA), so that the batch is copied once and without the GIL held."""
    n = len(rows) * width
    flat = mx.zeros((n + CACHE_SPACING,), mx.float32, stream=mx.cpu)
    mx.eval(flat)
    host = np.asarray(memoryview(flat))[:n].reshape(len(rows), width)
    for r, w in enumerate(rows):
        host[r, : len(w)] = w
    return flat[:n].reshape(len(rows), width)


def lfr(feats: mx.array, frame_counts: Sequence[int], m: int, n: int,
        T_out: int | None = None) -> mx.array:
    """Stack m frames every n (B, T, D) -> (B, ceil(T/n), m*D), per row as FunASR's apply_lfr.
    ``T_out``: this many output frames (rows past a row's own count repeat its last frame)."""
    B, T, D = feats.shape
    if m == 1 and n == 1:
        return feats if T_out is None else feats[:, :T_out]
    T_out = max([-(-t // n) for t in frame_counts] + [T_out or 0])
    # output frame i takes padded frames [n*i, n*i + m) where padded[j] = frame[clip(j - (m-1)//2)]
    src = np.arange(T_out)[:, None] * n + np.arange(m)[None, :] - (m - 1) // 2
    counts = np.asarray(frame_counts)[:, None, None]
    src = np.clip(src[None], 0, np.maximum(counts - 1, 0))  # (B, T_out, m), per-row clamp
    gathered = mx.take_along_axis(feats, mx.array(src.reshape(B, -1, 1).astype(np.int32)), axis=1)
    return gathered.reshape(B, T_out, m * D)


class WavFrontend:
    """Waveforms -> padded (B, T_lfr, n_mels * lfr_m) features and their lengths.

    ``upload`` (``BATCHASR_UPLOAD``) says how a batch's padded waveforms reach the device:
    "inline" (the default): padded into a host array, then copied by ``mx.array`` (holding
    the GIL) into CUDA managed memory, which the frontend's first kernel reads in place;
    "fill": the rows copied straight into a zeroed MLX buffer made on the CPU stream (one
    copy instead of two, numpy's, which lets other threads run), sized apart from the
    kernel outputs of the same shape so that MLX's buffer cache never hands a device buffer
    to the upload (it then copies the old contents to managed memory first) nor the upload's
    managed buffer to a kernel; "stream": "inline", then copied to device memory on a stream
    of its own."""

    def __init__(self, conf: FrontendConfig, cmvn: np.ndarray | None = None, *,
                 upload: str = "inline", dft: str = "fft"):
        if upload not in UPLOADS:
            raise ValueError(f"upload must be one of {', '.join(UPLOADS)}, not {upload!r}")
        if dft not in ("fft", "matmul"):
            raise ValueError(f"dft must be 'fft' or 'matmul', not {dft!r}")
        self.dft = dft
        self.conf = conf
        self.cmvn = None if cmvn is None else mx.array(cmvn)
        self.upload = upload
        self._streams: dict[int, mx.Stream] = {}  # per thread: MLX streams are per thread
        self._host = threading.local()  # per thread: the padded batch's host array

    def _host_batch(self, rows: int, n: int) -> np.ndarray:
        """A (rows, n) float32 host array to pad a batch into, reused from batch to batch
        (per thread): a fresh 60 MB array per batch costs its page faults each time, 100 ms
        on a VM, longer than the copy. mx.array copies it, so it is free again at once."""
        buf = getattr(self._host, "buf", None)
        if buf is None or buf.size < rows * n:
            buf = self._host.buf = np.empty(rows * n, np.float32)
        return buf[: rows * n].reshape(rows, n)

    def _device_array(self, host: np.ndarray) -> mx.array:
        x = mx.array(host)
        if self.upload != "stream":
            return x
        tid = threading.get_ident()
        stream = self._streams.get(tid)
        if stream is None:
            stream = self._streams[tid] = mx.new_stream(mx.default_device())
        return mx.multiply(x, 1.0, stream=stream)  # a copy in device memory

    def __call__(self, waveforms: Sequence[np.ndarray], *,
                 frame_bucket: int = 1) -> tuple[mx.array, mx.array]:
        """``frame_bucket``: the output frames padded to a multiple of it, and every
        intermediate shape with them (the samples, the fbank frames), so that a GPU meets
        each batch shape again (FFT plans, GEMM heuristics); the features are the same, zeros
        past each row's length."""
        conf = self.conf
        lengths = [int(len(w)) for w in waveforms]
        B = len(waveforms)
        dim = conf.n_mels * conf.lfr_m
        frame_counts = [num_fbank_frames(n, conf) for n in lengths]
        out_lens = [-(-t // conf.lfr_n) if t else 0 for t in frame_counts]
        T_out = max(out_lens, default=0)
        if T_out == 0:
            return mx.zeros((B, 0, dim)), mx.array(out_lens, dtype=mx.int32)
        T_out = -(-T_out // frame_bucket) * frame_bucket
        bucketed = frame_bucket > 1

        regular = [i for i in range(B) if lengths[i] * 1000 >= conf.frame_length * conf.fs]
        short = [i for i in range(B) if i not in set(regular) and frame_counts[i] > 0]
        parts: dict[int, mx.array] = {}  # row index -> its (T, dim) features, unmasked
        if regular:
            n_max = max(lengths[i] for i in regular)
            n_frames = None
            if bucketed:  # frames for every output frame of the bucket, and samples for them
                size, shift, _ = window_sizes(conf.fs, conf.frame_length, conf.frame_shift)
                n_frames = T_out * conf.lfr_n
                n_max = max(n_max, (n_frames - 1) * shift + size)
            regular_waves = [waveforms[i] for i in regular]
            if self.upload == "fill":
                batch = filled_batch(regular_waves, n_max)
            else:
                padded = self._host_batch(len(regular), n_max)
                for r, w in enumerate(regular_waves):
                    padded[r, : len(w)] = w
                    padded[r, len(w):] = 0.0
                batch = self._device_array(padded)
            fb = fbank(batch, [lengths[i] for i in regular], conf, dft=self.dft,
                       n_frames=n_frames)
            feats = lfr(fb, [frame_counts[i] for i in regular], conf.lfr_m, conf.lfr_n,
                        T_out if bucketed else None)
            if len(regular) == B:  # the usual case: one batched graph, no per-row ops
                return self._finish(feats, out_lens, T_out), mx.array(out_lens, dtype=mx.int32)
            for r, i in enumerate(regular):
                parts[i] = feats[r]
        for i in short:  # clips shorter than one window: Kaldi's window shrinks to the clip
            fl = min(conf.frame_length, lengths[i] / conf.fs * 1000)
            w = mx.array(np.asarray(waveforms[i], np.float32)[None])
            fb = fbank(w, [lengths[i]], conf, frame_length_ms=fl, dft=self.dft)
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
