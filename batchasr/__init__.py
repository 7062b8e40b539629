"""batchasr: batch speech transcription with FunASR models on MLX."""
import os

from batchasr import _blas

_blas.preload()  # before anything imports mlx.core: a fast BLAS for MLX's Linux CPU backend
# float32 means float32: MLX would otherwise run fp32 matmuls as TF32 on tensor-core GPUs,
# which moves layer outputs by ~1e-3 and breaks exactness to the official outputs. Half
# precision (--dtype float16/bfloat16) is the fast path; set MLX_ENABLE_TF32=1 to opt in.
os.environ.setdefault("MLX_ENABLE_TF32", "0")

from batchasr.transcript import Segment, Token, Transcript

__version__ = "0.1.0"


def load_model(path_or_name, **kwargs):
    """Load a model folder (official FunASR layout) or a known name; see checkpoints.load_model."""
    from batchasr.checkpoints import load_model as _load

    return _load(path_or_name, **kwargs)


__all__ = ["load_model", "Token", "Segment", "Transcript", "__version__"]
