"""Qwen3 causal LM in MLX (the LLM of Fun-ASR-Nano), in the shape of mlx-lm's qwen3.py.

Port of `transformers/models/qwen3/modeling_qwen3.py` (Qwen3ForCausalLM) for inference:
GQA attention with RMSNorm on each head's q and k before RoPE (rotate-half layout, θ from the
config), SwiGLU MLP, pre-norm residual blocks, final RMSNorm, LM head tied to the embeddings
when `tie_word_embeddings`. Module attributes follow the HF weight names (`model.layers.0.
self_attn.q_proj`, ...), so `llm.*` tensors of a Fun-ASR-Nano model.pt load unchanged.

The file does no I/O and builds no masks: every call gets its KV caches (objects with `offset`
and `update_and_fetch`, see batchasr.models.blocks.generate) and an attention mask from the caller.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from batchasr.models.base import BaseModelArgs


@dataclass
class ModelArgs(BaseModelArgs):
    """HF `config.json` of a Qwen3 checkpoint, keys unchanged."""

    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    rms_norm_eps: float = 1e-6
    head_dim: int | None = None
    rope_theta: float | None = None
    rope_parameters: dict | None = None  # transformers >= 5 spells θ here
    rope_scaling: dict | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    max_position_embeddings: int = 40960
    eos_token_id: int | list[int] | None = None
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    hidden_act: str = "silu"
    model_type: str = "qwen3"

    def __post_init__(self):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.rope_theta is None:
            self.rope_theta = float((self.rope_parameters or {}).get("rope_theta", 10000.0))
        rope_type = (self.rope_scaling or self.rope_parameters or {}).get("rope_type", "default")
        if rope_type not in ("default", None):
            raise ValueError(f"Qwen3 rope_type {rope_type!r} is not supported (only 'default')")
        if self.hidden_act != "silu":
            raise ValueError(f"Qwen3 hidden_act {self.hidden_act!r} is not supported")

    @property
    def eos_token_ids(self) -> list[int]:
        e = self.eos_token_id
        return [] if e is None else ([e] if isinstance(e, int) else list(e))


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        dim, self.n_heads, self.n_kv_heads = (args.hidden_size, args.num_attention_heads,
                                              args.num_key_value_heads)
        self.head_dim = hd = args.head_dim
        self.scale = hd ** -0.5
        self.rope_theta = args.rope_theta
        bias = args.attention_bias
        self.q_proj = nn.Linear(dim, self.n_heads * hd, bias=bias)
        self.k_proj = nn.Linear(dim, self.n_kv_heads * hd, bias=bias)
        self.v_proj = nn.Linear(dim, self.n_kv_heads * hd, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * hd, dim, bias=bias)
        self.q_norm = nn.RMSNorm(hd, eps=args.rms_norm_eps)
        self.k_norm = nn.RMSNorm(hd, eps=args.rms_norm_eps)
        self.set_rope_dtype(None)

    def set_rope_dtype(self, dtype: mx.Dtype | None) -> None:
        """RoPE inverse frequencies as transformers computes them (float32), optionally
        rounded through `dtype`: a model built in bf16 and cast to fp32 keeps the rounded
        `inv_freq` buffer, as FunASR's Fun-ASR-Nano LLM does."""
        inv = 1.0 / (np.float32(self.rope_theta) ** (
            np.arange(0, self.head_dim, 2, dtype=np.int64).astype(np.float32) / self.head_dim))
        inv = mx.array(inv.astype(np.float32))
        if dtype is not None:
            inv = inv.astype(dtype).astype(mx.float32)
        self._freqs = 1.0 / inv  # mx.fast.rope takes periods

    def fuse(self) -> None:
        """One q/k/v projection (a third of the matmul launches per decode step)."""
        if "qkv_proj" in self:
            return
        self.qkv_proj = _fused_linear([self.q_proj, self.k_proj, self.v_proj])
        self.qkv_split = [self.q_proj.weight.shape[0],
                          self.q_proj.weight.shape[0] + self.k_proj.weight.shape[0]]
        del self["q_proj"], self["k_proj"], self["v_proj"]

    def __call__(self, x: mx.array, mask: mx.array | None, cache, offset=None) -> mx.array:
        """x: (B, L, D); mask: None or bool (B, 1, L, S); cache: per-layer KV cache; offset:
        its RoPE positions (`cache.offset`, which every layer shares: computed once)."""
        B, L, _ = x.shape
        if "qkv_proj" in self:
            q, k, v = mx.split(self.qkv_proj(x), self.qkv_split, axis=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = self.q_norm(q.reshape(B, L, self.n_heads, -1)).transpose(0, 2, 1, 3)
        k = self.k_norm(k.reshape(B, L, self.n_kv_heads, -1)).transpose(0, 2, 1, 3)
        v = v.reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        rope = dict(traditional=False, base=None, freqs=self._freqs, scale=1.0,
                    offset=cache.offset if offset is None else offset)
        q = mx.fast.rope(q, self.head_dim, **rope)
        k = mx.fast.rope(k, self.head_dim, **rope)
        k, v = cache.update_and_fetch(k, v)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False)

    def fuse(self) -> None:
        """One gate/up projection."""
        if "gate_up_proj" in self:
            return
        self.gate_up_proj = _fused_linear([self.gate_proj, self.up_proj])
        del self["gate_proj"], self["up_proj"]

    def __call__(self, x: mx.array) -> mx.array:
        if "gate_up_proj" in self:
            gate, up = mx.split(self.gate_up_proj(x), 2, axis=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(swiglu(gate, up))


@partial(mx.compile, shapeless=True)
def swiglu(gate: mx.array, up: mx.array) -> mx.array:
    """silu(gate) * up in one kernel (as mlx-lm compiles it)."""
    return nn.silu(gate) * up


def _fused_linear(layers: list[nn.Linear]) -> nn.Linear:
    """One Linear computing the given ones side by side (outputs concatenated)."""
    w = mx.concatenate([m.weight for m in layers], axis=0)
    bias = "bias" in layers[0]
    fused = nn.Linear(w.shape[1], w.shape[0], bias=bias)
    fused.weight = w
    if bias:
        fused.bias = mx.concatenate([m.bias for m in layers], axis=0)
    return fused


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.self_attn = Attention(args)
        self.mlp = MLP(args.hidden_size, args.intermediate_size)
        self.input_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, x: mx.array, mask: mx.array | None, cache, offset=None) -> mx.array:
        h = x + self.self_attn(self.input_layernorm(x), mask, cache, offset)
        return h + self.mlp(self.post_attention_layernorm(h))


