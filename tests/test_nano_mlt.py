"""Fun-ASR-MLT-Nano-2512 parity with the official FunASR 1.4.16 on the committed fixture
(tools/make_reference_fixtures.py mlt-nano -> tests/fixtures/nano/mlt): a tiny random
checkpoint in the MLT layout (Nano's config with the CTC decoder declared, model.pt without CTC
tensors, so the official code disables timestamps) and the official outputs for several of the
31 language names and none.

Same prompt ids, generated ids and text as the official inference for every recorded language,
with one language per row inside one batch (batched == unbatched == official), the official
batched calls, the language names and codes (an unknown name is refused), the known name
`fun-asr-mlt-nano` from the local caches and for `--weights dummy`, `transcribe --json` with
--language and a `run` whose manifest has a language column.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from batchasr.models import fun_asr_nano as nano
from batchasr.models.blocks import generate as G
from batchasr.models.fun_asr_nano import (MLT_LANGUAGES, GuardOptions, is_mlt, prompt_language,
                                          speech_token_count)
from batchasr.models.loader import KNOWN_MODELS, load_model

ROOT = Path(__file__).resolve().parents[1]
MLT = ROOT / "tests" / "fixtures" / "nano" / "mlt"
NANO = ROOT / "tests" / "fixtures" / "nano" / "plain"
EXP = json.loads((MLT / "expected.json").read_text(encoding="utf-8"))
CAP = EXP["max_length"]
EOS = json.loads((MLT / "Qwen3-0.6B" / "config.json").read_text())["eos_token_id"]


def without_stop(ids):
    """The official generated ids without the stop token (what results hold as tokens)."""
    return [i for i in ids if i != EOS]


def audio(clip):
    return sf.read(MLT / EXP["clips"][clip]["audio"], dtype="float32")[0]


def exact(asr):
    asr.max_new_tokens, asr.guard = CAP, GuardOptions.off()
    return asr


@pytest.fixture(scope="module")
def asr():
    return exact(load_model(MLT))


def official_ids(asr, ids):
    return [i for i in ids if i not in asr.eos_ids]


def language_cases():
    """(label, clip, language) of every recorded call with a language and default options."""
    return [(label, rec["clip"], rec["options"]["language"])
            for label, rec in EXP["options"].items() if set(rec["options"]) == {"language"}]


def test_loaded_as_mlt(asr):
    assert asr.fixed_languages == MLT_LANGUAGES and len(MLT_LANGUAGES) == 31
    assert MLT_LANGUAGES == tuple(EXP["languages"])  # the list the fixture was recorded with
    # CTC declared in config.yaml, its tensors absent from model.pt: disabled, as officially
    assert asr.model.args.ctc_decoder == "Transformer" and not asr.model.has_ctc
    assert EXP["ctc"] is False
    assert load_model(NANO).fixed_languages is None  # Nano: any language text


def test_layer_outputs_within_tolerance(asr):
    for clip in ("utt_2s", "utt_7s", "utt_short"):
        ref = np.load(MLT / "tensors" / f"{clip}.npz")
        feats, lens = asr.features([audio(clip)])
        enc, adapted, olens, _ = asr.encode(feats, lens)
        n = speech_token_count(int(lens[0].item()))
        assert n == EXP["clips"][clip]["speech_tokens"]
        emb = asr.prompt_embeddings(adapted[0], n)
        logits, _ = G.prefill(asr.model.llm, [emb])
        for mine, key in ((enc[0], "encoder_out"), (adapted[0], "adaptor_out"),
                          (emb, "prompt_embeds"), (logits[0], "first_logits")):
            b = ref[key]
            assert float(np.abs(np.array(mine) - b).max() / np.abs(b).max()) < 1e-4, (clip, key)
        logits, _ = G.prefill(asr.model.llm, [mx.array(ref["prompt_embeds"])])
        np.testing.assert_allclose(np.array(logits[0]), ref["first_logits"], rtol=1e-5,
                                   atol=1e-4)


def test_prompt_ids_match_official(asr):
    before, after = asr.prompt_ids()
    for clip, rec in EXP["clips"].items():  # no language: 语音转写：
        assert before + [0] * rec["speech_tokens"] + after == rec["prompt_ids"], clip
    for label, rec in EXP["options"].items():
        opts = rec["options"]
        asr.hotwords, asr.itn = opts.get("hotwords", []), opts.get("itn", True)
        before, after = asr.prompt_ids(opts["language"])
        n = EXP["clips"][rec["clip"]]["speech_tokens"]
        assert before + [0] * n + after == rec["prompt_ids"], label
        assert f"语音转写成{opts['language']}" in asr.prompt_text(opts["language"])[0]
    asr.hotwords, asr.itn = [], True


@pytest.mark.parametrize("mode", ["continuous", "sequential"])
def test_mixed_languages_in_one_batch_match_official(asr, mode):
    """Every recorded (clip, language) call and every clip without a language, all rows in
    one transcribe call with one language each: each row gives the official one-clip output."""
    cases = [(clip, None, rec["generated_ids"], rec["text"]) for clip, rec in EXP["clips"].items()]
    cases += [(clip, lang, EXP["options"][label]["generated_ids"], EXP["options"][label]["text"])
              for label, clip, lang in language_cases()]
    asr.decode_mode = mode
    outs = asr.transcribe([audio(c) for c, *_ in cases], languages=[lang for _, lang, *_ in cases])
    asr.decode_mode = "continuous"
    for (clip, lang, ids, text), out in zip(cases, outs):
        assert [t.id for t in out.tokens] == official_ids(asr, ids), (clip, lang)
        assert out.text == text and out.language == lang, (clip, lang)
    # the languages really change the output (the test could fail): distinct texts per clip
    for clip in {c for _, c, _ in language_cases()}:
        texts = {EXP["options"][label]["text"] for label, c, _ in language_cases() if c == clip}
        assert len(texts) > 1, clip


def test_other_options_with_a_language(asr):
    for label, rec in EXP["options"].items():
        opts = rec["options"]
        if set(opts) == {"language"}:
            continue
        asr.hotwords, asr.itn = opts.get("hotwords", []), opts.get("itn", True)
        out = asr.transcribe([audio(rec["clip"])], languages=[opts["language"]])[0]
        assert [t.id for t in out.tokens] == official_ids(asr, rec["generated_ids"]), label
        assert out.text == rec["text"], label
    asr.hotwords, asr.itn = [], True


def test_official_batched_calls(asr):
    for key in ("batched", "batched_language"):
        rec = EXP[key]
        lang = rec.get("language")
        wavs = [audio(c) for c in rec["clips"]]
        asr.max_batch, asr.encode_batch = 2, 3  # batches split differently from the official
        many = asr.transcribe(wavs, languages=[lang] * len(wavs))
        asr.max_batch, asr.encode_batch = 64, 64
        one = [asr.transcribe([w], languages=[lang])[0] for w in wavs]
        for row, text, m, o in zip(rec["generated_ids"], rec["texts"], many, one):
            assert [t.id for t in m.tokens] == [t.id for t in o.tokens] == official_ids(asr, row)
            assert m.text == o.text == text
    # a code gives its name's prompt: ko -> 韩文
    rec = EXP["batched_language"]
    out = asr.transcribe([audio(rec["clips"][0])], languages=["KO"])[0]
    assert [t.id for t in out.tokens] == official_ids(asr, rec["generated_ids"][0])


def test_language_names_codes_and_errors(asr):
    for name in MLT_LANGUAGES:
        assert prompt_language(name, MLT_LANGUAGES) == name
    assert [prompt_language(c, MLT_LANGUAGES) for c in ("zh", "EN", "yue", "th", "fil", "tl")] \
        == ["中文", "英文", "粤语", "泰语", "菲律宾语", "菲律宾语"]
    assert all(prompt_language(v, MLT_LANGUAGES) is None for v in (None, "", "auto", "AUTO"))
    for bad in ("Klingon", "German", "中文 ", "russian"):
        with pytest.raises(ValueError, match="unknown language"):
            prompt_language(bad, MLT_LANGUAGES)
        assert prompt_language(bad) == bad  # Nano: verbatim, as the official get_prompt
    with pytest.raises(ValueError, match="unknown language 'Klingon'"):
        asr.transcribe([audio("utt_2s"), audio("utt_4s")], languages=["zh", "Klingon"])
    assert asr.prompt_text("sv") == asr.prompt_text("瑞典语")
    assert asr.prompt_text(None)[0].endswith("语音转写：")


def test_known_name_from_the_caches(monkeypatch, tmp_path):
    assert KNOWN_MODELS["fun-asr-mlt-nano"] == ("FunAudioLLM/Fun-ASR-MLT-Nano-2512",) * 2
    # a Hugging Face cache snapshot (its folder is a commit hash): MLT told by the repo name
    snap = tmp_path / "hf" / "models--FunAudioLLM--Fun-ASR-MLT-Nano-2512" / "snapshots" / "abc1"
    shutil.copytree(MLT, snap)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    m = exact(load_model("fun-asr-mlt-nano"))
    assert m.name == "fun-asr-mlt-nano" and m.fixed_languages == MLT_LANGUAGES
    assert is_mlt(snap)
    out = m.transcribe([audio("utt_7s")], languages=["中文"])[0]
    assert [t.id for t in out.tokens] == official_ids(m, EXP["options"]["中文/utt_7s"]
                                                      ["generated_ids"])
    # a ModelScope cache folder, loaded by path: told by its folder name
    shutil.rmtree(tmp_path / "hf")
    ms = tmp_path / "ms" / "hub" / "models" / "FunAudioLLM" / "Fun-ASR-MLT-Nano-2512"
    shutil.copytree(MLT, ms)
    assert load_model("fun-asr-mlt-nano").fixed_languages == MLT_LANGUAGES
    assert is_mlt(ms) and not is_mlt(NANO) and not is_mlt(tmp_path / "multi")


def test_dummy_builder(monkeypatch):
    small = {**nano.FUN_ASR_NANO_CONFIG,
             "audio_encoder_conf": {**nano.FUN_ASR_NANO_CONFIG["audio_encoder_conf"],
                                    "output_size": 16, "linear_units": 32, "num_blocks": 2,
                                    "tp_blocks": 1},
             "audio_adaptor_conf": {**nano.FUN_ASR_NANO_CONFIG["audio_adaptor_conf"],
                                    "ffn_dim": 32}}
    monkeypatch.setattr(nano, "DUMMY_CONFIG", small)
    monkeypatch.setattr(nano, "QWEN3_0_6B_CONFIG", {
        **nano.QWEN3_0_6B_CONFIG, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 8, "vocab_size": 1100, "eos_token_id": 1076, "bos_token_id": 1074})
    from batchasr.models import loader

    monkeypatch.setattr(loader, "_cache_candidates", lambda *a: iter(()))
    m = load_model("fun-asr-mlt-nano", weights="dummy")
    assert m.name.startswith("fun-asr-mlt-nano") and m.fixed_languages == MLT_LANGUAGES
    m.stop_on_eos = False
    m.guard = GuardOptions(max_tokens_per_second=4, min_tokens=0, detect_loops=False)
    wave = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    assert len(m.transcribe([wave], languages=["ar"])[0].tokens) == 4
    with pytest.raises(ValueError):
        m.transcribe([wave], languages=["xx"])


# ---- the CLI ---------------------------------------------------------------------------------
def batchasr(*args, check=0):
    proc = subprocess.run([sys.executable, "-m", "batchasr.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == check, proc.stderr
    return proc


def test_transcribe_json_with_language():
    rec = EXP["options"]["泰语/utt_7s"]
    assert rec["text"] != EXP["clips"]["utt_7s"]["text"]  # the language changes the output
    path = MLT / EXP["clips"]["utt_7s"]["audio"]
    common = ["transcribe", "--model", MLT, "--json", "--no-guard", "--max-new-tokens", CAP]
    for lang in ("泰语", "th"):
        [line] = batchasr(*common, "--language", lang, path).stdout.splitlines()
        got = json.loads(line)
        assert got["text"] == rec["text"] and got["language"] == lang
        assert got["token_ids"] == without_stop(rec["generated_ids"])
    proc = batchasr(*common, "--language", "Klingon", path, check=3)
    assert "unknown language 'Klingon'" in proc.stderr


def test_run_with_a_manifest_language_column(tmp_path):
    rows = [("a", "utt_2s", "中文"), ("b", "utt_4s", ""), ("c", "utt_7s", "sv"),
            ("d", "utt_4s", "韩文"), ("e", "utt_2s", "ar")]
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,path,language\n" + "".join(
        f"{i},{MLT / EXP['clips'][c]['audio']},{lang}\n" for i, c, lang in rows),
        encoding="utf-8")
    job = tmp_path / "job"
    batchasr("run", manifest, "--job-dir", job, "--model", MLT, "--no-guard",
             "--max-new-tokens", CAP, "--no-progress")
    batchasr("export", "--job-dir", job, "-o", job / "r.parquet")
    got = {r["id"]: r for r in pq.read_table(job / "r.parquet").to_pylist()}
    for i, clip, lang in rows:
        name = prompt_language(lang, MLT_LANGUAGES)
        rec = EXP["clips"][clip] if name is None else EXP["options"][f"{name}/{clip}"]
        assert [t["id"] for t in got[i]["tokens"]] == without_stop(rec["generated_ids"]), i
        assert got[i]["text"] == rec["text"], i
