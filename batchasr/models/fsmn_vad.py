"""FSMN-VAD network in MLX (the scorer of `speech_fsmn_vad_zh-cn-16k-common-pytorch`).

Port of funasr 1.4.16 `funasr/models/fsmn_vad_streaming/encoder.py` (FSMN): in_linear1 ->
in_linear2 -> ReLU -> fsmn_layers x [linear (no bias) -> causal FSMN memory (the branch adds
its own input) -> affine -> ReLU] -> out_linear1 -> out_linear2 -> softmax. Module attributes
follow the official state-dict keys (`encoder.fsmn.0.fsmn_block.conv_left.weight`, ...). The
endpoint state machine that turns these scores into segments lives in batchasr.models.vad.

Streaming: the memory is causal, so running a long input chunk by chunk with the last
`(lorder - 1) * lstride` frames of each layer carried over (`make_cache`) gives exactly the
scores of one pass over the whole input, as the official `cache["encoder"]` does.
"""
from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from batchasr.models.base import BaseModelArgs


@dataclass
class ModelArgs(BaseModelArgs):
    """`encoder_conf` of config.yaml (FSMN), official key names."""

    input_dim: int = 400
    input_affine_dim: int = 140
    fsmn_layers: int = 4
    linear_dim: int = 250
    proj_dim: int = 128
    lorder: int = 20
    rorder: int = 0
    lstride: int = 1
    rstride: int = 0
    output_affine_dim: int = 140
    output_dim: int = 248
    use_softmax: bool = True

    def __post_init__(self):
        if self.rorder:  # the official right-context branch is marked "maybe need to check"
            raise ValueError(f"FSMN with rorder={self.rorder} is not supported (only causal "
                             f"memories, rorder 0, as the published fsmn-vad)")


class Linear(nn.Module):
    """FunASR's LinearTransform / AffineTransform: a `.linear` submodule (keys `x.linear.*`)."""

    def __init__(self, idim: int, odim: int, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(idim, odim, bias=bias)

    def __call__(self, x: mx.array) -> mx.array:
        return self.linear(x)


class CausalMemory(nn.Module):
    """FSMNBlock with rorder 0: y[t] = x[t] + sum_k w[k] * x[t - (K - 1 - k) * stride].

    `conv_left.weight` is stored as (D, K) (the torch Conv2d weight (D, 1, K, 1) squeezed).
    """

    def __init__(self, dim: int, lorder: int, lstride: int):
        super().__init__()
        self.conv_left = {"weight": mx.zeros((dim, lorder))}
        self.lorder, self.lstride = lorder, lstride

    @property
    def context(self) -> int:
        return (self.lorder - 1) * self.lstride

    def __call__(self, x: mx.array, cache: mx.array) -> tuple[mx.array, mx.array]:
        """x (B, T, D), cache (B, context, D) -> (y (B, T, D), new cache)."""
        B, T, D = x.shape
        xp = mx.concatenate([cache, x], axis=1)  # (B, context + T, D)
        w = self.conv_left["weight"].T  # (K, D)
        out = x
        for k in range(self.lorder):
            s = k * self.lstride
            out = out + xp[:, s : s + T] * w[k]
        return out, xp[:, xp.shape[1] - self.context :]


class BasicBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.linear = Linear(args.linear_dim, args.proj_dim, bias=False)
        self.fsmn_block = CausalMemory(args.proj_dim, args.lorder, args.lstride)
        self.affine = Linear(args.proj_dim, args.linear_dim)

    def __call__(self, x: mx.array, cache: mx.array) -> tuple[mx.array, mx.array]:
        h, cache = self.fsmn_block(self.linear(x), cache)
        return nn.relu(self.affine(h)), cache


class FSMN(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.in_linear1 = Linear(args.input_dim, args.input_affine_dim)
        self.in_linear2 = Linear(args.input_affine_dim, args.linear_dim)
        self.fsmn = [BasicBlock(args) for _ in range(args.fsmn_layers)]
        self.out_linear1 = Linear(args.linear_dim, args.output_affine_dim)
        self.out_linear2 = Linear(args.output_affine_dim, args.output_dim)

    def __call__(self, feats: mx.array, cache: list[mx.array]) -> tuple[mx.array, list]:
        """feats (B, T, input_dim) -> (posteriors or logits (B, T, output_dim), new cache)."""
        x = nn.relu(self.in_linear2(self.in_linear1(feats)))
        new_cache = []
        for block, c in zip(self.fsmn, cache):
            x, c = block(x, c)
            new_cache.append(c)
        x = self.out_linear2(self.out_linear1(x))
        return (mx.softmax(x, axis=-1, precise=True) if self.args.use_softmax else x), new_cache


class Model(nn.Module):
    """FsmnVADStreaming's network: `encoder` holds the FSMN (keys `encoder.*`)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.encoder = FSMN(args)

    def make_cache(self, batch_size: int = 1) -> list[mx.array]:
        """Zero memories, as the official streaming cache starts."""
        ctx = (self.args.lorder - 1) * self.args.lstride
        D = self.args.proj_dim
        return [mx.zeros((batch_size, ctx, D)) for _ in range(self.args.fsmn_layers)]

    def sanitize(self, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Squeeze the memories' Conv2d weights (D, 1, K, 1) -> (D, K); nothing else changes."""
        out = {}
        for key, value in weights.items():
            if key.endswith("fsmn_block.conv_left.weight") and value.ndim == 4:
                value = value[:, 0, :, 0]
            out[key] = value
        return out

    def __call__(self, feats: mx.array, cache: list[mx.array]) -> tuple[mx.array, list]:
        return self.encoder(feats, cache)
