"""fsmn-vad's network on an MLX device, many streams in one batch (the endpoints stay on the host).

The same FSMN as `batchasr.models.fsmn_vad.Model` (whose numpy weights it takes), computed
with MLX: `silence` returns only the silence classes' posteriors, which is all the endpoint
state machine reads, so a 60 s chunk sends back 6,000 floats instead of 6,000 x 248. The
operations are the numpy network's, in the same order (each linear a GEMM plus its bias, the
memories summed tap by tap, softmax as exp(x - max) over the row sum), so on the CPU backend
only the GEMMs' summation order differs.

Why it exists: in a long-recording run the numpy FSMN is most of every reader's CPU time
(its GEMMs are ~50 GFLOP per 600 s of audio, at the core's BLAS peak), and 16 readers on 16
cores bound the whole run (`benchmarks/README.md`, fsmn-vad long recordings). On a GPU the
GEMMs of all streams together are milliseconds. Float32 GEMMs on NVIDIA GPUs run through
TF32 unless MLX_ENABLE_TF32=0 (MLX reads it once per process); TF32 moves posteriors by
~1e-3, so a process that runs this for exact segments sets it before MLX's first matmul.
`benchmarks/fsmn_device.py` measures both against the numpy network.

Never imported by reader processes (they must not touch the accelerator).
"""
from __future__ import annotations

from typing import Sequence

import mlx.core as mx
import numpy as np

from batchasr.models.fsmn_vad import Model


class DeviceNetwork:
    """`Model`'s network on the default MLX device (float32)."""

    def __init__(self, model: Model):
        self.args = model.args
        self.layers = {name: (mx.array(w), None if b is None else mx.array(b))
                       for name, (w, b) in model.layers.items()}
        self.memories = [mx.array(m) for m in model.memories]
        mx.eval(self.layers, self.memories)

    def make_cache(self, batch_size: int = 1) -> list[mx.array]:
        """Zero memories, as the official streaming cache starts."""
        return [mx.zeros((batch_size, self.args.context, self.args.proj_dim), mx.float32)
                for _ in range(self.args.fsmn_layers)]

    def _linear(self, x: mx.array, name: str) -> mx.array:
        weight_t, bias = self.layers[name]
        y = x @ weight_t
        return y if bias is None else y + bias

    def _memory(self, x: mx.array, cache: mx.array, w: mx.array, ends: mx.array | None):
        """y[t] = x[t] + sum_k w[k] * x[t - (K - 1 - k) * stride], taps added in order. The
        new cache is each row's last frames: those before ``ends`` (B, ctx) where rows are
        padded."""
        T = x.shape[1]
        xp = mx.concatenate([cache, x], axis=1)
        out = x
        for k in range(self.args.lorder):
            s = k * self.args.lstride
            out = out + xp[:, s : s + T] * w[k]
        if ends is not None:
            return out, mx.take_along_axis(xp, ends[..., None], axis=1)
        return out, xp[:, xp.shape[1] - self.args.context :]

    def logits(self, feats: mx.array, cache: list[mx.array],
               lengths: Sequence[int] | None = None) -> tuple[mx.array, list]:
        """feats (B, T, input_dim) -> (output logits (B, T, output_dim), new cache).
        ``lengths``: each row's frames, when rows are padded at the end (the memory is causal,
        so padding changes no earlier frame; each row's new cache ends at its length)."""
        ends = None
        if lengths is not None:
            ends = mx.array(np.asarray(lengths, np.int32)[:, None]
                            + np.arange(self.args.context, dtype=np.int32)[None, :])
        x = mx.maximum(self._linear(self._linear(feats, "in_linear1"), "in_linear2"), 0)
        new_cache = []
        for i, c in enumerate(cache):
            h, c = self._memory(self._linear(x, f"fsmn.{i}.linear"), c, self.memories[i], ends)
            x = mx.maximum(self._linear(h, f"fsmn.{i}.affine"), 0)
            new_cache.append(c)
        return self._linear(self._linear(x, "out_linear1"), "out_linear2"), new_cache

    def silence(self, feats: mx.array, cache: list[mx.array], ids: Sequence[int],
                lengths: Sequence[int] | None = None) -> tuple[mx.array, list]:
        """Posteriors of the classes `ids` (B, T, len(ids)) and the new cache (lazy)."""
        x, new_cache = self.logits(feats, cache, lengths)
        if not self.args.use_softmax:
            return x[..., list(ids)], new_cache
        e = mx.exp(x - x.max(axis=-1, keepdims=True))
        return e[..., list(ids)] / e.sum(axis=-1, keepdims=True), new_cache

    def __call__(self, feats, cache: list, ids: Sequence[int]):
        """One stream, numpy in and out: `FsmnVAD.network`'s call (features (T, D), cache of
        (1, ctx, proj_dim) arrays) -> (posteriors (T, len(ids)), new cache)."""
        probs, new_cache = self.silence(mx.array(np.asarray(feats, np.float32))[None],
                                        [mx.array(c) for c in cache], ids)
        mx.eval(probs, new_cache)
        return np.array(probs[0]), [np.array(c) for c in new_cache]
