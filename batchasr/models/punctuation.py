"""Punctuation with CT-Transformer (FunASR `ct-punc`, `ct-punc-c`), exact to funasr 1.4.16.

The text side of `funasr/models/ct_transformer/{model,utils}.py` (`CTTransformer.inference`,
`split_words`, `split_to_mini_sentence`), ported line by line because its quirks are the
reference:

- Splitting: on whitespace; inside each piece a run of ASCII characters is one token and every
  other character is its own token. A model folder with a `jieba_usr_dict` (the ModelScope
  large cn-en model) instead groups pieces into English words (`^[a-zA-Z']+$`) and the rest,
  whose pieces are joined without spaces and cut by jieba (user dict loaded, HMM off).
- Ids: exact, case-sensitive look-up in tokens.json; unknown tokens get `<unk>`.
- Mini-sentences of `split_size` (20) tokens, each run with the tail carried over from the one
  before. For every mini-sentence but the last, the text up to the last `。`/`？` (looked for
  from the second-to-last token down to index 2) is emitted and the rest carried; with none,
  nothing is emitted, unless the carried text is over 200 tokens and has a `，`, where it is cut
  and that comma becomes the sentence end.
- Text: an ASCII-initial token at a sentence start goes through `str.capitalize()`; an ASCII
  token gets a space in front at index 0 of a mini-sentence or after another ASCII token; after
  an ASCII token `，。？` print as `,.?`; class 0 prints as its name (`<unk>`); the final mark is
  normalised (`，`/`、` -> `。`, `,` -> `.`, else `。`/`.` appended) and the last id becomes
  `sentence_end_id`.
- punc_ids: one class id per token; on the jieba path expanded to one id per character of
  each multi-character word starting in U+0E00..U+9FA5 (1s in front of the word's own id).

`punctuate_many` runs the mini-sentences of many texts as padded batches (a text's next
mini-sentence depends on the previous one's predictions, so each step takes the next
mini-sentence of up to `batch_size` texts, in calls of similar lengths); the results equal
one-at-a-time runs.
"""
from __future__ import annotations

import json
import logging
import re
from collections import deque
from pathlib import Path

import mlx.core as mx
import numpy as np

from batchasr.errors import CheckpointError
from batchasr.models.ct_punc import Model, ModelArgs

logger = logging.getLogger("batchasr.models.punctuation")

SPLIT_SIZE = 20  # tokens per mini-sentence (CTTransformer.inference's split_size default)
CACHE_POP_TRIGGER_LIMIT = 200  # a carried text longer than this is cut at its last comma
JIEBA_USER_DICT = "jieba_usr_dict"

_ENGLISH = re.compile(r"^[a-zA-Z']+$")


def _ascii(ch: str) -> bool:
    return len(ch.encode()) == 1  # the official test: one UTF-8 byte


def split_to_mini_sentence(words: list, word_limit: int = SPLIT_SIZE) -> list[list]:
    """Consecutive pieces of `word_limit` items (the last one shorter)."""
    if word_limit <= 1:
        raise ValueError(f"split_size must be at least 2, not {word_limit}")
    if len(words) <= word_limit:
        return [words]
    return [words[i : i + word_limit] for i in range(0, len(words), word_limit)]


def split_words(text: str, jieba_tokenizer=None) -> list[str]:
    """Tokens of `text` as the official `split_words` makes them (see the module docstring)."""
    if jieba_tokenizer is None:
        words = []
        for seg in text.split():
            current = ""
            for c in seg:
                if _ascii(c):
                    current += c
                else:
                    if current:
                        words.append(current)
                        current = ""
                    words.append(c)
            if current:
                words.append(current)
        return words
    # groups of consecutive English / non-English pieces; non-English groups go to jieba
    groups: list[tuple[bool, list[str]]] = []
    for token in text.split():
        english = bool(_ENGLISH.search(token))
        if groups and groups[-1][0] == english:
            groups[-1][1].append(token)
        else:
            groups.append((english, [token]))
    result: list[str] = []
    for english, tokens in groups:
        if english:
            result.extend(tokens)
        else:  # join_chinese_and_english: no English token here, so a plain join
            result.extend(jieba_tokenizer.cut("".join(tokens).strip(), HMM=False))
    return result


