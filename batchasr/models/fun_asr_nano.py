"""Fun-ASR-Nano (FunASR `model: FunASRNano`): network, prompt rules, recognizer, build.

Network: port of funasr 1.4.16 `funasr.models.fun_asr_nano.model` (FunASRNano) with the
pieces it builds: `SenseVoiceEncoderSmall` (`funasr.models.sense_voice.model`: the shared
SAN-M encoder of batchasr.models.blocks.sanm with `tp_blocks`, LayerNorm eps 1e-5 because
SenseVoice uses torch's default LayerNorm, always sinusoidal positions, always pre-norm), the
`Transformer` adaptor (batchasr.models.blocks.adaptor), the same class again as `ctc_decoder`,
`ctc.ctc_lo` (batchasr.models.blocks.ctc), and the Qwen3 LLM of batchasr.models.blocks.qwen3.
Module attributes follow the official state-dict keys, so `model.pt` loads without a rename
table.

Recognizer: waveforms -> features -> encoder/adaptor (batched, padded) -> ChatML prompts with
the audio frames spliced in -> batched prefill and KV-cached decoding -> text, tokens and
flags. Behaviour follows `FunASRNano.inference` run clip by clip (the official batched path
gives the same tokens): WavFrontend fbank + LFR 7/6 without CMVN unless the folder configures
one; prompt `get_prompt(hotwords, language, itn)`; greedy decoding that stops only on the LLM
config's eos (`<|im_end|>`), capped at `max_new_tokens` (funasr's `max_length`, 512, the stop
token counted); `batch_decode(skip_special_tokens=True)` of all new ids at once, then `/sil` ->
space and whitespace runs collapsed (no strip). The runaway-generation guard
(batchasr.models.blocks.guard, on by default, `no_guard` / the CLI's `--no-guard` turns it off)
reports in `Transcript.flags` ("token_cap", "repetition_loop"); when it does not trigger the
output is the official one.

Numerics as FunASR runs the published config (`llm_dtype: bf16`): the LLM is built in bf16,
model.pt is copied into it and it is cast to fp32 for inference, so its weights *and RoPE's
inv_freq buffer* carry bf16 rounding while the arithmetic is fp32. Encoder and adaptor run in
fp32 whatever `dtype` says; `dtype` applies to the LLM.

Timestamps: FunASR uses the CTC head only when config.yaml has a `ctc_decoder`, the folder has
the CTC tokenizer file, and model.pt holds every `ctc_decoder.*`/`ctc.*` tensor (else it
disables CTC with a warning). Each clip's LLM text is then force-aligned to the CTC
log-probabilities and every LLM token gets the span of the CTC tokens covering its characters.
Without CTC the only time is the segment (0, duration).

Fun-ASR-MLT-Nano-2512 (31 languages) is this family with other weights: same config, LLM
folder, tokenizers and prompt; only its language names are a fixed list (`MLT_LANGUAGES`,
`prompt_language`), and an MLT checkpoint refuses other names (`is_mlt`).

Family hooks for batchasr.models.loader: DUMMY_CONFIG, read_assets, ModelArgs.from_config,
Model (sanitize, cast), wrap -> FunASRNanoASR.

Size: above 400 lines because it holds one whole family (model, prompt rules, recognizer,
build hooks); its shared parts already live in blocks/.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from batchasr.audio.decode import SAMPLE_RATE
from batchasr.errors import CheckpointError
from batchasr.models.blocks import generate as gen
from batchasr.models.blocks import qwen3
from batchasr.models.blocks.adaptor import Transformer
from batchasr.models.blocks.ctc import CTC, CTC_FRAME_MS, TiktokenBPE, forced_align
from batchasr.models.blocks.frontend import FrontendConfig, WavFrontend, load_cmvn, num_lfr_frames
from batchasr.models.blocks.guard import GuardOptions, LoopDetector
from batchasr.models.blocks.sanm import SANMEncoder, SANMEncoderArgs
from batchasr.models.blocks.tokenizer import (
    QWEN3_ADDED_TOKENS,
    byte_decoder,
    synthetic_qwen_tokenizer,
)
from batchasr.models.blocks.tuning import Tuning
from batchasr.transcript import Segment, Token, Transcript

logger = logging.getLogger("batchasr.nano")  # the name log lines show (stable)

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
    ctc_decoder: str | None = None
    ctc_decoder_conf: dict = field(default_factory=dict)
    ctc_conf: dict = field(default_factory=dict)
    ctc_vocab_size: int = 60515  # FunASRNano default
    with_ctc: bool = False  # build the CTC branch (a ctc_decoder and its tokenizer file)
    llm_dtype: str = "fp32"  # llm_conf.llm_dtype: the rounding of the LLM weights and RoPE

    @classmethod
    def from_config(cls, config: dict, assets: dict) -> "ModelArgs":
        fc = config.get("frontend_conf") or {}
        return cls(
            audio_encoder_conf=config["audio_encoder_conf"],
            audio_adaptor_conf=config["audio_adaptor_conf"], llm_config=assets["llm_config"],
            input_size=fc.get("n_mels", 80) * fc.get("lfr_m", 1), model=config.get("model"),
            audio_encoder=config.get("audio_encoder"), audio_adaptor=config.get("audio_adaptor"),
            ctc_decoder=config.get("ctc_decoder"),
            ctc_decoder_conf=dict(config.get("ctc_decoder_conf") or {}),
            ctc_conf=dict(config.get("ctc_conf") or {}),
            ctc_vocab_size=int(config.get("ctc_vocab_size", 60515)),
            with_ctc=bool(config.get("ctc_decoder")) and assets["ctc_vocab"] is not None,
            llm_dtype=(config.get("llm_conf") or {}).get("llm_dtype", "fp32"))

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
# the model
# --------------------------------------------------------------------------------------------
def encoder_args(args: ModelArgs) -> SANMEncoderArgs:
    # SenseVoiceEncoderSmall always adds sinusoidal positions and is always pre-norm,
    # whatever input_layer / normalize_before say; its LayerNorms use eps 1e-5.
    return SANMEncoderArgs.from_dict(args.audio_encoder_conf, input_size=args.input_size,
                                     input_layer="pe", normalize_before=True,
                                     layer_norm_eps=SENSEVOICE_LAYER_NORM_EPS)


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        enc = encoder_args(args)
        self.audio_encoder = SANMEncoder(enc)
        self.llm = qwen3.Model(qwen3.ModelArgs.from_dict(args.llm_config))
        # as FunASRNano.__init__: encoder_dim from the encoder, llm_dim from the LLM embeddings
        self.audio_adaptor = Transformer({**args.audio_adaptor_conf, "encoder_dim": enc.output_size,
                                          "llm_dim": self.llm.args.hidden_size})
        self.has_ctc = bool(args.with_ctc and args.ctc_decoder)
        if self.has_ctc:
            self.ctc_decoder = Transformer({**args.ctc_decoder_conf, "encoder_dim": enc.output_size})
            self.ctc = CTC(args.ctc_vocab_size, enc.output_size)
        if self.llm_rounding is not None:
            self.llm.set_rope_dtype(self.llm_rounding)

    @property
    def llm_rounding(self) -> mx.Dtype | None:
        """The dtype FunASR builds the LLM in before casting it to fp32 (None: fp32)."""
        return {"bf16": mx.bfloat16, "fp16": mx.float16}.get(self.args.llm_dtype)

    def cast(self, dtype: mx.Dtype) -> None:
        """The LLM in `dtype`; the encoder and adaptor stay float32, as in FunASR."""
        if dtype != mx.float32:
            self.llm.set_dtype(dtype)

    @property
    def use_low_frame_rate(self) -> bool:
        return bool(self.args.audio_adaptor_conf.get("use_low_frame_rate", False))

    def sanitize(self, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Official FunASRNano state dict -> this module tree, the LLM tensors rounded through
        `llm_rounding`. As FunASRNano.on_pretrained_model_loaded, the CTC branch is dropped
        (no timestamps) unless every one of its tensors is in the checkpoint."""
        if self.has_ctc:
            need = [k for k, _ in tree_flatten(self.parameters()) if k.startswith(("ctc", "ctc_"))]
            missing = [k for k in need if k not in weights]
            if missing:
                logger.warning("CTC timestamps disabled, %d of %d CTC tensors missing from the "
                               "checkpoint (%s)", len(missing), len(need), ", ".join(missing[:3]))
                del self["ctc_decoder"], self["ctc"]
                self.has_ctc = False
        rnd = self.llm_rounding
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
            if rnd is not None and key.startswith("llm."):
                value = np.array(mx.array(value).astype(rnd).astype(mx.float32))
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
# the recognizer
# --------------------------------------------------------------------------------------------
# Languages as the official list spells them in the prompt (`语音转写成{language}`): the 31
# names of Fun-ASR-MLT-Nano-2512 (Fun-ASR demo1.py and the MLT model card, in their order;
# Fun-ASR-Nano-2512 is documented for the first, second and fourth: 中文、英文、日文). The
# official get_prompt places any string verbatim and checks nothing. Here a code (any case)
# becomes its name, as the official vLLM path does for zh/en/ja/ko; None, "" or "auto" mean no
# language (`语音转写：`). For Nano only zh, en and ja are named (as batchasr always did);
# any other value goes into the prompt unchanged, as the official get_prompt puts it. An
# MLT-Nano checkpoint, whose list is fixed (MLT_LANGUAGES), takes its 31 names or codes only.
LANGUAGE_NAMES = {
    "zh": "中文", "en": "英文", "yue": "粤语", "ja": "日文", "ko": "韩文", "vi": "越南语",
    "id": "印尼语", "th": "泰语", "ms": "马来语", "fil": "菲律宾语", "tl": "菲律宾语",
    "ar": "阿拉伯语", "hi": "印地语", "bg": "保加利亚语", "hr": "克罗地亚语", "cs": "捷克语",
    "da": "丹麦语", "nl": "荷兰语", "et": "爱沙尼亚语", "fi": "芬兰语", "el": "希腊语",
    "hu": "匈牙利语", "ga": "爱尔兰语", "lv": "拉脱维亚语", "lt": "立陶宛语", "mt": "马耳他语",
    "pl": "波兰语", "pt": "葡萄牙语", "ro": "罗马尼亚语", "sk": "斯洛伐克语", "sl": "斯洛文尼亚语",
    "sv": "瑞典语",
}
MLT_LANGUAGES = tuple(dict.fromkeys(LANGUAGE_NAMES.values()))  # the 31 names, official order
NANO_CODES = ("zh", "en", "ja")  # the codes Fun-ASR-Nano's prompt names (exact case)


