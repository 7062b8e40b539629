"""Paraformer as a recognizer: waveforms -> features -> network -> tokens, text and times."""
from __future__ import annotations

import os
from typing import Sequence

import mlx.core as mx
import numpy as np

from batchasr.features import FrontendConfig, WavFrontend
from batchasr.models.paraformer import Model
from batchasr.text import sentence_postprocess
from batchasr.transcript import Segment, Token, Transcript


class ParaformerASR:
    """Implements the runner's ASRModel protocol for Paraformer checkpoints."""

    sample_rate = 16000
    # Batches are padded to a multiple of this many frames (~1 s) so that a long job sees few
    # distinct shapes (GPU kernels, cuBLAS/cuDNN plans and compiled graphs are per shape).
    # Padding is invisible to the results: every layer masks it.
    frame_bucket = int(os.environ.get("BATCHASR_FRAME_BUCKET", "16"))

    def __init__(self, model: Model, tokens: list[str], cmvn: np.ndarray | None,
                 name: str = "paraformer", dtype: mx.Dtype = mx.float32):
        self.model = model
        self.tokens = tokens
        self.name = name
        self.dtype = dtype
        self.frontend_conf = FrontendConfig.from_dict(model.args.frontend_conf)
        self.frontend = WavFrontend(self.frontend_conf, cmvn)
        # Compiled layers are ~15% faster on GPUs (measured on an H200), but a long benchmark run
        # with compiled layers crashed MLX 0.32.4's CUDA backend once (segfault in eval), so
        # they are opt-in until that is understood: BATCHASR_COMPILE=1.
        if os.environ.get("BATCHASR_COMPILE") == "1":
            model.compile()
        if len(tokens) != model.args.vocab_size:
            raise ValueError(f"tokens.json has {len(tokens)} entries, the model's output layer "
                             f"{model.args.vocab_size}")

    def features(self, waveforms: Sequence[np.ndarray]) -> tuple[mx.array, mx.array]:
        return self.frontend(waveforms)

    def transcribe(self, waveforms: Sequence[np.ndarray], *,
                   languages: Sequence[str | None] | None = None) -> list[Transcript]:
        """16 kHz mono float32 waveforms -> one Transcript each, in order. `languages` is
        accepted for the protocol; Paraformer checkpoints are single-language."""
        waveforms = [np.asarray(w, dtype=np.float32) for w in waveforms]
        results: list[Transcript | None] = [None] * len(waveforms)
        feats, lengths = self.features(waveforms)
        lens = np.array(lengths)
        live = [i for i in range(len(waveforms)) if lens[i] > 0]
        for i in range(len(waveforms)):
            if lens[i] == 0:  # shorter than one fbank window: nothing to recognise
                results[i] = Transcript(text="")
        if live:
            if len(live) < len(waveforms):
                idx = mx.array(np.array(live, dtype=np.int32))
                feats, lengths = feats[idx][:, : int(lens[live].max())], lengths[idx]
            T = feats.shape[1]
            pad = -T % self.frame_bucket
            if pad:
                feats = mx.pad(feats, [(0, 0), (0, pad), (0, 0)])
            out = self.model.decode(feats.astype(self.dtype), lengths)
            for row, i in enumerate(live):
                results[i] = self.to_transcript(out.token_ids[row], out.token_times_ms[row])
        return results

    def to_transcript(self, ids: list[int], times: list[list[int]]) -> Transcript:
        pieces = [self.tokens[i] for i in ids]
        text, _, _ = sentence_postprocess(pieces)
        tokens = [Token(text=p, id=i) for p, i in zip(pieces, ids)]
        for tok, (start, end) in zip(tokens, times):
            tok.start_ms, tok.end_ms = start, end
        segments = []
        timed = [t for t in tokens if t.start_ms is not None]
        if text and timed:
            segments.append(Segment(max(0, timed[0].start_ms) / 1000.0,
                                    timed[-1].end_ms / 1000.0, text))
        return Transcript(text=text, tokens=tokens, segments=segments)

    def word_timestamps(self, transcript: Transcript) -> tuple[list[str], list[list[int]]]:
        """Words and their [start_ms, end_ms] as the official `timestamp` output groups them."""
        pieces = [t.text for t in transcript.tokens]
        times = [[t.start_ms, t.end_ms] for t in transcript.tokens if t.start_ms is not None]
        _, words, word_times = sentence_postprocess(pieces, times)
        return words, word_times
