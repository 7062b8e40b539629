"""fsmn-vad (FunASR `model: FsmnVADStreaming`): network, streaming driver, loading; numpy only.

Exact to funasr 1.4.16 `AutoModel.generate` on an official fsmn-vad folder. The audio is cut
into 60 s chunks; WavFrontendOnline (batchasr.models.blocks.kaldi_fbank.OnlineFrontend:
fbank, LFR m=5 n=1, CMVN) and the FSMN carry their state across chunks; the endpoint state
machine (batchasr.models.blocks.fsmn_endpoint) runs per 10 ms frame, and at every chunk start
the end silence comes from `DEFAULT_SILENCE_SCHEDULE` (funasr's dynamic silence: 1,850 ms
while outside speech, less the longer speech has lasted), unless a fixed
`max_end_silence_time` is given. A stream holds at most one chunk of audio.

Network: port of `funasr.models.fsmn_vad_streaming.encoder` (FSMN): in_linear1 ->
in_linear2 -> ReLU -> fsmn_layers x [linear (no bias) -> causal FSMN memory (the branch adds
its own input) -> affine -> ReLU] -> out_linear1 -> out_linear2 -> softmax, on the official
state-dict keys (`encoder.fsmn.0.fsmn_block.conv_left.weight`, ...). The memory is causal, so
running a long input chunk by chunk with the last `(lorder - 1) * lstride` frames of each
layer carried over (`make_cache`) gives exactly the scores of one pass over the whole input,
as the official `cache["encoder"]` does. Float32: decisions compare posteriors to thresholds.

Why numpy and not MLX: the VAD is a CPU stage that runs in many reader processes at once
(batchasr.runner.read_processes). MLX's CUDA backend gives every process that makes an array
a device context and device memory (16 such readers ran an H200's model process out of
memory), and its CPU side there has no fast BLAS; numpy's BLAS runs these small GEMMs at the
core's speed in any process. Loaded by batchasr.models.vads (`load`), never through the
recognizers' MLX build path.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from batchasr.errors import CheckpointError
from batchasr.models.base import BaseModelArgs
from batchasr.models.blocks.kaldi_fbank import FrontendConfig, OnlineFrontend, load_cmvn
from batchasr.models.blocks.fsmn_endpoint import IN_SPEECH, Endpointer, FsmnVADOptions
from batchasr.models.blocks.vad import VAD, SpeechSegment, VADStream
from batchasr.models.weights import check_weights, read_weights

CHUNK_MS = 60000  # AutoModel.generate's default chunk_size for VAD
MEMORY_BLOCK = 512  # frames per block of the FSMN memories' sums
# funasr.models.fsmn_vad_streaming.model: (accumulated speech ms, end silence ms)
DEFAULT_SILENCE_SCHEDULE = ((10000, 2000), (20000, 1000), (30000, 800), (40000, 600),
                            (50000, 400), (60000, 200), (math.inf, 100))
DYNAMIC_SPEECH_NOISE_THRES = 0.5  # what the schedule forces, whatever the config says


@dataclass
class ModelArgs(BaseModelArgs):
    """`encoder_conf` of config.yaml (FSMN), official key names."""

    input_dim: int = 400
    input_affine_dim: int = 140
    fsmn_layers: int = 4
    linear_dim: int = 250
    proj_dim: int = 128
    lorder: int = 20
    rorder: int = 0
    lstride: int = 1
    rstride: int = 0
    output_affine_dim: int = 140
    output_dim: int = 248
    use_softmax: bool = True

    @classmethod
    def from_config(cls, config: dict, assets: dict) -> "ModelArgs":
        if config.get("encoder", "FSMN") != "FSMN":
            raise ValueError(f"encoder {config.get('encoder')!r} is not supported (FSMN only)")
        args = cls.from_dict(config.get("encoder_conf") or {})
        fconf = assets["frontend_conf"]
        if fconf.n_mels * fconf.lfr_m != args.input_dim or fconf.lfr_n != 1:
            raise ValueError(f"frontend (n_mels {fconf.n_mels} x lfr_m {fconf.lfr_m}, lfr_n "
                             f"{fconf.lfr_n}) does not feed input_dim {args.input_dim}")
        return args

    @property
    def context(self) -> int:
        """Frames of its past each causal FSMN memory reaches back (the streaming cache)."""
        return (self.lorder - 1) * self.lstride

    def __post_init__(self):
        if self.rorder:  # the official right-context branch is marked "maybe need to check"
            raise ValueError(f"FSMN with rorder={self.rorder} is not supported (only causal "
                             f"memories, rorder 0, as the published fsmn-vad)")


def _linear(x: np.ndarray, w: tuple[np.ndarray, np.ndarray | None]) -> np.ndarray:
    """x (..., idim) -> (..., odim) as one 2-D GEMM (numpy loops a stacked matmul), the bias
    added in place."""
    weight_t, bias = w
    y = (x.reshape(-1, x.shape[-1]) @ weight_t).reshape(*x.shape[:-1], -1)
    if bias is not None:
        y += bias
    return y


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0, out=x)


class Model:
    """FsmnVADStreaming's network (`encoder`: the FSMN) on numpy float32 arrays.

    Weights are the official state dict, checked by name and shape (`load_weights`); each
    linear layer keeps its weight transposed, `conv_left` its (D, 1, K, 1) Conv2d weight
    squeezed to (K, D), tap k reaching back (K - 1 - k) * lstride frames."""

    def __init__(self, args: ModelArgs):
        self.args = args
        self.layers: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        self.memories: list[np.ndarray] = []

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """The official state dict's keys and shapes for these args."""
        a = self.args
        shapes = {}

        def linear(name, idim, odim, bias=True):
            shapes[f"encoder.{name}.linear.weight"] = (odim, idim)
            if bias:
                shapes[f"encoder.{name}.linear.bias"] = (odim,)

        linear("in_linear1", a.input_dim, a.input_affine_dim)
        linear("in_linear2", a.input_affine_dim, a.linear_dim)
        for i in range(a.fsmn_layers):
            linear(f"fsmn.{i}.linear", a.linear_dim, a.proj_dim, bias=False)
            shapes[f"encoder.fsmn.{i}.fsmn_block.conv_left.weight"] = (a.proj_dim, 1, a.lorder, 1)
            linear(f"fsmn.{i}.affine", a.proj_dim, a.linear_dim)
        linear("out_linear1", a.linear_dim, a.output_affine_dim)
        linear("out_linear2", a.output_affine_dim, a.output_dim)
        return shapes

    def load_weights(self, weights: dict[str, np.ndarray], *, what: str = "fsmn-vad") -> None:
        """Take the official state dict (checked: no key missing or unexpected, shapes)."""
        shapes = self.expected_shapes()
        check_weights(weights, shapes, what=what)
        f32 = {k: np.asarray(v, np.float32) for k, v in weights.items()}
        for key in shapes:
            if key.endswith(".linear.weight"):
                name = key[len("encoder."): -len(".linear.weight")]
                bias = f32.get(f"encoder.{name}.linear.bias")
                self.layers[name] = (np.ascontiguousarray(f32[key].T), bias)
        self.memories = [np.ascontiguousarray(
            f32[f"encoder.fsmn.{i}.fsmn_block.conv_left.weight"][:, 0, :, 0].T)
            for i in range(self.args.fsmn_layers)]

    def make_cache(self, batch_size: int = 1) -> list[np.ndarray]:
        """Zero memories, as the official streaming cache starts."""
        return [np.zeros((batch_size, self.args.context, self.args.proj_dim), np.float32)
                for _ in range(self.args.fsmn_layers)]

    def _memory(self, x: np.ndarray, cache: np.ndarray, w: np.ndarray):
        """FSMNBlock with rorder 0: y[t] = x[t] + sum_k w[k] * x[t - (K - 1 - k) * stride].
        Summed tap by tap over blocks of MEMORY_BLOCK frames that stay in the CPU's cache
        (the same additions in the same order as over the whole input)."""
        T = x.shape[1]
        xp = np.concatenate([cache, x], axis=1)  # (B, context + T, D)
        out = x.copy()
        tmp = np.empty((x.shape[0], min(T, MEMORY_BLOCK), x.shape[2]), np.float32)
        for a in range(0, T, MEMORY_BLOCK):
            b = min(T, a + MEMORY_BLOCK)
            o, t = out[:, a:b], tmp[:, : b - a]
            for k in range(self.args.lorder):
                s = k * self.args.lstride
                np.multiply(xp[:, a + s : b + s], w[k], out=t)
                o += t
        return out, xp[:, xp.shape[1] - self.args.context :].copy()

    def __call__(self, feats: np.ndarray, cache: list[np.ndarray], ids=None
                 ) -> tuple[np.ndarray, list]:
        """feats (B, T, input_dim) -> (posteriors or logits (B, T, output_dim), new cache);
        with ``ids``, only those classes' (B, T, len(ids)) (the same values)."""
        L = self.layers
        x = np.asarray(feats, np.float32)
        x = _relu(_linear(_linear(x, L["in_linear1"]), L["in_linear2"]))
        new_cache = []
        for i, c in enumerate(cache):
            h, c = self._memory(_linear(x, L[f"fsmn.{i}.linear"]), c, self.memories[i])
            x = _relu(_linear(h, L[f"fsmn.{i}.affine"]))
            new_cache.append(c)
        x = _linear(_linear(x, L["out_linear1"]), L["out_linear2"])
        if not self.args.use_softmax:
            return (x if ids is None else x[..., list(ids)]), new_cache
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        total = e.sum(axis=-1, keepdims=True)
        return (e if ids is None else e[..., list(ids)]) / total, new_cache

    def silence(self, feats: np.ndarray, cache: list[np.ndarray], ids) -> tuple[np.ndarray, list]:
        """Posteriors of the classes `ids` only (B, T, len(ids)), and the new cache: what the
        endpoint reads (`FsmnVAD.network`; batchasr.models.fsmn_vad_device has the same call).
        Only those columns are divided by the row sums."""
        return self(feats, cache, ids)