def _words_with_punc(words: list[str], puncs: list[int], punc_list: list[str]) -> str:
    """One emitted mini-sentence as text (capitals, spaces, ASCII marks after ASCII tokens)."""
    words = list(words)
    out = []
    for i in range(len(words)):
        if (i == 0 or punc_list[puncs[i - 1]] in ("。", "？")) and _ascii(words[i][0]):
            words[i] = words[i].capitalize()
        if i == 0:
            if _ascii(words[i][0]):
                words[i] = " " + words[i]
        elif _ascii(words[i][0]) and _ascii(words[i - 1][0]):
            words[i] = " " + words[i]
        out.append(words[i])
        mark = punc_list[puncs[i]]
        if mark != "_":
            if _ascii(words[i][0]):
                mark = {"，": ",", "。": ".", "？": "?"}.get(mark, mark)
            out.append(mark)
    return "".join(out)


class _Run:
    """One text going through the official mini-sentence loop, one `feed` per model call."""

    def __init__(self, words: list[str], ids: list[int], split_size: int):
        self.words = split_to_mini_sentence(words, split_size)
        self.ids = split_to_mini_sentence(ids, split_size)
        self.step = 0
        self.cache_words: list[str] = []
        self.cache_ids: list[int] = []
        self.text = ""
        self.punc: list[int] = []

    @property
    def done(self) -> bool:
        return self.step >= len(self.words)

    def next_ids(self) -> list[int]:
        return self.cache_ids + self.ids[self.step]

    def feed(self, preds: list[int], punc_list: list[str], sentence_end_id: int) -> None:
        words = self.cache_words + self.words[self.step]
        ids = self.cache_ids + self.ids[self.step]
        if len(preds) != len(words):
            raise RuntimeError(f"{len(preds)} predictions for {len(words)} tokens")
        preds = list(preds)
        last = self.step == len(self.words) - 1
        if not last:
            end, comma = -1, -1
            for i in range(len(preds) - 2, 1, -1):
                mark = punc_list[preds[i]]
                if mark in ("。", "？"):
                    end = i
                    break
                if comma < 0 and mark == "，":
                    comma = i
            if end < 0 and len(words) > CACHE_POP_TRIGGER_LIMIT and comma >= 0:
                end = comma  # too long: cut at the comma, which becomes the sentence end
                preds[end] = sentence_end_id
            self.cache_words, self.cache_ids = words[end + 1 :], ids[end + 1 :]
            words, preds = words[: end + 1], preds[: end + 1]
        self.text += _words_with_punc(words, preds, punc_list)
        if last:  # the final mark; in each case the last id becomes the sentence end
            t, end_id = self.text, True
            if t[-1] in ("，", "、"):
                t = t[:-1] + "。"
            elif t[-1] == ",":
                t = t[:-1] + "."
            elif t[-1] not in ("。", "？") and not _ascii(t[-1]):
                t = t + "。"
            elif t[-1] not in (".", "?") and _ascii(t[-1]):
                t = t + "."
            else:
                end_id = False
            if end_id:
                preds[-1] = sentence_end_id
            self.text = t
        self.punc += preds
        self.step += 1


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
        runs: list[_Run | None] = []
        tokens: list[list[str]] = []
        for text in texts:
            if not text or not text.strip():
                runs.append(None)
                tokens.append([])
                continue
            words, ids = self.tokenize(text)
            runs.append(_Run(words, ids, split_size))
            tokens.append(words)
        # texts with more mini-sentences start first so the batch stays full at the end
        pending = deque(sorted((i for i, r in enumerate(runs) if r is not None),
                               key=lambda i: -len(runs[i].words)))
        active: list[int] = []
        while pending or active:
            while pending and len(active) < batch_size:
                active.append(pending.popleft())
            for group in _length_groups(active, [len(runs[i].next_ids()) for i in active]):
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
                punc = _expand_word_ids(words, punc)
            results.append((run.text, [int(p) for p in punc]))
        return results


