"""Putting a file back together from its transcribed pieces (and punctuating it).

:func:`assemble` puts each file's pieces back in order in file time (token times shifted by
each piece's start, as FunASR's ``inference_with_vad`` does) and, for a model whose text has
no punctuation (it declares ``punctuated = False``) and a punctuation model, restores
punctuation over the whole file (``punctuate_many``, batched across files) and builds
sentence segments (``batchasr.batches.sentences``).

Invariant: pure bookkeeping on transcripts; the punctuation model is handed in loaded.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import NamedTuple, Sequence

from batchasr.batches.plan import stitch
from batchasr.batches.sentences import join_vad_texts, timestamp_sentence, vad_segment_sentences
from batchasr.transcript import ASRModel, Segment, Transcript

logger = logging.getLogger("batchasr.pipeline")  # the name log lines show (stable)


def model_punctuates(model: ASRModel) -> bool:
    """Whether the model's text is already punctuated, as it declares (``punctuated``;
    a model that does not say is taken to punctuate, so nothing is added to its text)."""
    return bool(getattr(model, "punctuated", True))



class PieceResult(NamedTuple):
    """A piece's transcript (times relative to the piece) and where the piece lies in its file."""

    start_s: float
    end_s: float
    transcript: Transcript


def _words(model: ASRModel, t: Transcript) -> tuple[list[str], list[list[int]]]:
    """Words and their [start_ms, end_ms] as the model's official output groups them
    (Paraformer: ``word_timestamps``); else the timed tokens; else no times."""
    timed = bool(t.tokens) and all(k.start_ms is not None and k.end_ms is not None
                                   for k in t.tokens)
    if timed and hasattr(model, "word_timestamps"):
        words, times = model.word_timestamps(t)
        return list(words), [list(x) for x in times]
    if timed:
        return [k.text for k in t.tokens], [[k.start_ms, k.end_ms] for k in t.tokens]
    return t.text.split(), []


def assemble(model: ASRModel, items: Sequence[Sequence[PieceResult]],
             punctuator=None) -> list[Transcript]:
    """One transcript per item from its pieces (any order): stitched in file time (token and
    segment times shifted by each piece's start; texts joined without a space between CJK
    characters). When ``punctuator`` is given and the model's text has no punctuation, each
    item's text is punctuated as FunASR's ``inference_with_vad`` does it (``punctuate_many``
    over all items at once): the pieces' words joined by ``join_vad_texts``, ``text`` the
    punctuated result, ``raw_text`` the text before, and ``segments`` the sentences of
    ``timestamp_sentence`` from the punctuation ids and the word times (or, when those do not
    line up, one per piece, as the official fallback does)."""
    ordered = [sorted(pieces, key=lambda p: p.start_s) for pieces in items]
    stitched = [stitch([(p.start_s, p.transcript) for p in pieces]) for pieces in ordered]
    if punctuator is None or model_punctuates(model):
        return stitched
    inputs = []
    for pieces in ordered:
        texts, words, times, spans = [], [], [], []
        for p in pieces:
            w, t = _words(model, p.transcript)
            off = int(round(p.start_s * 1000))
            t = [[a + off, b + off] for a, b in t]
            texts.append(" ".join(w))
            words += w
            times += t
            spans.append((p.transcript.text, t, (off, int(round(p.end_s * 1000)))))
        inputs.append((join_vad_texts(texts), words, times, spans))
    punctuated = punctuator.punctuate_many([x[0] for x in inputs])
    out = []
    for tr, (_, words, times, spans), (text, punc_ids) in zip(stitched, inputs, punctuated):
        if len(punc_ids) == len(times):
            sentences = timestamp_sentence(punc_ids, times, " ".join(words))
        else:
            logger.info("punctuation ids (%d) and word times (%d) do not line up: one "
                        "sentence per segment", len(punc_ids), len(times))
            sentences = vad_segment_sentences(spans)
        segments = [Segment(x["start"] / 1000, x["end"] / 1000, x["text"].strip())
                    for x in sentences]
        out.append(replace(tr, text=text, raw_text=tr.text, segments=segments))
    return out
