"""CT-Transformer punctuation model (FunASR `CTTransformer`, aliases ct-punc / ct-punc-c) in MLX.

Port of funasr 1.4.16 `funasr/models/ct_transformer/model.py` (`punc_forward`): token
embedding -> SAN-M encoder (the shared one of models/sanm.py: x * sqrt(D), sinusoidal
positions from 1, encoders0 whose input width equals the model width so it keeps its
attention residual, encoders, after_norm) -> linear `decoder` to the punctuation classes.
Module attributes follow the official state-dict keys (`embed.weight`, `encoder.encoders0.0...`,
`decoder.weight`), so `sanitize` has nothing to rename.

Text splitting, mini-sentences and text assembly live in batchasr/punctuation.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from batchasr.models.blocks.sanm import SANMEncoder, SANMEncoderArgs


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
    def from_config(cls, config: dict, vocab_size: int) -> "ModelArgs":
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

    def sanitize(self, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The official state dict maps one to one (SinusoidalPositionEncoder has no tensors)."""
        return dict(weights)
