"""SenseVoice-Small (FunASR `model: SenseVoiceSmall`): network, decoding, recognizer, build.

Port of funasr 1.4.16 `funasr.models.sense_voice.model.SenseVoiceSmall.inference`:

- frontend: WavFrontend (fbank 80, LFR 7/6, CMVN from am.mvn; no dither: batchasr is
  deterministic, fixtures set `dither: 0.0`);
- four query frames prepended to the features, from `embed` (an nn.Embedding of 16 rows):
  [language, 1 (event), 2 (emotion), text norm] with language auto 0, zh 3, en 4, yue 7,
  ja 11, ko 12, nospeech 13 and text norm withitn 14 / woitn 15 (`use_itn`); lengths + 4;
- the encoder, `SenseVoiceEncoderSmall`: the shared SAN-M encoder of
  batchasr.models.blocks.sanm with its `tp_blocks`, as Fun-ASR-Nano builds it
  (`fun_asr_nano.SENSEVOICE_LAYER_NORM_EPS`, always sinusoidal positions and pre-norm);
- `ctc.ctc_lo` log-softmax, per row over its own length (query frames included): argmax,
  consecutive duplicates merged, blank (0) dropped, ids decoded by the sentencepiece model
  (batchasr.models.blocks.sentencepiece): the tagged text `generate()` returns
  (`Transcript.raw_text`); `text` is its `rich_transcription_postprocess`
  (batchasr.models.blocks.rich_text); language, emotion and event come from its tags;
- timestamps (`output_timestamp=True`): the text re-encoded into pieces, the first 4 dropped,
  their ids force-aligned (`ctc_forced_align` of sense_voice/utils, ported in `forced_align`)
  to the log-probabilities after the 4 query frames, with blank's log-probability set to 0 on
  frames whose argmax is blank; each aligned piece spans [start*60-30, end*60-30] ms (clamped),
  and `post()` groups the pieces into the official `words` / `timestamp`. The timed pieces
  are `Transcript.aligned_pieces`; they need not be the decoded pieces after the 4 tags
  (CTC may emit another split of the same text), so `Transcript.tokens` are always the
  decoded ids, untimed, as the official decodes them (timestamps on or off).

A padded batch gives each row exactly what it gives alone: queries are prepended per row,
every layer masks the padding, decoding reads each row up to its own length. Batches are
padded to a multiple of `Tuning.frame_bucket` frames, as Paraformer's.

Differences from the official: an unknown `language` is refused (the official silently uses
auto); `ban_emo_unk` is not offered.

Family hooks for batchasr.models.loader: DUMMY_CONFIG, read_assets, ModelArgs.from_config,
Model (sanitize, cast), wrap -> SenseVoiceASR.

Size: above 400 lines because it holds one whole family (model, timestamps, recognizer,
build hooks); its shared parts live in blocks/.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Callable, Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from batchasr.audio.decode import SAMPLE_RATE
from batchasr.errors import CheckpointError
from batchasr.models.blocks.ctc import CTC
from batchasr.models.blocks.frontend import FrontendConfig, WavFrontend
from batchasr.models.blocks.rich_text import parse_tags, rich_transcription_postprocess
from batchasr.models.blocks.sanm import SANMEncoder, SANMEncoderArgs
from batchasr.models.blocks.sentencepiece import SPACE, SentencePieceBPE
from batchasr.models.blocks.tuning import Tuning
from batchasr.models.fun_asr_nano import SENSEVOICE_LAYER_NORM_EPS
from batchasr.transcript import Segment, Token, Transcript

# SenseVoiceSmall.__init__: the query rows of `embed`
LID = {"auto": 0, "zh": 3, "en": 4, "yue": 7, "ja": 11, "ko": 12, "nospeech": 13}
TEXTNORM = {"withitn": 14, "woitn": 15}
EVENT_QUERY, EMO_QUERY = 1, 2
N_QUERIES = 4
EMBED_ROWS = 7 + len(LID) + len(TEXTNORM)
FRAME_MS = 60  # 10 ms x lfr_n 6, the official `* 60`
TIMESTAMP_FALLBACK_ID = 124  # the official id for a piece that encodes to nothing


@dataclass
class ModelArgs:
    """The parts of config.yaml SenseVoiceSmall needs (official keys), plus the vocabulary
    size, which the official takes from the tokenizer."""

    encoder_conf: dict
    vocab_size: int
    input_size: int = 560  # n_mels * lfr_m
    frontend_conf: dict = field(default_factory=dict)
    blank_id: int = 0
    model: str = "SenseVoiceSmall"
    encoder: str = "SenseVoiceEncoderSmall"

    @classmethod
    def from_config(cls, config: dict, assets: dict) -> "ModelArgs":
        fc = config.get("frontend_conf") or {}
        mc = config.get("model_conf") or {}
        return cls(encoder_conf=dict(config["encoder_conf"]), vocab_size=len(assets["tokenizer"]),
                   input_size=fc.get("n_mels", 80) * fc.get("lfr_m", 1), frontend_conf=fc,
                   blank_id=int(mc.get("blank_id", 0)), model=config.get("model"),
                   encoder=config.get("encoder"))

    def __post_init__(self):
        for key, expected in (("model", "SenseVoiceSmall"), ("encoder", "SenseVoiceEncoderSmall")):
            if getattr(self, key) != expected:
                raise ValueError(f"config.yaml {key}: {getattr(self, key)!r} is not supported "
                                 f"by the SenseVoice port (expected {expected!r})")
        if int(self.encoder_conf.get("tp_blocks", 0)) < 1:
            raise ValueError("SenseVoiceEncoderSmall with tp_blocks 0 is not supported")


def encoder_args(conf: dict, input_size: int) -> SANMEncoderArgs:
    # as Fun-ASR-Nano's audio encoder: always positions and pre-norm, torch LayerNorm eps
    return SANMEncoderArgs.from_dict(conf, input_size=input_size, input_layer="pe",
                                     normalize_before=True,
                                     layer_norm_eps=SENSEVOICE_LAYER_NORM_EPS)


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        enc = encoder_args(args.encoder_conf, args.input_size)
        self.embed = nn.Embedding(EMBED_ROWS, args.input_size)
        self.encoder = SANMEncoder(enc)
        self.ctc = CTC(args.vocab_size, enc.output_size)

    def cast(self, dtype: mx.Dtype) -> None:
        if dtype != mx.float32:
            self.encoder.set_dtype(dtype)
            self.ctc.set_dtype(dtype)

    def sanitize(self, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Official SenseVoiceSmall state dict -> this module tree (training-only extras out)."""
        return {k: v for k, v in weights.items()
                if k.startswith(("embed.", "encoder.", "ctc.ctc_lo."))}

    def queries(self, language_ids: Sequence[int], textnorm_ids: Sequence[int]) -> mx.array:
        """(B, 4, input_size): [language, event, emotion, text norm] per row."""
        rows = np.array([[lid, EVENT_QUERY, EMO_QUERY, tn]
                         for lid, tn in zip(language_ids, textnorm_ids)], np.int32)
        return self.embed(mx.array(rows))

    def __call__(self, feats: mx.array, lengths: mx.array, language_ids: Sequence[int],
                 textnorm_ids: Sequence[int]) -> tuple[mx.array, mx.array, mx.array]:
        """Padded features (B, T, D) -> (encoder output (B, T+4, d), CTC log-probabilities
        (B, T+4, vocab), lengths + 4)."""
        q = self.queries(language_ids, textnorm_ids).astype(feats.dtype)
        x = mx.concatenate([q, feats], axis=1)
        lens = lengths + N_QUERIES
        enc = self.encoder(x, lens)
        return enc, self.ctc.log_softmax(enc).astype(mx.float32), lens