def prompt_language(language: str | None, fixed: Sequence[str] | None = None) -> str | None:
    """The `language` of the official prompt for a requested one (see LANGUAGE_NAMES); with
    `fixed` (a checkpoint's list of names), anything else raises ValueError."""
    if not language or language.lower() == "auto":
        return None
    if fixed is None:  # Fun-ASR-Nano: its three codes named, anything else verbatim
        return LANGUAGE_NAMES[language] if language in NANO_CODES else language
    name = LANGUAGE_NAMES.get(language.lower(), language)
    if name not in fixed:
        codes = ", ".join(f"{c}={n}" for c, n in LANGUAGE_NAMES.items())
        raise ValueError(f"unknown language {language!r} for Fun-ASR-MLT-Nano: give one of its "
                         f"{len(fixed)} language names or codes ({codes}), or auto")
    return name


def normalize_with_map(raw: str) -> tuple[str, list[int]]:
    """The official `re.sub(r"\\s+", " ", raw.replace("/sil", " "))`, plus, for every index i of
    `raw` (and len(raw)), the index of the output character it became part of."""
    out: list[str] = []
    at = [0] * (len(raw) + 1)
    i, in_space = 0, False
    while i < len(raw):
        ch, w = (" ", 4) if raw.startswith("/sil", i) else (raw[i], 1)
        space = re.match(r"\s", ch) is not None
        for j in range(i, i + w):
            at[j] = len(out) - (1 if space and in_space else 0)
        if not (space and in_space):
            out.append(" " if space else ch)
        in_space = space
        i += w
    at[len(raw)] = len(out)
    return "".join(out), at