class Qwen3Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [TransformerBlock(args) for _ in range(args.num_hidden_layers)]
        self.norm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, h: mx.array, mask: mx.array | None, cache: list) -> mx.array:
        # the layers' caches advance together: one RoPE offset for all (a batch cache's is
        # an array op, one launch per step instead of one per layer)
        offset = cache[0].offset if cache else None
        for layer, c in zip(self.layers, cache):
            h = layer(h, mask, c, offset)
        return self.norm(h)


class Model(nn.Module):
    """Qwen3ForCausalLM: `model` (embeddings, blocks, norm) and the (tied) LM head."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.model = Qwen3Model(args)
        if not args.tie_word_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    def embed(self, ids: mx.array) -> mx.array:
        """Token ids (...,) -> input embeddings (..., hidden_size)."""
        return self.model.embed_tokens(ids)

    def logits(self, h: mx.array) -> mx.array:
        if self.args.tie_word_embeddings:
            return self.model.embed_tokens.as_linear(h)
        return self.lm_head(h)

    def __call__(self, inputs: mx.array | None = None, *, cache: list,
                 mask: mx.array | None = None, input_embeddings: mx.array | None = None,
                 last_only: bool = False) -> mx.array:
        """Token ids (B, L) or input embeddings (B, L, D) -> logits (B, L or 1, vocab).

        `last_only` computes the LM head for the last position only (prefill)."""
        h = input_embeddings if input_embeddings is not None else self.embed(inputs)
        h = self.model(h, mask, cache)
        if last_only:
            h = h[:, -1:]
        return self.logits(h)

    @property
    def layers(self):
        return self.model.layers

    def set_rope_dtype(self, dtype: mx.Dtype | None) -> None:
        for layer in self.layers:
            layer.self_attn.set_rope_dtype(dtype)

    def fuse(self) -> None:
        """Fuse q/k/v and gate/up projections after the weights are loaded (fewer kernel
        launches per decode step, which is launch-bound at small batches)."""
        for layer in self.layers:
            layer.self_attn.fuse()
            layer.mlp.fuse()
        mx.eval(self.parameters())

    def sanitize(self, weights: dict) -> dict:
        """HF Qwen3ForCausalLM tensors -> this module tree (drops a tied lm_head copy)."""
        weights = {k: v for k, v in weights.items() if "rotary_emb.inv_freq" not in k}
        if self.args.tie_word_embeddings:
            weights.pop("lm_head.weight", None)
        return weights
