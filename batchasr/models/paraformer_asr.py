"""Paraformer as a recognizer: waveforms -> features -> network -> tokens, text and times."""
from __future__ import annotations

import os
from typing import Sequence

import mlx.core as mx
import numpy as np

from batchasr.models.blocks.frontend import FrontendConfig, WavFrontend
from batchasr.models.paraformer import DecodeRun, Model
from batchasr.models.blocks.text import sentence_postprocess
from batchasr.transcript import Segment, Token, Transcript


class ParaformerASR:
    """Implements the runner's ASRModel protocol for Paraformer checkpoints."""

    sample_rate = 16000
    punctuated = False  # Paraformer writes bare tokens: the runner may add a punctuation model
    max_segment_s = 30.0  # the longest piece it is given (its windows and batches)
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
        return self.submit(waveforms, languages=languages).result()

    def submit(self, waveforms: Sequence[np.ndarray], *,
               languages: Sequence[str | None] | None = None) -> "PendingBatch":
        """Start a batch: its features, encoder and predictor are queued on the device and
        this returns at once. `result()` gives what `transcribe` gives. The runner submits
        batch k+1 before it takes batch k's result, so that the host work of one batch
        (CIF, timestamps, text) overlaps the device work of the next."""
        waveforms = [np.asarray(w, dtype=np.float32) for w in waveforms]
        return PendingBatch(self, waveforms)

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


class PendingBatch:
    """A Paraformer batch on its way through the device (see ParaformerASR.submit)."""

    def __init__(self, asr: ParaformerASR, waveforms: list[np.ndarray]):
        self.asr = asr
        self.n = len(waveforms)
        self.results: list[Transcript | None] = [None] * self.n
        feats, lengths = asr.features(waveforms)
        lens = np.array(lengths)
        self.live = [i for i in range(self.n) if lens[i] > 0]
        for i in range(self.n):
            if lens[i] == 0:  # shorter than one fbank window: nothing to recognise
                self.results[i] = Transcript(text="")
        self.run = None
        if self.live:
            if len(self.live) < self.n:
                idx = mx.array(np.array(self.live, dtype=np.int32))
                feats, lengths = feats[idx][:, : int(lens[self.live].max())], lengths[idx]
            pad = -feats.shape[1] % asr.frame_bucket
            if pad:
                feats = mx.pad(feats, [(0, 0), (0, pad), (0, 0)])
            self.run = DecodeRun(asr.model, feats.astype(asr.dtype), lengths)

    def advance(self) -> None:
        """Wait for the encoder, fire CIF and queue the decoder (result() does it too)."""
        if self.run is not None:
            self.run.launch_decoder()

    def result(self) -> list[Transcript]:
        if self.run is not None:
            out = self.run.finish()
            self.run = None
            for row, i in enumerate(self.live):
                self.results[i] = self.asr.to_transcript(out.token_ids[row],
                                                         out.token_times_ms[row])
        return self.results
