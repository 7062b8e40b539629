"""CT-Transformer punctuation (FunASR `model: CTTransformer`, aliases ct-punc / ct-punc-c):
network, the Punctuator, build.

Network: port of funasr 1.4.16 `funasr.models.ct_transformer.model` (`punc_forward`): token
embedding -> SAN-M encoder (the shared one of batchasr.models.blocks.sanm: x * sqrt(D),
sinusoidal positions from 1, encoders0 whose input width equals the model width so it keeps
its attention residual, encoders, after_norm) -> linear `decoder` to the punctuation classes.
Module attributes follow the official state-dict keys (`embed.weight`,
`encoder.encoders0.0...`, `decoder.weight`), so `sanitize` has nothing to rename.

Text: splitting, mini-sentences and text assembly (`CTTransformer.inference`, exact to the
official quirks) live in batchasr.models.blocks.punc_text. A model folder with a
`jieba_usr_dict` (the ModelScope large cn-en model) cuts Chinese with jieba (user dict loaded,
HMM off).

`Punctuator.punctuate_many` runs the mini-sentences of many texts as padded batches (a text's
next mini-sentence depends on the previous one's predictions, so each step takes the next
mini-sentence of up to `batch_size` texts, in calls of similar lengths); the results equal
one-at-a-time runs.

Family hooks for batchasr.models.loader: read_assets, ModelArgs.from_config, Model (sanitize,
cast), wrap -> Punctuator.
"""
from __future__ import annotations

import json
import logging
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from batchasr.errors import CheckpointError
from batchasr.models.blocks.punc_text import (
    SPLIT_SIZE,
    expand_word_ids,
    length_groups,
    MiniSentenceRun,
    split_words,
)
from batchasr.models.blocks.sanm import SANMEncoder, SANMEncoderArgs
from batchasr.models.weights import read_tokens

logger = logging.getLogger("batchasr.punctuation")  # the name log lines show (stable)

JIEBA_USER_DICT = "jieba_usr_dict"


@dataclass
class ModelArgs:
    """`model_conf` of config.yaml (official key names) plus the vocabulary size."""

    vocab_size: int  # len(tokens.json)
    punc_list: list
    encoder_conf: dict
    embed_unit: int = 128
    att_unit: int = 256
    sentence_end_id: int = 3
    model: str = "CTTransformer"
    encoder: str = "SANMEncoder"

    @classmethod
    def from_config(cls, config: dict, assets: dict) -> "ModelArgs":
        vocab_size = len(assets["tokens"])
        mc = dict(config.get("model_conf") or {})
        fields = cls.__dataclass_fields__
        args = cls(vocab_size=vocab_size, encoder_conf=dict(config["encoder_conf"]),
                   model=config.get("model", "CTTransformer"),
                   encoder=config.get("encoder", "SANMEncoder"),
                   **{k: v for k, v in mc.items() if k in fields and k not in
                      ("vocab_size", "encoder_conf", "model", "encoder")})
        args.punc_list = list(args.punc_list)
        return args

    def __post_init__(self):
        if self.model != "CTTransformer":
            raise ValueError(f"config.yaml model: {self.model!r} is not CTTransformer")
        if self.encoder != "SANMEncoder":
            raise ValueError(f"config.yaml encoder: {self.encoder!r} is not supported by the "
                             f"ct-punc port (expected 'SANMEncoder')")
        enc = self.encoder_conf
        if enc.get("input_size", self.embed_unit) != self.embed_unit:
            raise ValueError(f"encoder_conf input_size {enc.get('input_size')} != embed_unit "
                             f"{self.embed_unit}")
        if enc.get("output_size", 256) != self.att_unit:
            raise ValueError(f"encoder_conf output_size {enc.get('output_size')} != att_unit "
                             f"{self.att_unit}")
        if enc.get("selfattention_layer_type", "sanm") != "sanm":
            raise ValueError(f"selfattention_layer_type {enc['selfattention_layer_type']!r} "
                             f"is not supported")
        if not self.punc_list or not 0 <= self.sentence_end_id < len(self.punc_list):
            raise ValueError(f"punc_list {self.punc_list!r} / sentence_end_id "
                             f"{self.sentence_end_id} do not fit together")


