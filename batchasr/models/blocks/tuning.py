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
                                                           ("auto": host on the CPU, fast
                                                           elsewhere and in compiled layers)
    BATCHASR_CIF_CONV      conv (default) | matmul         the CIF convolution, or one GEMM
                                                           over stacked shifted frames
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
    BATCHASR_UPLOAD        inline (default) | stream       a batch's padded waveforms read in
                                                           place by the frontend's first
                                                           kernel, or first copied to the
                                                           device on a stream of their own
    BATCHASR_RETIRE_AT     0 .. 1 (0.25 on a GPU, 0 on     Fun-ASR-Nano's continuous decoding:
                           the CPU)                        finished rows stay in the batch,
                                                           idle, until they are this fraction
                                                           of it (fewer cache rebuilds; the
                                                           same tokens), 0 retires at once

The grouped convolution and the compiled layers are faster on GPUs but opt-in until they are
known to be stable on MLX's CUDA backend; the upload stream is opt-in until an A/B on a GPU
(`benchmarks/gpu_session.sh upload-ab`) says it pays; the unfused attention and the matmul
CIF avoid a cuDNN plan per new batch shape on NVIDIA GPUs. Nano's idle rows are the GPU's
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


@dataclass(frozen=True)
class Tuning:
    fsmn: str = "kernel"
    attention: str = "auto"
    cif_conv: str = "conv"
    frame_bucket: int = 16
    token_bucket: int = 1
    compile: bool = False
    upload: str = "inline"
    dft: str = "fft"
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
                   retire_at=float(env.get("BATCHASR_RETIRE_AT", retire_at)))


def tune(model, tuning: Tuning) -> None:
    """Set the switches on every module of `model` that has them (a `tune(tuning)` method)."""
    for _, module in model.named_modules():
        if callable(getattr(type(module), "tune", None)):
            module.tune(tuning)
