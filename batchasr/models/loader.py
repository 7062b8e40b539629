"""Find, read and build models: official FunASR folders, known names, dummy weights.

An official folder holds config.yaml, model.pt (a torch state dict), tokens.json and, for
Paraformer, am.mvn; it loads without PyTorch (batchasr.models.weights). Names such as
`paraformer-zh` resolve to a local Hugging Face or ModelScope cache folder when one exists.
Nothing is downloaded unless the caller asks (`download=True`, CLI `--download`).
`weights="dummy"` builds the full-size architecture of a name or folder with random weights,
for benchmarks; its label always ends in DUMMY_SUFFIX.

Every family is built the same way (`build`, mlx-lm's load path): config.yaml `model:` ->
family module (FAMILIES) -> `read_assets(folder, config)` (tokens, LLM folder, cmvn, ...) ->
`ModelArgs.from_config(config, assets)` -> `Model(args)` -> random weights, or
`Model.sanitize(read_weights(folder))` applied -> `Model.cast(dtype)` -> `eval()` -> the tuning
switches read once from the environment (batchasr.models.blocks.tuning) -> `wrap(model,
assets, ...)`, the family's recognizer, punctuator or VAD. Families import
batchasr.models.weights, never this module.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path

import mlx.core as mx

from batchasr.errors import CheckpointError
from batchasr.models.blocks.tuning import Tuning, tune
from batchasr.models.vads import SILERO_NAMES  # noqa: F401 (the names load_vad takes)
from batchasr.models.weights import (  # noqa: F401 (public API of the loader)
    apply_weights,
    cache_dir,
    random_weights,
    read_config,
    read_tokens,
    read_weights,
)

# name -> (Hugging Face repo, ModelScope repo); None: not on that hub. Each hub's folder is
# what that hub's alias means: funasr's `paraformer-zh` is the plain Paraformer on Hugging Face
# and SeACo-Paraformer on ModelScope (funasr/download/name_maps_from_hub.py), so the name finds
# either, the Hugging Face one first; `paraformer-zh-seaco` is SeACo only, `paraformer` plain.
SEACO_MS = "iic/speech_seaco_paraformer_large_asr_nat-zh-cn-16k-common-vocab8404-pytorch"
KNOWN_MODELS = {
    "paraformer-zh": ("funasr/paraformer-zh", SEACO_MS),
    "paraformer-zh-seaco": (None, SEACO_MS),
    "paraformer": ("funasr/paraformer-zh",
                   "iic/speech_paraformer-large_asr_nat-zh-cn-16k-common-vocab8404-pytorch"),
    "paraformer-en": ("funasr/paraformer-en",
                      "iic/speech_paraformer-large-vad-punc_asr_nat-en-16k-common-vocab10020"),
    "fun-asr-nano": ("FunAudioLLM/Fun-ASR-Nano-2512", "FunAudioLLM/Fun-ASR-Nano-2512"),
    # 31 languages; the Nano architecture and folder layout (models/fun_asr_nano.py, is_mlt)
    "fun-asr-mlt-nano": ("FunAudioLLM/Fun-ASR-MLT-Nano-2512", "FunAudioLLM/Fun-ASR-MLT-Nano-2512"),
    "ct-punc": ("funasr/ct-punc", "iic/punc_ct-transformer_cn-en-common-vocab471067-large"),
    "ct-punc-c": ("iic/punc_ct-transformer_zh-cn-common-vocab272727-pytorch",
                  "iic/punc_ct-transformer_zh-cn-common-vocab272727-pytorch"),
    "fsmn-vad": ("funasr/fsmn-vad", "iic/speech_fsmn_vad_zh-cn-16k-common-pytorch"),
    "sensevoice-small": ("FunAudioLLM/SenseVoiceSmall", "iic/SenseVoiceSmall"),
}
# known names that build without a folder for weights="dummy": name -> (model type, vocabulary)
DUMMY_MODELS = {"paraformer-zh": ("Paraformer", 8404), "paraformer": ("Paraformer", 8404),
                "paraformer-en": ("Paraformer", 10020),
                "paraformer-zh-seaco": ("SeacoParaformer", 8404),
                "fun-asr-nano": ("FunASRNano", 151936),
                "fun-asr-mlt-nano": ("FunASRNano", 151936),
                "sensevoice-small": ("SenseVoiceSmall", 25055)}
DUMMY_VOCAB = {name: vocab for name, (_, vocab) in DUMMY_MODELS.items()}

# config.yaml `model:` -> (family module, what its errors call it)
FAMILIES = {
    "Paraformer": ("batchasr.models.paraformer", "Paraformer"),
    "FunASRNano": ("batchasr.models.fun_asr_nano", "Fun-ASR-Nano"),
    "SeacoParaformer": ("batchasr.models.seaco_paraformer", "SeACo-Paraformer"),
    "CTTransformer": ("batchasr.models.ct_punc", "CTTransformer"),
    "SenseVoiceSmall": ("batchasr.models.sense_voice", "SenseVoice-Small"),
}
RECOGNIZERS = ("Paraformer", "FunASRNano",  # families whose module has a RECOGNIZER
               "SeacoParaformer", "SenseVoiceSmall")
DUMMY_SUFFIX = " (dummy weights)"  # load_model's label for a model built with weights="dummy"


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
    if not download or hf_repo is None:
        if hf_repo is None:
            raise CheckpointError(
                f"{name}: not found in the local ModelScope cache, and it is not on Hugging "
                f"Face: download {ms_repo} from ModelScope once (`modelscope download "
                f"--model {ms_repo}`), or pass the folder of an official checkpoint.")
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
    snaps = hub / f"models--{(hf_repo or '').replace('/', '--')}" / "snapshots"
    if hf_repo and snaps.is_dir():
        yield from sorted(snaps.iterdir(), key=lambda d: d.stat().st_mtime, reverse=True)
    ms = Path(os.environ.get("MODELSCOPE_CACHE", Path.home() / ".cache" / "modelscope"))
    yield ms / "hub" / "models" / ms_repo
    yield ms / "hub" / ms_repo


def _family(kind, where):
    if kind == "FsmnVADStreaming":
        raise CheckpointError(f"{where}: an fsmn-vad folder is a VAD, not a recognizer: give it "
                              f"as --vad (batchasr.models.loader.load_vad)")
    if kind not in FAMILIES:
        raise CheckpointError(f"{where}: model type {kind!r} is not supported "
                              f"(supported: {', '.join(FAMILIES)})")
    module, title = FAMILIES[kind]
    return importlib.import_module(module), title


def build(folder: Path | None, config: dict, *, name: str, dummy: bool = False,
          dtype=mx.float32, **options):
    """The one build path of every family (see the module docstring); `folder` None only for
    a dummy model of a known name. `options` go to the family's wrapper."""
    where = folder or name
    family, title = _family(config.get("model"), where)
    assets = family.read_assets(folder, config, dummy=dummy, vocab_size=DUMMY_VOCAB.get(name))
    try:
        args = family.ModelArgs.from_config(config, assets)
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{where}: unsupported {title} config: {e}") from e
    model = family.Model(args)
    if dummy:
        random_weights(model)
    else:
        apply_weights(model, model.sanitize(read_weights(folder)), what=str(folder))
    model.cast(dtype)
    model.eval()
    tuning = Tuning.from_env(cpu=mx.default_device() == mx.cpu)
    tune(model, tuning)
    # Weights computed at load (casts, transposes) are evaluated here, on the loading
    # thread's stream: MLX cannot evaluate a graph of another thread's stream, and on a CPU
    # the runner's lanes run the model on threads of their own (runner.stages.lanes).
    mx.eval(model.parameters())
    return family.wrap(model, assets, name=name, dtype=dtype, dummy=dummy, tuning=tuning,
                       **options)


