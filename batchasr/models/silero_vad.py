"""Silero VAD (16 kHz) in MLX.

The network of the `silero-vad` package (MIT, Silero Team; version 6.2.3 read): per 512-sample
window, the previous 64 samples are prepended as context, the 576 samples are reflect-padded
by 64 on the right, a 256-point STFT as a strided convolution (hop 128, 4 frames) gives 129
magnitudes, four Conv1d+ReLU layers (strides 1, 2, 2, 1) reduce them to one 128-vector, an
LSTMCell (128) carries state from window to window, and ReLU -> Conv1d(128, 1, 1) -> sigmoid
gives the speech probability. Attribute names are the keys of the package's
`silero_vad_16k.safetensors` layout (`stft_conv`, `conv1`..`conv4`, `lstm_cell`, `final_conv`).

The convolutions of many windows run in one MLX call; the LSTM recurrence, 512x128 per
window and inherently sequential, runs on the host in numpy float32 (faster than launching
one device step per 32 ms window).
"""
from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

WINDOW = 512  # samples per window at 16 kHz
CONTEXT = 64  # samples carried over from the previous window
N_FFT, HOP = 256, 128
HIDDEN = 128


class Model(nn.Module):
    WINDOW = WINDOW
    CONTEXT = CONTEXT

    def __init__(self):
        super().__init__()
        self.stft_conv = {"weight": mx.zeros((2 * (N_FFT // 2 + 1), N_FFT))}  # (258, 256)
        self.conv1 = nn.Conv1d(N_FFT // 2 + 1, 128, 3, padding=1)
        self.conv2 = nn.Conv1d(128, 64, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(64, 64, 3, stride=2, padding=1)
        self.conv4 = nn.Conv1d(64, HIDDEN, 3, padding=1)
        self.lstm_cell = {k: mx.zeros(s) for k, s in (
            ("weight_ih", (4 * HIDDEN, HIDDEN)), ("weight_hh", (4 * HIDDEN, HIDDEN)),
            ("bias_ih", (4 * HIDDEN,)), ("bias_hh", (4 * HIDDEN,)))}
        self.final_conv = {"weight": mx.zeros((1, HIDDEN)), "bias": mx.zeros((1,))}
        n_in = CONTEXT + WINDOW
        # reflect padding by 64 on the right (the edge sample is not repeated)
        self._pad_idx = mx.array(np.r_[np.arange(n_in), n_in - 2 - np.arange(CONTEXT)])
        n_frames = (n_in + CONTEXT - N_FFT) // HOP + 1
        self._frame_idx = mx.array(np.arange(n_frames)[:, None] * HOP + np.arange(N_FFT))
        self._host = None  # numpy copies of the recurrent weights

    @staticmethod
    def sanitize(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """torch layouts -> this module's: Conv1d (O, I, K) -> (O, K, I), squeeze 1-sized axes."""
        out = {}
        for key, value in weights.items():
            if key == "stft_conv.weight":
                value = value[:, 0, :]
            elif key == "final_conv.weight":
                value = value[:, :, 0]
            elif key.startswith("conv") and key.endswith(".weight"):
                value = value.transpose(0, 2, 1)
            out[key] = np.ascontiguousarray(value, dtype=np.float32)
        return out

    def encode(self, windows: mx.array) -> mx.array:
        """windows (N, CONTEXT + WINDOW) -> LSTM input gates x @ W_ih^T + b_ih, (N, 512)."""
        x = mx.take(windows, self._pad_idx, axis=1)
        frames = mx.take(x, self._frame_idx.reshape(-1), axis=1).reshape(
            x.shape[0], *self._frame_idx.shape)  # (N, 4, 256)
        spec = frames @ self.stft_conv["weight"].T  # (N, 4, 258)
        cut = N_FFT // 2 + 1
        mag = mx.sqrt(mx.square(spec[..., :cut]) + mx.square(spec[..., cut:]))
        h = mag
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            h = nn.relu(conv(h))
        h = h[:, 0, :]  # (N, 128): one time step is left
        return h @ self.lstm_cell["weight_ih"].T + self.lstm_cell["bias_ih"]

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
        gx = np.array(self.encode(mx.array(buf[idx])), dtype=np.float32)
        if self._host is None:
            self._host = {k: np.array(v, dtype=np.float32) for k, v in self.lstm_cell.items()}
            self._host["w"] = np.array(self.final_conv["weight"][0], dtype=np.float32)
            self._host["b"] = np.float32(np.array(self.final_conv["bias"])[0])
        w_hh, b_hh = self._host["weight_hh"], self._host["bias_hh"]
        h, c = state
        H = np.empty((n, HIDDEN), np.float32)
        for t in range(n):
            g = gx[t] + (w_hh @ h + b_hh)  # torch's LSTMCell: igates + hgates
            s = _sigmoid(g)  # of all four gates; only i, f, o are used
            c = s[HIDDEN : 2 * HIDDEN] * c + s[:HIDDEN] * np.tanh(g[2 * HIDDEN : 3 * HIDDEN])
            h = s[3 * HIDDEN :] * np.tanh(c)
            H[t] = h
        z = np.maximum(H, 0) @ self._host["w"] + self._host["b"]
        probs = _sigmoid(z).astype(np.float32)
        return probs, (h, c), buf[len(buf) - CONTEXT :].copy()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function as 0.5 * (1 + tanh(x / 2)): the same values as 1 / (1 + exp(-x))
    without its overflow (exp(-x) overflows float32 for x < -88, as real recordings reach)."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def load_model(path: str | Path) -> Model:
    """Build the model from a .safetensors file in the package's key layout."""
    from safetensors.numpy import load_file

    from batchasr.models.loader import apply_weights

    model = Model()
    apply_weights(model, Model.sanitize(load_file(str(path))), what=str(path))
    model.eval()
    return model
