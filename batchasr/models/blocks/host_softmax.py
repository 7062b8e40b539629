"""Softmax and log-softmax with numpy's exp, for networks that run on MLX's CPU backend.

MLX's CPU backend evaluates exp (and every transcendental op) one element at a time: about
12 ns per element on the 2-core x86 machine this was measured on, against 0.8 ns for numpy's
vectorised exp (`benchmarks/README.md`, 2-core CPU). Attention over utterances of a few
hundred frames is B * heads * T * T exps per layer: the softmax alone was a fifth of a SAN-M
encoder layer there. On the CPU, MLX arrays and numpy arrays share the host memory, so
handing the scores to numpy costs one copy back and nothing else.

Only for code that is not traced by `mx.compile` (numpy needs evaluated arrays) and only
worth it on the CPU; on a GPU it would move every score matrix to the host. `softmax` is
chosen by `sanm.attention` (Tuning.attention); `log_softmax`, for the output heads, chooses
numpy on the CPU and MLX elsewhere itself.
"""
from __future__ import annotations

import mlx.core as mx
import numpy as np


def on_cpu() -> bool:
    return mx.default_device() == mx.cpu


def _as_float32(x: mx.array) -> np.ndarray:
    return np.asarray(x if x.dtype == mx.float32 else x.astype(mx.float32))


def softmax(x: mx.array, key_mask: mx.array | None = None) -> mx.array:
    """Softmax over the last axis, in float32, returned in x's dtype (as `precise=True`).

    key_mask, broadcastable to x, True where a key counts: the others get weight 0, and a row
    with no key that counts is all zeros (the official `masked_fill(mask, min) -> softmax ->
    masked_fill(mask, 0)`)."""
    s = _as_float32(x)
    lengths = _prefix_lengths(key_mask, s.shape)
    if lengths is not None:
        return _prefix_softmax(s, lengths).astype(x.dtype)
    empty = None
    if key_mask is not None:
        s = np.where(np.asarray(key_mask), s, np.float32(-np.inf))
    top = s.max(axis=-1, keepdims=True)
    if key_mask is not None:
        empty = np.isneginf(top)  # rows with no key left (small: one value per row)
        if empty.any():
            top = np.where(empty, np.float32(0), top)
        else:
            empty = None
    e = np.subtract(s, top)
    np.exp(e, out=e)
    with np.errstate(invalid="ignore"):  # the sum is >= 1 except in empty rows (0 / 0)
        e /= e.sum(axis=-1, keepdims=True)
    if empty is not None:
        e = np.where(empty, np.float32(0), e)
    return mx.array(e).astype(x.dtype)


def _prefix_lengths(key_mask: mx.array | None, shape: tuple) -> np.ndarray | None:
    """Per batch row, how many keys count, when ``key_mask`` is (B, 1, ..., 1, T) and every
    row's keys that count are its first ones (padding at the end, as a batch's lengths make
    it); else None."""
    if key_mask is None or key_mask.ndim != len(shape) or key_mask.shape[0] != shape[0] \
            or key_mask.shape[-1] != shape[-1] or any(d != 1 for d in key_mask.shape[1:-1]):
        return None
    keep = np.asarray(key_mask).reshape(shape[0], shape[-1])
    lengths = keep.sum(axis=-1)
    if not np.array_equal(keep, np.arange(shape[-1])[None, :] < lengths[:, None]):
        return None
    return lengths


def _prefix_softmax(s: np.ndarray, lengths: np.ndarray) -> mx.array:
    """The masked softmax of `softmax` when each batch row's keys are a prefix: written
    straight into a zeroed MLX buffer (no masked copy of the scores, no copy back), exp only
    where a key counts. The same floats as the masked path: the same maximum, differences
    and exps, and each sum over the whole row, its zeros included, in the same order."""
    out_mx = mx.zeros(s.shape, mx.float32)
    mx.eval(out_mx)
    out = np.asarray(memoryview(out_mx))
    for b, n in enumerate(lengths.tolist()):
        if n:
            row, dst = s[b, ..., :n], out[b, ..., :n]
            np.subtract(row, row.max(axis=-1, keepdims=True), out=dst)
            np.exp(dst, out=dst)
    total = out.sum(axis=-1, keepdims=True)
    if not lengths.all():  # rows with no key: 0 / 1, all zeros
        total[lengths == 0] = 1.0
    out /= total
    return out_mx


def log_softmax(x: mx.array) -> mx.array:
    """log(softmax(x)) over the last axis of an output head's logits, in float32, returned in
    x's dtype. On the CPU with numpy, (x - max) - log(sum(exp(x - max))) in torch's order;
    elsewhere MLX's x - logsumexp(x)."""
    if not on_cpu():
        return x - mx.logsumexp(x, axis=-1, keepdims=True)
    s = _as_float32(x)
    out = np.subtract(s, s.max(axis=-1, keepdims=True))
    out -= np.log(np.exp(out).sum(axis=-1, keepdims=True))
    return mx.array(out).astype(x.dtype)