class FunASRNanoASR:
    """Implements the runner's ASRModel protocol for Fun-ASR-Nano checkpoints.

    Attributes (change them between calls as needed):
        max_new_tokens: funasr's `max_length` (512), the cap on new tokens, stop token included.
        hotwords: list of hotwords for the prompt (official `hotwords`), [] for none; a string
            is split on whitespace and commas.
        itn: official `itn` (False adds "，不进行文本规整" to the prompt).
        fixed_languages: the language names the checkpoint accepts (MLT_LANGUAGES for
            Fun-ASR-MLT-Nano), None for any text (Nano).
        decode_mode: "continuous" (all live sequences per forward) or "sequential".
        temperature, top_p, top_k, seed: sampling (temperature 0 = greedy, the official default).
        guard: GuardOptions (runaway-generation limits).
        max_batch: live sequences in continuous decoding; encode_batch: clips per encoder pass.
        retire_at: finished rows' share of the batch at which they leave it (Tuning).
        stop_on_eos: False only for benchmarks that force a fixed number of tokens.
    """

    sample_rate = SAMPLE_RATE
    punctuated = True  # the LLM writes punctuation itself
    max_segment_s = 15.0  # its LLM starts repeating itself on longer pieces
    # A job's batch on a GPU (runner.device.default_batch_seconds): one decoding loop per
    # batch, whose steps cost about the same with 10 rows as with 64 (launch-bound), and
    # whose live rows are topped up from the batch's waiting pieces as others finish. Fewer,
    # larger batches: fewer loops and fewer half-empty tails. 1000 s split a 604 s job of
    # 2-20 s clips (70 pieces of at most 15 s) into two loops of the same length.
    gpu_batch_seconds = 4000.0

    def __init__(self, model: Model, tokenizer, frontend_conf: dict, *,
                 cmvn: np.ndarray | None = None, ctc_tokenizer: TiktokenBPE | None = None,
                 name: str = "fun-asr-nano", dtype: mx.Dtype = mx.float32,
                 sys_prompt: bool = True, do_think: bool = True, max_new_tokens: int = 512,
                 hotwords: Sequence[str] | None = None, itn: bool = True,
                 decode_mode: str = "continuous", temperature: float = 0.0, top_p: float = 1.0,
                 top_k: int = -1, seed: int = 0, guard: GuardOptions | None = None,
                 max_batch: int = 64, encode_batch: int = 64,
                 fixed_languages: Sequence[str] | None = None, upload: str = "inline",
                 dft: str = "fft", retire_at: float = 0.0):
        self.model, self.tokenizer, self.ctc_tokenizer = model, tokenizer, ctc_tokenizer
        self.fixed_languages = fixed_languages
        self.name, self.dtype = name, dtype
        self.frontend = WavFrontend(FrontendConfig.from_dict(frontend_conf), cmvn, upload=upload,
                                    dft=dft)
        self.sys_prompt, self.do_think = sys_prompt, do_think
        self.max_new_tokens = max_new_tokens
        self.hotwords = hotwords if isinstance(hotwords, str) else list(hotwords or [])
        self.itn = itn
        self.decode_mode = decode_mode
        self.temperature, self.top_p, self.top_k, self.seed = temperature, top_p, top_k, seed
        self.guard = guard if guard is not None else GuardOptions()
        self.max_batch, self.encode_batch = max_batch, encode_batch
        self.retire_at = retire_at
        self.stop_on_eos = True
        self.eos_ids = model.llm.args.eos_token_ids
        if not self.eos_ids:
            raise ValueError("the LLM config.json has no eos_token_id")
        self._bytes = byte_decoder()

    # ----------------------------------------------------------------------------------------
    # stages
    # ----------------------------------------------------------------------------------------
    def features(self, waveforms: Sequence[np.ndarray]) -> tuple[mx.array, mx.array]:
        return self.frontend(waveforms)

    def encode(self, feats: mx.array, lengths: mx.array):
        """Batched encoder + adaptor (+ CTC log-probs): each row equals its clip alone."""
        enc, adapted, olens = self.model.encode(feats, lengths)
        ctc = self.model.ctc_log_probs(enc, lengths) if self.model.has_ctc else None
        return enc, adapted, olens, ctc

    def prompt_text(self, language: str | None = None) -> tuple[str, str]:
        hotwords = self.hotwords
        if isinstance(hotwords, str):  # "a, b c" -> ["a", "b", "c"] (not its characters)
            hotwords = [w for w in re.split(r"[\s,，]+", hotwords) if w]
        lang = prompt_language(language, self.fixed_languages)
        return chatml_around_speech(user_prompt(hotwords, lang, self.itn),
                                        sys_prompt=self.sys_prompt, do_think=self.do_think)

    def prompt_ids(self, language: str | None = None) -> tuple[list[int], list[int]]:
        before, after = self.prompt_text(language)
        enc = lambda s: self.tokenizer.encode(s).ids if s else []
        return enc(before), enc(after)

    def prompt_embeddings(self, adapted: mx.array, n_speech: int,
                          language: str | None = None) -> mx.array:
        """(L, D): text embeddings with the first n_speech adaptor frames in the speech slots."""
        before, after = self.prompt_ids(language)
        llm = self.model.llm
        parts = [llm.embed(mx.array(before, dtype=mx.int32)).astype(mx.float32),
                 adapted[:n_speech].astype(mx.float32),
                 llm.embed(mx.array(after, dtype=mx.int32)).astype(mx.float32)]
        return mx.concatenate(parts).astype(self.dtype)

    def sampler(self):
        return gen.make_sampler(self.temperature, self.top_p, self.top_k, self.seed)

    # ----------------------------------------------------------------------------------------
    # the protocol
    # ----------------------------------------------------------------------------------------
    def transcribe(self, waveforms: Sequence[np.ndarray], *,
                   languages: Sequence[str | None] | None = None) -> list[Transcript]:
        """16 kHz mono float32 waveforms -> one Transcript each, in order. `languages` (per
        item, None = unspecified) goes into the prompt as the official `language` option."""
        waveforms = [np.asarray(w, dtype=np.float32) for w in waveforms]
        n = len(waveforms)
        languages = list(languages) if languages is not None else [None] * n
        if len(languages) != n:
            raise ValueError(f"{len(languages)} languages for {n} waveforms")
        for lang in set(languages):  # an unknown name fails before any work
            prompt_language(lang, self.fixed_languages)
        results: list[Transcript | None] = [None] * n
        prompts, items, ctc_rows = [], [], {}
        lfr_lens = [self.frontend_lengths(w) for w in waveforms]
        order = sorted((i for i in range(n) if lfr_lens[i] > 0), key=lambda i: lfr_lens[i])
        for i in range(n):
            if lfr_lens[i] == 0:  # shorter than one fbank window: nothing to recognise
                results[i] = Transcript(text="", language=languages[i])
        for s in range(0, len(order), self.encode_batch):
            chunk = order[s:s + self.encode_batch]
            feats, lens = self.features([waveforms[i] for i in chunk])
            _, adapted, olens, ctc = self.encode(feats, lens)
            for r, i in enumerate(chunk):
                n_speech = min(speech_token_count(lfr_lens[i], self.model.use_low_frame_rate),
                               int(olens[r].item()))
                prompts.append(self.prompt_embeddings(adapted[r], n_speech, languages[i]))
                items.append(i)
                if ctc is not None:
                    ctc_rows[i] = np.array(ctc[r, :lfr_lens[i]])
            mx.eval(prompts[-len(chunk):])
        if not items:
            return results
        budgets = [self.guard.budget(len(waveforms[i]) / self.sample_rate, self.max_new_tokens)
                   for i in items]
        loops = LoopDetector(self.guard) if self.guard.detect_loops else None
        outs = gen.generate(self.model.llm, prompts, mode=self.decode_mode, max_tokens=budgets,
                            stop_ids=self.eos_ids if self.stop_on_eos else [],
                            sampler=self.sampler(), stop_check=loops, max_batch=self.max_batch,
                            retire_at=self.retire_at)
        for k, (i, out) in enumerate(zip(items, outs)):
            flags, ids = [], out.tokens
            if out.finish_reason == "length":
                flags.append("token_cap")
            elif out.finish_reason == "repetition_loop":
                flags.append("repetition_loop")
                ids = ids[:loops.cut[k]]
            results[i] = self.to_transcript(ids, ctc_rows.get(i), len(waveforms[i]),
                                            languages[i], flags)
        return results

    @property
    def no_guard(self) -> bool:
        """True when both parts of the runaway guard are off (`--no-guard`): the generated ids
        are then the official ones, up to `max_new_tokens`."""
        return self.guard.max_tokens_per_second is None and not self.guard.detect_loops

    @no_guard.setter
    def no_guard(self, value: bool) -> None:
        if value:
            self.guard = GuardOptions.off()
        elif self.no_guard:
            self.guard = GuardOptions()

    def frontend_lengths(self, waveform: np.ndarray) -> int:
        return num_lfr_frames(len(waveform), self.frontend.conf)

    # ----------------------------------------------------------------------------------------
    # text, tokens and times
    # ----------------------------------------------------------------------------------------
    def decode_text(self, ids: Sequence[int]) -> str:
        """Official text: all ids decoded at once without special tokens, `/sil` -> space,
        whitespace runs collapsed."""
        response = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        return re.sub(r"\s+", " ", response.replace("/sil", " "))

    def vocab_pieces(self, ids: Sequence[int]) -> list[str]:
        """The vocabulary piece of each id (`tokenizer.id_to_token`: byte-level pieces such as
        "Ġhello", special tokens as spelt), what `transcribe --json` gives as `tokens`."""
        return [self.tokenizer.id_to_token(int(t)) or "" for t in ids]

    def token_pieces(self, ids: Sequence[int]) -> list[tuple[int, str, bool]]:
        """(id, surface, special) per generated id. Surfaces of the non-special ids concatenate
        to the decoded response (`skip_special_tokens`): a character split across tokens
        belongs to the token that completes it. Should that fail (odd invalid UTF-8), each id
        is decoded alone."""
        ids = [int(t) for t in ids]
        specials, added = self._special_ids(), self._added_ids()
        chunks: list[bytes | None] = []
        for t in ids:
            piece = self.tokenizer.id_to_token(t)
            if piece is None or t in specials:
                chunks.append(None)
            elif t in added:
                chunks.append(piece.encode("utf-8"))
            else:
                chunks.append(bytes(self._bytes.get(c, 0) for c in piece))
        data = b"".join(c for c in chunks if c)
        out, pos, done = [], 0, 0
        for t, c in zip(ids, chunks):
            if c is None:
                out.append((t, self.tokenizer.id_to_token(t) or "", True))
                continue
            pos += len(c)
            end = pos
            while done < end < len(data) and (data[end] & 0xC0) == 0x80:
                end -= 1  # stop at the last character boundary
            out.append((t, data[done:end].decode("utf-8", errors="replace"), False))
            done = end
        if "".join(s for _, s, sp in out if not sp) != self.tokenizer.decode(
                ids, skip_special_tokens=True):
            out = [(t, self.tokenizer.decode([t], skip_special_tokens=False), c is None)
                   for t, c in zip(ids, chunks)]
        return out

    def _special_ids(self) -> set[int]:
        if not hasattr(self, "_specials"):
            added = self.tokenizer.get_added_tokens_decoder()
            self._specials = {i for i, tok in added.items() if tok.special}
            self._added = set(added)
        return self._specials

    def _added_ids(self) -> set[int]:
        self._special_ids()
        return self._added

    def to_transcript(self, ids: list[int], ctc_log_probs: np.ndarray | None, n_samples: int,
                      language: str | None, flags: list[str]) -> Transcript:
        text = self.decode_text(ids)
        gen_ids = [t for t in ids if not (self.stop_on_eos and t in self.eos_ids)]
        pieces = self.token_pieces(gen_ids)
        tokens = [Token(text=s, id=t) for t, s, _ in pieces]
        duration = n_samples / self.sample_rate
        if ctc_log_probs is not None and self.ctc_tokenizer is not None:
            self._ctc_times(tokens, [sp for _, _, sp in pieces], text, ctc_log_probs)
        timed = [t for t in tokens if t.start_ms is not None]
        segments = []
        if timed:
            segments.append(Segment(timed[0].start_ms / 1000, timed[-1].end_ms / 1000, text))
        elif text:
            segments.append(Segment(0.0, duration, text))
        return Transcript(text=text, tokens=tokens, segments=segments, language=language,
                          flags=flags)

    def ctc_alignment(self, text: str, ctc_log_probs: np.ndarray) -> list[dict]:
        """The official `timestamps`: CTC tokens of `text` force-aligned, times in seconds."""
        items = forced_align(ctc_log_probs, self.ctc_tokenizer.encode(text),
                                 self.model.args.blank_id)
        return [{"token": self.ctc_tokenizer.decode([it["token"]]), "token_id": it["token"],
                 "start_time": it["start_time"] * CTC_FRAME_MS / 1000,
                 "end_time": it["end_time"] * CTC_FRAME_MS / 1000, "score": it["score"]}
                for it in items]

    def _ctc_times(self, tokens: list[Token], special: list[bool], text: str,
                   log_probs: np.ndarray) -> None:
        """Give each LLM token the span of the CTC tokens that cover its characters."""
        targets = self.ctc_tokenizer.encode(text)
        items = forced_align(log_probs, targets, self.model.args.blank_id)
        if not items:
            return
        # CTC tokens -> character spans of `text` (the tokens' bytes spell `text` exactly)
        data = text.encode("utf-8")
        if b"".join(self.ctc_tokenizer.token_bytes(t) for t in targets) != data:
            return
        char_at = np.zeros(len(data) + 1, np.int64)
        pos = 0
        for c, ch in enumerate(text):
            char_at[pos:pos + len(ch.encode("utf-8"))] = c
            pos += len(ch.encode("utf-8"))
        char_at[len(data)] = len(text)
        bounds = np.cumsum([0] + [len(self.ctc_tokenizer.token_bytes(t)) for t in targets])
        # forced_align merges consecutive frames of one label; targets appear in order
        spans, k = [], 0
        for it in items:
            while targets[k] != it["token"]:
                k += 1
            spans.append((int(char_at[bounds[k]]), int(char_at[bounds[k + 1] - 1]) + 1,
                          it["start_time"] * CTC_FRAME_MS, it["end_time"] * CTC_FRAME_MS))
            k += 1
        # LLM token surfaces -> character spans of `text` through the official normalisation
        raw = "".join(t.text for t, sp in zip(tokens, special) if not sp)
        normalized, at = normalize_with_map(raw)
        if normalized != text:
            return
        pos = 0
        for tok, sp in zip(tokens, special):
            if sp:
                continue
            a, b = at[pos], at[pos + len(tok.text)]
            pos += len(tok.text)
            cover = [s for s in spans if s[0] < b and s[1] > a]
            if cover:
                tok.start_ms = int(min(s[2] for s in cover))
                tok.end_ms = int(max(s[3] for s in cover))

    # ----------------------------------------------------------------------------------------
    # quantization
    # ----------------------------------------------------------------------------------------
    def quantize_llm(self, bits: int = 8, group_size: int = 64) -> None:
        """Quantize the LLM's linear layers and embeddings in place (mx.quantize affine)."""
        nn.quantize(self.model.llm, group_size=group_size, bits=bits,
                    class_predicate=lambda _, m: hasattr(m, "to_quantized")
                    and m.weight.shape[-1] % group_size == 0)
        mx.eval(self.model.llm.parameters())


