"""Fun-ASR-Nano parity with the official FunASR 1.4.16 on committed fixtures
(tools/make_reference_fixtures.py nano): tiny random checkpoints in the official layout, one
without and one with the CTC head.

Same generated ids and text as the official inference for a cap of 30 new tokens (the stop
token counted), same prompt ids, the official CTC timestamps, layer outputs within float
tolerance; a padded batch and both decoding modes give exactly the one-clip tokens; the
runaway guard, quantized LLM weights and the dummy builder work.
"""
import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import soundfile as sf

from batchasr.models.blocks import generate as G
from batchasr.models import fun_asr_nano as nano
from batchasr.models.loader import load_model
from batchasr.models.fun_asr_nano import speech_token_count, user_prompt
from batchasr.models.fun_asr_nano import GuardOptions, LoopDetector, normalize_with_map

FIXTURES = Path(__file__).parent / "fixtures" / "nano"
MODELS = ["plain", "ctc"]


def expected(name):
    return json.loads((FIXTURES / name / "expected.json").read_text(encoding="utf-8"))


def tensors(name, clip):
    return np.load(FIXTURES / name / "tensors" / f"{clip}.npz")


def audio(name, clip):
    return sf.read(FIXTURES / name / expected(name)["clips"][clip]["audio"], dtype="float32")[0]


@pytest.fixture(scope="module", params=MODELS)
def fixture_model(request):
    asr = load_model(FIXTURES / request.param)
    asr.max_new_tokens = expected(request.param)["max_length"]
    asr.guard = GuardOptions.off()
    return request.param, asr


def rel_err(a, b):
    b = np.asarray(b)
    return float(np.abs(np.asarray(a) - b).max() / max(np.abs(b).max(), 1e-12))


def official_ids(asr, ids):
    """The official generated ids without the stop token (what Transcript.tokens holds)."""
    return [i for i in ids if i not in asr.eos_ids]


def test_loaded_as_configured(fixture_model):
    name, asr = fixture_model
    assert asr.model.has_ctc == (name == "ctc") == expected(name)["ctc"]
    assert asr.frontend.cmvn is None  # Nano: fbank + LFR, no CMVN
    assert asr.model.audio_encoder.args.layer_norm_eps == 1e-5  # SenseVoice: torch LayerNorm


def test_layer_outputs_within_tolerance(fixture_model):
    name, asr = fixture_model
    for clip, rec in expected(name)["clips"].items():
        ref = tensors(name, clip)
        feats, lens = asr.features([audio(name, clip)])
        enc, adapted, olens, ctc = asr.encode(feats, lens)
        n = speech_token_count(int(lens[0].item()))
        assert n == rec["speech_tokens"]
        emb = asr.prompt_embeddings(adapted[0], n)
        logits, _ = G.prefill(asr.model.llm, [emb])
        # silence is ill-conditioned (LayerNorm of near-constant frames) in both implementations
        tol = 2e-3 if clip == "utt_silence" else 1e-4
        assert rel_err(enc[0], ref["encoder_out"]) < tol, clip
        assert rel_err(adapted[0], ref["adaptor_out"]) < tol, clip
        assert rel_err(emb, ref["prompt_embeds"]) < tol, clip
        assert rel_err(logits[0], ref["first_logits"]) < tol, clip
        # the LLM alone, fed the official prompt embeddings
        logits, _ = G.prefill(asr.model.llm, [mx.array(ref["prompt_embeds"])])
        assert rel_err(logits[0], ref["first_logits"]) < 1e-5, clip
        if ctc is not None:
            assert float(np.abs(np.array(ctc[0]) - ref["ctc_log_probs"]).max()) < 1e-3, clip


def test_prompt_ids_match_official(fixture_model):
    name, asr = fixture_model
    before, after = asr.prompt_ids()
    for clip, rec in expected(name)["clips"].items():
        assert before + [0] * rec["speech_tokens"] + after == rec["prompt_ids"], clip
        assert rec["speech_start"] == len(before)


