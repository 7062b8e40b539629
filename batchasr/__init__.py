"""batchasr: batch speech transcription with FunASR models on MLX."""
from batchasr import _blas

_blas.preload()  # before anything imports mlx.core: a fast BLAS for MLX's Linux CPU backend

from batchasr.transcript import Segment, Token, Transcript

__version__ = "0.1.0"


def load_model(path_or_name, **kwargs):
    """Load a model folder (official FunASR layout) or a known name; see checkpoints.load_model."""
    from batchasr.checkpoints import load_model as _load

    return _load(path_or_name, **kwargs)


__all__ = ["load_model", "Token", "Segment", "Transcript", "__version__"]