# --------------------------------------------------------------------------------------------
# family hooks (batchasr.models.loader)
# --------------------------------------------------------------------------------------------
# The published FunAudioLLM/Fun-ASR-Nano-2512 config.yaml, to build dummy models without a folder
FUN_ASR_NANO_CONFIG = {
    "model": "FunASRNano",
    "model_conf": {"lsm_weight": 0.1, "length_normalized_loss": True},
    "audio_encoder": "SenseVoiceEncoderSmall",
    "audio_encoder_conf": {"output_size": 512, "attention_heads": 4, "linear_units": 2048,
                           "num_blocks": 50, "tp_blocks": 20, "input_layer": "pe",
                           "pos_enc_class": "SinusoidalPositionEncoder", "normalize_before": True,
                           "kernel_size": 11, "sanm_shfit": 0, "selfattention_layer_type": "sanm"},
    "llm": "Qwen3-0.6b",
    "llm_conf": {"hub": "hf", "freeze": True, "llm_dtype": "bf16",
                 "init_param_path": "Qwen3-0.6B", "use_lora": False},
    "audio_adaptor": "Transformer",
    "audio_adaptor_conf": {"downsample_rate": 1, "use_low_frame_rate": True, "ffn_dim": 2048,
                           "llm_dim": 1024, "encoder_dim": 512, "n_layer": 2},
    "frontend": "WavFrontend",
    "frontend_conf": {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25,
                      "frame_shift": 10, "lfr_m": 7, "lfr_n": 6},
    "tokenizer": "HuggingfaceTokenizer",
    "tokenizer_conf": {"init_param_path": "Qwen3-0.6B"},
}
# Qwen3-0.6B config.json (architecture only; FunASR builds the LLM from it with from_config)
QWEN3_0_6B_CONFIG = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 1024,
    "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16,
    "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "rope_theta": 1000000,
    "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "bos_token_id": 151643,
    "eos_token_id": 151645, "max_position_embeddings": 40960, "hidden_act": "silu",
    "attention_bias": False,
}
def llm_folder(folder: Path, config: dict) -> Path:
    """The LLM folder named by llm_conf.init_param_path (relative to the model folder, as
    configuration.json's file_path_metas makes it for the official loader)."""
    rel = (config.get("llm_conf") or {}).get("init_param_path") or "Qwen3-0.6B"
    for cand in (folder / rel, Path(rel).expanduser(), folder / Path(rel).name):
        if (cand / "config.json").exists():
            return cand
    raise CheckpointError(f"{folder}: LLM folder {rel!r} (llm_conf.init_param_path) with "
                          f"config.json and tokenizer.json not found")


