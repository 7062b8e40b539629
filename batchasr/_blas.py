"""Give MLX's Linux CPU backend a fast BLAS, without the user doing anything.

The `mlx[cpu]` wheel links the reference BLAS, an order of magnitude slower than an optimised
one. libmlx resolves `cblas_sgemm` through the dynamic linker's global scope, so a BLAS opened
with RTLD_GLOBAL *before* `mlx.core` is first imported takes its place. We look for, in order:

1. `$BATCHASR_BLAS` (a path to a shared library exporting cblas_sgemm; "reference" disables
   this module),
2. Intel MKL from the `mkl` wheel (a default dependency on Linux x86-64),
3. the system OpenBLAS (e.g. Debian's libopenblas0-pthread).

macOS (Accelerate) and CUDA builds do not need this; loading is harmless there and skipped.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys

loaded: str | None = None  # path of the BLAS we preloaded, for `batchasr bench` and logs


def _candidates() -> list[str]:
    env = os.environ.get("BATCHASR_BLAS")
    if env:
        return [] if env == "reference" else [env]
    found = []
    for prefix in dict.fromkeys([sys.prefix, sys.base_prefix, os.path.dirname(sys.executable)
                                 + "/.."]):
        found += sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*")))
    for name in ("openblas", "openblasp", "openblaso"):
        lib = ctypes.util.find_library(name)
        if lib:
            found.append(lib)
    found += ["libopenblas.so.0"]
    return found


def preload() -> str | None:
    """Preload a fast BLAS for MLX; returns its path, or None when none was found/needed."""
    global loaded
    if loaded or not sys.platform.startswith("linux") or "mlx.core" in sys.modules:
        return loaded
    for path in _candidates():
        if "mkl_rt" in path:
            # MKL picks its threading runtime from this; intel-openmp ships libiomp5 beside it
            os.environ.setdefault("MKL_THREADING_LAYER", "INTEL")
            libdir = os.path.dirname(path)
            iomp = os.path.join(libdir, "libiomp5.so")
            try:
                if os.path.exists(iomp):
                    ctypes.CDLL(iomp, mode=ctypes.RTLD_GLOBAL)
                else:
                    os.environ["MKL_THREADING_LAYER"] = "GNU"
            except OSError:
                os.environ["MKL_THREADING_LAYER"] = "SEQUENTIAL"
        try:
            lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            lib.cblas_sgemm  # noqa: B018 - must export the symbol MLX needs
        except (OSError, AttributeError):
            continue
        loaded = path
        return loaded
    return None


def mlx_cuda_installed() -> bool:
    """Whether MLX's CUDA backend is installed (the mlx-cuda-* wheels), without importing mlx."""
    from importlib import metadata

    try:
        return any((d.metadata["Name"] or "").lower().startswith("mlx-cuda")
                   or (d.metadata["Name"] or "").lower().startswith("mlx_cuda")
                   for d in metadata.distributions())
    except Exception:
        return False


def _call(names: tuple[str, ...], *args):
    lib = ctypes.CDLL(loaded) if loaded else None
    for name in names if lib is not None else ():
        fn = getattr(lib, name, None)
        if fn is not None:
            return fn(*args)
    return None


def get_threads() -> int | None:
    """Threads each GEMM of the preloaded BLAS (MKL or OpenBLAS) may use; None when none
    was preloaded."""
    return _call(("MKL_Get_Max_Threads", "openblas_get_num_threads"))


def set_threads(n: int) -> bool:
    """Set that number for the whole process; False when no BLAS was preloaded."""
    _call(("MKL_Set_Num_Threads", "openblas_set_num_threads"), ctypes.c_int(max(1, int(n))))
    return bool(loaded)