@pytest.mark.parametrize("mode", ["continuous", "sequential"])
def test_tokens_and_text_match_official(fixture_model, mode):
    name, asr = fixture_model
    asr.decode_mode = mode
    clips = expected(name)["clips"]
    outs = asr.transcribe([audio(name, c) for c in clips])
    for (clip, rec), out in zip(clips.items(), outs):
        assert [t.id for t in out.tokens] == official_ids(asr, rec["generated_ids"]), clip
        assert out.text == rec["text"], clip
        stopped = rec["generated_ids"][-1] in asr.eos_ids
        assert out.flags == ([] if stopped else ["token_cap"]), clip
        if "".join(t.text for t in out.tokens if not t.text.startswith("<|")) == out.text:
            assert out.segments and out.segments[0].text == out.text


def test_ctc_timestamps_match_official(fixture_model):
    name, asr = fixture_model
    if name != "ctc":
        pytest.skip("no CTC head")
    clips = expected(name)["clips"]
    outs = asr.transcribe([audio(name, c) for c in clips])
    n_timed = 0
    for (clip, rec), out in zip(clips.items(), outs):
        feats, lens = asr.features([audio(name, clip)])
        ctc = np.array(asr.encode(feats, lens)[3][0])
        mine = [{k: it[k] for k in ("token", "start_time", "end_time", "score")}
                for it in asr.ctc_alignment(out.text, ctc)]
        assert mine == rec["timestamps"], clip
        timed = [t for t in out.tokens if t.start_ms is not None]
        n_timed += len(timed)
        if rec["timestamps"]:
            starts = [t["start_time"] * 1000 for t in rec["timestamps"]]
            ends = [t["end_time"] * 1000 for t in rec["timestamps"]]
            for t in timed:  # every LLM token time is a span of the official CTC times
                assert min(starts) - 1 <= t.start_ms < t.end_ms <= max(ends) + 1
            assert [t.start_ms for t in timed] == sorted(t.start_ms for t in timed)
    assert n_timed > 0


def test_options_match_official():
    asr = load_model(FIXTURES / "plain")
    asr.max_new_tokens, asr.guard = expected("plain")["max_length"], GuardOptions.off()
    for label, rec in expected("plain")["options"].items():
        opts = rec["options"]
        asr.hotwords, asr.itn = opts.get("hotwords", []), opts.get("itn", True)
        before, after = asr.prompt_ids(opts.get("language"))
        n = expected("plain")["clips"][rec["clip"]]["speech_tokens"]
        assert before + [0] * n + after == rec["prompt_ids"], label
        out = asr.transcribe([audio("plain", rec["clip"])], languages=[opts.get("language")])[0]
        assert [t.id for t in out.tokens] == official_ids(asr, rec["generated_ids"]), label
        assert out.text == rec["text"], label
    assert user_prompt(["a", "b"], "英文", False).endswith("热词列表：[a, b]\n语音转写成英文，不进行文本规整：")
    asr.hotwords, asr.itn = [], True
    assert asr.prompt_text("en") == asr.prompt_text("英文")
    assert asr.prompt_text("auto") == asr.prompt_text(None) == asr.prompt_text("")
    asr.hotwords = "阿里巴巴, FunASR"
    assert "热词列表：[阿里巴巴, FunASR]" in asr.prompt_text()[0]


def test_batched_equals_unbatched_and_official_batch():
    asr = load_model(FIXTURES / "plain")
    exp = expected("plain")
    asr.max_new_tokens, asr.guard = exp["max_length"], GuardOptions.off()
    names = exp["batched"]["clips"]
    wavs = [audio("plain", c) for c in names]
    one = [asr.transcribe([w])[0] for w in wavs]
    for mode, max_batch, encode_batch, retire_at in (
            ("continuous", 64, 16, 0.0), ("continuous", 2, 3, 0.0), ("sequential", 64, 2, 0.0),
            ("continuous", 64, 16, 0.5), ("continuous", 3, 16, 1.0)):
        asr.decode_mode, asr.max_batch, asr.encode_batch = mode, max_batch, encode_batch
        asr.retire_at = retire_at
        many = asr.transcribe(wavs)
        assert [[t.id for t in o.tokens] for o in many] == [[t.id for t in o.tokens] for o in one]
        assert [o.text for o in many] == [o.text for o in one]
    # the official batched call (left padding, pads filled with eos) gives the same ids
    for row, o in zip(exp["batched"]["generated_ids"], one):
        assert official_ids(asr, row) == [t.id for t in o.tokens]
    assert exp["batched"]["texts"] == [o.text for o in one]