def _ctc_vocab_path(folder: Path, config: dict) -> Path | None:
    conf = config.get("ctc_tokenizer_conf") or (config.get("dataset_conf") or {}).get(
        "ctc_tokenizer_conf") or {}
    cands = [folder / "multilingual.tiktoken"]
    if conf.get("vocab_path"):
        cands.insert(0, folder / conf["vocab_path"])
        cands.insert(1, Path(conf["vocab_path"]).expanduser())
    return next((c for c in cands if c.is_file()), None)


def _cmvn(folder: Path | None, config: dict) -> np.ndarray | None:
    """am.mvn only where the official loader would pass one to WavFrontend."""
    if folder is None:
        return None
    meta = folder / "configuration.json"
    cmvn = (config.get("frontend_conf") or {}).get("cmvn_file")
    if meta.exists():
        fpm = json.loads(meta.read_text(encoding="utf-8")).get("file_path_metas") or {}
        cmvn = (fpm.get("frontend_conf") or {}).get("cmvn_file", cmvn)
    elif (folder / "am.mvn").exists():
        cmvn = "am.mvn"
    if cmvn and (folder / cmvn).is_file():
        return load_cmvn(folder / cmvn)
    return None


DUMMY_CONFIG = FUN_ASR_NANO_CONFIG  # Fun-ASR-MLT-Nano-2512 too: same architecture (see below)


