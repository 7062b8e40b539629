"""Voice activity detection: speech segments (start_ms, end_ms) of 16 kHz audio, streamed.

Two detectors behind one interface (`load_vad(name_or_dir) -> VAD`):

* **fsmn-vad** (an official FunASR folder, `model: FsmnVADStreaming`): exact to funasr 1.4.16
  `AutoModel.generate` on that folder. The audio is cut into 60 s chunks; WavFrontendOnline
  (fbank, LFR m=5 n=1, CMVN) and the FSMN carry their state across chunks; the endpoint state
  machine (`Endpointer`, a line-by-line port of `fsmn_vad_streaming/model.py`) runs per 10 ms
  frame, and at every chunk start the end-silence comes from `DEFAULT_SILENCE_SCHEDULE`
  (funasr >= 1.4's dynamic silence: 1,850 ms while outside speech, less the longer speech
  has lasted), unless a fixed `max_end_silence_time` is given.
* **silero** (the network of the `silero-vad` package, MIT, weights vendored in
  batchasr/models/data): exact to `silero_vad.get_speech_timestamps(audio, load_silero_vad())` with
  its defaults (threshold 0.5, neg_threshold 0.35, min speech 250 ms, min silence 100 ms,
  pad 30 ms), times converted to ms as FunASR's SileroVad adapter does (`int(s * 1000 / sr)`).

Both stream: `segments_stream(windows)` takes `(offset_s, waveform)` windows in file order
(`batchasr.audio.decode.iter_windows`), yields each segment once it is final, and holds at most one
60 s chunk of audio, so a 3-hour file never sits in memory. `max_segment_ms` cuts longer
segments into equal parts no longer than it (for ASR batching).

The state machines are sequential per frame and run on the host in Python/numpy; the
networks run in MLX.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from batchasr.errors import CheckpointError
from batchasr.models.base import BaseModelArgs

SAMPLE_RATE = 16000

# ---------------------------------------------------------------------------------------------
# common interface
# ---------------------------------------------------------------------------------------------
SpeechSegment = tuple[int, int]  # (start_ms, end_ms)


def split_long_segments(segments: Iterable[SpeechSegment],
                        max_segment_ms: int | None) -> list[SpeechSegment]:
    """Cut each segment longer than max_segment_ms into the fewest equal parts that fit."""
    out = []
    for start, end in segments:
        n = 1 if not max_segment_ms or end - start <= max_segment_ms else \
            -(-(end - start) // max_segment_ms)
        bounds = [start + (end - start) * i // n for i in range(n)] + [end]
        out.extend(zip(bounds[:-1], bounds[1:]))
    return out


class VADStream:
    """One file's detector state: `feed(samples)` in order, then `finish()`; both return the
    segments (start_ms, end_ms) that became final."""

    def feed(self, samples: np.ndarray) -> list[SpeechSegment]:
        raise NotImplementedError

    def finish(self) -> list[SpeechSegment]:
        raise NotImplementedError


class VAD:
    """A voice activity detector. `segments(waveform)` for audio in memory, `segments_stream`
    for long files read window by window."""

    name: str = "vad"
    sample_rate: int = SAMPLE_RATE

    def stream(self) -> VADStream:
        raise NotImplementedError

    def segments(self, waveform: np.ndarray, *,
                 max_segment_ms: int | None = None) -> list[SpeechSegment]:
        """Speech segments of a whole 16 kHz mono float32 waveform, in ms."""
        return list(self.segments_stream([(0.0, waveform)], max_segment_ms=max_segment_ms))

    def segments_stream(self, windows: Iterable[tuple[float, np.ndarray]], *,
                        max_segment_ms: int | None = None) -> Iterator[SpeechSegment]:
        """Segments of a file given as contiguous `(offset_s, waveform)` windows, in order."""
        st = self.stream()
        consumed = 0
        for offset_s, wav in windows:
            if round(offset_s * self.sample_rate) != consumed:
                raise ValueError(f"windows must be contiguous: expected offset "
                                 f"{consumed / self.sample_rate:.3f} s, got {offset_s:.3f} s")
            consumed += len(wav)
            yield from split_long_segments(st.feed(np.asarray(wav, np.float32)), max_segment_ms)
        yield from split_long_segments(st.finish(), max_segment_ms)

    def segment_file(self, path, *, max_segment_ms: int | None = None,
                     window_s: float = 60.0) -> list[SpeechSegment]:
        """Segments of an audio file decoded window by window (bounded memory)."""
        from batchasr.audio.decode import iter_windows

        return list(self.segments_stream(iter_windows(path, window_s, sr=self.sample_rate),
                                         max_segment_ms=max_segment_ms))


SILERO_NAMES = ("silero", "silero-vad", "silero_vad")


def load_vad(name_or_dir: str | os.PathLike = "auto", *, download: bool = False) -> VAD:
    """A VAD by name or folder.

    Args:
        name_or_dir: "silero"; "fsmn-vad" (found in the local Hugging Face / ModelScope cache)
            or an official fsmn-vad folder (config.yaml with `model: FsmnVADStreaming`,
            model.pt, am.mvn); a silero-layout .safetensors file; or "auto": fsmn-vad when its
            checkpoint is in the local cache, else silero.
        download: allow fetching "fsmn-vad" from the Hugging Face hub.
    Raises:
        CheckpointError: no such folder or name, or the folder is not a VAD.
    """
    name = str(name_or_dir)
    if name in SILERO_NAMES:
        return SileroVAD.load()
    if name == "auto":
        from batchasr.models.loader import resolve

        try:
            resolve("fsmn-vad")
        except CheckpointError:  # no fsmn-vad checkpoint in the local caches
            return SileroVAD.load()
        return load_vad("fsmn-vad")
    p = Path(name).expanduser()
    if p.is_file() and p.suffix == ".safetensors":
        return SileroVAD.load(p)
    from batchasr.models.loader import load_model, read_config, resolve

    folder = resolve(name_or_dir, download=download)
    family = read_config(folder).get("model")
    if family != "FsmnVADStreaming":
        raise CheckpointError(f"{folder}: not a VAD model (config.yaml says model: {family}; "
                              f"FsmnVADStreaming expected), or use silero")
    return load_model(folder)


# ---------------------------------------------------------------------------------------------
# fsmn-vad: options, endpoint state machine, online frontend, driver
# ---------------------------------------------------------------------------------------------
CHUNK_MS = 60000  # AutoModel.generate's default chunk_size for VAD
# funasr/models/fsmn_vad_streaming/model.py: (accumulated speech ms, end silence ms)
DEFAULT_SILENCE_SCHEDULE = ((10000, 2000), (20000, 1000), (30000, 800), (40000, 600),
                            (50000, 400), (60000, 200), (math.inf, 100))
DYNAMIC_SPEECH_NOISE_THRES = 0.5  # what the schedule forces, whatever the config says

START_NOT_DETECTED, IN_SPEECH, END_DETECTED = 1, 2, 3  # VadStateMachine
SIL, SPEECH = 0, 1  # FrameState
SPEECH2SPEECH, SPEECH2SIL, SIL2SIL, SIL2SPEECH = 0, 1, 2, 3  # AudioChangeState


@dataclass
class FsmnVADOptions(BaseModelArgs):
    """`model_conf` of config.yaml (VADXOptions), official names; times in ms."""

    sample_rate: int = 16000
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
        noise_prob = _log(sum_score) * o.speech_2_noise_ratio
        speech_prob = _log(1.0 - sum_score)
        if math.exp(speech_prob) >= math.exp(noise_prob) + self.speech_noise_thres:
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
        the history the official DropCachedFrames releases."""
        if self.state != END_DETECTED:
            for i in range(n_new - 1, -1, -1):
                t = self.frm_cnt - 1 - i
                self._detect_one(self.frame_state(t), t, is_final and i == 0)
        self._release(self.data_buf_start_frame)

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