class Model(nn.Module):
    """ids (B, T) int32, lengths (B,) -> punctuation logits (B, T, len(punc_list))."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed = nn.Embedding(args.vocab_size, args.embed_unit)
        self.encoder = SANMEncoder(SANMEncoderArgs.from_dict(
            args.encoder_conf, input_size=args.embed_unit, output_size=args.att_unit))
        self.decoder = nn.Linear(args.att_unit, len(args.punc_list))

    def __call__(self, ids: mx.array, lengths: mx.array) -> mx.array:
        """ids: (B, T), lengths: (B,) -> logits (B, T, C); rows past their length are junk."""
        h = self.encoder(self.embed(ids), lengths)
        return self.decoder(h)

    def cast(self, dtype: mx.Dtype) -> None:
        if dtype != mx.float32:
            self.set_dtype(dtype)

    def sanitize(self, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The official state dict maps one to one (SinusoidalPositionEncoder has no tensors)."""
        return dict(weights)


class Punctuator:
    """A loaded CT-Transformer with its vocabulary and splitting rules.

    `punctuate(text) -> (text, punc_ids)`; `punctuate_many(texts)` does the same for a list,
    batching the model calls.
    """

    def __init__(self, model: Model, tokens: list[str], *, unk_symbol: str = "<unk>",
                 jieba_tokenizer=None, name: str = "ct-punc", dtype=mx.float32):
        self.model = model
        self.name = name
        self.dtype = dtype
        self.punc_list = list(model.args.punc_list)
        self.sentence_end_id = model.args.sentence_end_id
        self.jieba = jieba_tokenizer
        self.token2id: dict[str, int] = {}
        for i, t in enumerate(tokens):
            if t in self.token2id:
                raise CheckpointError(f"{name}: token {t!r} is listed twice in tokens.json")
            self.token2id[t] = i
        if unk_symbol not in self.token2id:
            raise CheckpointError(f"{name}: the unknown symbol {unk_symbol!r} is not in "
                                  f"tokens.json")
        self.unk_id = self.token2id[unk_symbol]

    # -- pieces ---------------------------------------------------------------------------
    def tokenize(self, text: str) -> tuple[list[str], list[int]]:
        """(tokens, ids) of one input text."""
        words = split_words(text, self.jieba)
        return words, [self.token2id.get(w, self.unk_id) for w in words]

    def logits(self, batch_ids: list[list[int]]) -> list[np.ndarray]:
        """Model outputs for token-id rows of any lengths: one (len, n_classes) array each."""
        B, T = len(batch_ids), max(len(r) for r in batch_ids)
        ids = np.zeros((B, T), np.int32)
        for b, row in enumerate(batch_ids):
            ids[b, : len(row)] = row
        lengths = mx.array([len(r) for r in batch_ids], dtype=mx.int32)
        y = self.model(mx.array(ids), lengths).astype(mx.float32)
        y = np.array(y)
        return [y[b, : len(r)] for b, r in enumerate(batch_ids)]

    # -- whole texts ----------------------------------------------------------------------
    def punctuate(self, text: str, *, split_size: int = SPLIT_SIZE) -> tuple[str, list[int]]:
        """Punctuated text and one punctuation class id per token (empty for blank text)."""
        return self.punctuate_many([text], split_size=split_size)[0]

    def punctuate_many(self, texts: list[str], *, split_size: int = SPLIT_SIZE,
                       batch_size: int = 32) -> list[tuple[str, list[int]]]:
        """`punctuate` for each text, in input order; model calls batched over texts."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        runs: list[MiniSentenceRun | None] = []
        tokens: list[list[str]] = []
        for text in texts:
            if not text or not text.strip():
                runs.append(None)
                tokens.append([])
                continue
            words, ids = self.tokenize(text)
            runs.append(MiniSentenceRun(words, ids, split_size))
            tokens.append(words)
        # texts with more mini-sentences start first so the batch stays full at the end
        pending = deque(sorted((i for i, r in enumerate(runs) if r is not None),
                               key=lambda i: -len(runs[i].words)))
        active: list[int] = []
        while pending or active:
            while pending and len(active) < batch_size:
                active.append(pending.popleft())
            for group in length_groups(active, [len(runs[i].next_ids()) for i in active]):
                outs = self.logits([runs[i].next_ids() for i in group])
                for i, y in zip(group, outs):
                    runs[i].feed(np.argmax(y, axis=-1).tolist(), self.punc_list,
                                 self.sentence_end_id)
            active = [i for i in active if not runs[i].done]
        results = []
        for run, words in zip(runs, tokens):
            if run is None:
                results.append(("", []))
                continue
            punc = run.punc
            if self.jieba is not None:
                punc = expand_word_ids(words, punc)
            results.append((run.text, [int(p) for p in punc]))
        return results


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
def jieba_user_dict(folder: Path | None) -> Path | None:
    """The user dictionary the official loader would pass to CTTransformer, if any.

    With configuration.json it is the `jieba_usr_dict` entry of `file_path_metas` (when that
    file exists); without it, a `jieba_usr_dict` file next to config.yaml.
    """
    if folder is None:
        return None
    conf = folder / "configuration.json"
    if conf.exists():
        try:
            metas = json.loads(conf.read_text(encoding="utf-8")).get("file_path_metas") or {}
        except (ValueError, AttributeError) as e:
            raise CheckpointError(f"{conf}: not valid JSON ({e})") from e
        name = metas.get(JIEBA_USER_DICT)
        path = folder / name if isinstance(name, str) else None
    else:
        path = folder / JIEBA_USER_DICT
    return path if path is not None and path.exists() else None


def make_jieba(user_dict: Path):
    """A jieba tokenizer (default dictionary + the model's user dictionary)."""
    try:
        import jieba
    except ImportError as e:
        raise CheckpointError(
            f"{user_dict.parent}: this punctuation model splits Chinese with jieba "
            f"({user_dict.name}); install it with `pip install jieba`") from e
    logging.getLogger("jieba").setLevel(logging.WARNING)  # no "Building prefix dict" chatter
    tokenizer = jieba.Tokenizer()
    with open(user_dict, "rb") as f:
        tokenizer.load_userdict(f)
    return tokenizer


# ---------------------------------------------------------------------------------------------
# family hooks (batchasr.models.loader)
# ---------------------------------------------------------------------------------------------
def read_assets(folder: Path | None, config: dict, *, dummy: bool,
                vocab_size: int | None = None) -> dict:
    """tokens.json (required, also for dummy weights) and the jieba user dictionary."""
    has_list = folder is not None and ((folder / "tokens.json").exists()
                                       or (folder / "tokens.txt").exists())
    if folder is None or not (has_list or not dummy):
        raise CheckpointError(f"{folder}: a punctuation model needs its tokens.json")
    return {"tokens": read_tokens(folder, config), "jieba_user_dict": jieba_user_dict(folder),
            "unk_symbol": (config.get("tokenizer_conf") or {}).get("unk_symbol", "<unk>")}


def wrap(model: Model, assets: dict, *, name: str, dtype, dummy: bool, **_) -> Punctuator:
    user_dict = assets["jieba_user_dict"]
    return Punctuator(model, assets["tokens"], unk_symbol=assets["unk_symbol"], name=name,
                      dtype=dtype, jieba_tokenizer=make_jieba(user_dict) if user_dict else None)