def is_mlt(folder: Path | None, name: str = "") -> bool:
    """Whether a checkpoint is Fun-ASR-MLT-Nano-2512 (31 fixed language names). Its folder is
    laid out as Nano's and, as far as public descriptions say (the config itself could not be
    read), its config.yaml is Nano's too: only the weights differ. So it is told by name: the
    known name `fun-asr-mlt-nano`, a folder (or Hugging Face cache repo, for a snapshot) whose
    name says MLT, or configuration.json naming the MLT hub repo."""
    names = [name]
    if folder is not None:
        names.append(folder.name)
        if folder.parent.name == "snapshots":  # HF cache: models--FunAudioLLM--Fun-ASR-MLT-...
            names.append(folder.parent.parent.name)
        meta = folder / "configuration.json"
        if meta.is_file():
            try:
                hub = json.loads(meta.read_text(encoding="utf-8")).get("model_name_in_hub")
            except (ValueError, AttributeError):
                hub = None
            names += [str(v) for v in hub.values()] if isinstance(hub, dict) else []
    return any(re.search(r"(^|[^a-z])mlt([^a-z]|$)", n.lower()) for n in names if n)


def read_assets(folder: Path | None, config: dict, *, dummy: bool,
                vocab_size: int | None = None) -> dict:
    """The LLM's config.json and tokenizer.json (or, without a folder, Qwen3-0.6B's config and a
    synthetic tokenizer), the CTC tokenizer file, am.mvn, and the dataset_conf prompt flags."""
    from tokenizers import Tokenizer

    if folder is None:
        llm_config = QWEN3_0_6B_CONFIG
        tokenizer = synthetic_qwen_tokenizer(min(151643, llm_config["vocab_size"]
                                                 - len(QWEN3_ADDED_TOKENS)))
        ctc_vocab = None
    else:
        llm_dir = llm_folder(folder, config)
        llm_config = json.loads((llm_dir / "config.json").read_text(encoding="utf-8"))
        if not (llm_dir / "tokenizer.json").exists():
            raise CheckpointError(f"{llm_dir}: no tokenizer.json")
        tokenizer = Tokenizer.from_file(str(llm_dir / "tokenizer.json"))
        ctc_vocab = _ctc_vocab_path(folder, config)
        if config.get("ctc_decoder") and ctc_vocab is None:
            logger.warning("%s: config has a CTC decoder but no CTC tokenizer file; "
                           "no timestamps", folder)
    return {"llm_config": llm_config, "tokenizer": tokenizer, "ctc_vocab": ctc_vocab,
            "cmvn": _cmvn(folder, config), "frontend_conf": config.get("frontend_conf") or {},
            "dataset_conf": config.get("dataset_conf") or {}, "mlt": is_mlt(folder)}


def wrap(model: Model, assets: dict, *, name: str, dtype, dummy: bool,
         tuning: Tuning = Tuning(), **options) -> FunASRNanoASR:
    model.llm.fuse()  # q/k/v and gate/up as one matmul each: fewer launches per token
    ctc_tokenizer = None
    if model.has_ctc:
        ctc_tokenizer = TiktokenBPE.from_text(assets["ctc_vocab"].read_text(encoding="utf-8"))
    dataset_conf = assets["dataset_conf"]
    return FunASRNanoASR(model, assets["tokenizer"], assets["frontend_conf"], cmvn=assets["cmvn"],
                         ctc_tokenizer=ctc_tokenizer, name=name, dtype=dtype,
                         sys_prompt=dataset_conf.get("sys_prompt", True),
                         do_think=dataset_conf.get("do_think", True),
                         fixed_languages=MLT_LANGUAGES if assets["mlt"] or is_mlt(None, name)
                         else None, upload=tuning.upload, dft=tuning.dft,
                         retire_at=tuning.retire_at, **options)


RECOGNIZER = FunASRNanoASR