def _log(x: float) -> float:
    return math.log(x) if x > 0.0 else -math.inf


class _OnlineFrontend:
    """WavFrontendOnline (fbank -> LFR m, n=1 -> CMVN) fed in chunks, with the official
    frame counts: a non-final chunk emits the LFR frames whose right context it has (all but
    the last (m-1)//2), the final chunk emits the rest with the last frame repeated. Also
    returns each emitted frame's 25 ms of waveform, from which the official decibels come."""

    def __init__(self, conf, cmvn: np.ndarray | None):
        import mlx.core as mx

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
        import mlx.core as mx

        from batchasr.models.blocks.frontend import fbank

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


def _decibels(frames: np.ndarray) -> np.ndarray:
    """ComputeDecibel on (T, frame_len) float32 waveform frames (values in [-1, 1] give
    > -60 dB, so with the published -100 dB thresholds this never decides anything)."""
    return 10 * np.log10(np.sum(np.square(frames), axis=1) + 0.000001)


class FsmnVADStream(VADStream):
    """One file through the official `FsmnVADStreaming.inference` loop: 60 s chunks, the
    dynamic end-silence schedule at each chunk start, complete segments after each chunk."""

    def __init__(self, vad: "FsmnVAD", *, max_end_silence_time: int | None = None,
                 keep_probs: bool = False):
        self.vad = vad
        opts = vad.options
        if max_end_silence_time is not None:
            opts = dataclasses.replace(opts, max_end_silence_time=max_end_silence_time)
        self.dynamic = max_end_silence_time is None
        self.ep = Endpointer(opts)
        self.front = _OnlineFrontend(vad.frontend_conf, vad.cmvn)
        self.cache = vad.model.make_cache(1)
        self.chunk = int(CHUNK_MS * vad.sample_rate / 1000)
        self.pending: list[np.ndarray] = []
        self.n_pending = 0
        self.accumulated_ms = 0
        self.in_speech = False
        self.frame_probs: list[np.ndarray] | None = [] if keep_probs else None
        self.end_silence: list[int] = []  # per chunk, the end silence in force (for tests)
        self.finished = False

    def feed(self, samples: np.ndarray) -> list[SpeechSegment]:
        if self.finished:
            raise RuntimeError("stream already finished")
        out = []
        self.pending.append(np.asarray(samples, np.float32))
        self.n_pending += len(samples)
        while self.n_pending >= self.chunk:  # a full chunk is never the final one
            buf = np.concatenate(self.pending)
            out += self._chunk(buf[: self.chunk], False)
            self.pending, self.n_pending = [buf[self.chunk :]], len(buf) - self.chunk
        return out

    def finish(self) -> list[SpeechSegment]:
        buf = np.concatenate(self.pending) if self.pending else np.zeros(0, np.float32)
        self.pending, self.n_pending = [], 0
        out = self._chunk(buf, True)
        self.finished = True
        return out

    def _chunk(self, audio: np.ndarray, is_final: bool) -> list[SpeechSegment]:
        ep = self.ep
        if self.dynamic:
            if ep.state == IN_SPEECH or self.in_speech:
                self.accumulated_ms += CHUNK_MS
                self.in_speech = True
            for limit_ms, silence_ms in DEFAULT_SILENCE_SCHEDULE:
                if self.accumulated_ms <= limit_ms:
                    ep.max_end_sil_frame_cnt_thresh = max(
                        silence_ms - ep.o.speech_to_sil_time_thres, 0)
                    ep.speech_noise_thres = DYNAMIC_SPEECH_NOISE_THRES
                    break
        self.end_silence.append(ep.max_end_sil_frame_cnt_thresh)
        feats, waves = self.front(audio, is_final)
        if feats is None:  # forward() returns nothing for a chunk without frames
            return []
        import mlx.core as mx

        probs, self.cache = self.vad.model(feats[None], self.cache)
        sil = np.array(mx.take(probs[0], mx.array(list(ep.o.sil_pdf_ids)), axis=1),
                       dtype=np.float32)
        if self.frame_probs is not None:
            self.frame_probs.append(sil)
        ep.add_frames(sil, _decibels(waves))
        ep.detect(len(sil), is_final)
        segments = ep.take_segments(is_final)
        if segments and self.dynamic:
            self.accumulated_ms, self.in_speech = 0, False
        return segments


