"""Qwen3 in MLX: shapes, KV-cache consistency, left padding, RoPE frequencies (tiny models)."""
import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_map

from batchasr.models.blocks import generate as G
from batchasr.models.blocks.qwen3 import Model, ModelArgs


def tiny(tie=True, seed=0, **kw):
    args = ModelArgs(**{**dict(hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                               vocab_size=97, rope_theta=1e6, tie_word_embeddings=tie,
                               eos_token_id=5), **kw})
    mx.random.seed(seed)
    m = Model(args)
    m.update(tree_map(lambda p: mx.random.normal(p.shape) * 0.3, m.parameters()))
    return m


def full_logits(m, x):
    """Logits of a (1, L, D) prompt in one pass without padding."""
    cache = G.make_cache(m, [0])
    return m(cache=cache, mask=G.batch_mask(cache[0], x.shape[1]), input_embeddings=x)


def test_args_from_hf_config():
    cfg = {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
           "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 10,
           "rope_parameters": {"rope_theta": 5e5, "rope_type": "default"},
           "eos_token_id": [3, 4], "unknown_key": 1}
    a = ModelArgs.from_dict(cfg)
    assert a.head_dim == 16 and a.rope_theta == 5e5 and a.eos_token_ids == [3, 4]
    with pytest.raises(ValueError):
        ModelArgs.from_dict({**cfg, "rope_scaling": {"rope_type": "yarn"}})


@pytest.mark.parametrize("tie", [True, False])
def test_shapes_and_sanitize(tie):
    m = tiny(tie)
    x = mx.random.normal((2, 5, 32))
    cache = G.make_cache(m, [0, 0])
    out = m(cache=cache, mask=G.batch_mask(cache[0], 5), input_embeddings=x)
    assert out.shape == (2, 5, 97) and out.dtype == mx.float32
    w = {"lm_head.weight": np.zeros((97, 32)), "model.norm.weight": np.ones(32),
         "model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(8)}
    assert ("lm_head.weight" in m.sanitize(dict(w))) == (not tie)
    assert not any("inv_freq" in k for k in m.sanitize(dict(w)))


def test_incremental_decoding_equals_full_pass():
    m = tiny()
    x = mx.random.normal((1, 9, 32))
    ref = full_logits(m, x)
    cache = [G.KVCache() for _ in m.layers]
    steps = [m(cache=cache, mask=G.single_mask(cache[0], 4), input_embeddings=x[:, :4])]
    for t in range(4, 9):  # one position at a time from the cache
        steps.append(m(cache=cache, input_embeddings=x[:, t:t + 1]))
    np.testing.assert_allclose(np.array(mx.concatenate(steps, axis=1)), np.array(ref),
                               rtol=1e-5, atol=1e-5)


def test_left_padded_batch_equals_single_rows():
    m = tiny()
    rng = np.random.default_rng(0)
    prompts = [mx.array(rng.standard_normal((n, 32)).astype(np.float32)) for n in (6, 2, 4)]
    logits, cache = G.prefill(m, prompts)
    assert cache[0].lp == [0, 4, 2]
    for i, p in enumerate(prompts):
        ref = full_logits(m, p[None])[0, -1]
        np.testing.assert_allclose(np.array(logits[i]), np.array(ref), rtol=1e-5, atol=1e-5)
    # the next step for every row, batched, equals the row alone
    tok = mx.array([[3], [7], [11]])
    step = m(tok, cache=cache, mask=G.batch_mask(cache[0], 1))
    for i, p in enumerate(prompts):
        x = mx.concatenate([p, m.embed(tok[i])])[None]
        np.testing.assert_allclose(np.array(step[i, -1]), np.array(full_logits(m, x)[0, -1]),
                                   rtol=1e-5, atol=1e-5)


def test_rope_frequencies_match_transformers_and_round():
    m = tiny()
    att = m.layers[0].self_attn
    inv = 1.0 / (np.float32(1e6) ** (np.arange(0, 16, 2).astype(np.float32) / 16))
    np.testing.assert_allclose(1.0 / np.array(att._freqs), inv, rtol=1e-6)
    m.set_rope_dtype(mx.bfloat16)
    rounded = np.array(mx.array(inv).astype(mx.bfloat16).astype(mx.float32))
    np.testing.assert_allclose(1.0 / np.array(att._freqs), rounded, rtol=1e-6)
    # positions: rotating a query by `offset` equals prepending that many positions
    q = mx.random.normal((1, 4, 1, 16))
    a = mx.fast.rope(q, 16, traditional=False, base=None, freqs=att._freqs, scale=1.0, offset=7)
    ang = 7 * rounded
    qn = np.array(q)[..., :8], np.array(q)[..., 8:]
    ref = np.concatenate([qn[0] * np.cos(ang) - qn[1] * np.sin(ang),
                          qn[1] * np.cos(ang) + qn[0] * np.sin(ang)], axis=-1)
    np.testing.assert_allclose(np.array(a), ref, rtol=1e-5, atol=1e-5)


def test_quantized_and_half_precision_run():
    m = tiny(hidden_size=64, head_dim=32, intermediate_size=128, vocab_size=128)
    x = mx.random.normal((1, 3, 64))
    ref = full_logits(m, x)
    nn.quantize(m, group_size=32, bits=8)
    q = full_logits(m, x)
    assert q.shape == ref.shape
    assert float(mx.abs(q - ref).max()) < 0.05 * float(mx.abs(ref).max())
    h = tiny()
    h.set_dtype(mx.float16)
    assert full_logits(h, x[..., :32].astype(mx.float16)).dtype == mx.float16


@pytest.mark.parametrize("bias", [False, True])
def test_fused_projections_give_the_same_logits(bias):
    """fuse() (q/k/v and gate/up as one matmul each, as Fun-ASR-Nano's loader does) changes
    no output, and leaves no unfused projection behind."""
    m = tiny(attention_bias=bias)
    x = mx.random.normal((2, 6, 32))
    ref = full_logits(m, x[:1])
    m.fuse()
    assert "qkv_proj" in m.layers[0].self_attn and "q_proj" not in m.layers[0].self_attn
    assert "gate_up_proj" in m.layers[0].mlp and "up_proj" not in m.layers[0].mlp
    np.testing.assert_allclose(np.array(full_logits(m, x[:1])), np.array(ref),
                               rtol=1e-5, atol=1e-5)
    m.fuse()  # idempotent
