"""Silero VAD (16 kHz): network, `get_speech_timestamps`, streaming driver, loading.

Exact to `silero_vad.get_speech_timestamps(audio, load_silero_vad())` of the `silero-vad`
package (MIT, Silero Team; version 6.2.3 read, weights vendored in batchasr/models/data) with
its defaults (threshold 0.5, neg_threshold 0.35, min speech 250 ms, min silence 100 ms, pad
30 ms), times converted to ms as FunASR's SileroVad adapter does (`int(s * 1000 / sr)`).

Network: per 512-sample window, the previous 64 samples are prepended as context, the 576
samples are reflect-padded by 64 on the right, a 256-point STFT as a strided convolution (hop
128, 4 frames) gives 129 magnitudes, four Conv1d+ReLU layers (strides 1, 2, 2, 1) reduce them
to one 128-vector, an LSTMCell (128) carries state from window to window, and ReLU ->
Conv1d(128, 1, 1) -> sigmoid gives the speech probability. Weights are read in the key layout
of the package's `silero_vad_16k.safetensors` (`stft_conv`, `conv1`..`conv4`, `lstm_cell`,
`final_conv`). numpy float32 throughout: the convolutions of many windows as GEMMs in one
call, the LSTM recurrence (inherently sequential) window by window. Not MLX: the VAD runs in
many reader processes at once, where MLX's CUDA backend would give each a device context and
device memory (see batchasr.models.fsmn_vad).

Not a config.yaml family: batchasr.models.vads opens it with `SileroVAD.load`.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from batchasr.audio.decode import SAMPLE_RATE
from batchasr.errors import CheckpointError
from batchasr.models.blocks.vad import VAD, SpeechSegment, VADStream
from batchasr.models.weights import check_weights

WINDOW = 512  # samples per window at 16 kHz
CONTEXT = 64  # samples carried over from the previous window
N_FFT, HOP = 256, 128
HIDDEN = 128


SHAPES = {  # the package's silero_vad_16k.safetensors layout (torch shapes)
    "stft_conv.weight": (2 * (N_FFT // 2 + 1), 1, N_FFT),
    "conv1.weight": (128, N_FFT // 2 + 1, 3), "conv1.bias": (128,),
    "conv2.weight": (64, 128, 3), "conv2.bias": (64,),
    "conv3.weight": (64, 64, 3), "conv3.bias": (64,),
    "conv4.weight": (HIDDEN, 64, 3), "conv4.bias": (HIDDEN,),
    "lstm_cell.weight_ih": (4 * HIDDEN, HIDDEN), "lstm_cell.weight_hh": (4 * HIDDEN, HIDDEN),
    "lstm_cell.bias_ih": (4 * HIDDEN,), "lstm_cell.bias_hh": (4 * HIDDEN,),
    "final_conv.weight": (1, HIDDEN, 1), "final_conv.bias": (1,),
}
CONV_STRIDES = {"conv1": 1, "conv2": 2, "conv3": 2, "conv4": 1}


class Model:
    """The 16 kHz network on numpy float32 arrays; weights in the package's key layout."""

    WINDOW = WINDOW
    CONTEXT = CONTEXT

    def __init__(self, weights: dict[str, np.ndarray]):
        w = {k: np.asarray(v, np.float32) for k, v in weights.items()}
        self.stft_t = np.ascontiguousarray(w["stft_conv.weight"][:, 0, :].T)  # (256, 258)
        # Conv1d (O, I, K) as one GEMM over (tap, channel) columns: (K * I, O)
        self.convs = [(np.ascontiguousarray(w[f"{name}.weight"].transpose(2, 1, 0).reshape(
            -1, w[f"{name}.weight"].shape[0])), w[f"{name}.bias"], stride)
            for name, stride in CONV_STRIDES.items()]
        self.w_ih_t = np.ascontiguousarray(w["lstm_cell.weight_ih"].T)
        self.b_ih = w["lstm_cell.bias_ih"]
        self.w_hh, self.b_hh = w["lstm_cell.weight_hh"], w["lstm_cell.bias_hh"]
        self.w_out = w["final_conv.weight"][0, :, 0].copy()
        self.b_out = np.float32(w["final_conv.bias"][0])
        n_in = CONTEXT + WINDOW
        # reflect padding by 64 on the right (the edge sample is not repeated)
        pad_idx = np.r_[np.arange(n_in), n_in - 2 - np.arange(CONTEXT)]
        n_frames = (n_in + CONTEXT - N_FFT) // HOP + 1
        self._frame_idx = pad_idx[np.arange(n_frames)[:, None] * HOP + np.arange(N_FFT)]

    def encode(self, windows: np.ndarray) -> np.ndarray:
        """windows (N, CONTEXT + WINDOW) -> LSTM input gates x @ W_ih^T + b_ih, (N, 512).
        Every product is one 2-D GEMM over all windows (numpy runs a stacked matmul as one
        small GEMM per window: 5x slower here)."""
        N = windows.shape[0]
        frames = windows[:, self._frame_idx]  # (N, 4, 256), the reflect padding included
        L = frames.shape[1]
        spec = (frames.reshape(N * L, N_FFT) @ self.stft_t).reshape(N, L, -1)  # (N, 4, 258)
        cut = N_FFT // 2 + 1
        h = np.sqrt(np.square(spec[..., :cut]) + np.square(spec[..., cut:]))
        for weight, bias, stride in self.convs:
            C = h.shape[2]
            hp = np.pad(h, ((0, 0), (1, 1), (0, 0)))
            L = (L + 2 - 3) // stride + 1
            cols = np.stack([hp[:, k : k + stride * (L - 1) + 1 : stride] for k in range(3)],
                            axis=2)  # (N, L, 3, C)
            h = np.maximum(cols.reshape(N * L, 3 * C) @ weight + bias, 0).reshape(N, L, -1)
        return h[:, 0, :] @ self.w_ih_t + self.b_ih  # one time step is left

    def initial_state(self) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(HIDDEN, np.float32), np.zeros(HIDDEN, np.float32)

    def probs(self, audio: np.ndarray, context: np.ndarray, state):
        """Speech probability of each WINDOW-sample window of `audio` (a multiple of WINDOW
        samples), given the CONTEXT samples before it and the LSTM state (h, c).
        Returns (probs (N,), new state, new context)."""
        n = len(audio) // WINDOW
        if n == 0:
            return np.zeros(0, np.float32), state, context
        buf = np.concatenate([context, audio])
        idx = np.arange(n)[:, None] * WINDOW + np.arange(CONTEXT + WINDOW)[None, :]
        gx = self.encode(buf[idx])
        H, h, c = self._lstm(gx, state)
        z = np.maximum(H, 0) @ self.w_out + self.b_out
        probs = _sigmoid(z).astype(np.float32)
        return probs, (h, c), buf[len(buf) - CONTEXT :].copy()

    def _lstm(self, gx: np.ndarray, state) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """torch's LSTMCell over the input gates gx (N, 4H) from (h, c): every h, the last h
        and c. Into buffers allocated once (fresh arrays cost more than the arithmetic), in
        the plain form's order: the same values to the bit."""
        h, c = (np.array(a, np.float32) for a in state)
        H = np.empty((len(gx), HIDDEN), np.float32)
        g, s = np.empty(4 * HIDDEN, np.float32), np.empty(4 * HIDDEN, np.float32)
        tg, fc = np.empty(HIDDEN, np.float32), np.empty(HIDDEN, np.float32)
        i_, f_, o_ = s[:HIDDEN], s[HIDDEN : 2 * HIDDEN], s[3 * HIDDEN :]
        gg = g[2 * HIDDEN : 3 * HIDDEN]
        w_hh, b_hh, mul, add, tanh = self.w_hh, self.b_hh, np.multiply, np.add, np.tanh
        for t in range(len(gx)):
            np.matmul(w_hh, h, out=g)
            add(gx[t], add(g, b_hh, out=g), out=g)  # torch's LSTMCell: igates + hgates
            _sigmoid(g, out=s)  # of all four gates; only i, f, o are used
            mul(i_, tanh(gg, out=tg), out=tg)
            add(mul(f_, c, out=fc), tg, out=c)  # c = f * c + i * tanh(g)
            h = mul(o_, tanh(c, out=fc), out=H[t])  # h = o * tanh(c)
        return H, h.copy(), c


def _sigmoid(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The logistic function as 0.5 * (1 + tanh(x / 2)): the same values as 1 / (1 + exp(-x))
    without its overflow (exp(-x) overflows float32 for x < -88, as real recordings reach).
    ``out``: computed in place there (same operations, same values)."""
    if out is None:
        return 0.5 * (1.0 + np.tanh(0.5 * x))
    np.multiply(x, 0.5, out=out)
    np.tanh(out, out=out)
    np.add(out, 1.0, out=out)
    return np.multiply(out, 0.5, out=out)


def load_model(path: str | Path) -> Model:
    """Build the model from a .safetensors file in the package's key layout."""
    from safetensors.numpy import load_file

    weights = load_file(str(path))
    check_weights(weights, SHAPES, what=f"{path}: not silero-vad 16 kHz weights")
    return Model(weights)


# ---------------------------------------------------------------------------------------------
# get_speech_timestamps and the streaming driver
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
        self.window = 512 if sampling_rate == 16000 else 256  # the package's 16 kHz / 8 kHz rule
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
