"""The fsmn-vad endpoint state machine: per-10 ms-frame silence posteriors -> speech segments.

A line-by-line port of funasr 1.4.16 `funasr.models.fsmn_vad_streaming.model`
(WindowDetector, Stats and FsmnVADStreaming's Detect*/On* methods) with the waveform buffers
reduced to the frame counters that decide times, and its options (`VADXOptions`, the
`model_conf` of config.yaml). Sequential per frame, on the host in Python, except where a run
of frames only moves counters (taken whole, with the same end state). History the official
code would release is released, so a file of any length keeps a bounded state.

Size: one state machine, ported method by method from the official class, and the fast path
that must change exactly the same fields; kept together so that both are read side by side.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from batchasr.audio.decode import SAMPLE_RATE
from batchasr.models.base import BaseModelArgs
from batchasr.models.blocks.fsmn_frames import FrameStates, posterior_says_speech, speech_flags
from batchasr.models.blocks.vad import SpeechSegment

START_NOT_DETECTED, IN_SPEECH, END_DETECTED = 1, 2, 3  # VadStateMachine
SIL, SPEECH = 0, 1  # FrameState
SPEECH2SPEECH, SPEECH2SIL, SIL2SIL, SIL2SPEECH = 0, 1, 2, 3  # AudioChangeState


@dataclass
class FsmnVADOptions(BaseModelArgs):
    """`model_conf` of config.yaml (VADXOptions), official names; times in ms."""

    sample_rate: int = SAMPLE_RATE
    detect_mode: int = 1  # 1: multiple utterances (0, single utterance, is not supported)
    snr_mode: int = 0
    max_end_silence_time: int = 800
    max_start_silence_time: int = 3000
    do_start_point_detection: bool = True
    do_end_point_detection: bool = True
    window_size_ms: int = 200
    sil_to_speech_time_thres: int = 150
    speech_to_sil_time_thres: int = 150
    speech_2_noise_ratio: float = 1.0
    do_extend: int = 1
    lookback_time_start_point: int = 200
    lookahead_time_end_point: int = 100
    max_single_segment_time: int = 60000
    snr_thres: float = -100.0
    noise_frame_num_used_for_snr: int = 100
    decibel_thres: float = -100.0
    speech_noise_thres: float = 0.6
    fe_prior_thres: float = 1e-4
    silence_pdf_num: int = 1
    sil_pdf_ids: Sequence[int] = (0,)
    frame_in_ms: int = 10
    frame_length_ms: int = 25

    def __post_init__(self):
        if self.detect_mode != 1:
            raise ValueError("fsmn-vad: only detect_mode 1 (multiple utterances) is supported")
        if len(self.sil_pdf_ids) != self.silence_pdf_num or not self.sil_pdf_ids:
            raise ValueError("fsmn-vad: sil_pdf_ids must list silence_pdf_num (>= 1) classes")


@dataclass
class _SpeechBuf:  # E2EVadSpeechBufWithDoa, times only
    start_ms: int = 0
    end_ms: int = 0
    contain_seg_start_point: bool = False
    contain_seg_end_point: bool = False


class Endpointer:
    """The official per-frame endpoint detection (WindowDetector + Stats + FsmnVADStreaming's
    Detect*/On* methods), with the waveform buffers reduced to the frame counters that decide
    times. Frames are absolute indices; scores and decibels before `_drop` are released where
    the official DropCachedFrames releases them, and reported segments are dropped too, so a
    file of any length keeps a bounded state."""

    bulk = True  # decide frames together and take long runs whole (False: frame by frame)

    def __init__(self, opts: FsmnVADOptions):
        self.o = opts
        fr = opts.frame_in_ms
        # WindowDetector
        self.win_size = int(opts.window_size_ms / fr)
        self.sil_to_speech_frmcnt = int(opts.sil_to_speech_time_thres / fr)
        self.speech_to_sil_frmcnt = int(opts.speech_to_sil_time_thres / fr)
        self._reset_window()
        # Stats
        self.data_buf_start_frame = 0
        self.frm_cnt = 0
        self.latest_confirmed_speech_frame = 0
        self.lastest_confirmed_silence_frame = -1
        self.continous_silence_frame_count = 0
        self.state = START_NOT_DETECTED
        self.confirmed_start_frame = -1
        self.confirmed_end_frame = -1
        self.number_end_time_detected = 0
        self.noise_average_decibel = -100.0
        self.output: list[_SpeechBuf] = []
        self.output_offset = 0
        self.max_end_sil_frame_cnt_thresh = (opts.max_end_silence_time
                                             - opts.speech_to_sil_time_thres)
        self.speech_noise_thres = opts.speech_noise_thres
        self.latency_start = self.win_size + (
            int(opts.lookback_time_start_point / fr) if opts.do_extend else 0)
        self.max_seg_frames = opts.max_single_segment_time / fr
        self.scores: list[float] = []  # silence posterior per frame, absolute index
        self.decibel: list[float] = []
        self._drop = 0  # frames before this index are no longer needed

    # ---- WindowDetector ----
    def _reset_window(self):
        self.win_state = [0] * self.win_size
        self.win_sum = 0
        self.cur_win_pos = 0
        self.pre_frame_speech = False

    def _window_detect(self, speech: bool) -> int:
        s = 1 if speech else 0
        self.win_sum += s - self.win_state[self.cur_win_pos]
        self.win_state[self.cur_win_pos] = s
        self.cur_win_pos = (self.cur_win_pos + 1) % self.win_size
        if not self.pre_frame_speech and self.win_sum >= self.sil_to_speech_frmcnt:
            self.pre_frame_speech = True
            return SIL2SPEECH
        if self.pre_frame_speech and self.win_sum <= self.speech_to_sil_frmcnt:
            self.pre_frame_speech = False
            return SPEECH2SIL
        return SPEECH2SPEECH if self.pre_frame_speech else SIL2SIL

    # ---- frame scoring ----
    def add_frames(self, sil_probs: np.ndarray, decibels: np.ndarray) -> None:
        """Posteriors of the silence classes (T, len(sil_pdf_ids)) and decibels (T,) of the
        next frames (ComputeScores / ComputeDecibel)."""
        self.scores.extend(sil_probs[:, 0].tolist() if sil_probs.shape[1] == 1
                           else sil_probs.tolist())
        self.decibel.extend(decibels.tolist())
        self.frm_cnt += len(sil_probs)

    def frame_state(self, t: int) -> int:
        """GetFrameState: speech iff exp(log(1 - p_sil)) >= exp(log(p_sil)) + threshold.
        (The official code raises on p_sil of exactly 0 or 1; here log(0) counts as -inf.)"""
        o = self.o
        i = t - self._drop
        if i >= len(self.decibel):
            return SIL
        cur_decibel = self.decibel[i]
        cur_snr = cur_decibel - self.noise_average_decibel
        if cur_decibel < o.decibel_thres:
            return SIL
        sum_score = self.scores[i] if len(o.sil_pdf_ids) == 1 else sum(self.scores[i])
        if posterior_says_speech(sum_score, o.speech_2_noise_ratio, self.speech_noise_thres):
            if cur_snr >= o.snr_thres and cur_decibel >= o.decibel_thres:
                return SPEECH
            return SIL
        if self.noise_average_decibel < -99.9:
            self.noise_average_decibel = cur_decibel
        else:
            n = o.noise_frame_num_used_for_snr
            self.noise_average_decibel = (cur_decibel + self.noise_average_decibel * (n - 1)) / n
        return SIL

    def detect(self, n_new: int, is_final: bool) -> None:
        """DetectCommonFrames / DetectLastFrames over the last n_new frames, then release
        the history the official DropCachedFrames releases. The frames' states are decided
        together (`fsmn_frames`) and the long runs in which the state machine only moves
        counters are taken whole (`_detect_runs`); the rest go frame by frame, as the
        official.
        With ``bulk`` off, every frame goes through `frame_state` and `_detect_one`."""
        if self.state == END_DETECTED:
            pass
        elif not self.bulk:
            self._frame_loop(n_new, is_final)
        else:
            first = self.frm_cnt - n_new
            states = self._frame_states(first, n_new)
            speech = states.speech
            if self.o.fe_prior_thres >= math.fabs(1.0):  # _detect_one's prior test
                speech = np.zeros_like(speech)
            j = _detect_runs(self, speech, first, is_final)
            if j < n_new:  # history released past the next frame: the frame loop from there
                self.noise_average_decibel = states.noise_before(j)
                self._frame_loop(n_new - j, is_final)
            else:
                self.noise_average_decibel = states.noise_after
        self._release(self.data_buf_start_frame)

    def _frame_loop(self, n: int, is_final: bool) -> None:
        """The official loop over the last n frames: each decided, then detected."""
        for i in range(n - 1, -1, -1):
            t = self.frm_cnt - 1 - i
            self._detect_one(self.frame_state(t), t, is_final and i == 0)

    def _frame_states(self, first: int, n: int) -> FrameStates:
        """`frame_state` of frames [first, first + n) at once (the same states, and the same
        noise average along them), as long as no history before a frame is released."""
        o = self.o
        i = first - self._drop
        return speech_flags(
            np.asarray(self.scores[i : i + n], np.float64),
            np.asarray(self.decibel[i : i + n], np.float64),
            speech_noise_thres=self.speech_noise_thres,
            speech_2_noise_ratio=o.speech_2_noise_ratio, snr_thres=o.snr_thres,
            decibel_thres=o.decibel_thres, noise_frames=o.noise_frame_num_used_for_snr,
            noise_average=self.noise_average_decibel)

    def take_segments(self, is_final: bool) -> list[SpeechSegment]:
        """Segments to report after a chunk (non-streaming input: complete ones, all at the end)."""
        out = []
        for i in range(self.output_offset, len(self.output)):
            seg = self.output[i]
            if not is_final and not (seg.contain_seg_start_point and seg.contain_seg_end_point):
                continue
            out.append((seg.start_ms, seg.end_ms))
            self.output_offset += 1
        done = min(self.output_offset, len(self.output) - 1)  # the last one stays: it is
        if done > 0:  # what the next frames extend or compare with
            del self.output[:done]
            self.output_offset -= done
        return out

    def _release(self, frame: int) -> None:
        if frame > self._drop:
            del self.scores[: frame - self._drop]
            del self.decibel[: frame - self._drop]
            self._drop = frame

    # ---- the state machine (FsmnVADStreaming.DetectOneFrame and its callbacks) ----
    def _detect_one(self, cur_frm_state: int, cur_frm_idx: int, is_final_frame: bool) -> None:
        o = self.o
        speech = cur_frm_state == SPEECH and math.fabs(1.0) > o.fe_prior_thres
        change = self._window_detect(speech)
        fr = o.frame_in_ms
        if change == SIL2SPEECH:
            self.continous_silence_frame_count = 0
            if self.state == START_NOT_DETECTED:
                start_frame = max(self.data_buf_start_frame, cur_frm_idx - self.latency_start)
                self._on_voice_start(start_frame)
                self.state = IN_SPEECH
                for t in range(start_frame + 1, cur_frm_idx + 1):
                    self._on_voice_detected(t)
            elif self.state == IN_SPEECH:
                for t in range(self.latest_confirmed_speech_frame + 1, cur_frm_idx):
                    self._on_voice_detected(t)
                self._continue_speech(cur_frm_idx, is_final_frame)
        elif change == SPEECH2SIL:
            self.continous_silence_frame_count = 0
            if self.state == IN_SPEECH:
                self._continue_speech(cur_frm_idx, is_final_frame)
        elif change == SPEECH2SPEECH:
            self.continous_silence_frame_count = 0
            if self.state == IN_SPEECH:
                self._continue_speech(cur_frm_idx, is_final_frame)
        elif change == SIL2SIL:
            self.continous_silence_frame_count += 1
            if self.state == START_NOT_DETECTED:
                if is_final_frame and self.number_end_time_detected == 0:
                    for t in range(self.lastest_confirmed_silence_frame + 1, cur_frm_idx):
                        self._on_silence_detected(t)
                    self._on_voice_start(0, fake_result=True)
                    self._on_voice_end(0, fake_result=True, is_last_frame=False)
                    self.state = END_DETECTED
                elif cur_frm_idx >= self.latency_start:
                    self._on_silence_detected(cur_frm_idx - self.latency_start)
            elif self.state == IN_SPEECH:
                if self.continous_silence_frame_count * fr >= self.max_end_sil_frame_cnt_thresh:
                    lookback = int(self.max_end_sil_frame_cnt_thresh / fr)
                    if o.do_extend:
                        lookback -= int(o.lookahead_time_end_point / fr)
                        lookback -= 1
                        lookback = max(0, lookback)
                    self._on_voice_end(cur_frm_idx - lookback, False, False)
                    self.state = END_DETECTED
                elif cur_frm_idx - self.confirmed_start_frame + 1 > self.max_seg_frames:
                    self._on_voice_end(cur_frm_idx, False, False)
                    self.state = END_DETECTED
                elif o.do_extend and not is_final_frame:
                    if self.continous_silence_frame_count <= int(o.lookahead_time_end_point / fr):
                        self._on_voice_detected(cur_frm_idx)
                else:
                    self._maybe_end_if_last_frame(is_final_frame, cur_frm_idx)
        if self.state == END_DETECTED:  # multiple-utterance mode: start over
            self._reset_detection()

    def _continue_speech(self, cur_frm_idx: int, is_final_frame: bool) -> None:
        if cur_frm_idx - self.confirmed_start_frame + 1 > self.max_seg_frames:
            self._on_voice_end(cur_frm_idx, False, False)
            self.state = END_DETECTED
        elif not is_final_frame:
            self._on_voice_detected(cur_frm_idx)
        else:
            self._maybe_end_if_last_frame(is_final_frame, cur_frm_idx)

    def _reset_detection(self) -> None:
        self.continous_silence_frame_count = 0
        self.latest_confirmed_speech_frame = 0
        self.lastest_confirmed_silence_frame = -1
        self.confirmed_start_frame = -1
        self.confirmed_end_frame = -1
        self.state = START_NOT_DETECTED
        self._reset_window()
        if self.output:
            self._release(int(self.output[-1].end_ms / self.o.frame_in_ms))

    def _pop_till(self, frame_idx: int) -> None:  # PopDataBufTillFrame
        self.data_buf_start_frame = max(self.data_buf_start_frame, frame_idx)

    def _pop_to_output(self, start_frm: int, first_is_start: bool, last_is_end: bool) -> None:
        """PopDataToOutputBuf for one frame: open a segment or move the current one's end."""
        self._pop_till(start_frm)
        fr = self.o.frame_in_ms
        if not self.output or first_is_start:
            self.output.append(_SpeechBuf(start_frm * fr, start_frm * fr))
        seg = self.output[-1]
        self.data_buf_start_frame += 1
        seg.end_ms = (start_frm + 1) * fr
        if first_is_start:
            seg.contain_seg_start_point = True
        if last_is_end:
            seg.contain_seg_end_point = True

    def _on_silence_detected(self, valid_frame: int) -> None:
        self.lastest_confirmed_silence_frame = valid_frame
        if self.state == START_NOT_DETECTED:
            self._pop_till(valid_frame)

    def _on_voice_detected(self, valid_frame: int) -> None:
        self.latest_confirmed_speech_frame = valid_frame
        self._pop_to_output(valid_frame, False, False)

    def _on_voice_start(self, start_frame: int, fake_result: bool = False) -> None:
        if self.confirmed_start_frame == -1:
            self.confirmed_start_frame = start_frame
        if not fake_result and self.state == START_NOT_DETECTED:
            self._pop_to_output(self.confirmed_start_frame, True, False)

    def _on_voice_end(self, end_frame: int, fake_result: bool, is_last_frame: bool) -> None:
        for t in range(self.latest_confirmed_speech_frame + 1, end_frame):
            self._on_voice_detected(t)
        if self.confirmed_end_frame == -1:
            self.confirmed_end_frame = end_frame
        if not fake_result:
            self._pop_to_output(self.confirmed_end_frame, False, True)
        self.number_end_time_detected += 1

    def _maybe_end_if_last_frame(self, is_final_frame: bool, cur_frm_idx: int) -> None:
        if is_final_frame:
            self._on_voice_end(cur_frm_idx, False, True)
            self.state = END_DETECTED


