"""Files of a model folder and weight I/O, for the loader and the families alike.

config.yaml, the token list, and the state dict (model.safetensors, or model.pt read without
PyTorch by batchasr.models.torch_pickle and cached as safetensors, keyed by the model.pt path,
size and mtime, under `cache_dir()`). `apply_weights` checks names and shapes before it loads;
`random_weights` gives dummy full-size models for benchmarks. Imports no family and not the
loader, so every family module may import it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import yaml

from batchasr.errors import CheckpointError

logger = logging.getLogger("batchasr.checkpoints")  # the name log lines show (stable)


def cache_dir() -> Path:
    return Path(os.environ.get("BATCHASR_CACHE", Path.home() / ".cache" / "batchasr"))


def read_config(folder: Path) -> dict:
    path = folder / "config.yaml"
    if not path.exists():
        raise CheckpointError(f"{folder}: no config.yaml (not an official FunASR model folder)")
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def read_tokens(folder: Path, config: dict) -> list[str]:
    for name in ("tokens.json", "tokens.txt"):
        path = folder / name
        if path.exists():
            if name.endswith(".json"):
                return json.loads(path.read_text(encoding="utf-8"))
            return [line.rstrip("\n").split(" ")[0] for line in
                    path.read_text(encoding="utf-8").splitlines()]
    token_list = (config.get("tokenizer_conf") or {}).get("token_list")
    if isinstance(token_list, list):
        return token_list
    raise CheckpointError(f"{folder}: no tokens.json or tokens.txt")


def read_weights(folder: Path) -> dict[str, np.ndarray]:
    """State dict of the folder: model.safetensors if present, else model.pt via the cache."""
    from safetensors.numpy import load_file, save_file

    st = folder / "model.safetensors"
    if st.exists():
        return load_file(str(st))
    pt = folder / "model.pt"
    if not pt.exists():
        raise CheckpointError(f"{folder}: no model.pt or model.safetensors")
    stat = pt.stat()
    key = hashlib.sha256(f"{pt.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    cached = cache_dir() / "converted" / f"{key[:24]}.safetensors"
    if cached.exists():
        return load_file(str(cached))
    from batchasr.models.torch_pickle import load_torch_state_dict

    try:
        weights = load_torch_state_dict(pt)
    except Exception as e:
        raise CheckpointError(f"{pt}: cannot read the checkpoint: {e}") from e
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".tmp{os.getpid()}")
        save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(tmp))
        os.replace(tmp, cached)
    except OSError as e:  # read-only home, full disk: loading still works, just slower
        logger.warning("could not cache converted weights at %s: %s", cached, e)
    return weights


def check_weights(weights: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]], *,
                  strict: bool = True, what: str = "model") -> None:
    """Raise CheckpointError unless ``weights`` fit ``shapes`` (name -> shape): every shape a
    weight of that name has, and with ``strict`` no name missing or unexpected."""
    missing = sorted(set(shapes) - set(weights))
    unexpected = sorted(set(weights) - set(shapes))
    if strict and (missing or unexpected):
        raise CheckpointError(f"{what}: checkpoint does not match the architecture; "
                              f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
                              f"unexpected {unexpected[:8]}"
                              f"{'...' if len(unexpected) > 8 else ''}")
    bad = [(k, tuple(weights[k].shape), tuple(s)) for k, s in shapes.items()
           if k in weights and tuple(weights[k].shape) != tuple(s)]
    if bad:
        raise CheckpointError(f"{what}: shape mismatch for {bad[:5]}")


def apply_weights(model, weights: dict[str, np.ndarray], *, strict: bool = True,
                  what: str = "model") -> None:
    """Load sanitized numpy weights into an MLX module, checking names and shapes."""
    import mlx.core as mx  # here, not above: the numpy VADs read their weights without MLX
    from mlx.utils import tree_flatten, tree_unflatten

    params = dict(tree_flatten(model.parameters()))
    check_weights(weights, {k: v.shape for k, v in params.items()}, strict=strict, what=what)
    model.update(tree_unflatten([(k, mx.array(weights[k]).astype(params[k].dtype))
                                 for k in params if k in weights]))
    mx.eval(model.parameters())


def random_weights(model, seed: int = 0, scale: float = 0.02) -> None:
    """Fill every parameter with small random values (dummy benchmarking weights)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    key = mx.random.key(seed)
    params = tree_flatten(model.parameters())
    new = []
    for i, (k, v) in enumerate(params):
        if k.endswith("norm.weight") or k.endswith("norm1.weight") or k.endswith(
                "norm2.weight") or k.endswith("norm3.weight"):
            new.append((k, mx.ones(v.shape)))
        else:
            new.append((k, scale * mx.random.normal(v.shape, key=mx.random.split(key, i + 2)[i + 1])))
    model.update(tree_unflatten(new))
    mx.eval(model.parameters())