# --------------------------------------------------------------------------------------------
# decoding and timestamps (SenseVoiceSmall.inference)
# --------------------------------------------------------------------------------------------
def greedy_ids(best: np.ndarray, blank_id: int = 0) -> list[int]:
    """torch.unique_consecutive of the frames' argmax, blank dropped; `best` (T,) is the
    argmax of one row's log-probabilities (taken on the device: ties go to the lower id,
    as numpy and torch break them)."""
    if len(best) == 0:
        return []
    keep = np.concatenate([[True], best[1:] != best[:-1]])
    return [int(i) for i in best[keep] if i != blank_id]


def forced_align(log_probs: np.ndarray, targets: Sequence[int], blank: int = 0) -> np.ndarray:
    """funasr.models.sense_voice.utils.ctc_alignment.ctc_forced_align for one row (float32
    Viterbi, ties to the first candidate: stay, then from s-1, then from s-2): the label of
    every frame."""
    lp = np.asarray(log_probs, np.float32)
    T = lp.shape[0]
    L = len(targets)
    ext = np.full(2 * L + 1, blank, np.int64)
    ext[1::2] = targets
    S = len(ext)
    diff = np.zeros(S, bool)
    diff[2:] = ext[2:] != ext[:-2]
    neg = np.float32(-np.inf)
    best = np.full(S + 2, neg, np.float32)  # two padding states in front, as the official
    best[2] = lp[0, blank]
    best[3] = lp[0, ext[1]]
    back = np.zeros((T, S), np.int64)
    for t in range(1, T):
        prev = np.stack([best[2:], best[1:-1], np.where(diff, best[:-2], neg)])
        idx = np.argmax(prev, axis=0)
        best[2:] = lp[t, ext] + prev[idx, np.arange(S)]
        back[t] = idx
    ends = best[[2 + 2 * L - 1, 2 + 2 * L]]
    path = np.zeros(T, np.int64)
    path[T - 1] = 2 + 2 * L - 1 + int(np.argmax(ends))
    for t in range(T - 1, 0, -1):
        path[t - 1] += path[t] - back[t, path[t] - 2]
    return ext[np.clip(path - 2, 0, None)]