def recognizer_traits(path_or_name, **options) -> dict:
    """What the recognizer of a model folder or known name declares (``punctuated``,
    ``max_segment_s``), from its config alone: for a driver that loads no weights.
    ``options``: the decoding options the model is loaded with (``itn``, ...; as
    ``runner.device.open_model`` sets them); a recognizer whose traits depend on them says
    how in ``declared_traits(**options)``, the others ignore them."""
    name = str(path_or_name)
    try:
        kind = read_config(resolve(path_or_name)).get("model")
    except CheckpointError:
        if name not in DUMMY_MODELS:
            raise
        kind = DUMMY_MODELS[name][0]
    if kind not in RECOGNIZERS:
        raise CheckpointError(f"{name}: model type {kind!r} is not a recognizer "
                              f"(recognizers: {', '.join(RECOGNIZERS)})")
    cls = _family(kind, name)[0].RECOGNIZER
    if hasattr(cls, "declared_traits"):
        return cls.declared_traits(**options)
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
        if not (dummy and name in DUMMY_MODELS):
            raise
    if folder is None:
        config = _family(DUMMY_MODELS[name][0], name)[0].DUMMY_CONFIG
    else:
        config = read_config(folder)
        name = name if name in KNOWN_MODELS else folder.name
    model = build(folder, config, name=name, dummy=dummy, dtype=dtype)
    if dummy:  # results and `status` show this label: random weights must never pass as real
        model.name = f"{model.name}{DUMMY_SUFFIX}"
    return model


