"""SeACo-Paraformer (FunASR `model: SeacoParaformer`): Paraformer with hotword biasing.

Port of funasr 1.4.16 `funasr.models.seaco_paraformer.model` (`inference`,
`_seaco_decode_with_ASF`, `_hotword_representation`, `_merge`, `generate_hotwords_list`) and
`funasr.models.bicif_paraformer.cif_predictor.CifPredictorV3` (its `forward` with the
sequential `cif`, and `get_upsample_timestamp`, BiCifParaformer's `calc_predictor_timestamp`).
The encoder, the main decoder, the frontend, the text and the recognizer plumbing are
batchasr.models.paraformer's; this module adds:

- the predictor V3: the same alphas as V2; token embeddings by the sequential float32
  integrate-and-fire of the official `cif`; and the timestamp head (ConvTranspose1d
  upsampling x `upsample_times`, a BLSTM for `cnn_blstm`, `cif_output2`), whose curve,
  rescaled to the token count, gives the times (`ts_prediction_lfr6_standard`, 20 ms frames);
- the bias encoder: `decoder.embed` token embeddings of each hotword through a 2-layer LSTM,
  the state at its last token (the official packed sequence);
- the SeACo decoder (a ParaformerSANMDecoder without embedding or output layer) attending to
  the hotword embeddings from the CIF embeddings and from the decoder's hidden states; their
  sum through `hotword_output_layer`; per token, the hotword head's log-probabilities unless
  its argmax is `NO_BIAS`, then the decoder's (`_merge_res` with the official `seaco_weight`
  1.0); with more than `nfilter` (50) hotwords the ASF pre-filter keeps the 50 the SeACo
  decoder's 6th layer attends to most, plus `<s>`.

Hotwords: none given (the official default, `hotword=None`) decodes exactly as Paraformer;
a list always ends with `<s>` (the official `[self.sos]`). Each hotword is split on spaces and
tokenized with the folder's `seg_dict` as the official `seg_tokenize` (else the word is one
token), unknown pieces becoming `<unk>`.

Batching, as for Paraformer: a padded batch gives what each clip gives alone. The official
batch differs from its clips alone in three places, all fixed here per row: the CIF and the
upsampling head see the encoder's padded frames, the BLSTM runs backwards from the batch's
padded end, and the ASF filter of the whole batch is chosen from its first row's scores. One
hotword list per batch (`item_options`: the runner batches items by their list).

Size: above 400 lines because it holds one whole family variant (predictor V3, bias encoder,
SeACo decoder, hotword lists, recognizer, build hooks); the shared parts are paraformer.py's.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from batchasr.models.blocks import host_softmax
from batchasr.models.blocks.cif import (
    CifPredictorV2,
    PredictorArgs,
    _sequential_cif,
    token_timestamps,
)
from batchasr.models.blocks.sanm import SANMEncoderArgs
from batchasr.models.paraformer import Model as ParaformerModel
from batchasr.models.paraformer import (
    BLANK_ID,
    EOS_ID,
    SOS_ID,
    DecoderArgs,
    ParaformerASR,
    ParaformerOutput,
    ParaformerSANMDecoder,
    PendingBatch,
)
from batchasr.models.paraformer import read_assets as paraformer_assets
from batchasr.models.paraformer import wrap as paraformer_wrap
from batchasr.models.blocks.text import sentence_postprocess
from batchasr.models.blocks.tuning import Tuning
from batchasr.transcript import Transcript

NFILTER = 50  # _seaco_decode_with_ASF's default: more hotwords than this are pre-filtered
UPSAMPLED_TIME_RATE = 10.0 * 6 / 1000 / 3  # ts_prediction_lfr6_standard, upsample_rate=3


@dataclass
class PredictorV3Args(PredictorArgs):
    """`predictor_conf` of CifPredictorV3 (its timestamp head's keys on top of V2's)."""

    smooth_factor2: float = 1.0
    noise_threshold2: float = 0.0
    upsample_times: int = 5
    upsample_type: str = "cnn"
    use_cif1_cnn: bool = True

    def __post_init__(self):
        if self.upsample_type not in ("cnn", "cnn_blstm"):
            raise ValueError(f"CifPredictorV3 upsample_type {self.upsample_type!r} is not "
                             f"supported (cnn, cnn_blstm)")


class LSTM(nn.Module):
    """torch.nn.LSTM (batch_first, gates i f g o) with its state-dict names
    (`weight_ih_l0`, `bias_hh_l0`, `..._reverse`); `bidirectional` rows run backwards over
    their own length only."""

    def __init__(self, size: int, hidden: int, layers: int = 1, bidirectional: bool = False):
        super().__init__()
        self.layers, self.hidden_size = layers, hidden
        self.directions = ["", "_reverse"] if bidirectional else [""]
        for k in range(layers):
            n_in = size if k == 0 else hidden * len(self.directions)
            for d in self.directions:
                setattr(self, f"weight_ih_l{k}{d}", mx.zeros((4 * hidden, n_in)))
                setattr(self, f"weight_hh_l{k}{d}", mx.zeros((4 * hidden, hidden)))
                setattr(self, f"bias_ih_l{k}{d}", mx.zeros((4 * hidden,)))
                setattr(self, f"bias_hh_l{k}{d}", mx.zeros((4 * hidden,)))

    def _run(self, x: mx.array, w_ih, w_hh, bias) -> mx.array:
        """One direction over (N, L, D) -> hidden states (N, L, H)."""
        gates_x = x @ w_ih.T + bias
        N, L, _ = x.shape
        h = mx.zeros((N, self.hidden_size), x.dtype)
        c = mx.zeros((N, self.hidden_size), x.dtype)
        out = []
        for t in range(L):
            i, f, g, o = mx.split(gates_x[:, t] + h @ w_hh.T, 4, axis=-1)
            c = mx.sigmoid(f) * c + mx.sigmoid(i) * mx.tanh(g)
            h = mx.sigmoid(o) * mx.tanh(c)
            out.append(h)
        return mx.stack(out, axis=1)

    def __call__(self, x: mx.array, lengths: np.ndarray | None = None) -> mx.array:
        N, L, _ = x.shape
        rev = None
        if len(self.directions) > 1:  # t -> len-1-t inside each row, padding left in place
            lens = np.full(N, L) if lengths is None else np.asarray(lengths)
            idx = np.tile(np.arange(L), (N, 1))
            for n in range(N):
                idx[n, : lens[n]] = idx[n, : lens[n]][::-1]
            rev = mx.array(idx.astype(np.int32))
        for k in range(self.layers):
            outs = []
            for d in self.directions:
                p = lambda name: getattr(self, f"{name}_l{k}{d}")
                bias = p("bias_ih") + p("bias_hh")
                if d:
                    xr = mx.take_along_axis(x, rev[..., None], axis=1)
                    y = self._run(xr, p("weight_ih"), p("weight_hh"), bias)
                    outs.append(mx.take_along_axis(y, rev[..., None], axis=1))
                else:
                    outs.append(self._run(x, p("weight_ih"), p("weight_hh"), bias))
            x = outs[0] if len(outs) == 1 else mx.concatenate(outs, axis=-1)
        return x


class CifPredictorV3(CifPredictorV2):
    """V2's alphas (same weights) plus the upsampled timestamp head."""

    def __init__(self, args: PredictorV3Args):
        super().__init__(args)
        d = args.idim
        # torch ConvTranspose1d layout (in, out, k), kernel = stride = upsample_times
        self.upsample_cnn = {"weight": mx.zeros((d, d, args.upsample_times)),
                             "bias": mx.zeros((d,))}
        if args.upsample_type == "cnn_blstm":
            self.blstm = LSTM(d, d, 1, bidirectional=True)
            self.cif_output2 = nn.Linear(2 * d, 1)
        else:
            self.cif_output2 = nn.Linear(d, 1)

    def upsampled_alphas(self, hidden: mx.array, lengths: np.ndarray) -> mx.array:
        """get_upsample_timestamp's alphas2 (B, T * upsample_times), zero past each length,
        before the rescaling to the token count (done on the host)."""
        a = self.args
        B, T, D = hidden.shape
        x = hidden
        if a.use_cif1_cnn:
            xp = mx.pad(hidden, [(0, 0), (a.l_order, a.r_order), (0, 0)])
            x = nn.relu(self.cif_conv1d(xp))
        w, k = self.upsample_cnn["weight"], a.upsample_times
        # out[b, t*k + j, o] = sum_i x[b, t, i] w[i, o, j] + bias[o]
        up = (x @ w.transpose(0, 2, 1).reshape(D, k * D)).reshape(B, T * k, D)
        up = up + self.upsample_cnn["bias"]
        if a.upsample_type == "cnn_blstm":
            up = self.blstm(up, np.asarray(lengths) * k)
        alphas2 = mx.sigmoid(self.cif_output2(up))[..., 0]
        alphas2 = nn.relu(alphas2 * a.smooth_factor2 - a.noise_threshold2)
        mask = mx.arange(T * k)[None, :] < mx.array(np.asarray(lengths) * k)[:, None]
        return alphas2 * mask.astype(alphas2.dtype)