def post(timestamp: list[list]) -> tuple[list[list[int]], list[str]]:
    """SenseVoiceSmall.post: [piece, start_ms, end_ms] -> ([[start, end], ...], words)."""
    times, words = [], []
    prev_word = None
    for i, (word, start, end) in enumerate(timestamp):
        if word == SPACE:
            continue
        if i == 0:
            times.append([start, end])
            words.append(word)
        elif word.startswith(SPACE):
            word = word[1:]
            times.append([start, end])
            words.append(word)
        elif (prev_word is not None and prev_word.isalpha() and prev_word.isascii()
              and word.isalpha() and word.isascii()):
            word = prev_word + word
            times[-1][1] = end
            words[-1] = word
        else:
            times.append([start, end])
            words.append(word)
        prev_word = word
    return times, words


def official_timestamps(sp: SentencePieceBPE, text: str, best: np.ndarray,
                        columns: Callable[[list[int]], np.ndarray],
                        blank_id: int = 0) -> list[list] | None:
    """The official `timestamp` before `post()`: [piece, start_ms, end_ms] per aligned piece
    of the re-encoded text (ms as post() rounds them). `best`: the row's argmax per frame
    (T+4,); `columns(ids)`: the row's log-probabilities (T+4, len(ids)) of those vocabulary
    ids, the only ones the alignment reads (so the (T, vocab) matrix never leaves the
    device). None where the official gives none (nothing to align) or would fail (more
    aligned pieces than pieces)."""
    tokens = sp.encode_pieces(text)[N_QUERIES:]
    token_ids = []
    for piece in tokens:
        ids = sp.encode_ids(piece)
        token_ids.extend(ids) if ids else token_ids.append(TIMESTAMP_FALLBACK_ID)
    if not token_ids:
        return None
    ts_max = len(best) - N_QUERIES
    if ts_max <= 0:
        return None
    vocab = sorted({blank_id, *token_ids})  # the alignment reads these columns only
    col = {v: k for k, v in enumerate(vocab)}
    speech = np.array(columns(vocab)[N_QUERIES:], np.float32)
    speech[best[N_QUERIES:] == blank_id, col[blank_id]] = 0
    align = forced_align(speech, [col[i] for i in token_ids], col[blank_id])
    align = np.asarray(vocab)[align]  # back to vocabulary ids
    out, start, k = [], 0, 0
    for label, frames in groupby(align.tolist()):
        end = start + len(list(frames))
        if label != 0:
            if k >= len(tokens):
                return None  # the official raises an IndexError here
            left = max((start * FRAME_MS - 30) / 1000, 0)
            right = min((end * FRAME_MS - 30) / 1000, (ts_max * FRAME_MS - 30) / 1000)
            out.append([tokens[k], int(left * 1000), int(right * 1000)])
            k += 1
        start = end
    return out


