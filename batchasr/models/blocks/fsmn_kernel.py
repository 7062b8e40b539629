"""SAN-M's FSMN memory, ``(conv(v * m) + v * m) * m``, as one CUDA kernel (Tuning.fsmn "kernel").

The layer's other forms take about 26 launches for it (a mask multiply, a pad, eleven
multiply-adds of shifted copies, the residual and the mask again; "conv" is one cuDNN
convolution but a new plan per batch shape). On NVIDIA GPUs the model's process is bound by
launching kernels, not by running them, and the memory is the larger part of an encoder
layer's launches. This kernel reads ``v`` in place (a strided view of the fused q/k/v output)
and the weight in its checkpoint layout, accumulates in float32 and writes the layer's dtype:
the same values as the shifted sums within the dtype's rounding. Built once per (kernel size,
left padding, dtype) by MLX's NVRTC path; batch shapes are runtime arguments, so a new shape
costs no build.
"""
from __future__ import annotations

import mlx.core as mx

from batchasr.models.blocks.tuning import on_cuda

_SOURCE = """
    const int B = x_shape[0], T = x_shape[1], C = x_shape[2];
    const unsigned long long idx = cg::this_grid().thread_rank();
    if (idx >= (unsigned long long)B * T * C) return;
    const int c = idx % C;
    const long long bt = idx / C;
    const int t = bt % T;
    const long long b = bt / T;
    const long long xb = b * x_strides[0], mb = b * mask_strides[0];
    if (!mask[mb + t * mask_strides[1]]) {
        out[idx] = static_cast<OutT>(0.0f);
        return;
    }
    float acc = 0.0f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
        const int s = t + k - LEFT;
        if (s >= 0 && s < T && mask[mb + s * mask_strides[1]]) {
            acc += static_cast<float>(x[xb + s * x_strides[1] + c * x_strides[2]])
                * static_cast<float>(w[c * w_strides[0] + k * w_strides[2]]);
        }
    }
    acc += static_cast<float>(x[xb + t * x_strides[1] + c * x_strides[2]]);
    out[idx] = static_cast<OutT>(acc);
"""

_kernel = None


def available() -> bool:
    """Whether the kernel can run here: MLX's CUDA backend, the default device a GPU."""
    return on_cuda()


def fsmn_memory(x: mx.array, mask: mx.array, weight: mx.array, left: int) -> mx.array:
    """x (B, T, C), any strides; mask (B, T) bool, True on real frames; weight (C, 1, K), the
    torch layout, any strides and float dtype -> (B, T, C) in x's dtype. Nothing is copied
    or evaluated here, so it also runs inside mx.compile'd layers."""
    global _kernel
    if _kernel is None:
        _kernel = mx.fast.cuda_kernel(name="fsmn_memory", input_names=["x", "mask", "w"],
                                      output_names=["out"], source=_SOURCE,
                                      ensure_row_contiguous=False)
    B, T, C = x.shape
    K = weight.shape[-1]
    if mask.dtype != mx.bool_:
        mask = mask.astype(mx.bool_)
    return _kernel(inputs=[x, mask, weight], output_shapes=[(B, T, C)],
                   output_dtypes=[x.dtype], grid=(B * T * C, 1, 1), threadgroup=(256, 1, 1),
                   template=[("K", K), ("LEFT", left), ("OutT", x.dtype)])[0]
