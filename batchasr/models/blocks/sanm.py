"""SAN-M blocks (self-attention with an FSMN memory branch), shared by every FunASR family here.

Port of `funasr.models.sanm.attention` / `.encoder` and `funasr.models.transformer.embedding`
(SinusoidalPositionEncoder). Module attribute names follow the official state-dict keys
(`encoders0.0.self_attn.linear_q_k_v`, `fsmn_block`, `norm1`, `feed_forward.w_1`, ...), so the
checkpoint loads without a rename table.

Shapes: B batch, T frames, D model width. Masks are boolean (B, T), True on real frames.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from batchasr.models.base import BaseModelArgs
from batchasr.models.blocks import fsmn_kernel, host_softmax
from batchasr.models.blocks.tuning import Tuning, on_cuda

LAYER_NORM_EPS = 1e-12  # funasr.models.transformer.layer_norm.LayerNorm


def layer_norm(dims: int, eps: float = LAYER_NORM_EPS) -> nn.LayerNorm:
    return nn.LayerNorm(dims, eps=eps)


def compiled_calls(layers) -> tuple:
    """mx.compile each layer's forward (fuses its element-wise ops; faster on GPUs).
    The parameters are declared as implicit inputs, so later weight updates are seen."""
    return tuple(mx.compile(layer.__call__, inputs=layer.state) for layer in layers)


def use_compiled(module: nn.Module, enable: bool, layers) -> None:
    # kept outside the module tree (object attribute), so parameters() never sees it
    object.__setattr__(module, "_calls", compiled_calls(layers) if enable else None)
    for layer in layers:  # numpy's softmax cannot run inside a traced function
        for _, sub in layer.named_modules():
            if isinstance(sub, TunedAttention):
                sub.compiled = enable


@lru_cache(maxsize=32)
def _sinusoidal_table(length: int, depth: int) -> np.ndarray:
    # Positions start at 1; log increment ln(10000)/(depth/2 - 1); [sin | cos] concatenated.
    # float32 throughout, as the official encode() computes it.
    positions = np.arange(1, length + 1, dtype=np.float32)
    increment = np.float32(math.log(10000.0)) / np.float32(depth / 2 - 1)
    inv = np.exp(np.arange(depth // 2, dtype=np.float32) * -increment).astype(np.float32)
    scaled = positions[:, None] * inv[None, :]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)


def sinusoidal_position_encoding(length: int, depth: int) -> mx.array:
    """(length, depth) table of FunASR's SinusoidalPositionEncoder (grown in steps, cached)."""
    size = max(256, 1 << (max(length, 1) - 1).bit_length())
    return mx.array(_sinusoidal_table(size, depth))[:length]


class FSMNBlock(nn.Module):
    """Depthwise 1-D convolution over time with zero padding (the FSMN memory).

    `weight` keeps the torch layout (channels, 1, kernel) of `fsmn_block.weight`. `method`
    (Tuning.fsmn, BATCHASR_FSMN): "kernel" (the default), `memory` as one CUDA kernel where
    MLX's CUDA backend is the device, else "shift"; "shift", a sum of shifted, scaled copies;
    "conv", a grouped convolution; "auto", conv on GPUs.
    """

    method = Tuning.fsmn

    def __init__(self, channels: int, kernel_size: int, left_padding: int):
        super().__init__()
        self.weight = mx.zeros((channels, 1, kernel_size))
        self.kernel_size = kernel_size
        self.left_padding = left_padding

    def tune(self, tuning: Tuning) -> None:
        self.method = tuning.fsmn

    def memory(self, v: mx.array, mask: mx.array | None) -> mx.array:
        """The SAN-M memory branch: ``(fsmn(v * m) + v * m) * m``, m the (B, T) mask (None:
        every frame real). Method "kernel" runs it as one CUDA kernel (`fsmn_kernel`) where
        MLX's CUDA backend is the device, and falls back to "shift" elsewhere."""
        if self.method == "kernel" and fsmn_kernel.available():
            if mask is None:
                mask = mx.ones(v.shape[:2], mx.bool_)
            return fsmn_kernel.fsmn_memory(v, mask, self.weight, self.left_padding)
        m = None if mask is None else mask[..., None].astype(v.dtype)
        v_in = v if m is None else v * m
        out = self(v_in) + v_in
        return out if m is None else out * m

    def __call__(self, x: mx.array) -> mx.array:
        """x: (B, T, C) -> (B, T, C)."""
        B, T, C = x.shape
        K, left = self.kernel_size, self.left_padding
        xp = mx.pad(x, [(0, 0), (left, K - 1 - left), (0, 0)])
        method = "shift" if self.method == "kernel" else self.method
        if method == "auto":
            method = "shift" if mx.default_device() == mx.cpu else "conv"
        if method == "conv":
            w = self.weight.transpose(0, 2, 1).astype(x.dtype)  # MLX layout (C, K, 1)
            return mx.conv1d(xp, w, groups=C)
        w = self.weight[:, 0, :].T.astype(x.dtype)  # (K, C)
        out = xp[:, 0:T] * w[0]
        for k in range(1, K):
            out = out + xp[:, k : k + T] * w[k]
        return out


