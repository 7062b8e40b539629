"""fsmn-vad (FunASR `model: FsmnVADStreaming`): network, streaming driver, build.

Exact to funasr 1.4.16 `AutoModel.generate` on an official fsmn-vad folder. The audio is cut
into 60 s chunks; WavFrontendOnline (batchasr.models.blocks.frontend.OnlineFrontend: fbank, LFR
m=5 n=1, CMVN) and the FSMN carry their state across chunks; the endpoint state machine
(batchasr.models.blocks.fsmn_endpoint) runs per 10 ms frame, and at every chunk start the end
silence comes from `DEFAULT_SILENCE_SCHEDULE` (funasr's dynamic silence: 1,850 ms while
outside speech, less the longer speech has lasted), unless a fixed `max_end_silence_time` is
given. A stream holds at most one chunk of audio.

Network: port of `funasr.models.fsmn_vad_streaming.encoder` (FSMN): in_linear1 ->
in_linear2 -> ReLU -> fsmn_layers x [linear (no bias) -> causal FSMN memory (the branch adds
its own input) -> affine -> ReLU] -> out_linear1 -> out_linear2 -> softmax. Module attributes
follow the official state-dict keys (`encoder.fsmn.0.fsmn_block.conv_left.weight`, ...). The
memory is causal, so running a long input chunk by chunk with the last `(lorder - 1) *
lstride` frames of each layer carried over (`make_cache`) gives exactly the scores of one pass
over the whole input, as the official `cache["encoder"]` does. The network stays float32:
decisions compare posteriors to thresholds.

Family hooks for batchasr.models.loader: read_assets, ModelArgs.from_config, Model (sanitize,
cast), wrap -> FsmnVAD.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from batchasr.errors import CheckpointError
from batchasr.models.base import BaseModelArgs
from batchasr.models.blocks.frontend import FrontendConfig, OnlineFrontend, load_cmvn
from batchasr.models.blocks.fsmn_endpoint import IN_SPEECH, Endpointer, FsmnVADOptions
from batchasr.models.blocks.vad import VAD, SpeechSegment, VADStream

CHUNK_MS = 60000  # AutoModel.generate's default chunk_size for VAD
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

    def __post_init__(self):
        if self.rorder:  # the official right-context branch is marked "maybe need to check"
            raise ValueError(f"FSMN with rorder={self.rorder} is not supported (only causal "
                             f"memories, rorder 0, as the published fsmn-vad)")


class Linear(nn.Module):
    """FunASR's LinearTransform / AffineTransform: a `.linear` submodule (keys `x.linear.*`)."""

    def __init__(self, idim: int, odim: int, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(idim, odim, bias=bias)

    def __call__(self, x: mx.array) -> mx.array:
        return self.linear(x)


class CausalMemory(nn.Module):
    """FSMNBlock with rorder 0: y[t] = x[t] + sum_k w[k] * x[t - (K - 1 - k) * stride].

    `conv_left.weight` is stored as (D, K) (the torch Conv2d weight (D, 1, K, 1) squeezed).
    """

    def __init__(self, dim: int, lorder: int, lstride: int):
        super().__init__()
        self.conv_left = {"weight": mx.zeros((dim, lorder))}
        self.lorder, self.lstride = lorder, lstride

    @property
    def context(self) -> int:
        return (self.lorder - 1) * self.lstride

    def __call__(self, x: mx.array, cache: mx.array) -> tuple[mx.array, mx.array]:
        """x (B, T, D), cache (B, context, D) -> (y (B, T, D), new cache)."""
        B, T, D = x.shape
        xp = mx.concatenate([cache, x], axis=1)  # (B, context + T, D)
        w = self.conv_left["weight"].T  # (K, D)
        out = x
        for k in range(self.lorder):
            s = k * self.lstride
            out = out + xp[:, s : s + T] * w[k]
        return out, xp[:, xp.shape[1] - self.context :]


class BasicBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.linear = Linear(args.linear_dim, args.proj_dim, bias=False)
        self.fsmn_block = CausalMemory(args.proj_dim, args.lorder, args.lstride)
        self.affine = Linear(args.proj_dim, args.linear_dim)

    def __call__(self, x: mx.array, cache: mx.array) -> tuple[mx.array, mx.array]:
        h, cache = self.fsmn_block(self.linear(x), cache)
        return nn.relu(self.affine(h)), cache


class FSMN(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.in_linear1 = Linear(args.input_dim, args.input_affine_dim)
        self.in_linear2 = Linear(args.input_affine_dim, args.linear_dim)
        self.fsmn = [BasicBlock(args) for _ in range(args.fsmn_layers)]
        self.out_linear1 = Linear(args.linear_dim, args.output_affine_dim)
        self.out_linear2 = Linear(args.output_affine_dim, args.output_dim)

    def __call__(self, feats: mx.array, cache: list[mx.array]) -> tuple[mx.array, list]:
        """feats (B, T, input_dim) -> (posteriors or logits (B, T, output_dim), new cache)."""
        x = nn.relu(self.in_linear2(self.in_linear1(feats)))
        new_cache = []
        for block, c in zip(self.fsmn, cache):
            x, c = block(x, c)
            new_cache.append(c)
        x = self.out_linear2(self.out_linear1(x))
        return (mx.softmax(x, axis=-1, precise=True) if self.args.use_softmax else x), new_cache


class Model(nn.Module):
    """FsmnVADStreaming's network: `encoder` holds the FSMN (keys `encoder.*`)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.encoder = FSMN(args)

    def make_cache(self, batch_size: int = 1) -> list[mx.array]:
        """Zero memories, as the official streaming cache starts."""
        ctx = (self.args.lorder - 1) * self.args.lstride
        D = self.args.proj_dim
        return [mx.zeros((batch_size, ctx, D)) for _ in range(self.args.fsmn_layers)]

    def cast(self, dtype: mx.Dtype) -> None:
        """Always float32, whatever `dtype` says: decisions compare posteriors to thresholds."""
        self.set_dtype(mx.float32)

    def sanitize(self, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Squeeze the memories' Conv2d weights (D, 1, K, 1) -> (D, K); nothing else changes."""
        out = {}
        for key, value in weights.items():
            if key.endswith("fsmn_block.conv_left.weight") and value.ndim == 4:
                value = value[:, 0, :, 0]
            out[key] = value
        return out

    def __call__(self, feats: mx.array, cache: list[mx.array]) -> tuple[mx.array, list]:
        return self.encoder(feats, cache)


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
        probs, self.cache = self.vad.model(feats[None], self.cache)
        sil = np.array(mx.take(probs[0], mx.array(list(ep.o.sil_pdf_ids)), axis=1),
                       dtype=np.float32)
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
# family hooks (batchasr.models.loader)
# ---------------------------------------------------------------------------------------------
def read_assets(folder: Path | None, config: dict, *, dummy: bool,
                vocab_size: int | None = None) -> dict:
    """The endpoint options (model_conf), the frontend config and am.mvn."""
    try:
        options = FsmnVADOptions.from_dict(config.get("model_conf"))
        fconf = FrontendConfig.from_dict(config.get("frontend_conf"))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{folder}: unsupported fsmn-vad config: {e}") from e
    cmvn = None
    if folder is not None and (folder / "am.mvn").exists():
        cmvn = load_cmvn(folder / "am.mvn")
    return {"options": options, "frontend_conf": fconf, "cmvn": cmvn}


def wrap(model: Model, assets: dict, *, name: str, dtype, dummy: bool, **_) -> FsmnVAD:
    return FsmnVAD(model, assets["options"], assets["frontend_conf"], assets["cmvn"], name=name)
