"""Read PyTorch `model.pt` files without PyTorch and without running arbitrary pickle code.

A `torch.save(state_dict)` file is a zip archive: `<root>/data.pkl` is a pickle whose tensors
point at raw little-endian storages in `<root>/data/<key>`. The unpickler below only rebuilds
the handful of globals such a state dict needs (OrderedDict, torch's tensor/parameter
rebuilders and storage classes); any other global raises, so a malicious file cannot execute
code (the reason torch itself added `weights_only`).
"""
from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    pass


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    itemsize = storage.itemsize
    if not size:
        return storage[storage_offset : storage_offset + 1].reshape(()).copy()
    return np.lib.stride_tricks.as_strided(
        storage[storage_offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    ).copy()


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


def _rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("builtins", "set"): set,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, root: str):
        super().__init__(file)
        self.archive, self.root = archive, root
        self.storages: dict[str, np.ndarray] = {}

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise UnsafeCheckpointError(
            f"refusing to load {module}.{name}: a state-dict checkpoint never needs it")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, _numel = pid
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise UnsafeCheckpointError(f"unexpected persistent id {pid!r}")
        if key not in self.storages:
            raw = self.archive.read(f"{self.root}/data/{key}")
            if storage_type.dtype == "bfloat16":
                bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
                self.storages[key] = bits.view(np.float32)
            else:
                self.storages[key] = np.frombuffer(raw, dtype=np.dtype(storage_type.dtype)
                                                   .newbyteorder("<"))
        return self.storages[key]


def load_torch_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Tensors of a torch.save()d state dict, by name, as numpy arrays (bf16 -> float32).

    Unwraps the `state_dict` / `model_state_dict` / `model` containers and the `module.` prefix
    the way FunASR's loader does.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a zip-format torch checkpoint (re-save it with torch>=1.6,"
                         " or convert it to safetensors)")
    with zipfile.ZipFile(path) as archive:
        pkl = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            raise ValueError(f"{path}: no data.pkl inside; not a torch checkpoint")
        root = pkl[0].rsplit("/", 1)[0] if "/" in pkl[0] else ""
        byteorder = f"{root}/byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise ValueError(f"{path}: big-endian checkpoints are not supported")
        with archive.open(pkl[0]) as f:
            obj = _RestrictedUnpickler(f, archive, root).load()
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(obj).__name__}")
    out = {}
    for name, value in obj.items():
        if isinstance(value, np.ndarray):
            out[name[len("module."):] if name.startswith("module.") else name] = value
    return out