def cif_v3(alphas: np.ndarray, lengths: np.ndarray, tail_threshold: float,
           threshold: float = 1.0) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """CifPredictorV3.forward after the alphas, on the host in float32: the tail
    (tail_process_fn), token counts floor(sum), and the sequential `cif` as weights:
    (token counts (B,), weights (B, N, T+1) of each frame in each token's embedding, fires
    per row). The official embeddings are these weights times the encoder frames."""
    alphas = alphas.astype(np.float32)
    B, T = alphas.shape
    if tail_threshold > 0.0:
        alphas = np.concatenate([alphas, np.zeros((B, 1), np.float32)], axis=1)
        alphas[np.arange(B), lengths] += np.float32(tail_threshold)
        token_num = np.floor(alphas.sum(axis=-1, dtype=np.float32))
    else:
        token_num = alphas.sum(axis=-1, dtype=np.float32)
    n_tok = np.round(token_num).astype(np.int64)
    Tp = alphas.shape[1]
    N = max(int(token_num.max(initial=0)), 0)
    weights = np.zeros((B, N + 1, Tp), np.float32)
    integrate = np.zeros(B, np.float32)
    count = np.zeros(B, np.int64)
    rows = np.arange(B)
    one, thr = np.float32(1.0), np.float32(threshold)
    for t in range(Tp):
        a = alphas[:, t]
        completion = one - integrate
        integrate = (integrate + a).astype(np.float32)
        fired = integrate >= thr
        integrate = np.where(fired, integrate - one, integrate).astype(np.float32)
        cur = np.where(fired, completion, a).astype(np.float32)
        rem = (a - cur).astype(np.float32)
        k = np.minimum(count, N)
        weights[rows, k, t] += cur
        count = count + fired
        k2 = np.minimum(count, N)
        weights[rows[fired], k2[fired], t] += rem[fired]
    fires = [int(c) for c in count]
    for b in range(B):  # frames after a row's last fire belong to no token
        weights[b, min(fires[b], N):] = 0.0
    return n_tok, weights[:, :N], fires