def fsmn_padding(kernel_size: int, sanm_shfit: int) -> int:
    left = (kernel_size - 1) // 2
    return left + sanm_shfit if sanm_shfit > 0 else left


def resolved(method: str) -> str:
    """An attention method with "auto" resolved for this process's device (see attention)."""
    if method != "auto":
        return method
    return "host" if host_softmax.on_cpu() else "unfused" if on_cuda() else "fast"


def attention(q: mx.array, k: mx.array, v: mx.array, key_mask: mx.array | None,
              method: str = "fast") -> mx.array:
    """Scaled dot-product attention, q/k/v (B, H, T, d); padded keys get no weight.

    `method` (Tuning.attention, BATCHASR_ATTENTION): "fast", MLX's fused kernel; "unfused",
    two batched GEMMs around a float32 softmax (on NVIDIA GPUs the fused kernel sets up a
    cuDNN plan per new batch shape); "host", the same GEMMs around numpy's softmax (MLX's CPU
    backend runs exp one element at a time: `host_softmax`); "auto", host on the CPU,
    unfused where MLX's CUDA backend is the device, fast elsewhere (Apple GPUs)."""
    method = resolved(method)
    scale = q.shape[-1] ** -0.5
    mask = None if key_mask is None else key_mask[:, None, None, :]
    if method == "fast":
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    scores = (q * scale) @ k.swapaxes(-1, -2)
    if method == "host":
        return host_softmax.softmax(scores, mask) @ v
    if mask is not None:
        scores = mx.where(mask, scores, mx.array(-float("inf"), scores.dtype))
    return mx.softmax(scores, axis=-1, precise=True) @ v


class TunedAttention:
    """Mixin of the modules that call `attention`: `method` from Tuning.attention; in
    compiled layers the host softmax becomes the fused kernel (numpy cannot run in a trace)."""

    attention_method = "auto"
    compiled = False

    def tune(self, tuning: Tuning) -> None:
        self.attention_method = tuning.attention

    @property
    def method(self) -> str:
        if self.compiled and self.attention_method in ("auto", "host"):
            return "fast"
        return self.attention_method


