"""Fun-ASR-Nano as a recognizer: waveforms -> features -> encoder/adaptor (batched, padded) ->
ChatML prompts with the audio frames spliced in -> batched prefill and KV-cached decoding ->
text, tokens (with CTC times when the checkpoint has a CTC head) and flags.

Behaviour follows funasr 1.4.16 `FunASRNano.inference` run clip by clip (the official batched
path gives the same tokens): WavFrontend fbank + LFR 7/6 without CMVN unless the folder
configures one; prompt `get_prompt(hotwords, language, itn)`; greedy decoding that stops only
on the LLM config's eos (`<|im_end|>`), capped at `max_new_tokens` (funasr's `max_length`, 512,
the stop token counted); `batch_decode(skip_special_tokens=True)` of all new ids at once, then
`/sil` -> space and whitespace runs collapsed (no strip).

Runaway-generation guard (`GuardOptions`, on by default): a sequence gets at most
max(min_tokens, ceil(max_tokens_per_second x duration)) new tokens (never more than
`max_new_tokens`), and a tail that repeats one unit of 1..max_period tokens at least
min_repeats times over at least min_span tokens is cut back to one copy of the unit. Both are
reported in `Transcript.flags` ("token_cap", "repetition_loop"). When neither triggers the
output is the official one; `GuardOptions.off()` (`no_guard = True`, the CLI's `--no-guard`)
disables both, so the ids are the official ones up to `max_new_tokens`.

Numerics as FunASR runs the published config (`llm_dtype: bf16`): the LLM is built in bf16,
model.pt is copied into it and it is cast to fp32 for inference, so its weights *and RoPE's
inv_freq buffer* carry bf16 rounding while the arithmetic is fp32 (the steady state; the
official first call of a process also rounds the prompt embeddings to bf16). Encoder and
adaptor run in fp32 whatever `dtype` says; `dtype` applies to the LLM.

Timestamps: FunASR uses the CTC head only when config.yaml has a `ctc_decoder` and model.pt
holds every `ctc_decoder.*`/`ctc.*` tensor (else it disables CTC with a warning and batches
clips instead). Then each clip's LLM text is tokenized with the CTC tokenizer (SenseVoice's
tiktoken file) and force-aligned to the CTC log-probabilities (torchaudio's forced_align:
`timestamps`, 60 ms frames); batchasr ports that and gives every LLM token the span of the CTC
tokens covering its characters. Without CTC the only time is the segment (0, duration).
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from batchasr.models.blocks import generate as gen
from batchasr.models.blocks.frontend import FrontendConfig, WavFrontend, load_cmvn, num_lfr_frames
from batchasr.models import fun_asr_nano as fan
from batchasr.transcript import Segment, Token, Transcript

logger = logging.getLogger("batchasr.models.nano_asr")

# Languages as the official examples spell them in the prompt (`语音转写成{language}`); other
# values (and these Chinese names themselves) are placed into the prompt unchanged, and
# None, "" or "auto" mean no language (`语音转写：`).
LANGUAGE_NAMES = {"zh": "中文", "en": "英文", "ja": "日文"}


@dataclass(frozen=True)
class GuardOptions:
    """Runaway-generation guard. Defaults sit well above real speech (about 4-10 Qwen tokens
    per second of audio); `off()` restores the bare official behaviour."""

    # length: new tokens <= max(min_tokens, ceil(max_tokens_per_second * seconds))
    max_tokens_per_second: float | None = 25.0
    min_tokens: int = 32
    # repetition loop: one unit of <= max_period tokens repeated >= min_repeats times,
    # covering >= min_span tokens, at the end of the output
    max_period: int = 32
    min_repeats: int = 8
    min_span: int = 24
    detect_loops: bool = True

    @classmethod
    def off(cls) -> "GuardOptions":
        return cls(max_tokens_per_second=None, detect_loops=False)

    def budget(self, seconds: float, cap: int) -> int:
        if self.max_tokens_per_second is None:
            return cap
        return min(cap, max(self.min_tokens, math.ceil(self.max_tokens_per_second * seconds)))


class LoopDetector:
    """Incremental periodic-tail test, O(max_period) per token: run[p] counts the trailing
    positions i with tokens[i] == tokens[i - p]."""

    def __init__(self, opts: GuardOptions):
        self.opts = opts
        self.runs: dict[int, list[int]] = {}
        self.cut: dict[int, int] = {}  # uid -> number of tokens to keep

    def __call__(self, uid: int, tokens: list[int]) -> str | None:
        o = self.opts
        run = self.runs.setdefault(uid, [0] * (o.max_period + 1))
        n, last = len(tokens), tokens[-1]
        for p in range(1, o.max_period + 1):
            run[p] = run[p] + 1 if n > p and tokens[n - 1 - p] == last else 0
            span = run[p] + p
            if span >= max(o.min_span, o.min_repeats * p) and run[p] >= (o.min_repeats - 1) * p:
                self.cut[uid] = n - span + p  # text before the loop + one copy of the unit
                return "repetition_loop"
        return None


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


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode (the ByteLevel alphabet of Qwen's tokenizer)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class FunASRNanoASR:
    """Implements the runner's ASRModel protocol for Fun-ASR-Nano checkpoints.

    Attributes (change them between calls as needed):
        max_new_tokens: funasr's `max_length` (512), the cap on new tokens, stop token included.
        hotwords: list of hotwords for the prompt (official `hotwords`), [] for none; a string
            is split on whitespace and commas.
        itn: official `itn` (False adds "，不进行文本规整" to the prompt).
        decode_mode: "continuous" (all live sequences per forward) or "sequential".
        temperature, top_p, top_k, seed: sampling (temperature 0 = greedy, the official default).
        guard: GuardOptions (runaway-generation limits).
        max_batch: live sequences in continuous decoding; encode_batch: clips per encoder pass.
        stop_on_eos: False only for benchmarks that force a fixed number of tokens.
    """

    sample_rate = 16000
    punctuated = True  # the LLM writes punctuation itself
    max_segment_s = 15.0  # its LLM starts repeating itself on longer pieces

    def __init__(self, model: fan.Model, tokenizer, frontend_conf: dict, *,
                 cmvn: np.ndarray | None = None, ctc_tokenizer: fan.TiktokenBPE | None = None,
                 name: str = "fun-asr-nano", dtype: mx.Dtype = mx.float32,
                 sys_prompt: bool = True, do_think: bool = True, max_new_tokens: int = 512,
                 hotwords: Sequence[str] | None = None, itn: bool = True,
                 decode_mode: str = "continuous", temperature: float = 0.0, top_p: float = 1.0,
                 top_k: int = -1, seed: int = 0, guard: GuardOptions | None = None,
                 max_batch: int = 64, encode_batch: int = 64):
        self.model, self.tokenizer, self.ctc_tokenizer = model, tokenizer, ctc_tokenizer
        self.name, self.dtype = name, dtype
        self.frontend = WavFrontend(FrontendConfig.from_dict(frontend_conf), cmvn)
        self.sys_prompt, self.do_think = sys_prompt, do_think
        self.max_new_tokens = max_new_tokens
        self.hotwords = hotwords if isinstance(hotwords, str) else list(hotwords or [])
        self.itn = itn
        self.decode_mode = decode_mode
        self.temperature, self.top_p, self.top_k, self.seed = temperature, top_p, top_k, seed
        self.guard = guard if guard is not None else GuardOptions()
        self.max_batch, self.encode_batch = max_batch, encode_batch
        self.stop_on_eos = True
        self.eos_ids = model.llm.args.eos_token_ids
        if not self.eos_ids:
            raise ValueError("the LLM config.json has no eos_token_id")
        self._bytes = _byte_decoder()

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
        lang = None if not language or language.lower() == "auto" else \
            LANGUAGE_NAMES.get(language, language)
        return fan.chatml_around_speech(fan.user_prompt(hotwords, lang, self.itn),
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
                n_speech = min(fan.speech_token_count(lfr_lens[i], self.model.use_low_frame_rate),
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
                            sampler=self.sampler(), stop_check=loops, max_batch=self.max_batch)
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
        items = fan.forced_align(ctc_log_probs, self.ctc_tokenizer.encode(text),
                                 self.model.args.blank_id)
        return [{"token": self.ctc_tokenizer.decode([it["token"]]), "token_id": it["token"],
                 "start_time": it["start_time"] * fan.CTC_FRAME_MS / 1000,
                 "end_time": it["end_time"] * fan.CTC_FRAME_MS / 1000, "score": it["score"]}
                for it in items]

    def _ctc_times(self, tokens: list[Token], special: list[bool], text: str,
                   log_probs: np.ndarray) -> None:
        """Give each LLM token the span of the CTC tokens that cover its characters."""
        targets = self.ctc_tokenizer.encode(text)
        items = fan.forced_align(log_probs, targets, self.model.args.blank_id)
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
                          it["start_time"] * fan.CTC_FRAME_MS, it["end_time"] * fan.CTC_FRAME_MS))
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
# building from a folder (checkpoints.FAMILIES["FunASRNano"]) or full size with dummy weights
# --------------------------------------------------------------------------------------------
# The published FunAudioLLM/Fun-ASR-Nano-2512 config.yaml (shared/reference/funasr-models.md 2.2)
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
QWEN3_ADDED_TOKENS = [  # (content, special) from id 151643 on, as in Qwen3's tokenizer.json
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False),
    ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False),
    ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False),
]


def synthetic_qwen_tokenizer(n_regular: int = 151643):
    """A byte-level tokenizer with Qwen3's size and special-token ids but no merges (dummy
    weights only: it tokenizes prompts byte by byte and decodes any id)."""
    from itertools import product

    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = list(_byte_decoder())
    vocab = {c: i for i, c in enumerate(alphabet)}
    for combo in product(alphabet, repeat=2):
        if len(vocab) >= n_regular:
            break
        vocab.setdefault("".join(combo), len(vocab))
    for combo in product(alphabet, repeat=3):
        if len(vocab) >= n_regular:
            break
        vocab.setdefault("".join(combo), len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    for content, special in QWEN3_ADDED_TOKENS:
        tok.add_tokens([AddedToken(content, special=special, normalized=False)])
    return tok


def llm_folder(folder: Path, config: dict) -> Path:
    """The LLM folder named by llm_conf.init_param_path (relative to the model folder, as
    configuration.json's file_path_metas makes it for the official loader)."""
    from batchasr.errors import CheckpointError

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


def build(folder: Path | None, config: dict, tokens, dummy: bool, name: str, dtype,
          **options) -> FunASRNanoASR:
    """checkpoints.FAMILIES builder for `model: FunASRNano` (see checkpoints.load_model)."""
    from tokenizers import Tokenizer

    from batchasr.models.loader import apply_weights, random_weights, read_weights
    from batchasr.errors import CheckpointError

    if folder is None:
        llm_config = QWEN3_0_6B_CONFIG
        tokenizer = synthetic_qwen_tokenizer(min(151643, llm_config["vocab_size"]
                                                 - len(QWEN3_ADDED_TOKENS)))
    else:
        llm_dir = llm_folder(folder, config)
        llm_config = json.loads((llm_dir / "config.json").read_text(encoding="utf-8"))
        if not (llm_dir / "tokenizer.json").exists():
            raise CheckpointError(f"{llm_dir}: no tokenizer.json")
        tokenizer = Tokenizer.from_file(str(llm_dir / "tokenizer.json"))
    fc = config.get("frontend_conf") or {}
    try:
        args = fan.ModelArgs(
            audio_encoder_conf=config["audio_encoder_conf"],
            audio_adaptor_conf=config["audio_adaptor_conf"], llm_config=llm_config,
            input_size=fc.get("n_mels", 80) * fc.get("lfr_m", 1), model=config.get("model"),
            audio_encoder=config.get("audio_encoder"), audio_adaptor=config.get("audio_adaptor"),
            ctc_decoder=config.get("ctc_decoder"),
            ctc_decoder_conf=dict(config.get("ctc_decoder_conf") or {}),
            ctc_conf=dict(config.get("ctc_conf") or {}),
            ctc_vocab_size=int(config.get("ctc_vocab_size", 60515)))
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{folder or name}: unsupported Fun-ASR-Nano config: {e}") from e
    weights = None if dummy else read_weights(folder)
    ctc_path = _ctc_vocab_path(folder, config) if folder is not None else None
    with_ctc = bool(args.ctc_decoder) and ctc_path is not None
    model = fan.Model(args, with_ctc=with_ctc)
    if with_ctc and weights is not None:
        # as FunASRNano.on_pretrained_model_loaded: no timestamps unless every CTC tensor loads
        from mlx.utils import tree_flatten

        need = [k for k, _ in tree_flatten(model.parameters()) if k.startswith(("ctc", "ctc_"))]
        missing = [k for k in need if k not in weights]
        if missing:
            logger.warning("%s: CTC timestamps disabled, %d of %d CTC tensors missing (%s)",
                           folder, len(missing), len(need), ", ".join(missing[:3]))
            model = fan.Model(args, with_ctc=False)
    elif args.ctc_decoder and ctc_path is None and folder is not None:
        logger.warning("%s: config has a CTC decoder but no CTC tokenizer file; no timestamps",
                       folder)
    # FunASR builds the LLM in llm_conf.llm_dtype, copies model.pt into it, and casts it to
    # fp32 for inference: the weights and RoPE's inv_freq buffer keep that dtype's rounding.
    llm_dtype = (config.get("llm_conf") or {}).get("llm_dtype", "fp32")
    rnd = {"bf16": mx.bfloat16, "fp16": mx.float16}.get(llm_dtype)
    if rnd is not None:
        model.llm.set_rope_dtype(rnd)
    if dummy:
        random_weights(model)
    else:
        weights = model.sanitize(weights)
        if rnd is not None:
            for k in [k for k in weights if k.startswith("llm.")]:
                weights[k] = np.array(mx.array(weights[k]).astype(rnd).astype(mx.float32))
        apply_weights(model, weights, what=str(folder))
    if dtype != mx.float32:
        model.llm.set_dtype(dtype)  # the encoder and adaptor stay float32, as in FunASR
    model.eval()
    model.llm.fuse()  # q/k/v and gate/up as one matmul each: fewer launches per token
    ctc_tokenizer = None
    if model.has_ctc:
        ctc_tokenizer = fan.TiktokenBPE.from_text(ctc_path.read_text(encoding="utf-8"))
    dataset_conf = config.get("dataset_conf") or {}
    return FunASRNanoASR(model, tokenizer, fc, cmvn=_cmvn(folder, config),
                         ctc_tokenizer=ctc_tokenizer, name=name, dtype=dtype,
                         sys_prompt=dataset_conf.get("sys_prompt", True),
                         do_think=dataset_conf.get("do_think", True), **options)