# ---------------------------------------------------------------------------------------------
# streaming driver
# ---------------------------------------------------------------------------------------------
def _decibels(frames: np.ndarray) -> np.ndarray:
    """ComputeDecibel on (T, frame_len) float32 waveform frames (values in [-1, 1] give
    > -60 dB, so with the published -100 dB thresholds this never decides anything)."""
    return 10 * np.log10(np.sum(np.square(frames), axis=1) + 0.000001)


class FsmnVADStream(VADStream):
    """One file through the official `FsmnVADStreaming.inference` loop: 60 s chunks, the
    dynamic end-silence schedule at each chunk start, complete segments after each chunk."""

    def __init__(self, vad: "FsmnVAD", *, max_end_silence_time: int | None = None,
                 keep_probs: bool = False):
        self.vad = vad
        opts = vad.options
        if max_end_silence_time is not None:
            opts = dataclasses.replace(opts, max_end_silence_time=max_end_silence_time)
        self.dynamic = max_end_silence_time is None
        self.ep = Endpointer(opts)
        self.front = OnlineFrontend(vad.frontend_conf, vad.cmvn)
        self.cache = vad.model.make_cache(1)
        self.chunk = int(CHUNK_MS * vad.sample_rate / 1000)
        self.pending: list[np.ndarray] = []
        self.n_pending = 0
        self.accumulated_ms = 0
        self.in_speech = False
        self.frame_probs: list[np.ndarray] | None = [] if keep_probs else None
        self.end_silence: list[int] = []  # per chunk, the end silence in force (for tests)
        self.finished = False

    def feed(self, samples: np.ndarray) -> list[SpeechSegment]:
        if self.finished:
            raise RuntimeError("stream already finished")
        out = []
        self.pending.append(np.asarray(samples, np.float32))
        self.n_pending += len(samples)
        while self.n_pending >= self.chunk:  # a full chunk is never the final one
            buf = np.concatenate(self.pending)
            out += self._chunk(buf[: self.chunk], False)
            self.pending, self.n_pending = [buf[self.chunk :]], len(buf) - self.chunk
        return out

    def finish(self) -> list[SpeechSegment]:
        buf = np.concatenate(self.pending) if self.pending else np.zeros(0, np.float32)
        self.pending, self.n_pending = [], 0
        out = self._chunk(buf, True)
        self.finished = True
        return out

    def _chunk(self, audio: np.ndarray, is_final: bool) -> list[SpeechSegment]:
        ep = self.ep
        if self.dynamic:
            if ep.state == IN_SPEECH or self.in_speech:
                self.accumulated_ms += CHUNK_MS
                self.in_speech = True
            for limit_ms, silence_ms in DEFAULT_SILENCE_SCHEDULE:
                if self.accumulated_ms <= limit_ms:
                    ep.max_end_sil_frame_cnt_thresh = max(
                        silence_ms - ep.o.speech_to_sil_time_thres, 0)
                    ep.speech_noise_thres = DYNAMIC_SPEECH_NOISE_THRES
                    break
        self.end_silence.append(ep.max_end_sil_frame_cnt_thresh)
        feats, waves = self.front(audio, is_final)
        if feats is None:  # forward() returns nothing for a chunk without frames
            return []
        sil, self.cache = self.vad.network(feats, self.cache, ep.o.sil_pdf_ids)
        sil = np.ascontiguousarray(sil, dtype=np.float32)
        if self.frame_probs is not None:
            self.frame_probs.append(sil)
        ep.add_frames(sil, _decibels(waves))
        ep.detect(len(sil), is_final)
        segments = ep.take_segments(is_final)
        if segments and self.dynamic:
            self.accumulated_ms, self.in_speech = 0, False
        return segments