def test_idle_rows_setting_is_read_at_load(monkeypatch):
    monkeypatch.setenv("BATCHASR_RETIRE_AT", "0.25")
    asr = load_model(FIXTURES / "plain")
    monkeypatch.delenv("BATCHASR_RETIRE_AT")
    assert asr.retire_at == 0.25 and load_model(FIXTURES / "plain").retire_at == 0.0


def test_idle_rows_are_the_gpu_default_and_not_the_cpu_one():
    from batchasr.models.blocks.tuning import Tuning

    assert Tuning.from_env({}, cpu=False).retire_at == 0.25  # fewer cache rebuilds on a GPU
    assert Tuning.from_env({}, cpu=True).retire_at == 0.0  # an idle row's step is real work
    assert Tuning.from_env({"BATCHASR_RETIRE_AT": "0"}, cpu=False).retire_at == 0.0


def test_padded_encoder_rows_equal_single_rows():
    asr = load_model(FIXTURES / "ctc")
    wavs = [audio("ctc", c) for c in ("utt_2s", "utt_11s", "utt_short")]
    feats, lens = asr.features(wavs)
    enc, ad, olens, ctc = asr.encode(feats, lens)
    for r, w in enumerate(wavs):
        f1, l1 = asr.features([w])
        e1, a1, _, c1 = asr.encode(f1, l1)
        n = int(l1[0].item())
        np.testing.assert_allclose(np.array(enc[r, :n]), np.array(e1[0]), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.array(ad[r, :n]), np.array(a1[0]), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(np.array(ctc[r, :n]), np.array(c1[0]), rtol=1e-5, atol=1e-4)


def test_runaway_guard():
    asr = load_model(FIXTURES / "plain")
    exp = expected("plain")
    asr.max_new_tokens = exp["max_length"]
    clips = exp["clips"]
    wavs = {c: audio("plain", c) for c in clips}
    # defaults: the looping clip is cut and flagged, the others equal the official output
    asr.guard = GuardOptions()
    outs = dict(zip(clips, asr.transcribe(list(wavs.values()))))
    looped = outs["utt_short"]  # ' wa' then 'p' repeated to the cap
    assert looped.flags == ["repetition_loop"]
    ref = official_ids(asr, clips["utt_short"]["generated_ids"])
    ids = [t.id for t in looped.tokens]
    assert ids == ref[:len(ids)] and len(ids) < len(ref) and ids[-1] == ref[-1]
    assert [t.id for t in outs["utt_11s"].tokens] == official_ids(asr,
                                                                 clips["utt_11s"]["generated_ids"])
    assert outs["utt_11s"].flags == []
    # a tokens-per-second ceiling: 2 tokens per second of audio, at least 3
    asr.guard = GuardOptions(max_tokens_per_second=2, min_tokens=3, detect_loops=False)
    out = asr.transcribe([wavs["utt_4s"], wavs["utt_short"]])
    assert [len(o.tokens) for o in out] == [9, 3] and all(o.flags == ["token_cap"] for o in out)
    assert GuardOptions().budget(600.0, 512) == 512 and GuardOptions().budget(0.2, 512) == 32


def test_loop_detector_rules():
    det = LoopDetector(GuardOptions(max_period=4, min_repeats=3, min_span=6))
    seq = [1, 2, 3, 7, 8, 7, 8, 7, 8]
    hits = [det(0, seq[:i + 1]) for i in range(len(seq))]
    assert hits[:-1] == [None] * 8 and hits[-1] == "repetition_loop"
    assert seq[:det.cut[0]] == [1, 2, 3, 7, 8]  # text before the loop + one copy of the unit
    det = LoopDetector(GuardOptions(max_period=4, min_repeats=3, min_span=6))
    assert all(det(1, [4] * i) is None for i in range(1, 6)) and det(1, [4] * 6)


def test_text_rules_and_token_pieces():
    asr = load_model(FIXTURES / "plain")
    assert normalize_with_map("a/sil  b\n\tc /sil")[0] == "a b c "
    text, at = normalize_with_map("x /sil\ny")
    assert text == "x y" and at[0] == 0 and at[-1] == 3
    tok = asr.tokenizer
    ids = tok.encode("你好 world<think>").ids + [tok.token_to_id("<|im_end|>")]
    pieces = asr.token_pieces(ids)
    assert "".join(s for _, s, sp in pieces if not sp) == "你好 world<think>"
    assert pieces[-1][2] and asr.decode_text(ids) == "你好 world<think>"


def test_empty_and_bad_input():
    asr = load_model(FIXTURES / "plain")
    asr.max_new_tokens = 3
    out = asr.transcribe([np.zeros(0, np.float32), np.zeros(100, np.float32)],
                         languages=["zh", None])
    assert out[0].text == "" and out[0].tokens == [] and out[0].language == "zh"
    assert len(out[1].tokens) <= 3
    with pytest.raises(ValueError):
        asr.transcribe([np.zeros(1600, np.float32)], languages=["zh", "en"])


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_llm_smoke(bits):
    asr = load_model(FIXTURES / "plain")
    exp = expected("plain")
    asr.max_new_tokens, asr.guard = exp["max_length"], GuardOptions.off()
    asr.quantize_llm(bits=bits, group_size=32)
    assert "scales" in asr.model.llm.model.embed_tokens
    clips = exp["clips"]
    outs = asr.transcribe([audio("plain", c) for c in clips])
    assert len(outs) == len(clips) and all(len(o.tokens) <= 30 for o in outs)


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
    from batchasr.models import loader as checkpoints

    monkeypatch.setattr(checkpoints, "_cache_candidates", lambda *a: iter(()))
    asr = load_model("fun-asr-nano", weights="dummy")
    assert asr.tokenizer.token_to_id("<|im_end|>") == 1076 == asr.eos_ids[0]
    asr.stop_on_eos = False
    asr.guard = GuardOptions(max_tokens_per_second=4, min_tokens=0, detect_loops=False)
    out = asr.transcribe([np.random.default_rng(0).standard_normal(16000 * 2).astype(np.float32)
                          * 0.1])
    assert len(out[0].tokens) == 8  # forced: 4 tokens per second of audio


def test_full_size_config_shapes():
    args = nano.QWEN3_0_6B_CONFIG
    assert (args["num_hidden_layers"], args["hidden_size"], args["num_attention_heads"],
            args["num_key_value_heads"], args["head_dim"], args["intermediate_size"],
            args["vocab_size"]) == (28, 1024, 16, 8, 128, 3072, 151936)
    enc = nano.FUN_ASR_NANO_CONFIG["audio_encoder_conf"]
    assert (enc["output_size"], enc["attention_heads"], enc["linear_units"], enc["num_blocks"],
            enc["tp_blocks"]) == (512, 4, 2048, 50, 20)
    tok = nano.synthetic_qwen_tokenizer()
    assert [tok.token_to_id(c) for c in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == \
        [151643, 151644, 151645]


def test_token_surfaces_spell_the_official_text():
    for name in MODELS:
        asr = load_model(FIXTURES / name)
        for clip, rec in expected(name)["clips"].items():
            ids = official_ids(asr, rec["generated_ids"])
            pieces = asr.token_pieces(ids)
            raw = asr.tokenizer.decode(ids, skip_special_tokens=True)
            assert "".join(s for _, s, sp in pieces if not sp) == raw, (name, clip)
