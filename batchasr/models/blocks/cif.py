"""Continuous integrate-and-fire (CIF): the predictor that decides Paraformer's token count,
the fire positions, the acoustic embeddings, and the token timestamps.

Port of funasr 1.4.16 `CifPredictorV2` (`forward`, `cif_v1`, `cif_wo_hidden_v1`) and
`ts_prediction_lfr6_standard` of funasr's timestamp tools, as `Paraformer.inference` calls them.
Token counts and fire positions are sensitive to the last bit, so everything after the
network's alphas runs in numpy with the official float64/float32 arithmetic (MLX has no float64
on GPUs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from batchasr.models.base import BaseModelArgs
from batchasr.models.blocks.tuning import Tuning, on_cuda


@dataclass
class PredictorArgs(BaseModelArgs):
    """`predictor_conf` (CifPredictorV2)."""

    idim: int
    l_order: int = 1
    r_order: int = 1
    threshold: float = 1.0
    smooth_factor: float = 1.0
    noise_threshold: float = 0.0
    tail_threshold: float = 0.0
    tail_mask: bool = True


# --------------------------------------------------------------------------------------------
class CifPredictorV2(nn.Module):
    """Per-frame firing weights: conv over (l_order, r_order) context -> ReLU -> linear ->
    sigmoid. `conv_form` (Tuning.cif_conv, BATCHASR_CIF_CONV) "matmul" runs the convolution as
    one GEMM over stacked shifted frames: no cuDNN convolution plan per new batch shape;
    "auto" does so where MLX's CUDA backend is the device."""

    conv_form = "auto"
    token_bucket = 1  # the decoder's token axis is padded to a multiple of this (Tuning)

    def __init__(self, args: PredictorArgs):
        super().__init__()
        self.args = args
        k = args.l_order + args.r_order + 1
        # torch Conv1d layout (out, in, k); see sanitize for the MLX (out, k, in) transpose
        self.cif_conv1d = nn.Conv1d(args.idim, args.idim, k)
        self.cif_output = nn.Linear(args.idim, 1)

    def tune(self, tuning: Tuning) -> None:
        self.conv_form = tuning.cif_conv
        self.token_bucket = tuning.token_bucket

    @property
    def matmul(self) -> bool:
        """Whether the convolution runs as one GEMM (see conv_form)."""
        return self.conv_form == "matmul" or (self.conv_form == "auto" and on_cuda())

    def alphas(self, hidden: mx.array, mask: mx.array) -> mx.array:
        """Per-frame firing weights (B, T), zero on padded frames."""
        a = self.args
        x = mx.pad(hidden, [(0, 0), (a.l_order, a.r_order), (0, 0)])
        if self.matmul:
            conv = self.cif_conv1d
            K = conv.weight.shape[1]
            T = x.shape[1] - K + 1
            frames = mx.concatenate([x[:, j : j + T] for j in range(K)], axis=-1)
            w = conv.weight.reshape(conv.weight.shape[0], -1)  # (out, K * in)
            x = nn.relu(frames @ w.T + conv.bias)
        else:
            x = nn.relu(self.cif_conv1d(x))
        alphas = mx.sigmoid(self.cif_output(x))[..., 0]
        alphas = nn.relu(alphas * a.smooth_factor - a.noise_threshold)
        return alphas * mask.astype(alphas.dtype)


@dataclass
class CifResult:
    """Host-side CIF outcome for a batch (all numpy)."""

    alphas: np.ndarray  # (B, T') float32, T' = T (+1 with the tail frame)
    fires: np.ndarray  # (B, T') float32: 1 at fire frames + fractional part of the prefix sum
    token_num: np.ndarray  # (B,) int: tokens per row
    fire_frames: list[np.ndarray]  # per row, the frame indices that fired


