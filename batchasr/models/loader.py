"""Find, read and build models: official FunASR folders, known names, dummy weights.

An official folder holds config.yaml, model.pt (a torch state dict), tokens.json and, for
Paraformer, am.mvn. It loads without PyTorch (batchasr.models.torch_pickle); the converted weights are
cached as safetensors (keyed by the model.pt path, size and mtime) so later loads are fast.

Names such as `paraformer-zh` resolve to a local Hugging Face or ModelScope cache folder when
one exists. Nothing is downloaded unless the caller asks (`download=True`, CLI `--download`).
`weights="dummy"` builds the full-size architecture of a name or folder with random weights,
for benchmarks.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np
import yaml
from mlx.utils import tree_flatten, tree_unflatten

from batchasr.errors import CheckpointError

logger = logging.getLogger("batchasr.models.loader")

# name -> (Hugging Face repo, ModelScope repo)
KNOWN_MODELS = {
    "paraformer-zh": ("funasr/paraformer-zh",
                      "iic/speech_paraformer-large_asr_nat-zh-cn-16k-common-vocab8404-pytorch"),
    "paraformer": ("funasr/paraformer-zh",
                   "iic/speech_paraformer-large_asr_nat-zh-cn-16k-common-vocab8404-pytorch"),
    "paraformer-en": ("funasr/paraformer-en",
                      "iic/speech_paraformer-large-vad-punc_asr_nat-en-16k-common-vocab10020"),
    "fun-asr-nano": ("FunAudioLLM/Fun-ASR-Nano-2512", "FunAudioLLM/Fun-ASR-Nano-2512"),
    "ct-punc": ("funasr/ct-punc", "iic/punc_ct-transformer_cn-en-common-vocab471067-large"),
    "ct-punc-c": ("iic/punc_ct-transformer_zh-cn-common-vocab272727-pytorch",
                  "iic/punc_ct-transformer_zh-cn-common-vocab272727-pytorch"),
    "fsmn-vad": ("funasr/fsmn-vad", "iic/speech_fsmn_vad_zh-cn-16k-common-pytorch"),
}

# The published paraformer-large config.yaml (values in shared/reference/funasr-models.md 1.2),
# used to build full-size dummy models when no folder is at hand.
PARAFORMER_LARGE_CONFIG = {
    "model": "Paraformer",
    "encoder": "SANMEncoder",
    "encoder_conf": {"output_size": 512, "attention_heads": 4, "linear_units": 2048,
                     "num_blocks": 50, "input_layer": "pe", "normalize_before": True,
                     "kernel_size": 11, "sanm_shfit": 0, "selfattention_layer_type": "sanm"},
    "decoder": "ParaformerSANMDecoder",
    "decoder_conf": {"attention_heads": 4, "linear_units": 2048, "num_blocks": 16,
                     "att_layer_num": 16, "kernel_size": 11, "sanm_shfit": 0},
    "predictor": "CifPredictorV2",
    "predictor_conf": {"idim": 512, "threshold": 1.0, "l_order": 1, "r_order": 1,
                       "tail_threshold": 0.45},
    "frontend": "WavFrontend",
    "frontend_conf": {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25,
                      "frame_shift": 10, "lfr_m": 7, "lfr_n": 6},
    "tokenizer": "CharTokenizer",
}
DUMMY_VOCAB = {"paraformer-zh": 8404, "paraformer": 8404, "paraformer-en": 10020,
               "fun-asr-nano": 151936}


def cache_dir() -> Path:
    return Path(os.environ.get("BATCHASR_CACHE", Path.home() / ".cache" / "batchasr"))


def resolve(path_or_name: str | os.PathLike, *, download: bool = False) -> Path:
    """A model folder for a path or a known name (local caches first; hub only on request)."""
    p = Path(path_or_name).expanduser()
    if p.is_dir():
        return p
    name = str(path_or_name)
    if name not in KNOWN_MODELS:
        if p.exists():
            raise CheckpointError(f"{p} is a file; give the model folder that holds config.yaml")
        raise CheckpointError(f"no model folder {name!r}, and it is not a known name "
                              f"(known: {', '.join(sorted(KNOWN_MODELS))})")
    hf_repo, ms_repo = KNOWN_MODELS[name]
    for candidate in _cache_candidates(hf_repo, ms_repo):
        if (candidate / "config.yaml").exists():
            return candidate
    if not download:
        raise CheckpointError(
            f"{name}: not found in the local Hugging Face or ModelScope caches. Download it once "
            f"with --download (needs network and `pip install huggingface_hub`), or pass the "
            f"folder of an official checkpoint ({hf_repo} on Hugging Face, {ms_repo} on "
            f"ModelScope).")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise CheckpointError("--download needs `pip install huggingface_hub`") from e
    try:
        return Path(snapshot_download(hf_repo))
    except Exception as e:  # offline, 404, auth
        raise CheckpointError(f"{name}: download of {hf_repo} failed ({e}); offline machines "
                              f"need the folder copied in by hand") from e


DUMMY_SUFFIX = " (dummy weights)"  # load_model's label for a model built with weights="dummy"


def model_identity(path_or_name: str | os.PathLike, *, weights: str = "checkpoint",
                   download: bool = False) -> str:
    """What a job records as its model: the real absolute path of the folder that
    ``path_or_name`` resolves to (so ``./x``, ``x`` and ``/abs/x`` are one model, and a known
    name is the cache folder it is found in); a known name with ``weights="dummy"`` and no
    folder stays the name. Raises CheckpointError as :func:`resolve` does."""
    dummy = weights == "dummy"
    try:
        folder = resolve(path_or_name, download=download and not dummy)
    except CheckpointError:
        if dummy and str(path_or_name) in DUMMY_VOCAB:
            return str(path_or_name)
        raise
    return os.path.realpath(folder)


def same_model(recorded: str, identity: str, *, weights: str = "checkpoint") -> bool:
    """Whether a job's recorded model (an identity, or the string an older version recorded
    as typed, e.g. a relative path) is the model ``identity`` (:func:`model_identity`)."""
    if recorded == identity:
        return True
    try:
        return model_identity(recorded, weights=weights) == identity
    except CheckpointError:
        return False


def _cache_candidates(hf_repo: str, ms_repo: str):
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    hub = Path(os.environ.get("HF_HUB_CACHE", hf_home / "hub"))
    snaps = hub / f"models--{hf_repo.replace('/', '--')}" / "snapshots"
    if snaps.is_dir():
        yield from sorted(snaps.iterdir(), key=lambda d: d.stat().st_mtime, reverse=True)
    ms = Path(os.environ.get("MODELSCOPE_CACHE", Path.home() / ".cache" / "modelscope"))
    yield ms / "hub" / "models" / ms_repo
    yield ms / "hub" / ms_repo


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


def apply_weights(model, weights: dict[str, np.ndarray], *, strict: bool = True,
                  what: str = "model") -> None:
    """Load sanitized numpy weights into an MLX module, checking names and shapes."""
    params = dict(tree_flatten(model.parameters()))
    missing = sorted(set(params) - set(weights))
    unexpected = sorted(set(weights) - set(params))
    if strict and (missing or unexpected):
        raise CheckpointError(f"{what}: checkpoint does not match the architecture; "
                              f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
                              f"unexpected {unexpected[:8]}"
                              f"{'...' if len(unexpected) > 8 else ''}")
    bad = [(k, weights[k].shape, params[k].shape) for k in params
           if k in weights and tuple(weights[k].shape) != tuple(params[k].shape)]
    if bad:
        raise CheckpointError(f"{what}: shape mismatch for {bad[:5]}")
    model.update(tree_unflatten([(k, mx.array(weights[k]).astype(params[k].dtype))
                                 for k in params if k in weights]))
    mx.eval(model.parameters())


def random_weights(model, seed: int = 0, scale: float = 0.02) -> None:
    """Fill every parameter with small random values (dummy benchmarking weights)."""
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


# --------------------------------------------------------------------------------------------
# families
# --------------------------------------------------------------------------------------------
def _build_paraformer(folder: Path | None, config: dict, tokens: list[str] | None,
                      dummy: bool, name: str, dtype):
    from batchasr.models.blocks.frontend import load_cmvn
    from batchasr.models.paraformer import Model, ModelArgs
    from batchasr.models.paraformer_asr import ParaformerASR

    fc = config.get("frontend_conf") or {}
    input_size = (config.get("encoder_conf") or {}).get("input_size") or \
        fc.get("n_mels", 80) * fc.get("lfr_m", 1)
    if tokens is None:  # dummy without a folder: a synthetic vocabulary of the right size
        n = DUMMY_VOCAB.get(name, 8404)
        tokens = ["<blank>", "<s>", "</s>"] + [chr(0x4E00 + i) for i in range(n - 4)] + ["<unk>"]
    try:
        args = ModelArgs(vocab_size=len(tokens), input_size=input_size,
                         encoder_conf=config["encoder_conf"], decoder_conf=config["decoder_conf"],
                         predictor_conf=config["predictor_conf"], frontend_conf=fc,
                         model=config.get("model", "Paraformer"),
                         encoder=config.get("encoder", "SANMEncoder"),
                         decoder=config.get("decoder", "ParaformerSANMDecoder"),
                         predictor=config.get("predictor", "CifPredictorV2"))
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{folder or name}: unsupported Paraformer config: {e}") from e
    model = Model(args)
    cmvn = None
    if folder is not None and (folder / "am.mvn").exists():
        cmvn = load_cmvn(folder / "am.mvn")
    if dummy:
        random_weights(model)
        # a CIF firing about 4 tokens per second, as real speech does
        model.predictor.cif_output.bias = mx.full((1,), float(np.log(0.24 / 0.76)))
        if cmvn is None:
            rng = np.random.default_rng(0)
            cmvn = np.stack([-rng.normal(11, 2, input_size),
                             1 / rng.uniform(2, 5, input_size)]).astype(np.float32)
    else:
        apply_weights(model, model.sanitize(read_weights(folder)), what=str(folder))
    if dtype != mx.float32:
        model.set_dtype(dtype)
        model.predictor.set_dtype(mx.float32)  # CIF decides token counts: keep it float32
    model.eval()
    return ParaformerASR(model, tokens, cmvn, name=name, dtype=dtype)


@dataclass(frozen=True)
class Family:
    """How to build one config.yaml `model:` type: a builder function
    `(folder, config, tokens, dummy, name, dtype)`, imported on first use, and whether the
    family reads a tokens.json / tokens.txt token list."""

    module: str
    builder: str
    token_list: bool

    def build(self, *args):
        return getattr(importlib.import_module(self.module), self.builder)(*args)


FAMILIES = {
    "Paraformer": Family("batchasr.models.loader", "_build_paraformer", token_list=True),
    "FunASRNano": Family("batchasr.models.nano_asr", "build", token_list=False),  # tokenizer.json of its LLM
    "CTTransformer": Family("batchasr.models.punctuation", "build", token_list=True),
    # a VAD (batchasr.models.vad.load_vad), not an ASR model
    "FsmnVADStreaming": Family("batchasr.models.vad", "build_fsmn_vad", token_list=False),
}


RECOGNIZERS = {"Paraformer": ("batchasr.models.paraformer_asr", "ParaformerASR"),
               "FunASRNano": ("batchasr.models.nano_asr", "FunASRNanoASR")}


def recognizer_traits(path_or_name) -> dict:
    """What the recognizer of a model folder or known name declares (``punctuated``,
    ``max_segment_s``), from its config alone: for a driver that loads no weights."""
    name = str(path_or_name)
    try:
        kind = read_config(resolve(path_or_name)).get("model")
    except CheckpointError:
        if name not in DUMMY_VOCAB:
            raise
        kind = "FunASRNano" if name == "fun-asr-nano" else "Paraformer"
    if kind not in RECOGNIZERS:
        raise CheckpointError(f"{name}: model type {kind!r} is not a recognizer "
                              f"(recognizers: {', '.join(RECOGNIZERS)})")
    module, cls = RECOGNIZERS[kind]
    cls = getattr(importlib.import_module(module), cls)
    return {"punctuated": cls.punctuated, "max_segment_s": cls.max_segment_s}


def load_model(path_or_name, *, weights: str = "checkpoint", dtype=mx.float32,
               download: bool = False):
    """Load a recognizer (implements batchasr.transcript.ASRModel).

    Args:
        path_or_name: an official model folder, or a known name (see KNOWN_MODELS).
        weights: "checkpoint" (the folder's weights) or "dummy" (random, full-size, for
            benchmarks; a known name needs no folder then).
        dtype: mx.float32 (default), mx.float16 or mx.bfloat16 for the network weights.
        download: allow fetching a known name from the Hugging Face hub.
    Raises:
        CheckpointError: missing files, unknown model type, weights that do not fit.
    """
    dummy = weights == "dummy"
    if weights not in ("checkpoint", "dummy"):
        raise ValueError(f"weights must be 'checkpoint' or 'dummy', not {weights!r}")
    name = str(path_or_name)
    folder: Path | None = None
    try:
        folder = resolve(path_or_name, download=download and not dummy)
    except CheckpointError:
        if not (dummy and name in DUMMY_VOCAB):
            raise
    tokens = None
    if folder is None:
        config = PARAFORMER_LARGE_CONFIG
        if name == "fun-asr-nano":
            from batchasr.models.nano_asr import FUN_ASR_NANO_CONFIG as config
    else:
        config = read_config(folder)
        name = name if name in KNOWN_MODELS else folder.name
    family = FAMILIES.get(config.get("model"))
    if family is None:
        raise CheckpointError(f"{folder or name}: model type {config.get('model')!r} is not "
                              f"supported (supported: {', '.join(FAMILIES)})")
    if folder is not None and family.token_list:
        has_list = (folder / "tokens.json").exists() or (folder / "tokens.txt").exists()
        if has_list or not dummy:  # a dummy model may make up its vocabulary
            tokens = read_tokens(folder, config)
    model = family.build(folder, config, tokens, dummy, name, dtype)
    if dummy:  # results and `status` show this label: random weights must never pass as real
        model.name = f"{model.name}{DUMMY_SUFFIX}"
    return model
