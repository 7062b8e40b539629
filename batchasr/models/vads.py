"""Opening a VAD from its spec, in any process, without MLX.

A spec is what ``batchasr.models.loader.load_vad`` resolves a name or folder to and records on
the VAD (``vad.spec``): "silero" (the vendored weights), a silero-layout .safetensors file, or
the real path of an official fsmn-vad folder. Reader and VAD processes open their VAD from it
(batchasr.runner.read_processes, batchasr.runner.vad_pool): both VAD families are numpy-only,
and nothing here imports MLX, so such a process never touches the accelerator.
"""
from __future__ import annotations

import os
from pathlib import Path

from batchasr.errors import CheckpointError

SILERO_NAMES = ("silero", "silero-vad", "silero_vad")


def open_vad(spec: str | os.PathLike):
    """The VAD of ``spec`` (see the module docstring), its ``spec`` attribute set.
    Raises CheckpointError for anything else."""
    from batchasr.models import fsmn_vad
    from batchasr.models.silero_vad import SileroVAD
    from batchasr.models.weights import read_config

    name = str(spec)
    if name in SILERO_NAMES:
        return _with_spec(SileroVAD.load(), "silero")
    p = Path(name).expanduser()
    if p.is_file() and p.suffix == ".safetensors":
        return _with_spec(SileroVAD.load(p), str(p.resolve()))
    if not p.is_dir():
        raise CheckpointError(f"{name}: no such VAD (silero, a silero .safetensors file or an "
                              f"fsmn-vad folder)")
    config = read_config(p)
    family = config.get("model")
    if family != "FsmnVADStreaming":
        raise CheckpointError(f"{p}: not a VAD model (config.yaml says model: {family}; "
                              f"FsmnVADStreaming expected), or use silero")
    return _with_spec(fsmn_vad.load(p, config), os.path.realpath(p))


def _with_spec(vad, spec: str):
    """A VAD that says how to load it again (``spec``), so another process can."""
    vad.spec = spec
    return vad