def cif_fire(alphas: np.ndarray, lengths: np.ndarray, tail_threshold: float,
             tail_mask: bool = True) -> CifResult:
    """Tail handling, token counts and fire positions exactly as CifPredictorV2 (cif_v1)."""
    alphas = alphas.astype(np.float32)
    B, T = alphas.shape
    if tail_threshold > 0.0:
        tail = np.zeros((B, 1), np.float32) if tail_mask else np.full((B, 1), tail_threshold,
                                                                      np.float32)
        alphas = np.concatenate([alphas, tail], axis=1)
        if tail_mask:  # + tail_threshold at index = length (the first padded / appended slot)
            alphas[np.arange(B), lengths] += np.float32(tail_threshold)
        token_num = np.floor(alphas.sum(axis=-1, dtype=np.float32))
    else:
        token_num = alphas.sum(axis=-1, dtype=np.float32)
    # prefix sums in float64 then cast back, as cif_wo_hidden_v1 does
    prefix = np.cumsum(alphas, axis=1, dtype=np.float64).astype(np.float32)
    floor = np.floor(prefix)
    prev = np.concatenate([np.zeros((B, 1), np.float32), floor[:, :-1]], axis=1)
    fired = (floor - prev) > 0
    fires = fired.astype(np.float32) + prefix - floor
    return CifResult(alphas, fires, np.round(token_num).astype(np.int64),
                     [np.flatnonzero(fired[b]) for b in range(B)])