@dataclass
class ModelArgs:
    """config.yaml of SeacoParaformer (the keys of model_conf may also sit at the top)."""

    vocab_size: int
    input_size: int
    encoder_conf: dict
    decoder_conf: dict
    predictor_conf: dict
    seaco_decoder_conf: dict
    frontend_conf: dict = field(default_factory=dict)
    inner_dim: int = 256
    bias_encoder_type: str = "lstm"
    bias_encoder_bid: bool = False
    NO_BIAS: int = 8377
    model: str = "SeacoParaformer"
    encoder: str = "SANMEncoder"
    decoder: str = "ParaformerSANMDecoder"
    seaco_decoder: str | None = "ParaformerSANMDecoder"
    predictor: str = "CifPredictorV3"

    @classmethod
    def from_config(cls, config: dict, assets: dict) -> "ModelArgs":
        conf = {**(config.get("model_conf") or {}), **config}  # deep_update(model_conf, kwargs)
        fc = conf.get("frontend_conf") or {}
        input_size = (conf.get("encoder_conf") or {}).get("input_size") or \
            fc.get("n_mels", 80) * fc.get("lfr_m", 1)
        keys = ("inner_dim", "bias_encoder_type", "bias_encoder_bid", "NO_BIAS", "model",
                "encoder", "decoder", "seaco_decoder", "predictor")
        return cls(vocab_size=len(assets["tokens"]), input_size=input_size,
                   encoder_conf=conf["encoder_conf"], decoder_conf=conf["decoder_conf"],
                   predictor_conf=conf["predictor_conf"],
                   seaco_decoder_conf=conf.get("seaco_decoder_conf") or {}, frontend_conf=fc,
                   **{k: conf[k] for k in keys if k in conf})

    def __post_init__(self):
        for key, expected in (("model", "SeacoParaformer"), ("encoder", "SANMEncoder"),
                              ("decoder", "ParaformerSANMDecoder"),
                              ("seaco_decoder", "ParaformerSANMDecoder"),
                              ("predictor", "CifPredictorV3"), ("bias_encoder_type", "lstm"),
                              ("bias_encoder_bid", False)):
            if getattr(self, key) != expected:
                raise ValueError(f"config.yaml {key}: {getattr(self, key)!r} is not supported "
                                 f"by the SeACo-Paraformer port (expected {expected!r})")
        if self.seaco_decoder_conf.get("use_output_layer", True):
            raise ValueError("seaco_decoder_conf: use_output_layer must be false (the SeACo "
                             "decoder's hidden states go to hotword_output_layer)")
        width = SANMEncoderArgs.from_dict(self.encoder_conf, input_size=self.input_size)
        if width.output_size != self.inner_dim:
            raise ValueError(f"inner_dim {self.inner_dim} must equal the encoder's output_size "
                             f"{width.output_size} (the SeACo decoder reads CIF embeddings)")


