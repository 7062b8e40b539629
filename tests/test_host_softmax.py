"""numpy softmax / log-softmax (the CPU attention path) against MLX's own, masks included."""
import mlx.core as mx
import numpy as np
import pytest

from batchasr.models.blocks import host_softmax
from batchasr.models.blocks.sanm import attention


def test_softmax_matches_mlx_precise():
    x = mx.random.normal((2, 3, 5, 7), key=mx.random.key(0)) * 4
    np.testing.assert_allclose(np.array(host_softmax.softmax(x)),
                               np.array(mx.softmax(x, axis=-1, precise=True)), atol=1e-6)


def test_masked_keys_get_zero_weight_and_empty_rows_are_zero():
    x = mx.random.normal((3, 1, 4, 6), key=mx.random.key(1))
    keep = mx.array([[True] * 6, [True, True, False, False, False, False], [False] * 6])
    p = np.array(host_softmax.softmax(x, keep[:, None, None, :]))
    ref = np.array(mx.softmax(mx.where(keep[:, None, None, :], x, -np.inf), axis=-1))
    np.testing.assert_allclose(p[:2], ref[:2], atol=1e-6)
    assert (p[1, ..., 2:] == 0).all()
    assert (p[2] == 0).all()  # no key left: all zeros, as the official masked_fill(0)
    np.testing.assert_allclose(p[:2].sum(-1), 1.0, atol=1e-6)


def test_log_softmax_matches_logsumexp_and_keeps_dtype():
    x = mx.random.normal((4, 50), key=mx.random.key(2)) * 10
    ref = x - mx.logsumexp(x, axis=-1, keepdims=True)
    np.testing.assert_allclose(np.array(host_softmax.log_softmax(x)), np.array(ref), atol=1e-5)
    assert host_softmax.log_softmax(x.astype(mx.bfloat16)).dtype == mx.bfloat16


@pytest.mark.parametrize("method", ["fast", "unfused", "host", "auto"])
def test_attention_forms_agree(method):
    k = mx.random.key(3)
    q, kk, v = (mx.random.normal((2, 4, 9, 8), key=s) for s in mx.random.split(k, 3))
    mask = mx.arange(9)[None, :] < mx.array([9, 5])[:, None]
    ref = attention(q, kk, v, mask, "unfused")
    np.testing.assert_allclose(np.array(attention(q, kk, v, mask, method)), np.array(ref),
                               atol=1e-5)


@pytest.mark.parametrize("cuda, cpu, form", [(True, False, "unfused"), (False, False, "fast"),
                                             (False, True, "host")])
def test_auto_picks_the_form_of_the_device(monkeypatch, cuda, cpu, form):
    """"auto": numpy's softmax on the CPU, the plan-free GEMMs where MLX's CUDA backend is the
    device (no cuDNN plan per new batch shape), MLX's fused kernel on other GPUs; the CIF
    convolution likewise as one GEMM on CUDA."""
    from batchasr.models.blocks import cif, sanm
    from batchasr.models.blocks.cif import CifPredictorV2, PredictorArgs

    monkeypatch.setattr(sanm, "on_cuda", lambda: cuda)
    monkeypatch.setattr(cif, "on_cuda", lambda: cuda)
    monkeypatch.setattr(host_softmax, "on_cpu", lambda: cpu)
    used = []
    real_host = host_softmax.softmax
    monkeypatch.setattr(host_softmax, "softmax",
                        lambda *a: used.append("host") or real_host(*a))
    real_fast = mx.fast.scaled_dot_product_attention
    monkeypatch.setattr(mx.fast, "scaled_dot_product_attention",
                        lambda *a, **k: used.append("fast") or real_fast(*a, **k))
    q = mx.random.normal((1, 2, 5, 8), key=mx.random.key(4))
    attention(q, q, q, None, "auto")
    assert used == ([] if form == "unfused" else [form])
    predictor = CifPredictorV2(PredictorArgs(idim=8))
    assert predictor.matmul == cuda


def test_prefix_masks_take_the_in_place_path_with_the_same_floats(monkeypatch):
    """A batch's key mask (B, 1, 1, T), each row's keys a prefix, goes through the in-place
    path: bit for bit the floats of the general masked path, rows with no key all zeros; a
    mask that is not a prefix takes the general path."""
    rng = np.random.default_rng(5)
    for B, T, lens in [(3, 40, [40, 17, 0]), (2, 1, [1, 0]), (4, 130, [130, 1, 64, 129])]:
        x = mx.array((rng.standard_normal((B, 4, T, T)) * 6).astype(np.float32))
        keep = mx.array(np.arange(T)[None, :] < np.array(lens)[:, None])[:, None, None, :]
        assert host_softmax._prefix_lengths(keep, x.shape).tolist() == lens
        fast = np.array(host_softmax.softmax(x, keep))
        general = np.array(host_softmax.softmax(x, mx.broadcast_to(keep, (B, 1, T, T))))
        assert np.array_equal(fast, general)
        assert (fast[np.array(lens) == 0] == 0).all()
    holes = mx.array([[True, False, True]])[:, None, None, :]
    assert host_softmax._prefix_lengths(holes, (1, 2, 3, 3)) is None
    p = np.array(host_softmax.softmax(mx.zeros((1, 2, 3, 3)), holes))
    np.testing.assert_allclose(p[..., [0, 2]], 0.5)
    assert (p[..., 1] == 0).all()
