"""Tuning switches of the networks, read from the environment once, when a model is loaded.

They choose between equivalent kernels (same results within float tolerance) and never change
what is recognised. Forward calls read only the fields `tune` sets on the modules, never the
environment, so a loaded model keeps the switches it was built with.

    BATCHASR_FSMN          shift (default) | conv | auto   FSMN memory: shifted sums or a
                                                           grouped convolution ("auto": conv
                                                           on GPUs, shift on the CPU)
    BATCHASR_ATTENTION     fast (default) | unfused        MLX's fused attention kernel, or two
                                                           GEMMs around a float32 softmax
    BATCHASR_CIF_CONV      conv (default) | matmul         the CIF convolution, or one GEMM
                                                           over stacked shifted frames
    BATCHASR_FRAME_BUCKET  16 (default)                    Paraformer batches are padded to a
                                                           multiple of this many frames
    BATCHASR_COMPILE       1 to use mx.compile'd layers    (Paraformer)

The grouped convolution and the compiled layers are faster on GPUs but opt-in until they are
known to be stable on MLX's CUDA backend; the unfused attention and the matmul CIF avoid a
cuDNN plan per new batch shape on NVIDIA GPUs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Tuning:
    fsmn: str = "shift"
    attention: str = "fast"
    cif_conv: str = "conv"
    frame_bucket: int = 16
    compile: bool = False

    @classmethod
    def from_env(cls, env=None) -> "Tuning":
        env = os.environ if env is None else env
        return cls(fsmn=env.get("BATCHASR_FSMN", cls.fsmn),
                   attention=env.get("BATCHASR_ATTENTION", cls.attention),
                   cif_conv=env.get("BATCHASR_CIF_CONV", cls.cif_conv),
                   frame_bucket=int(env.get("BATCHASR_FRAME_BUCKET", str(cls.frame_bucket))),
                   compile=env.get("BATCHASR_COMPILE") == "1")


def tune(model, tuning: Tuning) -> None:
    """Set the switches on every module of `model` that has them (a `tune(tuning)` method)."""
    for _, module in model.named_modules():
        if callable(getattr(type(module), "tune", None)):
            module.tune(tuning)