class FsmnVAD(VAD):
    """fsmn-vad from an official folder (built by batchasr.models.loader through the hooks below)."""

    def __init__(self, model, options: FsmnVADOptions, frontend_conf, cmvn, name="fsmn-vad"):
        self.model = model
        self.options = options
        self.frontend_conf = frontend_conf
        self.cmvn = cmvn
        self.name = name
        self.sample_rate = frontend_conf.fs
        # one stream's (features (T, D): LFRFrames or an array, cache, class ids) -> (their
        # posteriors (T, len(ids)), new cache): this process's numpy network, or the same
        # network elsewhere (fsmn_vad_device.DeviceNetwork, runner.vad_network)
        self.network = self.own_network

    def own_network(self, feats, cache: list[np.ndarray], ids) -> tuple[np.ndarray, list]:
        """The numpy network on one stream's features (``network``'s call)."""
        probs, cache = self.model.silence(np.asarray(feats, np.float32)[None], cache, ids)
        return probs[0], cache

    def stream(self, *, max_end_silence_time: int | None = None,
               keep_probs: bool = False) -> FsmnVADStream:
        """A fresh per-file state. max_end_silence_time (ms) replaces the dynamic schedule
        with a fixed end silence, as `generate(..., max_end_silence_time=...)` does."""
        return FsmnVADStream(self, max_end_silence_time=max_end_silence_time,
                             keep_probs=keep_probs)

    def frame_probs(self, waveform: np.ndarray) -> np.ndarray:
        """Silence posterior per 10 ms frame of a whole waveform (the network's output)."""
        st = self.stream(keep_probs=True)
        st.feed(waveform)
        st.finish()
        return np.concatenate(st.frame_probs)[:, 0] if st.frame_probs else np.zeros(0, np.float32)


# ---------------------------------------------------------------------------------------------
# loading (batchasr.models.vads; no MLX)
# ---------------------------------------------------------------------------------------------
def load(folder: Path, config: dict, name: str = "fsmn-vad") -> FsmnVAD:
    """fsmn-vad from an official folder (config.yaml `model: FsmnVADStreaming`, model.pt or
    model.safetensors, am.mvn)."""
    try:
        options = FsmnVADOptions.from_dict(config.get("model_conf"))
        fconf = FrontendConfig.from_dict(config.get("frontend_conf"))
        args = ModelArgs.from_config(config, {"frontend_conf": fconf})
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{folder}: unsupported fsmn-vad config: {e}") from e
    cmvn = load_cmvn(folder / "am.mvn") if (folder / "am.mvn").exists() else None
    model = Model(args)
    model.load_weights(read_weights(folder), what=str(folder))
    return FsmnVAD(model, options, fconf, cmvn, name=name)
