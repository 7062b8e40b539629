"""The FSMN memory's forms (BATCHASR_FSMN): "kernel" is one CUDA kernel where MLX's CUDA
backend is the device and the shifted sums elsewhere; the CUDA checks run only on such a
machine (`benchmarks/gpu_session.sh kernel-check` runs them there)."""
from __future__ import annotations

import os

import mlx.core as mx
import numpy as np
import pytest

from batchasr.models.blocks import fsmn_kernel
from batchasr.models.blocks.sanm import FSMNBlock, fsmn_padding
from batchasr.models.blocks.tuning import Tuning

cuda = pytest.mark.skipif(not fsmn_kernel.available(), reason="needs MLX's CUDA backend")


def block(method: str, C=48, K=11, shift=0, seed=0) -> FSMNBlock:
    b = FSMNBlock(C, K, fsmn_padding(K, shift))
    b.weight = mx.array(np.random.default_rng(seed).normal(0, 0.3, (C, 1, K)).astype(np.float32))
    b.tune(Tuning(fsmn=method))
    return b


def inputs(B=3, T=37, C=48, seed=1):
    rng = np.random.default_rng(seed)
    qkv = mx.array(rng.normal(0, 1, (B, T, 3 * C)).astype(np.float32))
    lens = np.array([T, T - 9, 5][:B])
    mask = mx.arange(T)[None, :] < mx.array(lens)[:, None]
    return qkv, mask


def reference(b: FSMNBlock, v: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(conv(v*m) + v*m) * m in float64, the depthwise convolution written out."""
    w = np.array(b.weight, dtype=np.float64)[:, 0, :]  # (C, K)
    K, left = b.kernel_size, b.left_padding
    m = mask[..., None].astype(np.float64)
    vm = v.astype(np.float64) * m
    T = v.shape[1]
    conv = np.zeros_like(vm)
    for k in range(K):
        for t in range(T):
            s = t + k - left
            if 0 <= s < T:
                conv[:, t] += vm[:, s] * w[:, k]
    return (conv + vm) * m


@pytest.mark.parametrize("shift", [0, 2])
def test_memory_is_the_masked_convolution_plus_input(shift):
    b = block("shift", shift=shift)
    qkv, mask = inputs()
    v = mx.split(qkv, 3, axis=-1)[2]
    got = np.array(b.memory(v, mask))
    np.testing.assert_allclose(got, reference(b, np.array(v), np.array(mask)), atol=2e-5)
    whole = np.array(b.memory(v, None))
    np.testing.assert_allclose(whole, reference(b, np.array(v), np.ones(mask.shape, bool)),
                               atol=2e-5)


def test_kernel_method_falls_back_to_the_shifted_sums_off_cuda(monkeypatch):
    monkeypatch.setattr(fsmn_kernel, "available", lambda: False)
    qkv, mask = inputs()
    v = mx.split(qkv, 3, axis=-1)[2]
    want = np.array(block("shift").memory(v, mask))
    assert np.array_equal(np.array(block("kernel").memory(v, mask)), want)


@cuda
@pytest.mark.parametrize("dtype, tol", [(mx.float32, 2e-5), (mx.bfloat16, 3e-2)])
@pytest.mark.parametrize("shift", [0, 2])
def test_cuda_kernel_matches_the_shifted_sums(dtype, tol, shift):
    qkv, mask = inputs(B=3, T=203, C=512)
    qkv = qkv.astype(dtype)
    v = mx.split(qkv, 3, axis=-1)[2]  # a strided view, read in place
    kern, ref = block("kernel", C=512, shift=shift), block("shift", C=512, shift=shift)
    got = kern.memory(v, mask)
    assert got.dtype == dtype and got.shape == v.shape
    want = reference(ref, np.array(v.astype(mx.float32)), np.array(mask))
    np.testing.assert_allclose(np.array(got.astype(mx.float32)), want, atol=tol, rtol=tol)
    whole = reference(ref, np.array(v.astype(mx.float32)), np.ones(mask.shape, bool))
    np.testing.assert_allclose(np.array(kern.memory(v, None).astype(mx.float32)), whole,
                               atol=tol, rtol=tol)


TF32 = os.environ.get("MLX_ENABLE_TF32") != "0"  # MLX's CUDA default: float32 GEMMs as TF32


@cuda
@pytest.mark.parametrize("dtype, enc_tol", [("float32", 1e-3 if TF32 else 1e-4),
                                            ("float16", 5e-3), ("bfloat16", 3e-2)])
def test_cuda_kernel_in_the_models(dtype, enc_tol, monkeypatch):
    """The fixtures' Paraformers with the kernel against the shifted sums: encoder outputs
    within the dtype's tolerance (float32 with TF32 GEMMs: 50 layers turn the sums' last-bit
    differences into 2.4e-4, measured on an H100), and in exact float32 (MLX_ENABLE_TF32=0)
    the same tokens, plain and compiled."""
    import json
    from pathlib import Path

    from batchasr.models.loader import load_model

    folder = Path(__file__).parent / "fixtures" / "paraformer"
    for name in ("zh_mixed", "en"):
        clips = json.loads((folder / name / "expected.json").read_text())["clips"]
        waves = [np.load(folder / name / "tensors" / f"{c}.npz")["waveform"] for c in clips]
        models = {}
        for method in ("shift", "kernel"):
            monkeypatch.setenv("BATCHASR_FSMN", method)
            models[method] = load_model(folder / name, dtype=getattr(mx, dtype))
        feats, lens = models["shift"].features(waves)
        feats = feats.astype(getattr(mx, dtype))
        ref = np.array(models["shift"].model(feats, lens)[0].astype(mx.float32))
        got = np.array(models["kernel"].model(feats, lens)[0].astype(mx.float32))
        assert np.abs(got - ref).max() / np.abs(ref).max() < enc_tol, (name, dtype)
        if dtype == "float32" and not TF32:
            key = lambda ts: [[k.id for k in t.tokens] for t in ts]  # noqa: E731
            want = key(models["shift"].transcribe(waves))
            assert key(models["kernel"].transcribe(waves)) == want, name
            models["kernel"].model.compile()
            try:
                assert key(models["kernel"].transcribe(waves)) == want, (name, "compiled")
            finally:
                models["kernel"].model.compile(False)


@pytest.mark.parametrize("given, expected", [(None, "0"), ("1", "1")])
def test_importing_batchasr_turns_cuda_graphs_off_unless_set(given, expected):
    """MLX_USE_CUDA_GRAPHS defaults to 0 once batchasr is imported (direct launches measured
    faster); a value the user set is kept."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MLX_USE_CUDA_GRAPHS"}
    if given is not None:
        env["MLX_USE_CUDA_GRAPHS"] = given
    code = "import os, batchasr; print(os.environ['MLX_USE_CUDA_GRAPHS'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == expected

