"""Tuning switches of the networks, read from the environment once, when a model is loaded.

They choose between equivalent kernels (same results within float tolerance) and never change
what is recognised. Forward calls read only the fields `tune` sets on the modules, never the
environment, so a loaded model keeps the switches it was built with.

    BATCHASR_FSMN          kernel (default) | shift |      FSMN memory: one CUDA kernel for
                           conv | auto                     the whole memory branch (the
                                                           shifted sums where MLX's CUDA is
                                                           not the device), shifted sums, or a
                                                           grouped convolution ("auto": conv
                                                           on GPUs, shift on the CPU)
    BATCHASR_ATTENTION     auto (default) | fast |         MLX's fused attention kernel, two
                           unfused | host                  GEMMs around a float32 softmax, or
                                                           the GEMMs around numpy's softmax
                                                           ("auto": host on the CPU, unfused
                                                           where MLX's CUDA backend is the
                                                           device, fast elsewhere and in
                                                           compiled layers)
    BATCHASR_CIF_CONV      auto (default) | conv | matmul  the CIF convolution, or one GEMM
                                                           over stacked shifted frames
                                                           ("auto": matmul where MLX's CUDA
                                                           backend is the device)
    BATCHASR_FRAME_BUCKET  16 (default on GPUs; 1 on the   Paraformer batches are padded to a
                           CPU)                            multiple of this many frames (few
                                                           shapes for GPU kernels and plans;
                                                           on the CPU a shape costs nothing
                                                           and padding is pure work)
    BATCHASR_TOKEN_BUCKET  1 (default)                     Paraformer's decoder runs on a token
                                                           axis padded to a multiple of this
                                                           (masked rows: the same tokens)
    BATCHASR_COMPILE       1 to use mx.compile'd layers    (Paraformer)
    BATCHASR_DFT           fft (default) | matmul          the fbank's power spectrum by FFT,
                                                           or by one GEMM with the DFT's rows
                                                           (no FFT plan per batch shape)
    BATCHASR_UPLOAD        inline (default) | fill |       a batch's padded waveforms copied
                           stream                          by mx.array and read in place by
                                                           the frontend's first kernel; or
                                                           written by numpy into a zeroed MLX
                                                           buffer; or copied to the device on
                                                           a stream of their own
    BATCHASR_FINISH        inline (default) | thread       Paraformer: a batch's end (the wait
                                                           for its tokens, timestamps, text)
                                                           on the model's thread, or on a
                                                           thread of its own beside the next
                                                           batch's launches
    BATCHASR_RETIRE_AT     0 .. 1 (0.25 on a GPU, 0 on     Fun-ASR-Nano's continuous decoding:
                           the CPU)                        finished rows stay in the batch,
                                                           idle, until they are this fraction
                                                           of it (fewer cache rebuilds; the
                                                           same tokens), 0 retires at once

The grouped convolution and the compiled layers are faster on GPUs but opt-in until they are
known to be stable on MLX's CUDA backend; the upload stream is opt-in until an A/B on a GPU
(`benchmarks/gpu_session.sh upload-ab`) says it pays. The unfused attention and the matmul
CIF are what "auto" runs on NVIDIA GPUs: they need no cuDNN plan per new batch shape. On an
H100 (`gpu_session.sh graphs-ab`, sixth session) a new shape's first encoder pass took
0.026-0.030 s with them against 0.068-0.085 s with cuDNN's attention and convolution, its
first decoder pass 0.017-0.018 s against 0.056-0.069 s, and a warm pass the same (0.015-0.018
s); end to end on 18003 s of clips they were within one run's noise (2693-2783 RTFx against
2708). A job's process meets every batch shape for the first time. Nano's idle rows are the GPU's
default: on an H100 (`benchmarks/gpu_session.sh nano-ab`, alternating) 604 s end to end took
1.25 s in the model stage against 1.34-1.40 s retiring at once; on the CPU an idle row's step
is real work, so rows retire at once there. The FSMN kernel is the default: on an H100
(`gpu_session.sh graphs-ab`, 18003 s of clips) a warm encoder pass took 0.011 s against 0.024 s
and the in-memory pass ran at 8222 RTFx against 6559 (9810 with CUDA graphs off, as batchasr
sets them, see batchasr/__init__.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import mlx.core as mx


@dataclass(frozen=True)
class Tuning:
    fsmn: str = "kernel"
    attention: str = "auto"
    cif_conv: str = "auto"
    frame_bucket: int = 16
    token_bucket: int = 1
    compile: bool = False
    upload: str = "inline"
    dft: str = "fft"
    finish: str = "inline"
    retire_at: float = 0.25

    @classmethod
    def from_env(cls, env=None, *, cpu: bool = False) -> "Tuning":
        """The switches from `env` (default os.environ); `cpu`: the defaults for a model
        on the CPU."""
        env = os.environ if env is None else env
        bucket = 1 if cpu else cls.frame_bucket
        retire_at = 0.0 if cpu else cls.retire_at
        return cls(fsmn=env.get("BATCHASR_FSMN", cls.fsmn),
                   attention=env.get("BATCHASR_ATTENTION", cls.attention),
                   cif_conv=env.get("BATCHASR_CIF_CONV", cls.cif_conv),
                   frame_bucket=int(env.get("BATCHASR_FRAME_BUCKET", str(bucket))),
                   token_bucket=int(env.get("BATCHASR_TOKEN_BUCKET", "1")),
                   compile=env.get("BATCHASR_COMPILE") == "1",
                   upload=env.get("BATCHASR_UPLOAD", cls.upload),
                   dft=env.get("BATCHASR_DFT", cls.dft),
                   finish=env.get("BATCHASR_FINISH", cls.finish),
                   retire_at=float(env.get("BATCHASR_RETIRE_AT", retire_at)))


def on_cuda() -> bool:
    """Whether MLX's CUDA backend is the device: the default device a GPU of a CUDA build."""
    return mx.cuda.is_available() and mx.default_device() == mx.gpu


def tune(model, tuning: Tuning) -> None:
    """Set the switches on every module of `model` that has them (a `tune(tuning)` method)."""
    for _, module in model.named_modules():
        if callable(getattr(type(module), "tune", None)):
            module.tune(tuning)
