"""Fun-ASR-Nano in MLX: SenseVoice SAN-M encoder -> Transformer adaptor -> Qwen3, plus the
optional CTC branch that gives timestamps.

Port of funasr 1.4.16 `funasr/models/fun_asr_nano/model.py` (FunASRNano), with the pieces it
builds: `SenseVoiceEncoderSmall` (`funasr/models/sense_voice/model.py`: the shared SAN-M
encoder of batchasr.models.blocks.sanm with `tp_blocks`, LayerNorm eps 1e-5 because SenseVoice uses
torch's default LayerNorm, always sinusoidal positions, always pre-norm), the `Transformer`
adaptor (`funasr/models/llm_asr/adaptor.py`: stack `downsample_rate` frames, linear-ReLU-linear,
then `n_layer` pre-norm `EncoderLayer`s with `attention_heads` (default 8) heads, FFN width
llm_dim // 4, LayerNorm eps 1e-12), the same class again as `ctc_decoder`, `ctc.ctc_lo`, and the
Qwen3 LLM of batchasr.models.blocks.qwen3. The prompt text rules (`get_prompt`, the ChatML template,
the speech-slot count) live here too; tokenizing them is the recognizer's job. No I/O.

Module attributes follow the official state-dict keys (`audio_encoder.encoders0.0...`,
`audio_adaptor.blocks.0.self_attn.linear_q`, `llm.model.layers.0...`, `ctc_decoder...`,
`ctc.ctc_lo`), so `model.pt` loads without a rename table.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from batchasr.models.blocks import qwen3
from batchasr.models.blocks.sanm import (
    LAYER_NORM_EPS,
    PositionwiseFeedForward,
    SANMEncoder,
    SANMEncoderArgs,
    attention,
    layer_norm,
    merge_heads,
    split_heads,
)

SENSEVOICE_LAYER_NORM_EPS = 1e-5  # sense_voice/model.py LayerNorm = torch.nn.LayerNorm default


@dataclass
class ModelArgs:
    """config.yaml of a Fun-ASR-Nano folder (official keys) plus the LLM's config.json."""

    audio_encoder_conf: dict
    audio_adaptor_conf: dict
    llm_config: dict  # HF config.json of the folder named by llm_conf.init_param_path
    input_size: int = 560  # n_mels * lfr_m of the frontend
    model: str = "FunASRNano"
    audio_encoder: str = "SenseVoiceEncoderSmall"
    audio_adaptor: str = "Transformer"
    ctc_decoder: str | None = None  # built only when the checkpoint has CTC weights
    ctc_decoder_conf: dict = field(default_factory=dict)
    ctc_conf: dict = field(default_factory=dict)
    ctc_vocab_size: int = 60515  # FunASRNano default

    def __post_init__(self):
        for key, expected in (("model", "FunASRNano"), ("audio_encoder", "SenseVoiceEncoderSmall"),
                              ("audio_adaptor", "Transformer")):
            if getattr(self, key) != expected:
                raise ValueError(f"config.yaml {key}: {getattr(self, key)!r} is not supported "
                                 f"by the Fun-ASR-Nano port (expected {expected!r})")
        if self.ctc_decoder not in (None, "Transformer"):
            raise ValueError(f"config.yaml ctc_decoder {self.ctc_decoder!r} is not supported")

    @property
    def blank_id(self) -> int:
        return int(self.ctc_conf.get("blank_id", self.ctc_vocab_size - 1))


# --------------------------------------------------------------------------------------------
# adaptor (also the CTC decoder)
# --------------------------------------------------------------------------------------------
class MultiHeadedAttention(nn.Module):
    """funasr.models.transformer.attention.MultiHeadedAttention (separate q/k/v projections)."""

    def __init__(self, n_head: int, n_feat: int):
        super().__init__()
        self.h = n_head
        self.linear_q = nn.Linear(n_feat, n_feat)
        self.linear_k = nn.Linear(n_feat, n_feat)
        self.linear_v = nn.Linear(n_feat, n_feat)
        self.linear_out = nn.Linear(n_feat, n_feat)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        q, k, v = (split_heads(f(x), self.h) for f in (self.linear_q, self.linear_k,
                                                       self.linear_v))
        return self.linear_out(merge_heads(attention(q, k, v, mask)))


