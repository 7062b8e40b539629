"""benchmarks/baseline_funasr.py's full-size SenseVoice tokenizer: `fill_pieces` grows a
sentencepiece model to the published vocabulary size through the protobuf wire format by hand
(the benchmark's baseline environment may lack protobuf); batchasr's own sentencepiece reader
must read the grown model with the original pieces, normalizer and encoding unchanged.
"""
from pathlib import Path

from batchasr.models.blocks import sentencepiece as spm
from batchasr.models.blocks.sentencepiece import SentencePieceBPE
from benchmarks.baseline_funasr import SENSEVOICE_VOCAB, fill_pieces

TINY = Path(__file__).parent / "fixtures" / "sense_voice" / "tiny"
BPE = TINY / "chn_jpn_yue_eng_ko_spectok.bpe.model"


def test_fill_pieces_grows_to_size_and_keeps_the_model():
    original = BPE.read_bytes()
    before = SentencePieceBPE(original)
    grown = SentencePieceBPE(fill_pieces(original, SENSEVOICE_VOCAB))
    n = len(before)
    assert len(grown) == SENSEVOICE_VOCAB > n
    assert grown.pieces[:n] == before.pieces
    assert grown.scores[:n] == before.scores
    assert grown.types[:n] == before.types
    added = grown.pieces[n:]
    assert len(set(added)) == len(added) and not set(added) & set(before.pieces)
    assert all(len(p) == 1 and 0x4E00 <= ord(p) for p in added)
    assert all(t == spm.NORMAL for t in grown.types[n:])
    assert max(grown.scores[n:]) < min(before.scores)
    assert grown.scores[n:] == sorted(grown.scores[n:], reverse=True)
    for text in ["hello world", "ＨＥＬＬＯ　１２", "<|zh|><|NEUTRAL|>the of"]:
        assert grown.encode_ids(text) == before.encode_ids(text)
    new_id = n + 5
    assert grown.decode([new_id]) == grown.pieces[new_id]
    assert grown.piece_to_id(grown.pieces[new_id]) == new_id


def test_fill_pieces_to_its_own_size_is_the_same_model():
    original = BPE.read_bytes()
    n = len(SentencePieceBPE(original))
    assert fill_pieces(original, n) == original