# ---- long runs, taken whole (exact) ----
# Most 10 ms frames leave the state machine where it was and only move counters: before
# speech starts (silence; the window detector below its start count), inside speech (the
# window above its end count) and in short pauses inside speech. For such a run,
# `_detect_one` frame by frame ends in a state that follows from the run's first and last
# frame: `_run` finds where the run ends (the window detector's sums over the run at once, the
# segment-length and end-silence limits) and applies that end state; every other frame (a
# change of state, a segment's start or end, the file's last frame) still goes through
# `_detect_one`. Tests run both ways on random and structured input and compare every counter.
SLAB = 256  # frames whose window sums one step computes; a longer run takes more steps


def _detect_runs(ep: "Endpointer", speech: np.ndarray, first: int, is_final: bool) -> int:
    """Frames [first, first + len(speech)) with these speech states through ``ep``, as
    `_detect_one` frame by frame would take them. Returns how many were taken: fewer when an
    end of speech released the history past the next frame (an end set beyond its frame by
    a negative end silence), from which the frame loop reads other frames' scores, as the
    official does."""
    n = len(speech)
    last = n - 1 if is_final else n  # the file's last frame: always frame by frame
    flags = speech.astype(np.int64)
    j = 0
    while j < n:
        if j < last:
            k = _run(ep, flags, j, min(last, j + SLAB), first)
            if k:
                j += k
                continue
        ep._detect_one(SPEECH if speech[j] else SIL, first + j, is_final and j == n - 1)
        j += 1
        if ep._drop > first + j:
            return j
    return n


