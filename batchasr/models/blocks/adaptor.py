"""The `Transformer` adaptor of funasr's LLM-ASR models (`funasr.models.llm_asr.adaptor`):
stack `downsample_rate` frames, linear-ReLU-linear, then `n_layer` pre-norm `EncoderLayer`s with
`attention_heads` (default 8) heads, FFN width llm_dim // 4, LayerNorm eps 1e-12. Fun-ASR-Nano
uses it as its audio adaptor and again as its CTC decoder. Attribute names follow the official
state-dict keys (`blocks.0.self_attn.linear_q`, ...).
"""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from batchasr.models.blocks.sanm import (
    LAYER_NORM_EPS,
    PositionwiseFeedForward,
    TunedAttention,
    attention,
    layer_norm,
    merge_heads,
    split_heads,
)


class MultiHeadedAttention(TunedAttention, nn.Module):
    """funasr.models.transformer.attention.MultiHeadedAttention (separate q/k/v projections)."""

    def __init__(self, n_head: int, n_feat: int):
        super().__init__()
        self.h = n_head
        self.linear_q = nn.Linear(n_feat, n_feat)
        self.linear_k = nn.Linear(n_feat, n_feat)
        self.linear_v = nn.Linear(n_feat, n_feat)
        self.linear_out = nn.Linear(n_feat, n_feat)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        q, k, v = (split_heads(f(x), self.h) for f in (self.linear_q, self.linear_k,
                                                       self.linear_v))
        return self.linear_out(merge_heads(attention(q, k, v, mask, self.method)))


class EncoderLayer(nn.Module):
    """funasr.models.transformer.encoder.EncoderLayer, normalize_before=True."""

    def __init__(self, size: int, heads: int, units: int):
        super().__init__()
        self.self_attn = MultiHeadedAttention(heads, size)
        self.feed_forward = PositionwiseFeedForward(size, units)
        self.norm1 = layer_norm(size, LAYER_NORM_EPS)
        self.norm2 = layer_norm(size, LAYER_NORM_EPS)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        x = x + self.self_attn(self.norm1(x), mask)
        return x + self.feed_forward(self.norm2(x))


class Transformer(nn.Module):
    """The `Transformer` adaptor: (B, T, encoder_dim) -> (B, ceil(T/k), llm_dim)."""

    def __init__(self, conf: dict):
        super().__init__()
        self.k = int(conf.get("downsample_rate", 2))
        encoder_dim, llm_dim = int(conf.get("encoder_dim", 1280)), int(conf.get("llm_dim", 4096))
        self.linear1 = nn.Linear(encoder_dim * self.k, int(conf.get("ffn_dim", 2048)))
        self.linear2 = nn.Linear(int(conf.get("ffn_dim", 2048)), llm_dim)
        heads = int(conf.get("attention_heads", 8))
        self.blocks = [EncoderLayer(llm_dim, heads, llm_dim // 4)
                       for _ in range(int(conf.get("n_layer", 2)))]

    def __call__(self, x: mx.array, lengths: mx.array) -> tuple[mx.array, mx.array]:
        B, T, D = x.shape
        chunks = (T - 1) // self.k + 1
        if chunks * self.k > T:
            x = mx.pad(x, [(0, 0), (0, chunks * self.k - T), (0, 0)])
        x = self.linear2(nn.relu(self.linear1(x.reshape(B, chunks, D * self.k))))
        olens = (lengths - 1) // self.k + 1
        mask = mx.arange(chunks)[None, :] < olens[:, None]
        for block in self.blocks:
            x = block(x, mask)
        return x, olens