class EncoderLayer(nn.Module):
    """funasr.models.transformer.encoder.EncoderLayer, normalize_before=True."""

    def __init__(self, size: int, heads: int, units: int):
        super().__init__()
        self.self_attn = MultiHeadedAttention(heads, size)
        self.feed_forward = PositionwiseFeedForward(size, units)
        self.norm1 = layer_norm(size, LAYER_NORM_EPS)
        self.norm2 = layer_norm(size, LAYER_NORM_EPS)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        x = x + self.self_attn(self.norm1(x), mask)
        return x + self.feed_forward(self.norm2(x))


class Transformer(nn.Module):
    """The `Transformer` adaptor: (B, T, encoder_dim) -> (B, ceil(T/k), llm_dim)."""

    def __init__(self, conf: dict):
        super().__init__()
        self.k = int(conf.get("downsample_rate", 2))
        encoder_dim, llm_dim = int(conf.get("encoder_dim", 1280)), int(conf.get("llm_dim", 4096))
        self.linear1 = nn.Linear(encoder_dim * self.k, int(conf.get("ffn_dim", 2048)))
        self.linear2 = nn.Linear(int(conf.get("ffn_dim", 2048)), llm_dim)
        heads = int(conf.get("attention_heads", 8))
        self.blocks = [EncoderLayer(llm_dim, heads, llm_dim // 4)
                       for _ in range(int(conf.get("n_layer", 2)))]

    def __call__(self, x: mx.array, lengths: mx.array) -> tuple[mx.array, mx.array]:
        B, T, D = x.shape
        chunks = (T - 1) // self.k + 1
        if chunks * self.k > T:
            x = mx.pad(x, [(0, 0), (0, chunks * self.k - T), (0, 0)])
        x = self.linear2(nn.relu(self.linear1(x.reshape(B, chunks, D * self.k))))
        olens = (lengths - 1) // self.k + 1
        mask = mx.arange(chunks)[None, :] < olens[:, None]
        for block in self.blocks:
            x = block(x, mask)
        return x, olens


class CTC(nn.Module):
    def __init__(self, odim: int, encoder_output_size: int):
        super().__init__()
        self.ctc_lo = nn.Linear(encoder_output_size, odim)

    def log_softmax(self, x: mx.array) -> mx.array:
        logits = self.ctc_lo(x)
        return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


# --------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------
def encoder_args(args: ModelArgs) -> SANMEncoderArgs:
    # SenseVoiceEncoderSmall always adds sinusoidal positions and is always pre-norm,
    # whatever input_layer / normalize_before say; its LayerNorms use eps 1e-5.
    return SANMEncoderArgs.from_dict(args.audio_encoder_conf, input_size=args.input_size,
                                     input_layer="pe", normalize_before=True,
                                     layer_norm_eps=SENSEVOICE_LAYER_NORM_EPS)


class Model(nn.Module):
    def __init__(self, args: ModelArgs, *, with_ctc: bool = False):
        super().__init__()
        self.args = args
        enc = encoder_args(args)
        self.audio_encoder = SANMEncoder(enc)
        self.llm = qwen3.Model(qwen3.ModelArgs.from_dict(args.llm_config))
        # as FunASRNano.__init__: encoder_dim from the encoder, llm_dim from the LLM embeddings
        self.audio_adaptor = Transformer({**args.audio_adaptor_conf, "encoder_dim": enc.output_size,
                                          "llm_dim": self.llm.args.hidden_size})
        self.has_ctc = bool(with_ctc and args.ctc_decoder)
        if self.has_ctc:
            self.ctc_decoder = Transformer({**args.ctc_decoder_conf, "encoder_dim": enc.output_size})
            self.ctc = CTC(args.ctc_vocab_size, enc.output_size)

    @property
    def use_low_frame_rate(self) -> bool:
        return bool(self.args.audio_adaptor_conf.get("use_low_frame_rate", False))

    def sanitize(self, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Official FunASRNano state dict -> this module tree."""
        out = {}
        for key, value in weights.items():
            if key.startswith("llm."):
                if "rotary_emb.inv_freq" in key or (key == "llm.lm_head.weight"
                                                    and self.llm.args.tie_word_embeddings):
                    continue
            elif key.startswith(("ctc_decoder.", "ctc.")):
                if not self.has_ctc or key.startswith("ctc.ctc_loss"):
                    continue
            elif not key.startswith(("audio_encoder.", "audio_adaptor.")):
                continue  # training-only extras
            out[key] = value
        return out

    def encode(self, feats: mx.array, lengths: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """Padded features (B, T, 560) -> encoder output (B, T, 512, zero past lengths),
        adaptor output (B, T', llm_dim) and adaptor lengths (B,)."""
        enc = self.audio_encoder(feats, lengths)
        adapted, olens = self.audio_adaptor(enc, lengths)
        return enc, adapted, olens

    def ctc_log_probs(self, enc: mx.array, lengths: mx.array) -> mx.array:
        """CTC log-probabilities (B, T, ctc_vocab) over the encoder output."""
        dec, _ = self.ctc_decoder(enc, lengths)
        return self.ctc.log_softmax(dec)


# --------------------------------------------------------------------------------------------
# prompt rules (FunASRNano.get_prompt / generate_chatml / data_load_speech)
# --------------------------------------------------------------------------------------------
SYSTEM_PROMPT = "You are a helpful assistant."
HOTWORD_PREAMBLE = ("请结合上下文信息，更加准确地完成语音转写任务。如果没有相关信息，我们会留空。"
                    "\n\n\n**上下文信息：**\n\n\n")


def user_prompt(hotwords=(), language: str | None = None, itn: bool = True) -> str:
    """The user text before the speech (FunASRNano.get_prompt)."""
    prompt = ""
    if len(hotwords) > 0:
        prompt = HOTWORD_PREAMBLE + f"热词列表：[{', '.join(hotwords)}]\n"
    prompt += "语音转写" if language is None else f"语音转写成{language}"
    if not itn:
        prompt += "，不进行文本规整"
    return prompt + "："


def chatml_around_speech(prompt: str, *, sys_prompt: bool = True,
                         do_think: bool = True) -> tuple[str, str]:
    """(text before the speech, text after it); the speech markers never reach the tokenizer."""
    before = (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n" if sys_prompt else "")
    before += f"<|im_start|>user\n{prompt}"
    after = "<|im_end|>\n<|im_start|>assistant\n"
    if not do_think:
        after += "<think>\n\n</think>\n\n"
    return before, after


def speech_token_count(lfr_frames: int, use_low_frame_rate: bool = True) -> int:
    """Speech slots in the prompt for T LFR frames: three stride-2 halvings (≈ ceil(T/8))."""
    if not use_low_frame_rate:
        return lfr_frames
    olens = 1 + (lfr_frames - 3 + 2 * 1) // 2
    olens = 1 + (olens - 3 + 2 * 1) // 2
    return (olens - 1) // 2 + 1


# --------------------------------------------------------------------------------------------
# CTC timestamps (FunASRNano.inference_llm with a CTC decoder): the LLM text is tokenized with
# the CTC tokenizer (SenseVoiceTokenizer: tiktoken byte-level BPE) and force-aligned to the CTC
# log-probabilities (torchaudio.functional.forced_align); each CTC frame is 60 ms.
# --------------------------------------------------------------------------------------------
CTC_FRAME_MS = 60  # 10 ms frame shift x lfr_n 6, the official `* 6 * 10 / 1000`
WHISPER_PATTERN = (r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
                   r"|\s+")


class TiktokenBPE:
    """Encoder/decoder of a tiktoken rank file, as whisper_lib.tokenizer.get_encoding builds it
    (the SenseVoice pattern; special-token strings are encoded as plain text, as the official
    `encode` does with disallowed_special=())."""

    def __init__(self, ranks: dict[bytes, int]):
        from tokenizers import Regex, pre_tokenizers

        self.ranks = ranks
        self.by_id = {r: b for b, r in ranks.items()}
        self._split = pre_tokenizers.Split(Regex(WHISPER_PATTERN), behavior="isolated")

    @classmethod
    def from_text(cls, text: str) -> "TiktokenBPE":
        import base64

        ranks = {}
        for line in text.splitlines():
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
        return cls(ranks)

    def _bpe(self, piece: bytes) -> list[int]:
        if piece in self.ranks:
            return [self.ranks[piece]]
        parts = [piece[i:i + 1] for i in range(len(piece))]
        while len(parts) > 1:
            best, at = None, -1
            for i in range(len(parts) - 1):
                r = self.ranks.get(parts[i] + parts[i + 1])
                if r is not None and (best is None or r < best):
                    best, at = r, i
            if best is None:
                break
            parts[at:at + 2] = [parts[at] + parts[at + 1]]
        return [self.ranks[p] for p in parts]

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece, _ in self._split.pre_tokenize_str(text):
            ids += self._bpe(piece.encode("utf-8"))
        return ids

    def token_bytes(self, token: int) -> bytes:
        return self.by_id.get(token, b"")

    def decode(self, ids) -> str:
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")


def forced_align(log_probs: np.ndarray, targets: list[int], blank: int) -> list[dict]:
    """funasr fun_asr_nano.tools.utils.forced_align over torchaudio's CPU Viterbi
    (libtorchaudio forced_align/cpu/compute.cpp), ties broken the same way.

    log_probs (T, C) -> [{"token", "start_time", "end_time" (frames), "score"}, ...]; [] where
    the official call raises (empty or too long targets, a blank in the targets)."""
    T = log_probs.shape[0]
    L = len(targets)
    if L == 0 or blank in targets or max(targets) >= log_probs.shape[1]:
        return []
    R = sum(targets[i] == targets[i - 1] for i in range(1, L))
    if T < L + R:
        return []
    lp = np.asarray(log_probs, np.float32)
    S = 2 * L + 1
    label = np.array([blank if i % 2 == 0 else targets[i // 2] for i in range(S)])
    skip_ok = np.array([i % 2 == 1 and i != 1 and targets[i // 2] != targets[i // 2 - 1]
                        for i in range(S)])
    neg = np.float32(-np.inf)
    alphas = np.full(S, neg, np.float32)
    back = np.full((T, S), -1, np.int8)
    start = 0 if T - (L + R) > 0 else 1
    end = 1 if S == 1 else 2
    for i in range(start, end):
        alphas[i] = lp[0, label[i]]
    for t in range(1, T):
        if T - t <= L + R:
            if start % 2 == 1 and targets[start // 2] != targets[start // 2 + 1]:
                start += 1
            start += 1
        if t <= L + R:
            if end % 2 == 0 and end < 2 * L and targets[end // 2 - 1] != targets[end // 2]:
                end += 1
            end += 1
        prev = alphas
        alphas = np.full(S, neg, np.float32)
        loop_from = start
        if start == 0:
            alphas[0] = np.float32(prev[0] + lp[t, blank])
            back[t, 0] = 0
            loop_from = 1
        for i in range(loop_from, end):
            x0, x1 = prev[i], prev[i - 1]
            x2 = prev[i - 2] if skip_ok[i] else neg
            if x2 > x1 and x2 > x0:
                best, back[t, i] = x2, 2
            elif x1 > x0 and x1 > x2:
                best, back[t, i] = x1, 1
            else:
                best, back[t, i] = x0, 0
            alphas[i] = np.float32(best + lp[t, label[i]])
    s = S - 1 if alphas[S - 1] > alphas[S - 2] else S - 2
    path = np.empty(T, np.int64)
    for t in range(T - 1, -1, -1):
        path[t] = label[s]
        s -= int(back[t, s])
    scores = np.exp(lp[np.arange(T), path]).tolist()
    items, t = [], 0
    while t < T:  # itertools.groupby over the per-frame labels, blanks dropped
        e = t
        while e < T and path[e] == path[t]:
            e += 1
        if path[t] != blank:
            items.append({"token": int(path[t]), "start_time": t, "end_time": e,
                          "score": round(max(scores[t:e]), 3)})
        t = e
    return items