def _length_groups(rows: list[int], lengths: list[int]) -> list[list[int]]:
    """Rows split into model calls whose longest row is at most twice the shortest, so that a
    text carrying a long unfinished sentence does not pad every other row to its length."""
    order = sorted(range(len(rows)), key=lambda k: lengths[k])
    groups: list[list[int]] = []
    shortest = 0
    for k in order:
        if not groups or lengths[k] > 2 * shortest:
            groups.append([])
            shortest = lengths[k]
        groups[-1].append(rows[k])
    return groups


def _expand_word_ids(words: list[str], punc: list[int]) -> list[int]:
    """One id per character of multi-character words in U+0E00..U+9FA5 (the official range)."""
    out = list(punc)
    n = len(words)
    for i, word in enumerate(reversed(words)):
        if "\u0e00" <= word[0] <= "\u9fa5" and len(word) > 1:
            for _ in range(len(word) - 1):
                out.insert(n - i - 1, 1)
    return out


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


def build(folder: Path | None, config: dict, tokens: list[str] | None, dummy: bool,
          name: str, dtype) -> Punctuator:
    """checkpoints.FAMILIES builder for `model: CTTransformer` (see checkpoints.load_model)."""
    from batchasr.models.loader import apply_weights, random_weights, read_weights

    if tokens is None:
        raise CheckpointError(f"{folder or name}: a punctuation model needs its tokens.json")
    try:
        args = ModelArgs.from_config(config, vocab_size=len(tokens))
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{folder or name}: unsupported CTTransformer config: {e}") from e
    model = Model(args)
    if dummy:
        random_weights(model)
    else:
        apply_weights(model, model.sanitize(read_weights(folder)), what=str(folder))
    if dtype != mx.float32:
        model.set_dtype(dtype)
    model.eval()
    user_dict = jieba_user_dict(folder)
    unk = (config.get("tokenizer_conf") or {}).get("unk_symbol", "<unk>")
    return Punctuator(model, tokens, unk_symbol=unk, name=name, dtype=dtype,
                      jieba_tokenizer=make_jieba(user_dict) if user_dict else None)


def load_punctuator(path_or_name, *, dtype=mx.float32, weights: str = "checkpoint",
                    download: bool = False) -> Punctuator:
    """Load a CT-Transformer punctuation model.

    Args:
        path_or_name: an official model folder (config.yaml, model.pt, tokens.json and, for the
            ModelScope large model, jieba_usr_dict), or a known name (`ct-punc`, `ct-punc-c`)
            found in the local Hugging Face / ModelScope cache.
        dtype: precision of the network weights (float32 is exact to the official outputs).
        weights: "checkpoint", or "dummy" for random weights of the folder's architecture.
        download: allow fetching a known name from the Hugging Face hub.
    Raises:
        CheckpointError: missing files, a folder of another model type, weights that do not fit,
            jieba missing where the folder needs it.
    """
    from batchasr.models.loader import KNOWN_MODELS, load_model, read_config, resolve

    folder = resolve(path_or_name, download=download)
    family = read_config(folder).get("model")
    if family != "CTTransformer":
        raise CheckpointError(f"{folder}: not a punctuation model (config.yaml model: "
                              f"{family!r}, expected 'CTTransformer')")
    punctuator = load_model(folder, weights=weights, dtype=dtype)
    if str(path_or_name) in KNOWN_MODELS:
        punctuator.name = str(path_or_name)
    return punctuator
