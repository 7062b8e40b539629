"""SenseVoice-Small reference fixture (`make_reference_fixtures.py sensevoice`).

A tiny random SenseVoiceSmall built with funasr's own class in the official folder layout
(config.yaml `model: SenseVoiceSmall`, configuration.json, model.pt, am.mvn and a tiny
sentencepiece BPE model under the official file name, trained here with the SenseVoice tags as
user-defined symbols, byte fallback, no dummy prefix and a small custom normalization rule
set), and what the official `AutoModel.generate` prints for it: language auto and given,
use_itn off and on, output_timestamp, batch_size 1 and 3. Also sentencepiece's own decode and
encode of chosen inputs (CI has no sentencepiece) and a few official intermediate tensors.
Writes tests/fixtures/sense_voice/.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "sense_voice"
AUDIO = ROOT / "tests" / "fixtures" / "paraformer" / "audio"
BPE_MODEL = "chn_jpn_yue_eng_ko_spectok.bpe.model"
CLIPS = ["utt_2s", "utt_4s", "utt_7s", "utt_short", "utt_tiny", "utt_silence"]
TENSOR_CLIPS = ["utt_2s", "utt_short"]

TAGS = ["<|zh|>", "<|en|>", "<|yue|>", "<|ja|>", "<|ko|>", "<|nospeech|>", "<|HAPPY|>",
        "<|SAD|>", "<|ANGRY|>", "<|NEUTRAL|>", "<|FEARFUL|>", "<|DISGUSTED|>", "<|SURPRISED|>",
        "<|EMO_UNKNOWN|>", "<|BGM|>", "<|Speech|>", "<|Applause|>", "<|Laughter|>", "<|Cry|>",
        "<|Sneeze|>", "<|Breath|>", "<|Cough|>", "<|Event_UNK|>", "<|withitn|>", "<|woitn|>"]
CORPUS_WORDS = ("the of and to in is that it was for on are with as be at this have from or one "
                "hello world speech model sound music happy voice time good".split())
CJK = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能"
# full-width letters and digits folded to ASCII, the ideographic space to a space: a small
# precompiled charsmap, so the Darts-trie normalizer is exercised (nmt_nfkc's is ~240 KB)
RULES = ([(0xFF21 + i, 0x41 + i) for i in range(26)] + [(0xFF10 + i, 0x30 + i) for i in range(10)]
         + [(0x3000, 0x20), (0x2460, 0x31)])

SP_DECODE_CASES = "decode"
SP_TEXTS = ["hello world", "  hello   world  ", "<|zh|><|NEUTRAL|><|Speech|><|woitn|>hello",
            "ＨＥＬＬＯ　１２", "中国人的时间", "xyz😊q", "the<|en|>of", "▁hello", "▁", "",
            "é ü ß", "a\tb", "①②"]


def sense_voice_config(*, d=24, heads=4, units=48, blocks=2, tp_blocks=1):
    return {
        "encoder": "SenseVoiceEncoderSmall",
        "encoder_conf": {"output_size": d, "attention_heads": heads, "linear_units": units,
                         "num_blocks": blocks, "tp_blocks": tp_blocks, "dropout_rate": 0.1,
                         "positional_dropout_rate": 0.1, "attention_dropout_rate": 0.1,
                         "input_layer": "pe", "pos_enc_class": "SinusoidalPositionEncoder",
                         "normalize_before": True, "kernel_size": 11, "sanm_shfit": 0,
                         "selfattention_layer_type": "sanm"},
        "model": "SenseVoiceSmall",
        "model_conf": {"length_normalized_loss": True, "sos": 1, "eos": 2, "ignore_id": -1},
        "tokenizer": "SentencepiecesTokenizer",
        "tokenizer_conf": {"bpemodel": None, "unk_symbol": "<unk>", "split_with_space": True},
        "frontend": "WavFrontend",
        "frontend_conf": {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25,
                          "frame_shift": 10, "lfr_m": 7, "lfr_n": 6, "cmvn_file": None,
                          "dither": 0.0},
    }


def train_bpe(model_dir: Path, work: Path):
    import sentencepiece as spm

    rng = np.random.default_rng(0)
    lines = []
    for _ in range(400):
        words = list(rng.choice(CORPUS_WORDS, rng.integers(3, 9)))
        zh = "".join(rng.choice(list(CJK), rng.integers(2, 8)))
        lines.append(" ".join(words) + " " + zh)
    (work / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (work / "rules.tsv").write_text("".join(f"{a:X}\t{b:X}\n" for a, b in RULES),
                                    encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(work / "corpus.txt"), model_prefix=str(work / "bpe"), model_type="bpe",
        vocab_size=380, user_defined_symbols=TAGS, byte_fallback=True, add_dummy_prefix=False,
        normalization_rule_tsv=str(work / "rules.tsv"), character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    shutil.copy(work / "bpe.model", model_dir / BPE_MODEL)
    return spm.SentencePieceProcessor(model_file=str(model_dir / BPE_MODEL))


def sp_cases(sp):
    rng = np.random.default_rng(5)
    n = sp.get_piece_size()
    byte_ids = [i for i in range(n) if sp.is_byte(i)]
    utf8 = lambda s: [byte_ids[0] + b for b in s.encode("utf-8")]  # noqa: E731
    decode_inputs = [list(rng.integers(0, n, 12)) for _ in range(20)]
    decode_inputs += [utf8("中"), utf8("中")[:2], utf8("é") + [sp.piece_to_id("▁the")],
                      [sp.piece_to_id("▁the"), sp.piece_to_id("▁of")], [0, 1, 2], [],
                      [sp.piece_to_id("<|zh|>"), sp.piece_to_id("▁hello")]]
    decode = [{"ids": [int(i) for i in ids], "text": sp.decode([int(i) for i in ids])}
              for ids in decode_inputs]
    encode = [{"text": t, "pieces": sp.encode_as_pieces(t), "ids": sp.encode_as_ids(t)}
              for t in SP_TEXTS + [sp.decode(c["ids"]) for c in decode[:10]]]
    return {"vocab_size": n, "decode": decode, "encode": encode}


def build_dir(model_dir: Path, *, seed: int):
    import torch
    import yaml
    from funasr import AutoModel

    import make_reference_fixtures as mrf

    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    work = model_dir.parent / "_work"
    work.mkdir(exist_ok=True)
    sp = train_bpe(model_dir, work)
    shutil.rmtree(work)
    config = sense_voice_config()
    with open(model_dir / "config.yaml", "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f, sort_keys=False, allow_unicode=True)
    (model_dir / "configuration.json").write_text(json.dumps(
        {"framework": "pytorch", "task": "auto-speech-recognition", "model": {"type": "funasr"},
         "file_path_metas": {"init_param": "model.pt", "config": "config.yaml",
                             "tokenizer_conf": {"bpemodel": BPE_MODEL},
                             "frontend_conf": {"cmvn_file": "am.mvn"}}}, indent=1),
        encoding="utf-8")
    fc = config["frontend_conf"]
    mrf.write_cmvn(model_dir / "am.mvn", fc["n_mels"] * fc["lfr_m"], seed)
    kw = json.loads(json.dumps(config))
    kw["tokenizer_conf"]["bpemodel"] = str(model_dir / BPE_MODEL)
    kw["frontend_conf"]["cmvn_file"] = str(model_dir / "am.mvn")
    kw.update(device="cpu", seed=seed, disable_update=True)
    torch.manual_seed(seed)
    model, _ = AutoModel.build_model(**kw)
    g = torch.Generator().manual_seed(seed + 1)
    n = sp.get_piece_size()
    tag_ids = [sp.piece_to_id(t) for t in TAGS]
    with torch.no_grad():
        # Random logits are nearly flat; a sharper head with a blank bias gives runs of blanks,
        # repeated frames and several tokens per clip; the tags get a bias of their own so
        # they occur (at the query frames and inside the text, which exercises the
        # multi-language joining of rich_transcription_postprocess).
        w = model.ctc.ctc_lo.weight
        w.copy_(torch.randn(w.shape, generator=g) * 1.2)
        b = model.ctc.ctc_lo.bias
        b.copy_(torch.randn(b.shape, generator=g) * 0.5)
        b[0] += 5.0
        b[tag_ids] += 1.0
        b[[i for i in range(n) if sp.is_byte(i)]] -= 6.0  # byte pieces: now and then
        emb = model.embed.weight
        emb.copy_(torch.randn(emb.shape, generator=g) * 3.0)
    assert model.ctc.ctc_lo.weight.shape[0] == n
    torch.save(model.state_dict(), model_dir / "model.pt")
    return sp


OPTIONS = {  # name -> generate() options beyond input/batch_size
    "auto": {"language": "auto", "use_itn": False},
    "en_itn": {"language": "en", "use_itn": True},
    "zh": {"language": "zh", "use_itn": False},
    "ts_auto": {"language": "auto", "use_itn": False, "output_timestamp": True},
    "ts_ja_itn": {"language": "ja", "use_itn": True, "output_timestamp": True},
}


def run_official(model_dir: Path, clips: dict):
    import torch
    from funasr import AutoModel
    from funasr.utils.load_utils import extract_fbank, load_audio_text_image_video
    from funasr.utils.postprocess_utils import rich_transcription_postprocess

    am = AutoModel(model=str(model_dir), device="cpu", disable_update=True, ncpu=2,
                   disable_pbar=True)
    model, frontend = am.model, am.kwargs["frontend"]
    model.eval()
    assert frontend.dither == 0.0
    expected = {"funasr": "1.4.16", "torch": torch.__version__, "clips": {
        n: os.path.relpath(p, model_dir) for n, p in clips.items()}, "runs": {}}
    row = lambda clip, r: {"clip": clip, "raw_text": r["text"],  # noqa: E731
                           "text": rich_transcription_postprocess(r["text"]),
                           **({"timestamp": r["timestamp"], "words": r["words"]}
                              if "timestamp" in r else {})}
    # the decoded CTC ids of every result, as inference hands them to tokenizer.decode
    # (on the class: generate() runs with a copy of the tokenizer made when AutoModel starts)
    tokenizer, decoded = type(am.kwargs["tokenizer"]), []
    sp_decode = tokenizer.decode
    tokenizer.decode = lambda self, ids, **kw: (  # noqa: E731
        decoded.append([int(i) for i in ids]), sp_decode(self, ids, **kw))[1]
    for name, opts in OPTIONS.items():
        # the official timestamps raise an IndexError when the re-encoded pieces give more
        # ids than pieces (byte pieces re-encoded as text): such clips are recorded alone
        ok, rows = [], []
        for clip, path in clips.items():
            decoded.clear()
            try:
                rows.append(row(clip, am.generate(input=str(path), **opts)[0]))
                ok.append(clip)
            except IndexError as e:
                rows.append({"clip": clip, "error": f"IndexError: {e}"})
            assert len(decoded) == 1
            rows[-1]["token_ids"] = decoded[0]
        expected["runs"][f"{name}_bs1"] = {"options": opts, "batch_size": 1, "results": rows}
        decoded.clear()
        res = am.generate(input=[str(clips[c]) for c in ok], batch_size=3, **opts)
        assert len(decoded) == len(res) == len(ok)
        expected["runs"][f"{name}_bs3"] = {"options": opts, "batch_size": 3, "results": [
            {**row(c, r), "token_ids": ids} for c, r, ids in zip(ok, res, decoded)]}
        print(f"  {name}: {len(ok)} ok, {[r.get('raw_text', '')[:60] for r in rows[:3]]}",
              flush=True)
    tokenizer.decode = sp_decode
    # token ids and intermediate tensors of the one-clip inference (language auto, woitn)
    tdir = model_dir / "tensors"
    tdir.mkdir(exist_ok=True)
    ids = {}
    for clip, path in clips.items():
        with torch.no_grad():
            wav = load_audio_text_image_video(str(path), fs=frontend.fs)
            feats, lens = extract_fbank([wav], data_type="sound", frontend=frontend)
            q = model.embed(torch.LongTensor([[0, 1, 2, 15]]))
            x = torch.cat([q, feats], 1)
            enc, olens = model.encoder(x, lens + 4)
            logp = model.ctc.log_softmax(enc)[0, : olens[0]]
            y = torch.unique_consecutive(logp.argmax(-1))
            ids[clip] = [int(i) for i in y[y != 0]]
        if clip in TENSOR_CLIPS:
            np.savez_compressed(tdir / f"{clip}.npz", features=feats[0].numpy(),
                                encoder_out=enc[0].numpy(), ctc_logp=logp.numpy())
    expected["token_ids_auto_woitn"] = ids
    with open(model_dir / "expected.json", "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)


def make_sense_voice():
    print("sense_voice/tiny", flush=True)
    mdir = OUT / "tiny"
    sp = build_dir(mdir, seed=3)
    (OUT / "sentencepiece.json").write_text(json.dumps(sp_cases(sp), ensure_ascii=False,
                                                       indent=0), encoding="utf-8")
    run_official(mdir, {n: AUDIO / f"{n}.wav" for n in CLIPS})