def split_heads(x: mx.array, heads: int) -> mx.array:
    B, T, D = x.shape
    return x.reshape(B, T, heads, D // heads).transpose(0, 2, 1, 3)


def packed_heads(x: mx.array, parts: int, heads: int, method: str) -> list[mx.array]:
    """x (B, T, parts * D), projections side by side (q|k|v or k|v) -> each (B, heads, T,
    D / heads). For the GEMM forms of attention they are made contiguous by one copy of x,
    where each strided one would otherwise be copied by its own matmul (one launch less per
    layer, the same values); MLX's fused kernel takes them as views."""
    if resolved(method) == "fast":
        return [split_heads(p, heads) for p in mx.split(x, parts, axis=-1)]
    B, T, W = x.shape
    stacked = mx.contiguous(x.reshape(B, T, parts, heads, W // (parts * heads))
                            .transpose(2, 0, 3, 1, 4))
    return [stacked[i] for i in range(parts)]


def merge_heads(x: mx.array) -> mx.array:
    B, H, T, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * d)


class MultiHeadedAttentionSANM(TunedAttention, nn.Module):
    """Self-attention plus the FSMN memory of v (MultiHeadedAttentionSANM)."""

    def __init__(self, n_head: int, in_feat: int, n_feat: int, kernel_size: int,
                 sanm_shfit: int = 0):
        super().__init__()
        self.h = n_head
        self.n_feat = n_feat
        self.linear_q_k_v = nn.Linear(in_feat, n_feat * 3)
        self.linear_out = nn.Linear(n_feat, n_feat)
        self.fsmn_block = FSMNBlock(n_feat, kernel_size, fsmn_padding(kernel_size, sanm_shfit))

    def __call__(self, x: mx.array, mask: mx.array | None) -> mx.array:
        qkv = self.linear_q_k_v(x)
        v = mx.split(qkv, 3, axis=-1)[2]
        # FSMN memory: masked v, depthwise conv, plus v itself, masked again
        memory = self.fsmn_block.memory(v, mask)
        out = attention(*packed_heads(qkv, 3, self.h, self.method), mask, self.method)
        return self.linear_out(merge_heads(out)) + memory


class PositionwiseFeedForward(nn.Module):
    def __init__(self, idim: int, hidden_units: int):
        super().__init__()
        self.w_1 = nn.Linear(idim, hidden_units)
        self.w_2 = nn.Linear(hidden_units, idim)

    def __call__(self, x: mx.array) -> mx.array:
        return self.w_2(nn.relu(self.w_1(x)))


class EncoderLayerSANM(nn.Module):
    """Pre-norm SAN-M layer; no attention residual when the input width differs (layer 0)."""

    def __init__(self, in_size: int, size: int, heads: int, linear_units: int,
                 kernel_size: int, sanm_shfit: int, eps: float = LAYER_NORM_EPS):
        super().__init__()
        self.in_size, self.size = in_size, size
        self.self_attn = MultiHeadedAttentionSANM(heads, in_size, size, kernel_size, sanm_shfit)
        self.feed_forward = PositionwiseFeedForward(size, linear_units)
        self.norm1 = layer_norm(in_size, eps)
        self.norm2 = layer_norm(size, eps)

    def __call__(self, x: mx.array, mask: mx.array | None) -> mx.array:
        attn = self.self_attn(self.norm1(x), mask)
        x = x + attn if self.in_size == self.size else attn
        return x + self.feed_forward(self.norm2(x))


@dataclass
class SANMEncoderArgs(BaseModelArgs):
    """`encoder_conf` of config.yaml (SANMEncoder / SenseVoiceEncoderSmall), official names."""

    input_size: int
    output_size: int = 256
    attention_heads: int = 4
    linear_units: int = 2048
    num_blocks: int = 6
    tp_blocks: int = 0  # SenseVoiceEncoderSmall's extra tail of layers (Fun-ASR-Nano)
    kernel_size: int = 11
    sanm_shfit: int = 0
    input_layer: str = "pe"
    normalize_before: bool = True
    layer_norm_eps: float = LAYER_NORM_EPS

    def __post_init__(self):
        if self.input_layer not in ("pe", None):
            raise ValueError(f"SANMEncoder input_layer {self.input_layer!r} is not supported")
        if not self.normalize_before:
            raise ValueError("SANMEncoder with normalize_before=false is not supported")


class SANMEncoder(nn.Module):
    """x * sqrt(D), sinusoidal positions, encoders0 (in -> D), encoders, after_norm
    [, tp_encoders, tp_norm]. Output length = input length; padded frames of the output are
    zeroed so that consumers (CIF, adaptors) see a row exactly as if it were alone."""

    def __init__(self, args: SANMEncoderArgs):
        super().__init__()
        self.args = args
        a = args
        layer = lambda i: EncoderLayerSANM(i, a.output_size, a.attention_heads, a.linear_units,
                                           a.kernel_size, a.sanm_shfit, a.layer_norm_eps)
        self.encoders0 = [layer(a.input_size)]
        self.encoders = [layer(a.output_size) for _ in range(a.num_blocks - 1)]
        self.after_norm = layer_norm(a.output_size, a.layer_norm_eps)
        if a.tp_blocks > 0:
            self.tp_encoders = [layer(a.output_size) for _ in range(a.tp_blocks)]
            self.tp_norm = layer_norm(a.output_size, a.layer_norm_eps)

    def layers(self) -> list:
        return self.encoders0 + self.encoders + (self.tp_encoders if self.args.tp_blocks else [])

    def compile(self, enable: bool = True) -> None:
        use_compiled(self, enable, self.layers())

    def __call__(self, x: mx.array, lengths: mx.array) -> mx.array:
        """x: (B, T, input_size), lengths: (B,) -> (B, T, output_size)."""
        B, T, D = x.shape
        mask = mx.arange(T)[None, :] < lengths[:, None]
        x = x * (self.args.output_size ** 0.5)
        if self.args.input_layer == "pe":
            x = x + sinusoidal_position_encoding(T, D).astype(x.dtype)
        calls = getattr(self, "_calls", None) or self.layers()
        n_main = len(self.encoders0) + len(self.encoders)
        for call in calls[:n_main]:
            x = call(x, mask)
        x = self.after_norm(x)
        if self.args.tp_blocks > 0:
            for call in calls[n_main:]:
                x = call(x, mask)
            x = self.tp_norm(x)
        return x * mask[..., None].astype(x.dtype)
