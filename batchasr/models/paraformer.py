"""Paraformer (non-autoregressive ASR, FunASR `model: Paraformer`): network, recognizer, build.

Port of funasr 1.4.16 `funasr.models.paraformer.model` / `.decoder`: SAN-M encoder
(batchasr.models.blocks.sanm), CIF predictor and timestamps (batchasr.models.blocks.cif), SAN-M
decoder. Module attributes follow the official state-dict keys.

Batching differs from the official code in one deliberate way: encoder output past each row's
length is zeroed before the predictor, so a padded batch gives exactly the tokens and times
each utterance gives alone (the official batch lets padding leak into CIF). Batches are padded
to a multiple of `Tuning.frame_bucket` frames so a long job sees few distinct shapes; every
layer masks the padding.

Family hooks for batchasr.models.loader: DUMMY_CONFIG, read_assets, ModelArgs.from_config,
Model (sanitize, cast), wrap -> ParaformerASR.

Size: above 400 lines because it holds one whole family (decoder, model, recognizer, build
hooks); its shared parts already live in blocks/.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from batchasr.audio.decode import SAMPLE_RATE
from batchasr.models.blocks import host_softmax
from batchasr.models.base import BaseModelArgs
from batchasr.models.blocks.cif import (
    CifPredictorV2,
    CifResult,
    PredictorArgs,
    cif_embeddings,
    cif_fire,
    token_timestamps_rows,
)
from batchasr.models.blocks.frontend import FrontendConfig, WavFrontend, load_cmvn
from batchasr.models.blocks.sanm import (
    FSMNBlock,
    SANMEncoder,
    SANMEncoderArgs,
    TunedAttention,
    attention,
    fsmn_padding,
    layer_norm,
    merge_heads,
    packed_heads,
    split_heads,
    use_compiled,
)
from batchasr.models.blocks.text import sentence_postprocess
from batchasr.models.blocks.tuning import Tuning
from batchasr.models.weights import read_tokens
from batchasr.transcript import Segment, Token, Transcript

BLANK_ID, SOS_ID, EOS_ID = 0, 1, 2  # Paraformer class defaults


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

    @classmethod
    def from_config(cls, config: dict, assets: dict) -> "ModelArgs":
        fc = config.get("frontend_conf") or {}
        input_size = (config.get("encoder_conf") or {}).get("input_size") or \
            fc.get("n_mels", 80) * fc.get("lfr_m", 1)
        return cls(vocab_size=len(assets["tokens"]), input_size=input_size,
                   encoder_conf=config["encoder_conf"], decoder_conf=config["decoder_conf"],
                   predictor_conf=config["predictor_conf"], frontend_conf=fc,
                   model=config.get("model", "Paraformer"),
                   encoder=config.get("encoder", "SANMEncoder"),
                   decoder=config.get("decoder", "ParaformerSANMDecoder"),
                   predictor=config.get("predictor", "CifPredictorV2"))

    def __post_init__(self):
        for key, expected in (("model", "Paraformer"), ("encoder", "SANMEncoder"),
                              ("decoder", "ParaformerSANMDecoder"),
                              ("predictor", "CifPredictorV2")):
            if getattr(self, key) != expected:
                raise ValueError(f"config.yaml {key}: {getattr(self, key)!r} is not supported "
                                 f"by the Paraformer port (expected {expected!r})")


# --------------------------------------------------------------------------------------------
# decoder
# --------------------------------------------------------------------------------------------
class MultiHeadedAttentionSANMDecoder(nn.Module):
    """FSMN-only 'self-attention' of the decoder: masked input, depthwise conv, plus input."""

    def __init__(self, n_feat: int, kernel_size: int, sanm_shfit: int = 0):
        super().__init__()
        self.fsmn_block = FSMNBlock(n_feat, kernel_size, fsmn_padding(kernel_size, sanm_shfit))

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        return self.fsmn_block.memory(x, mask)


class MultiHeadedAttentionCrossAtt(TunedAttention, nn.Module):
    def __init__(self, n_head: int, n_feat: int):
        super().__init__()
        self.h = n_head
        self.linear_q = nn.Linear(n_feat, n_feat)
        self.linear_k_v = nn.Linear(n_feat, n_feat * 2)
        self.linear_out = nn.Linear(n_feat, n_feat)

    def __call__(self, x: mx.array, memory: mx.array, memory_mask: mx.array) -> mx.array:
        k, v = packed_heads(self.linear_k_v(memory), 2, self.h, self.method)
        q = split_heads(self.linear_q(x), self.h)
        out = attention(q, k, v, memory_mask, self.method)
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
    """`output_layer=False`: no output layer (`use_output_layer: false`, SeACo's decoder)."""

    def __init__(self, vocab_size: int, size: int, args: DecoderArgs, output_layer: bool = True):
        super().__init__()
        self.decoders = [DecoderLayerSANM(size, args, True, True, args.sanm_shfit)
                         for _ in range(args.att_layer_num)]
        # decoders2 uses sanm_shfit 0 whatever the config says (as the official builder)
        self.decoders2 = [DecoderLayerSANM(size, args, True, False, 0)
                          for _ in range(args.num_blocks - args.att_layer_num)]
        self.decoders3 = [DecoderLayerSANM(size, args, False, False, 0)]
        self.after_norm = layer_norm(size)
        if output_layer:
            self.output_layer = nn.Linear(size, vocab_size)

    def compile(self, enable: bool = True) -> None:
        use_compiled(self, enable, self.decoders + self.decoders2 + self.decoders3)

    def hidden(self, memory, memory_mask, embeds, token_mask) -> mx.array:
        """The normed output before the output layer (official `return_hidden=True`)."""
        x = embeds
        for call in getattr(self, "_calls", None) or self.decoders + self.decoders2 + self.decoders3:
            x = call(x, token_mask, memory, memory_mask)
        return self.after_norm(x)

    def log_probs(self, hidden: mx.array) -> mx.array:
        logits = self.output_layer(hidden)
        return host_softmax.log_softmax(logits)

    def __call__(self, memory, memory_mask, embeds, token_mask) -> mx.array:
        """memory (B, T, D), embeds (B, N, D) -> log-probabilities (B, N, vocab)."""
        return self.log_probs(self.hidden(memory, memory_mask, embeds, token_mask))


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
        self.predictor = self.build_predictor(args.predictor_conf)
        self.decoder = ParaformerSANMDecoder(args.vocab_size, enc.output_size,
                                             DecoderArgs.from_dict(args.decoder_conf))

    def build_predictor(self, conf: dict) -> CifPredictorV2:
        """The CIF predictor of `predictor_conf` (a family variant builds its own)."""
        return CifPredictorV2(PredictorArgs.from_dict(conf))

    def compile(self, enable: bool = True) -> None:
        """Use mx.compile'd layers (faster on GPUs; each new input shape is traced once)."""
        self.encoder.compile(enable)
        self.decoder.compile(enable)

    def cast(self, dtype: mx.Dtype) -> None:
        """Network weights in `dtype`; CIF decides token counts, so the predictor stays float32."""
        if dtype != mx.float32:
            self.set_dtype(dtype)
            self.predictor.set_dtype(mx.float32)

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
        embeds = cif_embeddings(hidden.astype(mx.float32), cif,
                                model.predictor.token_bucket).astype(enc.dtype)
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
        special = (BLANK_ID, SOS_ID, EOS_ID)
        all_ids = [[i for i in ids[b, : n_tok[b]].tolist() if i not in special]
                   for b in range(B)]
        all_times: list[list] = [[] for _ in range(B)]
        if timestamps:  # every row's at once (the re-fired curves together)
            timed = [b for b in range(B) if all_ids[b]]
            ends = [min(lens[b] + 1 if (p.tail_mask and p.tail_threshold > 0.0) else lens[b],
                        cif.alphas.shape[1]) for b in timed]
            times = token_timestamps_rows([cif.fires[b, :n] for b, n in zip(timed, ends)],
                                          [cif.alphas[b, :n] for b, n in zip(timed, ends)],
                                          [len(all_ids[b]) for b in timed])
            for b, t in zip(timed, times):
                all_times[b] = t
        return ParaformerOutput(all_ids, all_times, lens, cif if keep_cif else None)


# --------------------------------------------------------------------------------------------
# the recognizer
# --------------------------------------------------------------------------------------------
class ParaformerASR:
    """Implements the runner's ASRModel protocol for Paraformer checkpoints."""

    sample_rate = SAMPLE_RATE
    punctuated = False  # Paraformer writes bare tokens: the runner may add a punctuation model
    max_segment_s = 30.0  # the longest piece it is given (its windows and batches)

    def __init__(self, model: Model, tokens: list[str], cmvn: np.ndarray | None,
                 name: str = "paraformer", dtype: mx.Dtype = mx.float32,
                 tuning: Tuning = Tuning()):
        self.model = model
        self.tuning = tuning  # the switches read at load (batchasr.models.blocks.tuning)
        # batches are padded to a multiple of this many frames (~1 s): few distinct shapes
        self.frame_bucket = tuning.frame_bucket
        self.tokens = tokens
        self.name = name
        self.dtype = dtype
        self.frontend_conf = FrontendConfig.from_dict(model.args.frontend_conf)
        self.frontend = WavFrontend(self.frontend_conf, cmvn, upload=tuning.upload,
                                    dft=tuning.dft)
        if tuning.finish not in ("inline", "thread"):
            raise ValueError(f"finish must be 'inline' or 'thread', not {tuning.finish!r}")
        self._finisher: ThreadPoolExecutor | None = None
        if tuning.compile:  # opt-in (BATCHASR_COMPILE=1), see batchasr.models.blocks.tuning
            model.compile()
        if len(tokens) != model.args.vocab_size:
            raise ValueError(f"tokens.json has {len(tokens)} entries, the model's output layer "
                             f"{model.args.vocab_size}")

    def features(self, waveforms: Sequence[np.ndarray], *,
                 frame_bucket: int = 1) -> tuple[mx.array, mx.array]:
        """Padded features and their lengths (see WavFrontend; a batch asks for its frame
        bucket, so that every shape of its frontend follows it)."""
        return self.frontend(waveforms, frame_bucket=frame_bucket)

    @property
    def length_quantum(self) -> int:
        """Samples per padding bucket (batches are padded to a multiple of frame_bucket
        frames): the runner's stable-shape plan rounds lengths up to this."""
        return self.frame_bucket * self.frontend_conf.frame_samples

    def transcribe(self, waveforms: Sequence[np.ndarray], *,
                   languages: Sequence[str | None] | None = None) -> list[Transcript]:
        """16 kHz mono float32 waveforms -> one Transcript each, in order. `languages` is
        accepted for the protocol; Paraformer checkpoints are single-language."""
        return self.submit(waveforms, languages=languages).result()

    def submit(self, waveforms: Sequence[np.ndarray], *,
               languages: Sequence[str | None] | None = None) -> "PendingBatch":
        """Start a batch: its features, encoder and predictor are queued on the device and
        this returns at once. `result()` gives what `transcribe` gives. The runner submits
        batch k+1 before it takes batch k's result, so that the host work of one batch
        (CIF, timestamps, text) overlaps the device work of the next."""
        waveforms = [np.asarray(w, dtype=np.float32) for w in waveforms]
        return PendingBatch(self, waveforms)

    def finisher(self) -> ThreadPoolExecutor | None:
        """The thread that finishes batches (Tuning.finish "thread"), else None."""
        if self.tuning.finish != "thread":
            return None
        if self._finisher is None:
            self._finisher = ThreadPoolExecutor(1, thread_name_prefix="batchasr-finish")
        return self._finisher

    def to_transcript(self, ids: list[int], times: list[list[int]]) -> Transcript:
        pieces = [self.tokens[i] for i in ids]
        text, _, _ = sentence_postprocess(pieces)
        tokens = [Token(text=p, id=i) for p, i in zip(pieces, ids)]
        for tok, (start, end) in zip(tokens, times):
            tok.start_ms, tok.end_ms = start, end
        segments = []
        timed = [t for t in tokens if t.start_ms is not None]
        if text and timed:
            segments.append(Segment(max(0, timed[0].start_ms) / 1000.0,
                                    timed[-1].end_ms / 1000.0, text))
        return Transcript(text=text, tokens=tokens, segments=segments)

    def word_timestamps(self, transcript: Transcript) -> tuple[list[str], list[list[int]]]:
        """Words and their [start_ms, end_ms] as the official `timestamp` output groups them."""
        pieces = [t.text for t in transcript.tokens]
        times = [[t.start_ms, t.end_ms] for t in transcript.tokens if t.start_ms is not None]
        _, words, word_times = sentence_postprocess(pieces, times)
        return words, word_times


class PendingBatch:
    """A Paraformer batch on its way through the device (see ParaformerASR.submit)."""

    def __init__(self, asr: ParaformerASR, waveforms: list[np.ndarray]):
        self.asr = asr
        self.n = len(waveforms)
        self.results: list[Transcript | None] = [None] * self.n
        feats, lengths = asr.features(waveforms, frame_bucket=asr.frame_bucket)
        lens = np.array(lengths)
        self.live = [i for i in range(self.n) if lens[i] > 0]
        for i in range(self.n):
            if lens[i] == 0:  # shorter than one fbank window: nothing to recognise
                self.results[i] = Transcript(text="")
        self.run = None
        self._finishing: Future | None = None  # the end on the finishing thread (advance)
        if self.live:
            if len(self.live) < self.n:  # the frames already end at the live rows' bucket
                idx = mx.array(np.array(self.live, dtype=np.int32))
                feats, lengths = feats[idx], lengths[idx]
            self.run = self.start(feats.astype(asr.dtype), lengths)

    def start(self, feats: mx.array, lengths: mx.array):
        """The batch's run through the network (a family variant may start its own)."""
        return DecodeRun(self.asr.model, feats, lengths)

    def advance(self) -> None:
        """Wait for the encoder, fire CIF and queue the decoder (result() does it too). With
        Tuning.finish "thread", the rest (the wait for the tokens, timestamps, text) then
        goes on on the recognizer's finishing thread, beside the next batch's launches,
        which release the GIL."""
        if self.run is None:
            return
        self.run.launch_decoder()
        finisher = self.asr.finisher()
        # once the decoder is launched, a run's finish() only waits for and reads the device's
        # results, then works on the host: another thread may do it (SeACo's run too)
        if finisher is not None and self._finishing is None:
            self._finishing = finisher.submit(self._transcripts)

    def _transcripts(self) -> list[Transcript]:
        out = self.run.finish()
        return [self.asr.to_transcript(out.token_ids[row], out.token_times_ms[row])
                for row in range(len(self.live))]

    def result(self) -> list[Transcript]:
        if self.run is not None:
            done = self._finishing.result() if self._finishing is not None else \
                self._transcripts()
            self.run = self._finishing = None
            for i, transcript in zip(self.live, done):
                self.results[i] = transcript
        return self.results


# --------------------------------------------------------------------------------------------
# family hooks (batchasr.models.loader)
# --------------------------------------------------------------------------------------------
# The published paraformer-large config.yaml, to build full-size dummy models without a folder.
DUMMY_CONFIG = {
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
DUMMY_VOCAB_SIZE = 8404


def read_assets(folder: Path | None, config: dict, *, dummy: bool,
                vocab_size: int | None = None) -> dict:
    """tokens.json / tokens.txt and am.mvn. A dummy model without a token list gets a
    synthetic vocabulary of `vocab_size` entries."""
    has_list = folder is not None and ((folder / "tokens.json").exists()
                                       or (folder / "tokens.txt").exists())
    if folder is not None and (has_list or not dummy):
        tokens = read_tokens(folder, config)
    else:
        n = vocab_size or DUMMY_VOCAB_SIZE
        tokens = ["<blank>", "<s>", "</s>"] + [chr(0x4E00 + i) for i in range(n - 4)] + ["<unk>"]
    cmvn = None
    if folder is not None and (folder / "am.mvn").exists():
        cmvn = load_cmvn(folder / "am.mvn")
    return {"tokens": tokens, "cmvn": cmvn}


def wrap(model: Model, assets: dict, *, name: str, dtype, dummy: bool,
         tuning: Tuning = Tuning(), recognizer=None, **options) -> ParaformerASR:
    """`recognizer` (default ParaformerASR) and `options`: a family variant's own class."""
    cmvn = assets["cmvn"]
    if dummy:
        # a CIF firing about 4 tokens per second, as real speech does
        model.predictor.cif_output.bias = mx.full((1,), float(np.log(0.24 / 0.76)))
        if cmvn is None:
            rng = np.random.default_rng(0)
            n = model.args.input_size
            cmvn = np.stack([-rng.normal(11, 2, n), 1 / rng.uniform(2, 5, n)]).astype(np.float32)
    return (recognizer or ParaformerASR)(model, assets["tokens"], cmvn, name=name, dtype=dtype,
                                         tuning=tuning, **options)


RECOGNIZER = ParaformerASR
