"""batchasr: batch speech transcription with FunASR models on MLX."""
import os

from batchasr import _blas

_blas.preload()  # before anything imports mlx.core: a fast BLAS for MLX's Linux CPU backend
# float32 means float32 on CPUs and Apple GPUs: MLX would otherwise run fp32 matmuls as TF32 on
# tensor-core hardware, moving layer outputs by ~1e-3 (enough to flip near-tied tokens). On
# NVIDIA GPUs MLX 0.32.4 with TF32 off ran out of memory on large batches (measured on an
# H200, cudaMallocAsync), so there TF32 stays on: use --dtype float16/bfloat16 for speed, and
# MLX_ENABLE_TF32=0 with a small --batch-seconds for fp32 exactness.
if "MLX_ENABLE_TF32" not in os.environ and not _blas.mlx_cuda_installed():
    os.environ["MLX_ENABLE_TF32"] = "0"

from batchasr.transcript import Segment, Token, Transcript

__version__ = "0.1.0"


def load_model(path_or_name, **kwargs):
    """Load a model folder (official FunASR layout) or a known name; see checkpoints.load_model."""
    from batchasr.models.loader import load_model as _load

    return _load(path_or_name, **kwargs)


__all__ = ["load_model", "Token", "Segment", "Transcript", "__version__"]