def _run(ep: "Endpointer", flags: np.ndarray, j: int, end: int, first: int) -> int:
    """Take frames j, j+1, ... (before ``end``) whole while none of them changes more than
    counters; returns how many (0: frame j needs `_detect_one`)."""
    if ep.state == START_NOT_DETECTED and not ep.pre_frame_speech:
        case = "silence"
    elif ep.state == IN_SPEECH:
        case = "speech" if ep.pre_frame_speech else "pause"
        if not ep.output:  # _pop_to_output would open a segment
            return 0
    else:
        return 0
    o = ep.o
    s = flags[j:end]
    # the window detector: sums after each frame (the value a frame replaces is the one
    # win_size frames before it: the window's oldest first, then the run's own)
    window = np.asarray(ep.win_state[ep.cur_win_pos:] + ep.win_state[: ep.cur_win_pos], np.int64)
    seq = np.concatenate([window, s])
    sums = ep.win_sum + np.cumsum(s - seq[: len(s)])
    t = first + np.arange(j, end)
    if case == "speech":  # SPEECH2SPEECH, the segment within its longest
        ok = (sums > ep.speech_to_sil_frmcnt) & ~(t - ep.confirmed_start_frame + 1
                                                  > ep.max_seg_frames)
    else:  # SIL2SIL
        ok = sums < ep.sil_to_speech_frmcnt
        if case == "pause":  # the silence below the end, the segment within its longest
            silence = ep.continous_silence_frame_count + np.arange(1, len(s) + 1)
            ok &= ~(silence * o.frame_in_ms >= ep.max_end_sil_frame_cnt_thresh)
            ok &= ~(t - ep.confirmed_start_frame + 1 > ep.max_seg_frames)
    m = int(np.argmin(ok)) if not ok.all() else len(s)
    if m == 0:
        return 0
    ta, tb = int(t[0]), int(t[m - 1])
    # the window after the run: its last win_size values, oldest first
    ep.win_state = seq[m : m + ep.win_size].tolist()
    ep.cur_win_pos = 0
    ep.win_sum = int(sums[m - 1])
    if case == "silence":  # _on_silence_detected(t - latency_start) for each
        ep.continous_silence_frame_count += m
        if tb >= ep.latency_start:
            ep.lastest_confirmed_silence_frame = tb - ep.latency_start
            ep._pop_till(tb - ep.latency_start)
    elif case == "speech":  # _on_voice_detected(t) for each
        ep.continous_silence_frame_count = 0
        _voice_detected(ep, ta, tb)
    else:  # a pause: _on_voice_detected(t) while the silence is within the look-ahead
        c0 = ep.continous_silence_frame_count
        ep.continous_silence_frame_count = c0 + m
        if o.do_extend:
            q = min(max(int(o.lookahead_time_end_point / o.frame_in_ms) - c0, 0), m)
            if q:
                _voice_detected(ep, ta, ta + q - 1)
    return m


def _voice_detected(ep: "Endpointer", ta: int, tb: int) -> None:
    """`_on_voice_detected(t)` for t = ta..tb: each moves the buffer start past t and the
    open segment's end to t + 1."""
    ep.latest_confirmed_speech_frame = tb
    ep.data_buf_start_frame = max(ep.data_buf_start_frame, ta) + (tb - ta + 1)
    ep.output[-1].end_ms = (tb + 1) * ep.o.frame_in_ms

