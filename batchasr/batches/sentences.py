"""Sentence-level segments of a long recording, as FunASR's AutoModel builds ``sentence_info``.

Ports, quirks included, of funasr 1.4.16:

* :func:`join_vad_texts` (``auto_model._join_vad_texts``): the text of consecutive VAD
  segments joined for the punctuation model, without a space between two CJK characters;
* :func:`timestamp_sentence` (``utils/timestamp_tools.timestamp_sentence``): sentences cut
  after every token whose punctuation id is > 1, each with the times of its first and last
  token. Its quirks: the mark is always a full-width one (``，。？、``, even after a Latin
  word), a Latin word gets a space in front (so a sentence can start with a space), tokens
  after the last mark are dropped, and the texts are paired with punc ids and timestamps by
  position (``zip_longest``), so the text must hold one whitespace-separated item per timestamp;
* :func:`vad_segment_sentences` (``auto_model._vad_segment_sentences``): one sentence per VAD
  segment with text, the fallback when punctuation ids and timestamps do not line up.

Where batchasr departs from AutoModel, on purpose: AutoModel passes ``join_vad_texts``' output
as the text of ``timestamp_sentence``; since that join glues the two CJK characters around each
segment boundary into one item, every sentence after the n-th boundary gets its text shifted n
tokens away from its times (one token per boundary, so by thousands of tokens on a long
recording). batchasr passes the words joined by single spaces instead, which is what AutoModel
itself passes for a recording of a single segment (``tests/test_longform.py`` shows both).
"""
from __future__ import annotations

import re
from itertools import zip_longest
from typing import Iterable, Sequence

PUNC_MARKS = ["，", "。", "？", "、"]  # timestamp_sentence's punc_list: ids 2, 3, 4, 5
_RICH_TAG = re.compile(r"<\|[^|]*\|>")


def _cjk(ch: str) -> bool:
    return "\u3400" <= ch <= "\u9fff"


def join_vad_texts(texts: Iterable[str]) -> str:
    """Segment texts joined with one space, or none between two CJK characters; rich tags
    (``<|...|>``) removed and empty texts skipped."""
    cleaned = [_RICH_TAG.sub("", t).strip() for t in texts]
    cleaned = [t for t in cleaned if t]
    if not cleaned:
        return ""
    joined = cleaned[0]
    for text in cleaned[1:]:
        joined += "" if _cjk(joined[-1]) and _cjk(text[0]) else " "
        joined += text
    return joined


def _latin(ch: str) -> bool:
    return "a" <= ch <= "z" or "A" <= ch <= "Z"


def timestamp_sentence(punc_ids: Sequence[int] | None, timestamps: Sequence | None,
                       text: str | None, return_raw_text: bool = False) -> list[dict]:
    """Sentences ``{"text", "start", "end", "timestamp"[, "raw_text"]}`` (times in ms) from
    one punctuation id per token (1 none, 2 comma, 3 full stop, 4 question, 5 enumeration
    comma), one ``[start_ms, end_ms]`` per token and the space-separated tokens."""
    res: list[dict] = []
    if text is None or timestamps is None or len(timestamps) == 0 or len(text) == 0:
        return res
    if punc_ids is None or len(punc_ids) == 0:
        return [{"text": text.split(), "start": timestamps[0][0], "end": timestamps[-1][1],
                 "timestamp": timestamps}]
    sentence_text = ""
    sentence_text_seg = ""
    ts_list: list = []
    sentence_start = timestamps[0][0]
    sentence_end = timestamps[0][1]
    for punc_id, timestamp, word in zip_longest(punc_ids, timestamps, text.split()):
        if sentence_start is None and timestamp is not None:
            sentence_start = timestamp[0]
        if word is not None:
            if _latin(word[0]):
                sentence_text += " " + word
            elif len(sentence_text) and _latin(sentence_text[-1]):
                sentence_text += " " + word
            else:
                sentence_text += word
            sentence_text_seg += word + " "
        ts_list.append(timestamp)
        punc_id = int(punc_id) if punc_id is not None else 1
        sentence_end = timestamp[1] if timestamp is not None else sentence_end
        if sentence_text_seg and sentence_text_seg[-1] == " ":
            sentence_text_seg = sentence_text_seg[:-1]
        if punc_id > 1:
            sentence_text += PUNC_MARKS[punc_id - 2]
            sentence = {"text": sentence_text, "start": sentence_start, "end": sentence_end,
                        "timestamp": ts_list}
            if return_raw_text:
                sentence["raw_text"] = sentence_text_seg
            res.append(sentence)
            sentence_text, sentence_text_seg, ts_list, sentence_start = "", "", [], None
    return res


def vad_segment_sentences(pieces: Sequence[tuple[str, Sequence, tuple[int, int]]]) -> list[dict]:
    """One sentence per VAD segment with text: ``pieces`` are ``(text, timestamps, (start_ms,
    end_ms))`` in file time; a sentence spans its first to last timestamp, or the segment
    when it has none."""
    out = []
    for text, timestamps, (seg_start, seg_end) in pieces:
        text = _RICH_TAG.sub("", str(text)).strip()
        if not text:
            continue
        ts = [[int(a), int(b)] for a, b in timestamps]
        out.append({"start": ts[0][0] if ts else seg_start, "end": ts[-1][1] if ts else seg_end,
                    "text": text, "sentence": text, "timestamp": ts})
    return out
