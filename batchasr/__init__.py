"""batchasr: batch speech transcription with FunASR models on MLX."""
import os

from batchasr import _blas

_blas.preload()  # before anything imports mlx.core: a fast BLAS for MLX's Linux CPU backend
# float32 means float32 on CPUs and Apple GPUs: MLX would otherwise run fp32 matmuls as TF32 on
# tensor-core hardware, moving layer outputs by ~1e-3 (enough to flip near-tied tokens). On
# NVIDIA GPUs TF32 stays on (MLX's CUDA backend with TF32 off runs out of memory on large
# batches): there --dtype float16/bfloat16 is for speed, MLX_ENABLE_TF32=0 with a small
# --batch-seconds for fp32 exactness.
if "MLX_ENABLE_TF32" not in os.environ and not _blas.mlx_cuda_installed():
    os.environ["MLX_ENABLE_TF32"] = "0"
# MLX's CUDA backend records kernels into CUDA graphs unless told otherwise. The model's process
# is bound by launching kernels, and launching them directly measured faster (H100, 18003 s of
# short clips end to end: 3244 against 2799 RTFx; with the FSMN kernel 3872 against 3071,
# benchmarks/README.md). MLX reads it once per process; a value set by the user wins.
os.environ.setdefault("MLX_USE_CUDA_GRAPHS", "0")

from batchasr.transcript import Segment, Token, Transcript

from batchasr._version import __version__


def load_model(path_or_name, **kwargs):
    """Load a model folder (official FunASR layout) or a known name; see models.loader.load_model."""
    from batchasr.models.loader import load_model as _load

    return _load(path_or_name, **kwargs)


__all__ = ["load_model", "Token", "Segment", "Transcript", "__version__"]
