"""Paraformer (non-autoregressive ASR) in MLX: SAN-M encoder, CIF predictor, SAN-M decoder.

Port of funasr 1.4.16 `funasr/models/paraformer/{model,cif_predictor,decoder}.py` and
`funasr/utils/timestamp_tools.py` (ts_prediction_lfr6_standard). Module attributes follow the
official state-dict keys. The pieces that decide token counts and times (CIF fires, the
timestamp curve) run in numpy with the official float64/float32 arithmetic, because MLX has no
float64 on GPUs and fire positions are sensitive to the last bit.

Batching differs from the official code in one deliberate way: encoder output past each row's
length is zeroed before the predictor, so a padded batch gives exactly the tokens and times
each utterance gives alone (the official batch lets padding leak into CIF).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from batchasr.models.base import BaseModelArgs
from batchasr.models.blocks.sanm import (
    FSMNBlock,
    SANMEncoder,
    SANMEncoderArgs,
    attention,
    fsmn_padding,
    layer_norm,
    merge_heads,
    split_heads,
    use_compiled,
)

BLANK_ID, SOS_ID, EOS_ID = 0, 1, 2  # Paraformer class defaults


@dataclass
class PredictorArgs(BaseModelArgs):
    """`predictor_conf` (CifPredictorV2)."""

    idim: int
    l_order: int = 1
    r_order: int = 1
    threshold: float = 1.0
    smooth_factor: float = 1.0
    noise_threshold: float = 0.0
    tail_threshold: float = 0.0
    tail_mask: bool = True


@dataclass
class DecoderArgs(BaseModelArgs):
    """`decoder_conf` (ParaformerSANMDecoder)."""

    attention_heads: int = 4
    linear_units: int = 2048
    num_blocks: int = 6
    att_layer_num: int = 6
    kernel_size: int = 21
    sanm_shfit: int = 0


@dataclass
class ModelArgs:
    """The parts of config.yaml Paraformer needs, plus sizes config.yaml leaves implicit."""

    vocab_size: int  # len(tokens.json)
    input_size: int  # n_mels * lfr_m
    encoder_conf: dict
    decoder_conf: dict
    predictor_conf: dict
    frontend_conf: dict = field(default_factory=dict)
    model: str = "Paraformer"
    encoder: str = "SANMEncoder"
    decoder: str = "ParaformerSANMDecoder"
    predictor: str = "CifPredictorV2"

    def __post_init__(self):
        for key, expected in (("model", "Paraformer"), ("encoder", "SANMEncoder"),
                              ("decoder", "ParaformerSANMDecoder"),
                              ("predictor", "CifPredictorV2")):
            if getattr(self, key) != expected:
                raise ValueError(f"config.yaml {key}: {getattr(self, key)!r} is not supported "
                                 f"by the Paraformer port (expected {expected!r})")


# --------------------------------------------------------------------------------------------
# CIF predictor
# --------------------------------------------------------------------------------------------
class CifPredictorV2(nn.Module):
    def __init__(self, args: PredictorArgs):
        super().__init__()
        self.args = args
        k = args.l_order + args.r_order + 1
        # torch Conv1d layout (out, in, k); see sanitize for the MLX (out, k, in) transpose
        self.cif_conv1d = nn.Conv1d(args.idim, args.idim, k)
        self.cif_output = nn.Linear(args.idim, 1)

    def alphas(self, hidden: mx.array, mask: mx.array) -> mx.array:
        """Per-frame firing weights (B, T), zero on padded frames."""
        a = self.args
        x = mx.pad(hidden, [(0, 0), (a.l_order, a.r_order), (0, 0)])
        if os.environ.get("BATCHASR_CIF_CONV", "conv") == "matmul":
            # the convolution as one GEMM over stacked shifted frames: no cuDNN convolution
            # plan per new batch shape (see sanm.attention for what was measured)
            conv = self.cif_conv1d
            K = conv.weight.shape[1]
            T = x.shape[1] - K + 1
            frames = mx.concatenate([x[:, j : j + T] for j in range(K)], axis=-1)
            w = conv.weight.reshape(conv.weight.shape[0], -1)  # (out, K * in)
            x = nn.relu(frames @ w.T + conv.bias)
        else:
            x = nn.relu(self.cif_conv1d(x))
        alphas = mx.sigmoid(self.cif_output(x))[..., 0]
        alphas = nn.relu(alphas * a.smooth_factor - a.noise_threshold)
        return alphas * mask.astype(alphas.dtype)


@dataclass
class CifResult:
    """Host-side CIF outcome for a batch (all numpy)."""

    alphas: np.ndarray  # (B, T') float32, T' = T (+1 with the tail frame)
    fires: np.ndarray  # (B, T') float32: 1 at fire frames + fractional part of the prefix sum
    token_num: np.ndarray  # (B,) int: tokens per row
    fire_frames: list[np.ndarray]  # per row, the frame indices that fired


def cif_fire(alphas: np.ndarray, lengths: np.ndarray, tail_threshold: float,
             tail_mask: bool = True) -> CifResult:
    """Tail handling, token counts and fire positions exactly as CifPredictorV2 (cif_v1)."""
    alphas = alphas.astype(np.float32)
    B, T = alphas.shape
    if tail_threshold > 0.0:
        tail = np.zeros((B, 1), np.float32) if tail_mask else np.full((B, 1), tail_threshold,
                                                                      np.float32)
        alphas = np.concatenate([alphas, tail], axis=1)
        if tail_mask:  # + tail_threshold at index = length (the first padded / appended slot)
            alphas[np.arange(B), lengths] += np.float32(tail_threshold)
        token_num = np.floor(alphas.sum(axis=-1, dtype=np.float32))
    else:
        token_num = alphas.sum(axis=-1, dtype=np.float32)
    # prefix sums in float64 then cast back, as cif_wo_hidden_v1 does
    prefix = np.cumsum(alphas, axis=1, dtype=np.float64).astype(np.float32)
    floor = np.floor(prefix)
    prev = np.concatenate([np.zeros((B, 1), np.float32), floor[:, :-1]], axis=1)
    fired = (floor - prev) > 0
    fires = fired.astype(np.float32) + prefix - floor
    return CifResult(alphas, fires, np.round(token_num).astype(np.int64),
                     [np.flatnonzero(fired[b]) for b in range(B)])


def cif_embeddings(hidden: mx.array, cif: CifResult) -> mx.array:
    """Acoustic embeddings (B, max tokens, D) from hidden (B, T', D), as cif_v1 builds them:
    differences of the float32 prefix sums of alpha*hidden at fire frames, the frame that
    crosses a boundary split by its fractional remainder."""
    B, Tp, D = hidden.shape
    n_out = int(cif.token_num.max()) if B else 0
    if n_out <= 0:
        return mx.zeros((B, 0, D), hidden.dtype)
    alphas = mx.array(cif.alphas)
    prefix_hidden = mx.cumsum(alphas[..., None] * hidden, axis=1)
    remains = cif.fires - np.floor(cif.fires)
    idx = np.zeros((B, n_out), np.int32)
    prev_idx = np.zeros((B, n_out), np.int32)
    rem = np.zeros((B, n_out), np.float32)
    prev_rem = np.zeros((B, n_out), np.float32)
    has_prev = np.zeros((B, n_out), np.float32)
    valid = np.zeros((B, n_out), np.float32)
    for b, frames in enumerate(cif.fire_frames):
        frames = frames[:n_out]
        k = len(frames)
        idx[b, :k] = frames
        rem[b, :k] = remains[b, frames]
        valid[b, :k] = 1.0
        if k > 1:
            prev_idx[b, 1:k] = frames[:-1]
            prev_rem[b, 1:k] = remains[b, frames[:-1]]
            has_prev[b, 1:k] = 1.0
    take = lambda a, i: mx.take_along_axis(a, mx.array(i)[..., None], axis=1)
    at_fire, at_prev = take(prefix_hidden, idx), take(prefix_hidden, prev_idx)
    h_fire, h_prev = take(hidden, idx), take(hidden, prev_idx)
    hp = mx.array(has_prev)[..., None]
    frames = (at_fire - at_prev * hp + (mx.array(prev_rem)[..., None] * h_prev) * hp
              - mx.array(rem)[..., None] * h_fire)
    return frames * mx.array(valid)[..., None]


# --------------------------------------------------------------------------------------------
# decoder
# --------------------------------------------------------------------------------------------
class MultiHeadedAttentionSANMDecoder(nn.Module):
    """FSMN-only 'self-attention' of the decoder: masked input, depthwise conv, plus input."""

    def __init__(self, n_feat: int, kernel_size: int, sanm_shfit: int = 0):
        super().__init__()
        self.fsmn_block = FSMNBlock(n_feat, kernel_size, fsmn_padding(kernel_size, sanm_shfit))

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        m = mask[..., None].astype(x.dtype)
        x = x * m
        return (self.fsmn_block(x) + x) * m


class MultiHeadedAttentionCrossAtt(nn.Module):
    def __init__(self, n_head: int, n_feat: int):
        super().__init__()
        self.h = n_head
        self.linear_q = nn.Linear(n_feat, n_feat)
        self.linear_k_v = nn.Linear(n_feat, n_feat * 2)
        self.linear_out = nn.Linear(n_feat, n_feat)

    def __call__(self, x: mx.array, memory: mx.array, memory_mask: mx.array) -> mx.array:
        k, v = mx.split(self.linear_k_v(memory), 2, axis=-1)
        q = split_heads(self.linear_q(x), self.h)
        out = attention(q, split_heads(k, self.h), split_heads(v, self.h), memory_mask)
        return self.linear_out(merge_heads(out))


class PositionwiseFeedForwardDecoderSANM(nn.Module):
    def __init__(self, idim: int, hidden_units: int):
        super().__init__()
        self.w_1 = nn.Linear(idim, hidden_units)
        self.w_2 = nn.Linear(hidden_units, idim, bias=False)
        self.norm = layer_norm(hidden_units)

    def __call__(self, x: mx.array) -> mx.array:
        return self.w_2(self.norm(nn.relu(self.w_1(x))))


class DecoderLayerSANM(nn.Module):
    """FFN first; then FSMN with a residual to the layer input; then cross-attention.
    Without the FSMN (decoders3) the FFN output is returned with no residual."""

    def __init__(self, size: int, args: DecoderArgs, self_attn: bool, src_attn: bool,
                 sanm_shfit: int):
        super().__init__()
        self.feed_forward = PositionwiseFeedForwardDecoderSANM(size, args.linear_units)
        self.norm1 = layer_norm(size)
        if self_attn:
            self.self_attn = MultiHeadedAttentionSANMDecoder(size, args.kernel_size, sanm_shfit)
            self.norm2 = layer_norm(size)
        if src_attn:
            self.src_attn = MultiHeadedAttentionCrossAtt(args.attention_heads, size)
            self.norm3 = layer_norm(size)

    def __call__(self, tgt, tgt_mask, memory, memory_mask):
        x = self.feed_forward(self.norm1(tgt))
        if "self_attn" in self:
            x = tgt + self.self_attn(self.norm2(x), tgt_mask)
        if "src_attn" in self:
            x = x + self.src_attn(self.norm3(x), memory, memory_mask)
        return x


class ParaformerSANMDecoder(nn.Module):
    def __init__(self, vocab_size: int, size: int, args: DecoderArgs):
        super().__init__()
        self.decoders = [DecoderLayerSANM(size, args, True, True, args.sanm_shfit)
                         for _ in range(args.att_layer_num)]
        # decoders2 uses sanm_shfit 0 whatever the config says (as the official builder)
        self.decoders2 = [DecoderLayerSANM(size, args, True, False, 0)
                          for _ in range(args.num_blocks - args.att_layer_num)]
        self.decoders3 = [DecoderLayerSANM(size, args, False, False, 0)]
        self.after_norm = layer_norm(size)
        self.output_layer = nn.Linear(size, vocab_size)

    def compile(self, enable: bool = True) -> None:
        use_compiled(self, enable, self.decoders + self.decoders2 + self.decoders3)

    def __call__(self, memory, memory_mask, embeds, token_mask) -> mx.array:
        """memory (B, T, D), embeds (B, N, D) -> log-probabilities (B, N, vocab)."""
        x = embeds
        for call in getattr(self, "_calls", None) or self.decoders + self.decoders2 + self.decoders3:
            x = call(x, token_mask, memory, memory_mask)
        logits = self.output_layer(self.after_norm(x))
        return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


# --------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------
@dataclass
class ParaformerOutput:
    """Per-batch raw outputs; token ids and times per row (specials removed)."""

    token_ids: list[list[int]]
    token_times_ms: list[list[list[int]]]  # [[start_ms, end_ms], ...] per row
    encoder_lengths: np.ndarray
    cif: CifResult | None = None


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        enc = SANMEncoderArgs.from_dict(args.encoder_conf, input_size=args.input_size)
        self.encoder = SANMEncoder(enc)
        pred = PredictorArgs.from_dict(args.predictor_conf)
        self.predictor = CifPredictorV2(pred)
        self.decoder = ParaformerSANMDecoder(args.vocab_size, enc.output_size,
                                             DecoderArgs.from_dict(args.decoder_conf))

    def compile(self, enable: bool = True) -> None:
        """Use mx.compile'd layers (faster on GPUs; each new input shape is traced once)."""
        self.encoder.compile(enable)
        self.decoder.compile(enable)

    def sanitize(self, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Map official state-dict tensors onto this module tree."""
        out = {}
        for key, value in weights.items():
            if key.startswith("decoder.embed."):  # training-time sampler only
                continue
            if key.startswith(("ctc.", "criterion_att.", "criterion_pre.")):
                continue
            if key == "predictor.cif_conv1d.weight" and value.ndim == 3:
                value = value.transpose(0, 2, 1)  # torch (out, in, k) -> MLX (out, k, in)
            out[key] = value
        return out

    def __call__(self, feats: mx.array, lengths: mx.array):
        """Batched forward up to the alphas: (encoder_out, alphas), both zero past lengths.
        The predictor always runs in float32 (as the official code runs CIF outside autocast):
        token counts and fire positions must not depend on the network's precision."""
        enc = self.encoder(feats, lengths)
        mask = mx.arange(feats.shape[1])[None, :] < lengths[:, None]
        return enc, self.predictor.alphas(enc.astype(mx.float32), mask)

    def decode(self, feats: mx.array, lengths: mx.array, *, timestamps: bool = True,
               keep_cif: bool = False) -> ParaformerOutput:
        """Features (B, T, input_size) and lengths -> token ids and times per row."""
        run = DecodeRun(self, feats, lengths)
        run.launch_decoder()
        return run.finish(timestamps=timestamps, keep_cif=keep_cif)


class DecodeRun:
    """One batch through Paraformer in three steps, so that a caller can overlap them with
    other batches' (the GPU runs queued work in order while the host does the rest):

    1. ``DecodeRun(model, feats, lengths)``: encoder and predictor queued (``async_eval``);
    2. ``launch_decoder()``: waits for the alphas, fires CIF on the host (token counts and
       fire positions, float64/float32 exactly as funasr), queues the decoder and argmax;
    3. ``finish()``: waits for the token ids, then timestamps on the host.

    ``Model.decode`` runs the three in a row."""

    def __init__(self, model: Model, feats: mx.array, lengths: mx.array):
        self.model, self.lengths = model, lengths
        self.B, self.T = feats.shape[:2]
        self.lens = np.array(lengths, dtype=np.int64)
        self.enc, self.alphas = model(feats, lengths)
        mx.async_eval(self.enc, self.alphas)
        self.cif: CifResult | None = None
        self.ids = None

    def launch_decoder(self) -> None:
        if self.cif is not None:
            return
        model, enc, T = self.model, self.enc, self.T
        p = model.predictor.args
        self.cif = cif = cif_fire(np.array(self.alphas), self.lens, p.tail_threshold,
                                  p.tail_mask)
        if cif.token_num.max(initial=0) < 1:
            return
        hidden = enc
        if cif.alphas.shape[1] > T:
            hidden = mx.pad(enc, [(0, 0), (0, cif.alphas.shape[1] - T), (0, 0)])
        embeds = cif_embeddings(hidden.astype(mx.float32), cif).astype(enc.dtype)
        token_mask = mx.arange(embeds.shape[1])[None, :] < mx.array(cif.token_num)[:, None]
        memory_mask = mx.arange(T)[None, :] < self.lengths[:, None]
        logp = model.decoder(enc, memory_mask, embeds, token_mask)
        self.ids = mx.argmax(logp, axis=-1)
        mx.async_eval(self.ids)

    def finish(self, *, timestamps: bool = True, keep_cif: bool = False) -> ParaformerOutput:
        self.launch_decoder()
        cif, lens, B = self.cif, self.lens, self.B
        n_tok = cif.token_num
        if self.ids is None:
            return ParaformerOutput([[] for _ in range(B)], [[] for _ in range(B)], lens,
                                    cif if keep_cif else None)
        p = self.model.predictor.args
        ids = np.array(self.ids)
        all_ids, all_times = [], []
        for b in range(B):
            row = [int(i) for i in ids[b, : n_tok[b]] if i not in (BLANK_ID, SOS_ID, EOS_ID)]
            all_ids.append(row)
            times = []
            if timestamps and row:
                n = lens[b] + 1 if (p.tail_mask and p.tail_threshold > 0.0) else lens[b]
                n = min(n, cif.alphas.shape[1])
                times = token_timestamps(cif.fires[b, :n], cif.alphas[b, :n], len(row))
            all_times.append(times)
        return ParaformerOutput(all_ids, all_times, lens, cif if keep_cif else None)


# --------------------------------------------------------------------------------------------
# timestamps: ts_prediction_lfr6_standard as Paraformer.inference calls it
# --------------------------------------------------------------------------------------------
START_END_THRESHOLD = 5  # frames
MAX_TOKEN_DURATION = 12  # frames
FORCE_TIME_SHIFT = -1.5  # frames
TIME_RATE = 10.0 * 6 / 1000 / 1  # seconds per LFR frame (10 ms x lfr_n 6, upsample_rate 1)
FIRE_THRESHOLD = np.float32(1.0 - 1e-4)


def _sequential_cif(alphas: np.ndarray) -> np.ndarray:
    """timestamp_tools.cif_wo_hidden: float32 integrate-and-fire subtracting the threshold."""
    integrate = np.float32(0.0)
    out = np.empty_like(alphas)
    for t, a in enumerate(alphas):
        integrate = np.float32(integrate + a)
        out[t] = integrate
        if integrate >= FIRE_THRESHOLD:
            integrate = np.float32(integrate - FIRE_THRESHOLD)
    return out


def token_timestamps(fires: np.ndarray, alphas: np.ndarray, n_tokens: int) -> list[list[int]]:
    """[[start_ms, end_ms], ...] per token, as funasr 1.4.16 computes them.

    Paraformer.inference passes (fires, alphas) into ts_prediction_lfr6_standard's
    (us_alphas, us_peaks): the fire test runs on the alphas, and when it does not find
    n_tokens + 1 fires (the usual case), the fires curve is rescaled to sum to n_tokens + 1
    and re-fired sequentially. Kept as the official code does it, argument order included.
    """
    if n_tokens == 0:
        return []
    curve = fires.astype(np.float32).copy()  # the official `alphas`
    peaks = alphas.astype(np.float32)  # the official `peaks`
    fire_place = np.flatnonzero(peaks >= FIRE_THRESHOLD) + FORCE_TIME_SHIFT
    if len(fire_place) != n_tokens + 1:
        total = np.float32(curve.sum(dtype=np.float32))
        curve = (curve / np.float32(total / np.float32(n_tokens + 1))).astype(np.float32)
        peaks = _sequential_cif(curve)
        fire_place = np.flatnonzero(peaks >= FIRE_THRESHOLD) + FORCE_TIME_SHIFT
    if len(fire_place) == 0:
        return []
    num_frames = peaks.shape[0]
    spans: list[list[float]] = []
    is_token: list[bool] = []
    if fire_place[0] > START_END_THRESHOLD:
        spans.append([0.0, fire_place[0] * TIME_RATE])
        is_token.append(False)
    for i in range(min(len(fire_place) - 1, n_tokens)):
        is_token.append(True)
        if fire_place[i + 1] - fire_place[i] <= MAX_TOKEN_DURATION:
            spans.append([fire_place[i] * TIME_RATE, fire_place[i + 1] * TIME_RATE])
        else:  # cut long tokens; the rest is silence
            split = fire_place[i] + MAX_TOKEN_DURATION
            spans.append([fire_place[i] * TIME_RATE, split * TIME_RATE])
            spans.append([split * TIME_RATE, fire_place[i + 1] * TIME_RATE])
            is_token.append(False)
    if num_frames - fire_place[-1] > START_END_THRESHOLD:
        end = (num_frames + fire_place[-1]) * 0.5
        spans[-1][1] = end * TIME_RATE
        spans.append([end * TIME_RATE, num_frames * TIME_RATE])
        is_token.append(False)
    elif spans:
        spans[-1][1] = num_frames * TIME_RATE
    return [[int(s * 1000), int(e * 1000)] for (s, e), tok in zip(spans, is_token) if tok]