# --------------------------------------------------------------------------------------------
# the recognizer
# --------------------------------------------------------------------------------------------
class SenseVoiceASR:
    """Implements the runner's ASRModel protocol for SenseVoice-Small checkpoints.

    Attributes (change them between calls as needed):
        language: the default `language` ("auto", zh, en, yue, ja, ko, nospeech) of items that
            name none (a per-item language passed to `transcribe` wins).
        itn: official `use_itn` (default False): the withitn query (punctuation, numerals).
        timestamps: official `output_timestamp` (default True): token times and words.
    """

    sample_rate = SAMPLE_RATE
    punctuated = False  # without ITN its text has no punctuation (`itn` sets it per instance)
    max_segment_s = 30.0  # the official VAD pipeline's max_single_segment_time

    def __init__(self, model: Model, tokenizer: SentencePieceBPE, cmvn: np.ndarray | None, *,
                 name: str = "sensevoice-small", dtype: mx.Dtype = mx.float32,
                 tuning: Tuning = Tuning(), language: str = "auto", itn: bool = False,
                 timestamps: bool = True):
        self.model, self.tokenizer, self.name, self.dtype = model, tokenizer, name, dtype
        self.frontend = WavFrontend(FrontendConfig.from_dict(model.args.frontend_conf), cmvn,
                                    upload=tuning.upload, dft=tuning.dft)
        self.frame_bucket = tuning.frame_bucket
        self.language = language
        self.itn = itn
        self.timestamps = timestamps
        if len(tokenizer) != model.args.vocab_size:
            raise ValueError(f"the sentencepiece model has {len(tokenizer)} pieces, the CTC "
                             f"layer {model.args.vocab_size}")

    @classmethod
    def declared_traits(cls, *, itn: bool = False, **options) -> dict:
        """What an instance with these options declares (``loader.recognizer_traits``, from
        the config alone): ITN text is punctuated, so no punctuation model is added."""
        return {"punctuated": bool(itn), "max_segment_s": cls.max_segment_s}

    @property
    def itn(self) -> bool:
        return self._itn

    @itn.setter
    def itn(self, value) -> None:
        self._itn = bool(value)
        self.punctuated = self.declared_traits(itn=self._itn)["punctuated"]

    @property
    def language(self) -> str:
        return self._language

    @language.setter
    def language(self, value) -> None:
        self._language = self.language_key(value)

    @staticmethod
    def language_key(language: str | None) -> str:
        """"auto" for None/""; a SenseVoice language as given; anything else is refused."""
        if language is None or language == "":
            return "auto"
        key = str(language).strip().lower()
        if key not in LID:
            raise ValueError(f"SenseVoice: unknown language {language!r} "
                             f"(known: {', '.join(LID)})")
        return key

    def features(self, waveforms: Sequence[np.ndarray], *,
                 frame_bucket: int = 1) -> tuple[mx.array, mx.array]:
        """Padded features and their lengths (see WavFrontend; a batch asks for its frame
        bucket, so that every shape of its frontend follows it)."""
        return self.frontend(waveforms, frame_bucket=frame_bucket)

    @property
    def length_quantum(self) -> int:
        """Samples per padding bucket (see ParaformerASR.length_quantum)."""
        return self.frame_bucket * self.frontend.conf.frame_samples

    def transcribe(self, waveforms: Sequence[np.ndarray], *,
                   languages: Sequence[str | None] | None = None) -> list[Transcript]:
        """16 kHz mono float32 waveforms -> one Transcript each, in order; `languages` per
        item (None: the `language` attribute)."""
        return self.submit(waveforms, languages=languages).result()

    def submit(self, waveforms: Sequence[np.ndarray], *,
               languages: Sequence[str | None] | None = None) -> "PendingBatch":
        """Queue a batch on the device and return at once; `result()` gives the transcripts."""
        waveforms = [np.asarray(w, dtype=np.float32) for w in waveforms]
        languages = list(languages) if languages is not None else [None] * len(waveforms)
        if len(languages) != len(waveforms):
            raise ValueError(f"{len(languages)} languages for {len(waveforms)} waveforms")
        keys = [self.language_key(lang) if lang else self.language for lang in languages]
        return PendingBatch(self, waveforms, keys)

    def forward(self, feats: mx.array, lengths: mx.array, languages: Sequence[str]):
        """(encoder output, CTC log-probabilities, lengths + 4) of a padded batch."""
        tn = TEXTNORM["withitn" if self.itn else "woitn"]
        return self.model(feats.astype(self.dtype), lengths, [LID[k] for k in languages],
                          [tn] * len(languages))

    def to_transcript(self, best: np.ndarray, n_samples: int,
                      columns: Callable[[list[int]], np.ndarray] | None = None) -> Transcript:
        """One row (its own length, query frames included) -> Transcript: `best` its argmax
        per frame; `columns(ids)` its log-probabilities of those ids, given when the batch
        was submitted with timestamps on (None: no timestamps)."""
        ids = greedy_ids(best, self.model.args.blank_id)
        raw = self.tokenizer.decode(ids)
        tokens = [Token(text=self.tokenizer.pieces[i], id=i) for i in ids]  # never timed
        timed = []  # the official timestamp pieces with their times
        if columns is not None:
            times = official_timestamps(self.tokenizer, raw, best, columns,
                                        self.model.args.blank_id)
            timed = [Token(text=p, id=self.tokenizer.piece_to_id(p), start_ms=start, end_ms=end)
                     for p, start, end in times or []]
        text = rich_transcription_postprocess(raw) if raw else ""
        segments = []
        if timed and text:
            segments.append(Segment(timed[0].start_ms / 1000, timed[-1].end_ms / 1000, text))
        elif text:
            segments.append(Segment(0.0, n_samples / self.sample_rate, text))
        tags = parse_tags(raw)
        return Transcript(text=text, tokens=tokens, segments=segments, language=tags["language"],
                          raw_text=raw, emotion=tags["emotion"], event=tags["event"],
                          aligned_pieces=timed)

    def word_timestamps(self, transcript: Transcript) -> tuple[list[str], list[list[int]]]:
        """The official `words` and `timestamp` (SenseVoiceSmall.post of the times of the
        transcript's `aligned_pieces`)."""
        times, words = post([[t.text, t.start_ms, t.end_ms] for t in transcript.aligned_pieces])
        return words, times


