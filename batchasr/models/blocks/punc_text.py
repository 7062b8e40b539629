"""The text side of CT-Transformer punctuation (`ct-punc`, `ct-punc-c`), exact to funasr 1.4.16.

Port of `funasr.models.ct_transformer.model` / `.utils` (`CTTransformer.inference`,
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
"""
from __future__ import annotations

import re

SPLIT_SIZE = 20  # tokens per mini-sentence (CTTransformer.inference's split_size default)
CACHE_POP_TRIGGER_LIMIT = 200  # a carried text longer than this is cut at its last comma

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


class MiniSentenceRun:
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


def length_groups(rows: list[int], lengths: list[int]) -> list[list[int]]:
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


def expand_word_ids(words: list[str], punc: list[int]) -> list[int]:
    """One id per character of multi-character words in U+0E00..U+9FA5 (the official range)."""
    out = list(punc)
    n = len(words)
    for i, word in enumerate(reversed(words)):
        if "\u0e00" <= word[0] <= "\u9fa5" and len(word) > 1:
            for _ in range(len(word) - 1):
                out.insert(n - i - 1, 1)
    return out