def load_vad(name_or_dir: str | os.PathLike = "auto", *, download: bool = False):
    """A VAD (batchasr.models.blocks.vad.VAD) by name or folder.

    Args:
        name_or_dir: "silero"; "fsmn-vad" (found in the local Hugging Face / ModelScope cache)
            or an official fsmn-vad folder (config.yaml with `model: FsmnVADStreaming`,
            model.pt, am.mvn); a silero-layout .safetensors file; or "auto": fsmn-vad when its
            checkpoint is in the local cache, else silero.
        download: allow fetching "fsmn-vad" from the Hugging Face hub.
    Raises:
        CheckpointError: no such folder or name, or the folder is not a VAD.
    """
    from batchasr.models.vads import open_vad

    name = str(name_or_dir)
    if name == "auto":
        try:
            folder = resolve("fsmn-vad")
        except CheckpointError:  # no fsmn-vad checkpoint in the local caches
            return open_vad("silero")
        return open_vad(folder)
    if name in SILERO_NAMES or Path(name).expanduser().is_file():  # a spec open_vad takes
        return open_vad(name)
    return open_vad(resolve(name_or_dir, download=download))


def load_punctuator(path_or_name, *, dtype=mx.float32, weights: str = "checkpoint",
                    download: bool = False):
    """Load a CT-Transformer punctuation model (batchasr.models.ct_punc.Punctuator).

    Args:
        path_or_name: an official model folder (config.yaml, model.pt, tokens.json and, for the
            ModelScope large model, jieba_usr_dict), or a known name (`ct-punc`, `ct-punc-c`)
            found in the local Hugging Face / ModelScope cache.
        dtype: precision of the network weights (float32 is exact to the official outputs).
        weights: "checkpoint", or "dummy" for random weights of the folder's architecture.
        download: allow fetching a known name from the Hugging Face hub.
    Raises:
        CheckpointError: missing files, a folder of another model type, weights that do not fit,
            jieba missing where the folder needs it.
    """
    folder = resolve(path_or_name, download=download)
    family = read_config(folder).get("model")
    if family != "CTTransformer":
        raise CheckpointError(f"{folder}: not a punctuation model (config.yaml model: "
                              f"{family!r}, expected 'CTTransformer')")
    punctuator = load_model(folder, weights=weights, dtype=dtype)
    if str(path_or_name) in KNOWN_MODELS:
        punctuator.name = str(path_or_name)
    return punctuator