class PendingBatch:
    """A SenseVoice batch on its way through the device (see SenseVoiceASR.submit)."""

    def __init__(self, asr: SenseVoiceASR, waveforms: list[np.ndarray], languages: list[str]):
        self.asr, self.waveforms = asr, waveforms
        self.results: list[Transcript | None] = [None] * len(waveforms)
        feats, lengths = asr.features(waveforms, frame_bucket=asr.frame_bucket)
        lens = np.array(lengths)
        self.live = [i for i in range(len(waveforms)) if lens[i] > 0]
        for i in range(len(waveforms)):
            if lens[i] == 0:  # shorter than one fbank window: nothing to recognise
                self.results[i] = Transcript(text="")
        self.out = None
        if self.live:
            if len(self.live) < len(waveforms):  # the frames already end at the live rows' bucket
                idx = mx.array(np.array(self.live, dtype=np.int32))
                feats, lengths = feats[idx], lengths[idx]
            _, logp, olens = asr.forward(feats, lengths, [languages[i] for i in self.live])
            # Only the argmax leaves the device: the (B, T, 25055) log-probabilities are
            # 1.7 GB for 1000 s of audio, and copying them took most of a batch's time.
            # The matrix itself is kept (on the device) only for timestamps.
            best = mx.argmax(logp, axis=-1).astype(mx.int32)
            self.out = (logp if asr.timestamps else None, best, olens)
            mx.async_eval(best, olens)

    def advance(self) -> None:
        """Nothing to do between the device work and `result()`."""

    def result(self) -> list[Transcript]:
        if self.out is not None:
            logp, best, olens = self.out
            self.out = None
            best, olens = np.array(best), np.array(olens)
            for row, i in enumerate(self.live):
                n = int(olens[row])

                def columns(ids, row=row, n=n):
                    return np.array(mx.take(logp[row, :n], mx.array(ids, mx.int32), axis=-1))

                self.results[i] = self.asr.to_transcript(
                    best[row, :n], len(self.waveforms[i]),
                    columns if logp is not None else None)
        return self.results


