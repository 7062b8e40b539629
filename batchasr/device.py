"""Pick the MLX device for a run."""
from __future__ import annotations

import mlx.core as mx


def setup_device(device: str = "auto") -> mx.Device:
    """'auto' keeps MLX's default (the GPU when this MLX build has one), 'cpu' or 'gpu' force it."""
    if device == "cpu":
        mx.set_default_device(mx.cpu)
    elif device == "gpu":
        if not gpu_available():
            raise ValueError("--device gpu: this MLX build has no GPU backend "
                             "(install mlx[cuda13] on NVIDIA, or use a Mac)")
        mx.set_default_device(mx.gpu)
    return mx.default_device()


def gpu_available() -> bool:
    try:
        return mx.metal.is_available() or mx.cuda.is_available()
    except AttributeError:
        return mx.default_device() == mx.gpu


def default_batch_seconds(device: str = "auto") -> float:
    """Audio seconds per batch: large on GPUs (fewer, fuller launches: Paraformer-large bf16
    on an H200 ran 4418 RTFx per stage with 1000 s against 3394 with 300 s, peak 10 GB),
    small on CPUs (less padding; a 20-30 s budget ran ~30% faster than 160 s on a 2-core
    machine)."""
    on_gpu = device == "gpu" or (device == "auto" and gpu_available())
    return 1000.0 if on_gpu else 30.0