def cif_embeddings(hidden: mx.array, cif: CifResult, bucket: int = 1) -> mx.array:
    """Acoustic embeddings (B, max tokens, D) from hidden (B, T', D), as cif_v1 builds them:
    differences of the float32 prefix sums of alpha*hidden at fire frames, the frame that
    crosses a boundary split by its fractional remainder. ``bucket``: the token axis is padded
    with zero rows to a multiple of it (fewer distinct decoder shapes)."""
    B, Tp, D = hidden.shape
    n_out = int(cif.token_num.max()) if B else 0
    if n_out <= 0:
        return mx.zeros((B, 0, D), hidden.dtype)
    n_fired, n_out = n_out, -(-n_out // bucket) * bucket
    alphas = mx.array(cif.alphas)
    prefix_hidden = mx.cumsum(alphas[..., None] * hidden, axis=1)
    remains = cif.fires - np.floor(cif.fires)
    idx = np.zeros((B, n_out), np.int32)
    prev_idx = np.zeros((B, n_out), np.int32)
    rem = np.zeros((B, n_out), np.float32)
    prev_rem = np.zeros((B, n_out), np.float32)
    has_prev = np.zeros((B, n_out), np.float32)
    valid = np.zeros((B, n_out), np.float32)
    for b, frames in enumerate(cif.fire_frames):
        frames = frames[:n_fired]
        k = len(frames)
        idx[b, :k] = frames
        rem[b, :k] = remains[b, frames]
        valid[b, :k] = 1.0
        if k > 1:
            prev_idx[b, 1:k] = frames[:-1]
            prev_rem[b, 1:k] = remains[b, frames[:-1]]
            has_prev[b, 1:k] = 1.0
    take = lambda a, i: mx.take_along_axis(a, mx.array(i)[..., None], axis=1)
    at_fire, at_prev = take(prefix_hidden, idx), take(prefix_hidden, prev_idx)
    h_fire, h_prev = take(hidden, idx), take(hidden, prev_idx)
    hp = mx.array(has_prev)[..., None]
    frames = (at_fire - at_prev * hp + (mx.array(prev_rem)[..., None] * h_prev) * hp
              - mx.array(rem)[..., None] * h_fire)
    return frames * mx.array(valid)[..., None]


START_END_THRESHOLD = 5  # frames
MAX_TOKEN_DURATION = 12  # frames
FORCE_TIME_SHIFT = -1.5  # frames
TIME_RATE = 10.0 * 6 / 1000 / 1  # seconds per LFR frame (10 ms x lfr_n 6, upsample_rate 1)
FIRE_THRESHOLD = np.float32(1.0 - 1e-4)


def _sequential_cif(alphas: np.ndarray) -> np.ndarray:
    """timestamp_tools.cif_wo_hidden: float32 integrate-and-fire subtracting the threshold."""
    return _sequential_cif_rows([alphas])[0]


def _sequential_cif_rows(rows: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``_sequential_cif`` of each 1-D float32 curve, all rows at once: one step per frame
    over a vector of rows, the same float32 additions, comparisons and subtractions per
    element as the official loop does one curve at a time (numpy rounds each array element
    as it rounds a float32 scalar), so each row is bit-identical to its own loop."""
    if not rows:
        return []
    T = max(len(r) for r in rows)
    curves = np.zeros((T, len(rows)), np.float32)  # frame-major: each step reads one row
    for b, r in enumerate(rows):
        curves[: len(r), b] = r
    out = np.empty_like(curves)
    integrate = np.zeros(len(rows), np.float32)
    for t in range(T):
        integrate += curves[t]
        out[t] = integrate
        np.subtract(integrate, FIRE_THRESHOLD, out=integrate, where=integrate >= FIRE_THRESHOLD)
    return [out[: len(r), b].copy() for b, r in enumerate(rows)]


def token_timestamps(fires: np.ndarray, alphas: np.ndarray, n_tokens: int,
                     time_rate: float = TIME_RATE) -> list[list[int]]:
    """[[start_ms, end_ms], ...] per token, as funasr 1.4.16 computes them.

    Paraformer.inference passes (fires, alphas) into ts_prediction_lfr6_standard's
    (us_alphas, us_peaks): the fire test runs on the alphas, and when it does not find
    n_tokens + 1 fires (the usual case), the fires curve is rescaled to sum to n_tokens + 1
    and re-fired sequentially. Kept as the official code does it, argument order included.
    ``time_rate``: seconds per frame of the curve (SeACo's 3x upsampled curve: TIME_RATE / 3).
    """
    return token_timestamps_rows([fires], [alphas], [n_tokens], time_rate)[0]


def token_timestamps_rows(fires: Sequence[np.ndarray], alphas: Sequence[np.ndarray],
                          n_tokens: Sequence[int], time_rate: float = TIME_RATE
                          ) -> list[list[list[int]]]:
    """``token_timestamps`` of each row of a batch; the rows that re-fire do it together
    (``_sequential_cif_rows``), each giving what it gives alone."""
    out: list[list[list[int]]] = [[] for _ in n_tokens]
    fire_places: dict[int, np.ndarray] = {}  # row -> frames where it fires
    refire: dict[int, np.ndarray] = {}  # row -> its rescaled curve, fired again below
    for b, (f, a, n) in enumerate(zip(fires, alphas, n_tokens)):
        if n == 0:
            continue
        peaks = a.astype(np.float32)  # the official `peaks`
        fire_place = np.flatnonzero(peaks >= FIRE_THRESHOLD) + FORCE_TIME_SHIFT
        if len(fire_place) != n + 1:
            curve = f.astype(np.float32)  # the official `alphas`
            total = np.float32(curve.sum(dtype=np.float32))
            refire[b] = (curve / np.float32(total / np.float32(n + 1))).astype(np.float32)
        else:
            fire_places[b] = fire_place
    for b, peaks in zip(refire, _sequential_cif_rows(list(refire.values()))):
        fire_places[b] = np.flatnonzero(peaks >= FIRE_THRESHOLD) + FORCE_TIME_SHIFT
    for b, fire_place in fire_places.items():
        if len(fire_place):  # the frames of the peaks it fired on
            frames = len(fires[b]) if b in refire else len(alphas[b])
            out[b] = _spans_ms(fire_place.tolist(), frames, n_tokens[b], time_rate)
    return out


def _spans_ms(fire_place: list[float], num_frames: int, n_tokens: int,
              TIME_RATE: float) -> list[list[int]]:  # noqa: N803 (the official name)
    """The official spans from the fire places (Python floats: the same doubles as numpy's,
    a fraction of the cost per operation)."""
    spans: list[list[float]] = []
    is_token: list[bool] = []
    if fire_place[0] > START_END_THRESHOLD:
        spans.append([0.0, fire_place[0] * TIME_RATE])
        is_token.append(False)
    for i in range(min(len(fire_place) - 1, n_tokens)):
        is_token.append(True)
        if fire_place[i + 1] - fire_place[i] <= MAX_TOKEN_DURATION:
            spans.append([fire_place[i] * TIME_RATE, fire_place[i + 1] * TIME_RATE])
        else:  # cut long tokens; the rest is silence
            split = fire_place[i] + MAX_TOKEN_DURATION
            spans.append([fire_place[i] * TIME_RATE, split * TIME_RATE])
            spans.append([split * TIME_RATE, fire_place[i + 1] * TIME_RATE])
            is_token.append(False)
    if num_frames - fire_place[-1] > START_END_THRESHOLD:
        end = (num_frames + fire_place[-1]) * 0.5
        spans[-1][1] = end * TIME_RATE
        spans.append([end * TIME_RATE, num_frames * TIME_RATE])
        is_token.append(False)
    elif spans:
        spans[-1][1] = num_frames * TIME_RATE
    return [[int(s * 1000), int(e * 1000)] for (s, e), tok in zip(spans, is_token) if tok]