# --------------------------------------------------------------------------------------------
# family hooks (batchasr.models.loader)
# --------------------------------------------------------------------------------------------
# The published FunAudioLLM/SenseVoiceSmall config.yaml (inference keys), to build dummy models
# without a folder; its vocabulary is the 25055 pieces of chn_jpn_yue_eng_ko_spectok.bpe.model.
DUMMY_CONFIG = {
    "encoder": "SenseVoiceEncoderSmall",
    "encoder_conf": {"output_size": 512, "attention_heads": 4, "linear_units": 2048,
                     "num_blocks": 50, "tp_blocks": 20, "input_layer": "pe",
                     "pos_enc_class": "SinusoidalPositionEncoder", "normalize_before": True,
                     "kernel_size": 11, "sanm_shfit": 0, "selfattention_layer_type": "sanm"},
    "model": "SenseVoiceSmall",
    "model_conf": {"length_normalized_loss": True, "sos": 1, "eos": 2, "ignore_id": -1},
    "tokenizer": "SentencepiecesTokenizer",
    "tokenizer_conf": {"bpemodel": None, "unk_symbol": "<unk>", "split_with_space": True},
    "frontend": "WavFrontend",
    "frontend_conf": {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25,
                      "frame_shift": 10, "lfr_m": 7, "lfr_n": 6, "cmvn_file": None},
}
DUMMY_VOCAB_SIZE = 25055
BPE_MODEL = "chn_jpn_yue_eng_ko_spectok.bpe.model"


class SyntheticTokenizer(SentencePieceBPE):
    """A stand-in vocabulary of `n` pieces for dummy models without a folder: <unk>, <s>,
    </s>, then CJK characters (decoding and timestamps run as for a real model)."""

    def __init__(self, n: int):
        from batchasr.models.blocks import sentencepiece as spm

        self.pieces = ["<unk>", "<s>", "</s>"] + [chr(0x4E00 + i) for i in range(n - 3)]
        self.scores = [0.0] * n
        self.types = [spm.UNKNOWN, spm.CONTROL, spm.CONTROL] + [spm.NORMAL] * (n - 3)
        self.byte_fallback, self.unk_surface, self.unk_id = False, spm.DEFAULT_UNK_SURFACE, 0
        self.normal_ids = {p: i for i, p in enumerate(self.pieces) if i >= 3}
        self.reserved_ids = {p: i for i, p in enumerate(self.pieces[:3])}
        self.user_symbols = set()
        self.add_dummy_prefix = self.remove_extra_whitespaces = True
        self.normalizer = spm.Normalizer({})
        self.denormalizer = None


def _bpe_path(folder: Path, config: dict) -> Path | None:
    names = []
    meta = folder / "configuration.json"
    if meta.exists():
        fpm = json.loads(meta.read_text(encoding="utf-8")).get("file_path_metas") or {}
        names.append((fpm.get("tokenizer_conf") or {}).get("bpemodel"))
    names += [(config.get("tokenizer_conf") or {}).get("bpemodel"), BPE_MODEL]
    return next((folder / n for n in names if n and (folder / n).is_file()), None)


def read_assets(folder: Path | None, config: dict, *, dummy: bool,
                vocab_size: int | None = None) -> dict:
    """The sentencepiece model (tokenizer_conf.bpemodel, via configuration.json) and am.mvn
    where the official loader passes it to WavFrontend (Fun-ASR-Nano's rule)."""
    from batchasr.models.fun_asr_nano import _cmvn

    path = None if folder is None else _bpe_path(folder, config)
    if path is None:
        if folder is not None and not dummy:
            raise CheckpointError(f"{folder}: no sentencepiece model ({BPE_MODEL})")
        tokenizer = SyntheticTokenizer(vocab_size or DUMMY_VOCAB_SIZE)
    else:
        try:
            tokenizer = SentencePieceBPE.from_file(path)
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from e
    return {"tokenizer": tokenizer, "cmvn": _cmvn(folder, config)}


def wrap(model: Model, assets: dict, *, name: str, dtype, dummy: bool,
         tuning: Tuning = Tuning(), **options) -> SenseVoiceASR:
    cmvn = assets["cmvn"]
    if dummy and cmvn is None:
        rng = np.random.default_rng(0)
        n = model.args.input_size
        cmvn = np.stack([-rng.normal(11, 2, n), 1 / rng.uniform(2, 5, n)]).astype(np.float32)
    return SenseVoiceASR(model, assets["tokenizer"], cmvn, name=name, dtype=dtype,
                         tuning=tuning, **options)


RECOGNIZER = SenseVoiceASR