class FsmnVAD(VAD):
    """fsmn-vad from an official folder (see `build_fsmn_vad`)."""

    def __init__(self, model, options: FsmnVADOptions, frontend_conf, cmvn, name="fsmn-vad"):
        self.model = model
        self.options = options
        self.frontend_conf = frontend_conf
        self.cmvn = cmvn
        self.name = name
        self.sample_rate = frontend_conf.fs

    def stream(self, *, max_end_silence_time: int | None = None,
               keep_probs: bool = False) -> FsmnVADStream:
        """A fresh per-file state. max_end_silence_time (ms) replaces the dynamic schedule
        with a fixed end silence, as `generate(..., max_end_silence_time=...)` does."""
        return FsmnVADStream(self, max_end_silence_time=max_end_silence_time,
                             keep_probs=keep_probs)

    def frame_probs(self, waveform: np.ndarray) -> np.ndarray:
        """Silence posterior per 10 ms frame of a whole waveform (the network's output)."""
        st = self.stream(keep_probs=True)
        st.feed(waveform)
        st.finish()
        return np.concatenate(st.frame_probs)[:, 0] if st.frame_probs else np.zeros(0, np.float32)


def build_fsmn_vad(folder: Path | None, config: dict, tokens, dummy: bool, name: str, dtype):
    """checkpoints.FAMILIES builder for `model: FsmnVADStreaming`."""
    import mlx.core as mx

    from batchasr.models.loader import apply_weights, random_weights, read_weights
    from batchasr.models.blocks.frontend import FrontendConfig, load_cmvn
    from batchasr.models.fsmn_vad import Model, ModelArgs

    where = folder or name
    if config.get("encoder", "FSMN") != "FSMN":
        raise CheckpointError(f"{where}: encoder {config.get('encoder')!r} is not supported "
                              f"(FSMN only)")
    try:
        args = ModelArgs.from_dict(config.get("encoder_conf") or {})
        options = FsmnVADOptions.from_dict(config.get("model_conf"))
        fconf = FrontendConfig.from_dict(config.get("frontend_conf"))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: unsupported fsmn-vad config: {e}") from e
    if fconf.n_mels * fconf.lfr_m != args.input_dim or fconf.lfr_n != 1:
        raise CheckpointError(f"{where}: frontend (n_mels {fconf.n_mels} x lfr_m "
                              f"{fconf.lfr_m}, lfr_n {fconf.lfr_n}) does not feed input_dim "
                              f"{args.input_dim}")
    model = Model(args)
    cmvn = None
    if folder is not None and (folder / "am.mvn").exists():
        cmvn = load_cmvn(folder / "am.mvn")
    if dummy:
        random_weights(model)
    else:
        apply_weights(model, model.sanitize(read_weights(folder)), what=str(folder))
    model.set_dtype(mx.float32)  # decisions compare posteriors to thresholds: keep float32
    model.eval()
    return FsmnVAD(model, options, fconf, cmvn, name=name)