class Model(ParaformerModel):
    """Module tree and state-dict names of the official SeacoParaformer: Paraformer's (its
    cast, compile and forward up to the alphas) with CifPredictorV3 and the hotword parts."""

    def __init__(self, args: ModelArgs):
        super().__init__(args)
        width = SANMEncoderArgs.from_dict(args.encoder_conf, input_size=args.input_size)
        d = args.inner_dim
        self.hotword_embedding = nn.Embedding(args.vocab_size, width.output_size)  # decoder.embed.0
        self.bias_encoder = LSTM(d, d, 2)
        seaco = DecoderArgs.from_dict(args.seaco_decoder_conf)
        self.seaco_decoder = ParaformerSANMDecoder(args.vocab_size, d, seaco, output_layer=False)
        self.hotword_output_layer = nn.Linear(d, args.vocab_size)

    def build_predictor(self, conf: dict) -> "CifPredictorV3":
        return CifPredictorV3(PredictorV3Args.from_dict(conf))

    def sanitize(self, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Paraformer's mapping, after keeping the decoder's token embeddings (the official
        hotword embeddings) and dropping the SeACo decoder's unused ones and the losses."""
        kept = {("hotword_embedding.weight" if key == "decoder.embed.0.weight" else key): value
                for key, value in weights.items()
                if not key.startswith(("criterion_", "seaco_decoder.embed."))}
        return super().sanitize(kept)

    def decode(self, feats: mx.array, lengths: mx.array, *, timestamps: bool = True,
               hotwords: list[list[int]] | None = None) -> ParaformerOutput:
        """Features and lengths with one hotword list (see SeacoDecodeRun) -> token ids and
        times per row."""
        run = SeacoDecodeRun(self, feats, lengths, hotwords)
        run.launch_decoder()
        return run.finish(timestamps=timestamps)

    def hotword_embeddings(self, hotwords: Sequence[Sequence[int]]) -> mx.array:
        """_hotword_representation: (K, inner_dim), the top LSTM state at each last token."""
        lens = np.array([len(h) for h in hotwords])
        pad = np.zeros((len(hotwords), int(lens.max())), np.int32)
        for k, h in enumerate(hotwords):
            pad[k, : len(h)] = h
        states = self.bias_encoder(self.hotword_embedding(mx.array(pad)))
        return mx.take_along_axis(states, mx.array(lens - 1)[:, None, None], axis=1)[:, 0]

    def asf_scores(self, memory: mx.array, hidden: mx.array, token_mask: mx.array) -> mx.array:
        """forward_asf6: the attention of seaco_decoder.decoders[5] to each hotword, summed
        over heads and over each row's own tokens: (B, K)."""
        layers = self.seaco_decoder.decoders
        if len(layers) < 6:
            raise ValueError(f"more than {NFILTER} hotwords need a SeACo decoder of at least 6 "
                             f"attention layers (the official forward_asf6); this one has "
                             f"{len(layers)}")
        x = hidden
        for layer in layers[:5]:
            x = layer(x, token_mask, memory, None)
        layer = layers[5]
        y = layer.feed_forward(layer.norm1(x))
        y = x + layer.self_attn(layer.norm2(y), token_mask)
        att = layer.src_attn
        q = att.linear_q(layer.norm3(y))
        k, _ = mx.split(att.linear_k_v(memory), 2, axis=-1)
        B, N, D = q.shape
        dk = D // att.h
        q = q.reshape(B, N, att.h, dk).transpose(0, 2, 1, 3)
        k = k.reshape(B, -1, att.h, dk).transpose(0, 2, 1, 3)
        probs = mx.softmax((q @ k.swapaxes(-1, -2)) / np.sqrt(dk), axis=-1, precise=True)
        probs = probs * token_mask[:, None, :, None].astype(probs.dtype)
        return probs.sum(axis=1).sum(axis=1)

    def seaco_log_probs(self, memory, embeds, hidden, token_mask) -> mx.array:
        """The hotword head: SeACo decoder from the CIF embeddings and from the decoder's hidden
        states (`_merge`: their sum), hotword_output_layer, log_softmax: (B, N, vocab)."""
        sd = self.seaco_decoder
        merged = sd.hidden(memory, None, embeds, token_mask) + \
            sd.hidden(memory, None, hidden, token_mask)
        logits = self.hotword_output_layer(merged)
        return host_softmax.log_softmax(logits)


class SeacoDecodeRun:
    """One batch (the steps of paraformer.DecodeRun) with one hotword list (token ids, `<s>`
    last) or None."""

    def __init__(self, model: Model, feats: mx.array, lengths: mx.array,
                 hotwords: list[list[int]] | None):
        self.model, self.lengths, self.hotwords = model, lengths, hotwords
        self.B, self.T = feats.shape[:2]
        self.lens = np.array(lengths, dtype=np.int64)
        self.enc, self.alphas = model(feats, lengths)
        self.up = model.predictor.upsampled_alphas(self.enc.astype(mx.float32), self.lens)
        mx.async_eval(self.enc, self.alphas, self.up)
        self.n_tok = None
        self.ids = None

    def launch_decoder(self) -> None:
        if self.n_tok is not None:
            return
        model, enc, T = self.model, self.enc, self.T
        p = model.predictor.args
        self.n_tok, weights, _ = cif_v3(np.array(self.alphas), self.lens, p.tail_threshold,
                                        p.threshold)
        if self.n_tok.max(initial=0) < 1:
            return
        hidden = mx.pad(enc.astype(mx.float32), [(0, 0), (0, 1), (0, 0)])
        embeds = (mx.array(weights) @ hidden).astype(enc.dtype)
        token_mask = mx.arange(embeds.shape[1])[None, :] < mx.array(self.n_tok)[:, None]
        memory_mask = mx.arange(T)[None, :] < self.lengths[:, None]
        dec_hidden = model.decoder.hidden(enc, memory_mask, embeds, token_mask)
        logp = model.decoder.log_probs(dec_hidden)
        if self.hotwords is not None:
            logp = self.merge(logp, embeds, dec_hidden, token_mask)
        self.ids = mx.argmax(logp, axis=-1)
        mx.async_eval(self.ids)

    def merge(self, logp, embeds, dec_hidden, token_mask) -> mx.array:
        """_seaco_decode_with_ASF's hotword part (seaco_weight 1.0)."""
        model, B = self.model, self.B
        selected = model.hotword_embeddings(self.hotwords)  # (K, D)
        K = selected.shape[0]
        memory = mx.broadcast_to(selected[None], (B,) + selected.shape)
        if 0 < NFILTER < K:
            scores = np.array(model.asf_scores(memory, dec_hidden, token_mask))
            keep = [np.argsort(-s, kind="stable")[: min(NFILTER, K - 1)].tolist() + [K - 1]
                    for s in scores]
            memory = mx.take(selected, mx.array(np.array(keep, np.int32)), axis=0)
        dha = model.seaco_log_probs(memory, embeds, dec_hidden, token_mask)
        no_bias = mx.argmax(dha, axis=-1) == model.args.NO_BIAS
        # logits = dec * mask + dha * (1 - mask), mask = (argmax(dha) == NO_BIAS)
        return mx.where(no_bias[..., None], logp.astype(dha.dtype), dha)

    def finish(self, *, timestamps: bool = True) -> ParaformerOutput:
        self.launch_decoder()
        B, lens = self.B, self.lens
        if self.ids is None:
            return ParaformerOutput([[] for _ in range(B)], [[] for _ in range(B)], lens)
        ids = np.array(self.ids)
        up = np.array(self.up).astype(np.float32)
        k = self.model.predictor.args.upsample_times
        all_ids, all_times = [], []
        for b in range(B):
            row = [int(i) for i in ids[b, : self.n_tok[b]] if i not in (BLANK_ID, SOS_ID, EOS_ID)]
            all_ids.append(row)
            times = []
            if timestamps and row:
                # get_upsample_timestamp: alphas2 scaled to the token count, re-fired
                us = up[b, : lens[b] * k]
                total = np.float32(us.sum(dtype=np.float32))
                us = (us * np.float32(np.float32(self.n_tok[b]) / total)).astype(np.float32)
                times = token_timestamps(us, _sequential_cif(us), len(row),
                                         time_rate=UPSAMPLED_TIME_RATE)
            all_times.append(times)
        return ParaformerOutput(all_ids, all_times, lens)


# --------------------------------------------------------------------------------------------
# hotword lists (generate_hotwords_list)
# --------------------------------------------------------------------------------------------
CJK_OR_DIGITS = re.compile(r"^[\u4E00-\u9FA50-9]+$")


def seg_tokenize(words: Sequence[str], seg_dict: dict[str, str]) -> list[str]:
    """The official seg_tokenize: a word in seg_dict -> its pieces; else a CJK/digit word ->
    its characters' pieces (<unk> for those not in it); else <unk>."""
    out = ""
    for word in words:
        word = word.lower()
        if word in seg_dict:
            out += seg_dict[word] + " "
        elif CJK_OR_DIGITS.match(word):
            for char in word:
                out += (seg_dict[char] if char in seg_dict else "<unk>") + " "
        else:
            out += "<unk>" + " "
    return out.strip().split()


def read_seg_dict(path: Path) -> dict[str, str]:
    seg = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        s = line.strip().split()
        if s:
            seg[s[0]] = " ".join(s[1:])
    return seg


def hotword_strings(hotwords: str | Sequence[str] | None) -> list[str] | None:
    """The hotwords of `--hotwords` / a manifest cell: a file (one hotword a line, blank lines
    skipped), a comma list (each item one hotword, spaces inside kept), or, with no comma,
    words split on spaces (the official string form). None or empty: no hotwords."""
    if hotwords is None:
        return None
    if not isinstance(hotwords, str):
        words = [str(w).strip() for w in hotwords]
    else:
        text = hotwords.strip()
        if not text:
            return None
        if "\n" not in text and _is_file(text):
            lines = Path(text).expanduser().read_text(encoding="utf-8").splitlines()
            words = [line.strip() for line in lines]
        elif "," in text or "，" in text:
            words = [w.strip() for w in re.split(r"[,，]", text)]
        else:
            words = text.split()
    words = [w for w in words if w]
    return words or None


def _is_file(text: str) -> bool:
    try:
        return Path(text).expanduser().is_file()
    except OSError:  # e.g. a name too long for a path
        return False


# --------------------------------------------------------------------------------------------
# the recognizer
# --------------------------------------------------------------------------------------------
class SeacoParaformerASR(ParaformerASR):
    """ParaformerASR with hotwords: `hotwords` (the run's, `--hotwords`) unless a batch is
    given its own (`submit(..., hotwords=...)`, the manifest's `hotwords` column)."""

    item_options = ("hotwords",)  # per-item options the runner reads from manifest columns

    def __init__(self, *args, seg_dict: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.seg_dict = seg_dict
        self.hotwords: str | Sequence[str] | None = None
        self.token_ids = {t: i for i, t in enumerate(self.tokens)}
        self.unk_id = self.token_ids.get("<unk>", len(self.tokens) - 1)

    def hotword_ids(self, hotwords) -> list[list[int]] | None:
        """generate_hotwords_list: token ids per hotword, then [<s>]; None without hotwords."""
        words = hotword_strings(hotwords)
        if words is None:
            return None
        out = []
        for hw in words:
            pieces = hw.split()
            if self.seg_dict is not None:
                pieces = seg_tokenize(pieces, self.seg_dict)
            out.append([self.token_ids.get(p, self.unk_id) for p in pieces] or [self.unk_id])
        return out + [[SOS_ID]]

    def to_transcript(self, ids: list[int], times: list[list[int]]) -> Transcript:
        """As Paraformer's, but the text is sentence_postprocess(tokens, timestamps)'s, as
        SeACo's inference always computes times (words of a CJK run spaced apart)."""
        t = super().to_transcript(ids, times)
        if t.tokens and times:
            t.text = sentence_postprocess([k.text for k in t.tokens], times)[0]
            for seg in t.segments:
                seg.text = t.text
        return t

    def transcribe(self, waveforms: Sequence[np.ndarray], *,
                   languages: Sequence[str | None] | None = None,
                   hotwords=None) -> list[Transcript]:
        return self.submit(waveforms, languages=languages, hotwords=hotwords).result()

    def submit(self, waveforms: Sequence[np.ndarray], *,
               languages: Sequence[str | None] | None = None,
               hotwords=None) -> "SeacoPendingBatch":
        """As ParaformerASR.submit; `hotwords` (a list, a comma list or a file) replaces the
        recognizer's `hotwords` for this batch."""
        ids = self.hotword_ids(self.hotwords if hotwords is None else hotwords)
        waveforms = [np.asarray(w, dtype=np.float32) for w in waveforms]
        return SeacoPendingBatch(self, waveforms, ids)


class SeacoPendingBatch(PendingBatch):
    def __init__(self, asr: SeacoParaformerASR, waveforms: list[np.ndarray],
                 hotwords: list[list[int]] | None):
        self.hotwords = hotwords
        super().__init__(asr, waveforms)

    def start(self, feats: mx.array, lengths: mx.array) -> SeacoDecodeRun:
        return SeacoDecodeRun(self.asr.model, feats, lengths, self.hotwords)


# --------------------------------------------------------------------------------------------
# family hooks (batchasr.models.loader)
# --------------------------------------------------------------------------------------------
# The published speech_seaco_paraformer_large_asr_nat-zh-cn-16k-common-vocab8404 sizes, to
# build full-size dummy models without a folder. Encoder, decoder and frontend: the
# paraformer-large config (paraformer.DUMMY_CONFIG). The SeACo parts: the state-dict table of
# that checkpoint in lovemefan/paraformer.cpp resource/SeacoParaformer模型结构.md (bias_encoder
# a 2-layer LSTM 512; seaco_decoder.decoders.0-5 with fsmn kernel 21 and FFN 1024, no embed,
# no output layer; hotword_output_layer 512 -> 8404; predictor.upsample_cnn 512x512x3, a
# bidirectional predictor.blstm 512, cif_output2 1024 -> 1); the predictor_conf values
# (smooth_factor2 0.25, noise_threshold2 0.01, upsample_times 3, use_cif1_cnn false,
# upsample_type cnn_blstm) as in the published BiCifParaformer config.yaml (HF mirror
# yiyu-earth/sherpa-onnx-paraformer-zh-2024-04-25); NO_BIAS 8377 is the official default.
def _dummy_config() -> dict:
    from batchasr.models.paraformer import DUMMY_CONFIG as PARAFORMER

    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in PARAFORMER.items()}
    cfg.update(model="SeacoParaformer", predictor="CifPredictorV3",
               seaco_decoder="ParaformerSANMDecoder")
    cfg["model_conf"] = {"inner_dim": 512, "bias_encoder_type": "lstm", "NO_BIAS": 8377}
    cfg["predictor_conf"].update(smooth_factor2=0.25, noise_threshold2=0.01, upsample_times=3,
                                 use_cif1_cnn=False, upsample_type="cnn_blstm")
    cfg["seaco_decoder_conf"] = {"attention_heads": 4, "linear_units": 1024, "num_blocks": 6,
                                 "att_layer_num": 6, "kernel_size": 21, "sanm_shfit": 0,
                                 "wo_input_layer": True, "use_output_layer": False}
    return cfg


DUMMY_CONFIG = _dummy_config()


def read_assets(folder: Path | None, config: dict, *, dummy: bool,
                vocab_size: int | None = None) -> dict:
    """Paraformer's (tokens, am.mvn) plus the folder's seg_dict, when it has one."""
    assets = paraformer_assets(folder, config, dummy=dummy, vocab_size=vocab_size)
    seg = folder / "seg_dict" if folder is not None else None
    assets["seg_dict"] = read_seg_dict(seg) if seg is not None and seg.exists() else None
    return assets


def wrap(model: Model, assets: dict, *, name: str, dtype, dummy: bool,
         tuning: Tuning = Tuning()) -> SeacoParaformerASR:
    return paraformer_wrap(model, assets, name=name, dtype=dtype, dummy=dummy, tuning=tuning,
                           recognizer=SeacoParaformerASR, seg_dict=assets["seg_dict"])


RECOGNIZER = SeacoParaformerASR
