"""Byte-level BPE helpers of Qwen3's tokenizer (`tokenizers` library): the byte alphabet, the
added special tokens, and a synthetic tokenizer of Qwen3's size for dummy models."""
from __future__ import annotations


def byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode (the ByteLevel alphabet of Qwen's tokenizer)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


QWEN3_ADDED_TOKENS = [  # (content, special) from id 151643 on, as in Qwen3's tokenizer.json
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False),
    ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False),
    ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False),
]


def synthetic_qwen_tokenizer(n_regular: int = 151643):
    """A byte-level tokenizer with Qwen3's size and special-token ids but no merges (dummy
    weights only: it tokenizes prompts byte by byte and decodes any id)."""
    from itertools import product

    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = list(byte_decoder())
    vocab = {c: i for i, c in enumerate(alphabet)}
    for combo in product(alphabet, repeat=2):
        if len(vocab) >= n_regular:
            break
        vocab.setdefault("".join(combo), len(vocab))
    for combo in product(alphabet, repeat=3):
        if len(vocab) >= n_regular:
            break
        vocab.setdefault("".join(combo), len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    for content, special in QWEN3_ADDED_TOKENS:
        tok.add_tokens([AddedToken(content, special=special, normalized=False)])
    return tok