# ---------------------------------------------------------------------------------------------
# silero
# ---------------------------------------------------------------------------------------------
DATA_DIR = Path(__file__).parent / "data"
# The 16 kHz tensors of silero-vad 6.2.3's silero_vad.jit (byte-identical to those in its
# ONNX files), extracted by `tools/make_reference_fixtures.py silero-weights`; MIT, see
# data/LICENSE.silero-vad. The wheel's own silero_vad_16k.safetensors holds *other* weights
# (up to 0.48 apart in probability on real speech) and is not what load_silero_vad() runs.
SILERO_WEIGHTS = DATA_DIR / "silero_vad_16k_v6.safetensors"
SILERO_SHA256 = "473239a04422b311b9d65d3ab594f9f6eb872b23a2e3b40d369c2e76b4aae40c"


@dataclass(frozen=True)
class SileroOptions:
    """get_speech_timestamps' parameters and defaults (silero-vad 6.2.3)."""

    threshold: float = 0.5
    min_speech_duration_ms: int = 250
    max_speech_duration_s: float = math.inf
    min_silence_duration_ms: int = 100
    speech_pad_ms: int = 30
    neg_threshold: float | None = None
    min_silence_at_max_speech: int = 98
    use_max_poss_sil_at_max_speech: bool = True


class SpeechTimestamps:
    """`get_speech_timestamps_from_probs` (16 kHz), fed one window probability at a time.

    `push(prob)` / `finish(audio_length_samples)` return speeches (dicts with sample
    `start`/`end`, as the package's) once their padding is settled: a speech's end and the
    next one's start are padded together, so each is released when the next one begins."""

    def __init__(self, opts: SileroOptions = SileroOptions(), sampling_rate: int = SAMPLE_RATE):
        o = opts
        self.window = 512 if sampling_rate == 16000 else 256
        self.threshold = o.threshold
        self.neg_threshold = max(o.threshold - 0.15, 0.01) if o.neg_threshold is None \
            else o.neg_threshold
        self.min_speech_samples = sampling_rate * o.min_speech_duration_ms / 1000
        self.speech_pad_samples = sampling_rate * o.speech_pad_ms / 1000
        self.max_speech_samples = (sampling_rate * o.max_speech_duration_s - self.window
                                   - 2 * self.speech_pad_samples)
        self.min_silence_samples = sampling_rate * o.min_silence_duration_ms / 1000
        self.min_silence_samples_at_max_speech = sampling_rate * o.min_silence_at_max_speech / 1000
        self.use_max_poss = o.use_max_poss_sil_at_max_speech
        self.i = 0
        self.triggered = False
        self.current: dict = {}
        self.temp_end = 0
        self.prev_end = self.next_start = 0
        self.possible_ends: list[tuple[int, int]] = []
        self.speeches: list[dict] = []  # appended, not yet released (at most 2)
        self.n_released = 0

    def push(self, speech_prob: float) -> list[dict]:
        n_before = self.n_released + len(self.speeches)
        self._step(speech_prob)
        if self.n_released + len(self.speeches) > n_before:
            return self._release(final=False)
        return []

    def finish(self, audio_length_samples: int) -> list[dict]:
        cur = self.current
        if cur and (audio_length_samples - cur["start"]) > self.min_speech_samples:
            self.current["end"] = audio_length_samples
            self.speeches.append(self.current)
        self.current = {}
        return self._release(final=True, audio_length_samples=audio_length_samples)

    def _release(self, final: bool, audio_length_samples: int = 0) -> list[dict]:
        pad = self.speech_pad_samples
        out = []
        while len(self.speeches) >= (1 if final else 2):
            speech = self.speeches[0]
            if self.n_released == 0:
                speech["start"] = int(max(0, speech["start"] - pad))
            if len(self.speeches) > 1:
                nxt = self.speeches[1]
                silence_duration = nxt["start"] - speech["end"]
                if silence_duration < 2 * pad:
                    speech["end"] += int(silence_duration // 2)
                    nxt["start"] = int(max(0, nxt["start"] - silence_duration // 2))
                else:  # end + pad < next start <= audio length: the official min() is a no-op
                    speech["end"] = int(speech["end"] + pad)
                    nxt["start"] = int(max(0, nxt["start"] - pad))
            else:
                speech["end"] = int(min(audio_length_samples, speech["end"] + pad))
            out.append(self.speeches.pop(0))
            self.n_released += 1
        return out

    def _step(self, speech_prob: float) -> None:  # one iteration of the official loop
        cur_sample = self.window * self.i
        self.i += 1
        if speech_prob >= self.threshold and self.temp_end:
            sil_dur = cur_sample - self.temp_end
            if sil_dur > self.min_silence_samples_at_max_speech:
                self.possible_ends.append((self.temp_end, sil_dur))
            self.temp_end = 0
            if self.next_start < self.prev_end:
                self.next_start = cur_sample
        if speech_prob >= self.threshold and not self.triggered:
            self.triggered = True
            self.current["start"] = cur_sample
            return
        if self.triggered and cur_sample - self.current["start"] > self.max_speech_samples:
            if self.use_max_poss and self.possible_ends:
                self.prev_end, dur = max(self.possible_ends, key=lambda x: x[1])
                self.current["end"] = self.prev_end
                self.speeches.append(self.current)
                self.current = {}
                self.next_start = self.prev_end + dur
                if self.next_start < self.prev_end + cur_sample:
                    self.current["start"] = self.next_start
                else:
                    self.triggered = False
                self.prev_end = self.next_start = self.temp_end = 0
                self.possible_ends = []
            elif self.prev_end:
                self.current["end"] = self.prev_end
                self.speeches.append(self.current)
                self.current = {}
                if self.next_start < self.prev_end:
                    self.triggered = False
                else:
                    self.current["start"] = self.next_start
                self.prev_end = self.next_start = self.temp_end = 0
                self.possible_ends = []
            else:
                self.current["end"] = cur_sample
                self.speeches.append(self.current)
                self.current = {}
                self.prev_end = self.next_start = self.temp_end = 0
                self.triggered = False
                self.possible_ends = []
                return
        if speech_prob < self.neg_threshold and self.triggered:
            if not self.temp_end:
                self.temp_end = cur_sample
            sil_dur_now = cur_sample - self.temp_end
            if not self.use_max_poss and sil_dur_now > self.min_silence_samples_at_max_speech:
                self.prev_end = self.temp_end
            if sil_dur_now < self.min_silence_samples:
                return
            self.current["end"] = self.temp_end
            if (self.current["end"] - self.current["start"]) > self.min_speech_samples:
                self.speeches.append(self.current)
            self.current = {}
            self.prev_end = self.next_start = self.temp_end = 0
            self.triggered = False
            self.possible_ends = []


def _samples_to_ms(speech: dict, sr: int) -> SpeechSegment:
    return int(speech["start"] * 1000 / sr), int(speech["end"] * 1000 / sr)


class SileroVADStream(VADStream):
    """512-sample windows from sample 0 with the previous 64 samples as context (zeros before
    the start), the LSTM state carried from window to window, the last window zero-padded."""

    BLOCK = 512 * 1024  # windows scored per network call (bounded memory)

    def __init__(self, vad: "SileroVAD", opts: SileroOptions, keep_probs: bool = False):
        self.vad = vad
        self.ts = SpeechTimestamps(opts, vad.sample_rate)
        self.state = vad.model.initial_state()
        self.context = np.zeros(vad.model.CONTEXT, np.float32)
        self.rest = np.zeros(0, np.float32)
        self.n_samples = 0
        self.probs: list[np.ndarray] | None = [] if keep_probs else None
        self.raw: list[dict] = []  # released speeches in samples (for tests)

    def feed(self, samples: np.ndarray) -> list[SpeechSegment]:
        samples = np.asarray(samples, np.float32)
        self.n_samples += len(samples)
        buf = np.concatenate([self.rest, samples]) if len(self.rest) else samples
        W = self.vad.model.WINDOW
        n = len(buf) // W
        out = []
        for b in range(0, n, self.BLOCK // W):
            e = min(n, b + self.BLOCK // W)
            out += self._score(buf[b * W : e * W])
        self.rest = buf[n * W :].copy()
        return out

    def finish(self) -> list[SpeechSegment]:
        out = []
        if len(self.rest):
            W = self.vad.model.WINDOW
            out += self._score(np.pad(self.rest, (0, W - len(self.rest))))
            self.rest = np.zeros(0, np.float32)
        speeches = self.ts.finish(self.n_samples)
        self.raw += speeches
        return out + [_samples_to_ms(s, self.vad.sample_rate) for s in speeches]

    def _score(self, audio: np.ndarray) -> list[SpeechSegment]:
        probs, self.state, self.context = self.vad.model.probs(audio, self.context, self.state)
        if self.probs is not None:
            self.probs.append(probs)
        out = []
        for p in probs.tolist():
            for s in self.ts.push(p):
                self.raw.append(s)
                out.append(_samples_to_ms(s, self.vad.sample_rate))
        return out


class SileroVAD(VAD):
    """Silero VAD (16 kHz) with `get_speech_timestamps`' post-processing."""

    name = "silero"

    def __init__(self, model, options: SileroOptions = SileroOptions()):
        self.model = model
        self.options = options

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, options: SileroOptions = SileroOptions()):
        """The vendored weights, or a .safetensors file in the package's key layout."""
        from batchasr.models.silero_vad import load_model

        path = Path(path) if path is not None else SILERO_WEIGHTS
        if not path.exists():
            raise CheckpointError(f"{path}: silero weights not found")
        if path == SILERO_WEIGHTS and \
                hashlib.sha256(path.read_bytes()).hexdigest() != SILERO_SHA256:
            raise CheckpointError(f"{path}: checksum mismatch (damaged install?)")
        try:
            model = load_model(path)
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{path}: not silero-vad 16 kHz weights: {e}") from e
        return cls(model, options)

    def stream(self, *, keep_probs: bool = False) -> SileroVADStream:
        return SileroVADStream(self, self.options, keep_probs=keep_probs)

    def speech_probs(self, waveform: np.ndarray) -> np.ndarray:
        """One speech probability per 512-sample window (the package's model(chunk, 16000))."""
        st = self.stream(keep_probs=True)
        st.feed(waveform)
        st.finish()
        return np.concatenate(st.probs) if st.probs else np.zeros(0, np.float32)
