"""fsmn-vad's per-frame decision (the official GetFrameState) for a whole chunk at once, exact.

`Endpointer.frame_state` decides one frame in Python floats: speech iff
exp(log(1 - p_sil)) >= exp(log(p_sil) * ratio) + threshold, then an SNR test against a running
noise average. Here numpy estimates both sides for every frame and decides wherever they are
further apart than any rounding could move them (numpy's exp/log may differ from `math`'s by
a few ulp; the margin is a million times that); the frames too close to call, and the noise
average's recurrence, are computed with `math` exactly as the frame loop does. The result is
the frame loop's, frame for frame (tests compare the two on random and adversarial input).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

MARGIN = 1e-9  # relative; the estimates' error is below 1e-14


class FrameStates(NamedTuple):
    speech: np.ndarray  # (T,) bool: the frame is speech
    updates: np.ndarray  # frames that moved the noise average, in order
    averages: list[float]  # the noise average before the first update, then after each

    @property
    def noise_after(self) -> float:
        return self.averages[-1]

    def noise_before(self, frame: int) -> float:
        """The noise average as the frame loop has it before deciding ``frame``."""
        return self.averages[int(np.searchsorted(self.updates, frame))]


def speech_flags(scores: np.ndarray, decibels: np.ndarray, *, speech_noise_thres: float,
                 speech_2_noise_ratio: float, snr_thres: float, decibel_thres: float,
                 noise_frames: int, noise_average: float) -> FrameStates:
    """scores: (T,) or (T, k) silence posteriors (float32 or float64), decibels (T,): the
    frames' states and the noise average along them."""
    scores = np.asarray(scores, np.float64)
    if scores.ndim == 2:  # Python's sum over the ids, left to right
        p = scores[:, 0].copy()
        for j in range(1, scores.shape[1]):
            p += scores[:, j]
    else:
        p = scores
    db = np.asarray(decibels, np.float64)
    below = db < decibel_thres  # silence, and the noise average is left alone
    with np.errstate(all="ignore"):
        a = 1.0 - p
        lhs = np.exp(np.where(a > 0.0, np.log(np.where(a > 0.0, a, 1.0)), -np.inf))
        rhs = np.exp(np.where(p > 0.0, np.log(np.where(p > 0.0, p, 1.0)), -np.inf)
                     * speech_2_noise_ratio) + speech_noise_thres
        diff = lhs - rhs
        sure = np.abs(diff) > MARGIN * np.maximum(1.0, np.maximum(np.abs(lhs), np.abs(rhs)))
    by_prob = diff > 0.0
    for i in np.flatnonzero(~sure & ~below).tolist():  # too close to call: as the frame loop
        by_prob[i] = posterior_says_speech(float(p[i]), speech_2_noise_ratio, speech_noise_thres)
    candidates = np.flatnonzero(by_prob & ~below)
    updates = np.flatnonzero(~by_prob & ~below)
    # the noise average's recurrence, over the silent frames, in Python floats
    averages = [noise_average]
    avg = noise_average
    for d in db[updates].tolist():
        avg = d if avg < -99.9 else (d + avg * (noise_frames - 1)) / noise_frames
        averages.append(avg)
    speech = np.zeros(len(p), bool)
    if len(candidates):
        noise_at = np.asarray(averages)[np.searchsorted(updates, candidates)]
        d = db[candidates]
        speech[candidates] = ((d - noise_at) >= snr_thres) & (d >= decibel_thres)
    return FrameStates(speech, updates, averages)


def posterior_says_speech(sum_score: float, speech_2_noise_ratio: float,
                          speech_noise_thres: float) -> bool:
    """GetFrameState's test on one frame's silence posterior, in its Python floats:
    exp(log(1 - p)) >= exp(log(p) * ratio) + threshold. (The official code raises on p of
    exactly 0 or 1; here log(0) counts as -inf.)"""
    noise_prob = _log(sum_score) * speech_2_noise_ratio
    speech_prob = _log(1.0 - sum_score)
    return math.exp(speech_prob) >= math.exp(noise_prob) + speech_noise_thres


def _log(x: float) -> float:
    return math.log(x) if x > 0.0 else -math.inf
