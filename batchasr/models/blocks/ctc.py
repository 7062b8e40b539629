"""CTC: the head, torchaudio's forced alignment, and the tiktoken tokenizer of the CTC vocabulary.

What Fun-ASR-Nano's timestamps need (funasr 1.4.16 `FunASRNano.inference_llm` with a CTC
decoder): the LLM text is tokenized with the CTC tokenizer (SenseVoiceTokenizer, a tiktoken
byte-level BPE) and force-aligned to the CTC log-probabilities
(`torchaudio.functional.forced_align`); each CTC frame is `CTC_FRAME_MS`.
"""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from batchasr.models.blocks import host_softmax


class CTC(nn.Module):
    def __init__(self, odim: int, encoder_output_size: int):
        super().__init__()
        self.ctc_lo = nn.Linear(encoder_output_size, odim)

    def log_softmax(self, x: mx.array) -> mx.array:
        logits = self.ctc_lo(x)
        return host_softmax.log_softmax(logits)


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
