"""SenseVoice-Small parity with the official FunASR 1.4.16 on a committed fixture
(tools/make_reference_fixtures.py sensevoice): a tiny random SenseVoiceSmall in the official
layout with a tiny sentencepiece BPE model carrying the SenseVoice tags.

The official raw (tagged) text, clean text (rich_transcription_postprocess), words and
timestamps for language auto and given, use_itn off and on, batch sizes 1 and 3; the token ids;
the features, encoder output and CTC log-probabilities within float tolerance; a padded batch
equal to each clip alone; the sentencepiece reader against sentencepiece's own outputs; the
full-size configuration and the dummy builder; `transcribe --json`.
"""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from mlx.utils import tree_flatten

from batchasr.models import sense_voice as sv
from batchasr.models.blocks.rich_text import EMOTIONS, rich_transcription_postprocess
from batchasr.models.blocks.sentencepiece import SentencePieceBPE
from batchasr.models.loader import load_model
from batchasr.transcript import to_record

FIXTURES = Path(__file__).parent / "fixtures" / "sense_voice"
MODEL = FIXTURES / "tiny"
EXPECTED = json.loads((MODEL / "expected.json").read_text(encoding="utf-8"))


def audio(clip):
    return sf.read(MODEL / EXPECTED["clips"][clip], dtype="float32")[0]


@pytest.fixture(scope="module")
def asr():
    return load_model(MODEL)


def first_tag(raw, names):
    return next((t for t in re.findall(r"<\|([^|]*)\|>", raw) if t in names), None)


@pytest.mark.parametrize("run", sorted(EXPECTED["runs"]))
def test_official_outputs(asr, run):
    rec = EXPECTED["runs"][run]
    asr.itn = rec["options"]["use_itn"]
    asr.timestamps = rec["options"].get("output_timestamp", False)
    rows = rec["results"]
    lang = rec["options"]["language"]
    waves = [audio(r["clip"]) for r in rows]
    if rec["batch_size"] == 1:
        outs = [asr.transcribe([w], languages=[lang])[0] for w in waves]
    else:
        outs = asr.transcribe(waves, languages=[lang] * len(waves))
    for r, t in zip(rows, outs):
        # the decoded CTC ids exactly as the official decodes them, timestamps on or off
        assert [k.id for k in t.tokens] == r["token_ids"], (run, r["clip"])
        assert [k.text for k in t.tokens] == [asr.tokenizer.pieces[i] for i in r["token_ids"]]
        record = to_record(t, path=r["clip"], asr=asr)
        assert record["token_ids"] == r["token_ids"], (run, r["clip"])
        timed = t.aligned_pieces
        if "error" in r:  # the official raised: no timestamps here
            assert not timed and "words" not in record, (run, r["clip"])
            continue
        assert t.raw_text == r["raw_text"], (run, r["clip"])
        assert t.text == r["text"] == rich_transcription_postprocess(r["raw_text"])
        assert t.language == first_tag(r["raw_text"], sv.LID)
        assert t.emotion == first_tag(r["raw_text"], ("HAPPY", "SAD", "ANGRY", "NEUTRAL",
                                                      "FEARFUL", "DISGUSTED", "SURPRISED",
                                                      "EMO_UNKNOWN"))
        assert t.event == first_tag(r["raw_text"], ("BGM", "Speech", "Applause", "Laughter",
                                                    "Cry", "Sneeze", "Breath", "Cough", "Sing",
                                                    "Speech_Noise", "Event_UNK", "GBG"))
        if "timestamp" in r:
            words, times = asr.word_timestamps(t)
            assert (words, times) == (r["words"], r["timestamp"]), (run, r["clip"])
            assert timed
            assert (record["words"], record["word_timestamps"], record["timestamps"]) == \
                (r["words"], r["timestamp"], r["timestamp"]), (run, r["clip"])
            if t.text:  # the segment spans the official piece times
                assert [t.segments[0].start_s, t.segments[-1].end_s] == \
                    [timed[0].start_ms / 1000, timed[-1].end_ms / 1000]
        else:
            assert not timed and "words" not in record and record["timestamps"] == []
    asr.itn, asr.timestamps = False, True


def test_fixture_exercises_the_branches():
    runs = EXPECTED["runs"]
    raws = [r.get("raw_text", "") for run in runs.values() for r in run["results"]]
    assert any(r.count("<|") >= 3 for r in raws)  # tags inside the text (several languages)
    assert any(r["raw_text"] != s["raw_text"] for r, s in zip(runs["auto_bs1"]["results"],
                                                              runs["zh_bs1"]["results"]))
    assert any(r["raw_text"] != s["raw_text"] for r, s in zip(runs["auto_bs1"]["results"],
                                                              runs["en_itn_bs1"]["results"]))
    # the official timestamp pieces (the text re-encoded, the 4 tags dropped) are not always
    # the decoded pieces after the 4 tags
    sp = SentencePieceBPE.from_file(MODEL / sv.BPE_MODEL)
    ts_rows = [r for name, run in runs.items() if run["options"].get("output_timestamp")
               for r in run["results"] if "timestamp" in r]
    assert any(sp.encode_ids(r["raw_text"])[sv.N_QUERIES:] != r["token_ids"][sv.N_QUERIES:]
               for r in ts_rows)
    assert all("token_ids" in r for run in runs.values() for r in run["results"])
    words = [w for r in runs["ts_auto_bs1"]["results"] for w in r.get("words", [])]
    assert len(words) > 100 and any(w.isascii() and len(w) > 3 for w in words)  # merged


def test_token_ids(asr):
    for timestamps in (True, False):  # the decoded ids, untimed, timestamps on or off
        asr.timestamps = timestamps
        for clip, ids in EXPECTED["token_ids_auto_woitn"].items():
            t = asr.transcribe([audio(clip)])[0]
            assert [k.id for k in t.tokens] == ids, (clip, timestamps)
            assert all(k.start_ms is None for k in t.tokens)
            assert timestamps or not t.aligned_pieces
    asr.timestamps = True


def test_aligned_pieces_kept(asr):
    """Stitching shifts the timestamp pieces as the tokens; a result row keeps them."""
    from batchasr.batches.plan import stitch
    from batchasr.outputs.rows import row_to_transcript, transcript_to_row

    a, b = asr.transcribe([audio("utt_2s"), audio("utt_short")])
    assert a.aligned_pieces and b.aligned_pieces
    t = stitch([(0.0, a), (5.0, b)])
    assert [k.id for k in t.tokens] == [k.id for k in a.tokens + b.tokens]
    assert [(k.text, k.start_ms, k.end_ms) for k in t.aligned_pieces] == \
        [(k.text, k.start_ms, k.end_ms) for k in a.aligned_pieces] + \
        [(k.text, k.start_ms + 5000, k.end_ms + 5000) for k in b.aligned_pieces]
    assert to_record(t, path="x", asr=asr)["words"] == \
        [w for w, _ in zip(*asr.word_timestamps(t))]
    back = row_to_transcript(transcript_to_row({"id": "x"}, t, model_name="m"))
    assert (back.tokens, back.aligned_pieces) == (t.tokens, t.aligned_pieces)


def rel_err(a, b):
    b = np.asarray(b)
    return float(np.abs(np.asarray(a) - b).max() / max(np.abs(b).max(), 1e-12))


def test_layer_outputs_within_tolerance(asr):
    for npz in sorted((MODEL / "tensors").glob("*.npz")):
        ref = np.load(npz)
        feats, lens = asr.features([audio(npz.stem)])
        enc, logp, olens = asr.forward(feats, lens, ["auto"])
        n = int(olens[0].item())
        assert rel_err(feats[0], ref["features"]) < 1e-4, npz.stem
        assert rel_err(enc[0, :n], ref["encoder_out"]) < 1e-4, npz.stem
        assert np.abs(np.array(logp[0, :n]) - ref["ctc_logp"]).max() < 1e-3, npz.stem


def test_batched_equals_alone(asr):
    clips = list(EXPECTED["clips"])
    waves = [audio(c) for c in clips]
    for itn, lang in ((False, None), (True, "ko")):
        asr.itn = itn
        batch = asr.transcribe(waves, languages=[lang] * len(waves))
        for w, t in zip(waves, batch):
            alone = asr.transcribe([w], languages=[lang])[0]
            assert (alone.raw_text, alone.text, alone.tokens, alone.aligned_pieces) == \
                (t.raw_text, t.text, t.tokens, t.aligned_pieces)
    asr.itn = False


def test_language_option(asr):
    w = audio("utt_2s")
    asr.language = "zh"
    assert asr.transcribe([w])[0].raw_text == asr.transcribe([w], languages=["zh"])[0].raw_text
    assert asr.transcribe([w], languages=["auto"])[0].raw_text == \
        EXPECTED["runs"]["auto_bs1"]["results"][0]["raw_text"]
    asr.language = None
    assert asr.language == "auto"
    with pytest.raises(ValueError, match="unknown language 'fr'"):
        asr.transcribe([w], languages=["fr"])
    with pytest.raises(ValueError, match="unknown language"):
        asr.language = "English"


def test_itn_declares_punctuation(asr):
    asr.itn = True
    assert asr.punctuated
    asr.itn = False
    assert not asr.punctuated


@pytest.mark.parametrize("itn", [False, True])
def test_config_only_traits_agree_with_the_loaded_model(itn):
    """recognizer_traits (the Ray driver's view, no weights) with the run's options declares
    what the model loaded with them does: --itn makes SenseVoice punctuated."""
    from batchasr.models.loader import recognizer_traits
    from batchasr.runner.device import open_model

    loaded = open_model(str(MODEL), "checkpoint", "float32", "auto", False, itn=itn)
    assert loaded.punctuated is itn
    assert recognizer_traits(MODEL, itn=itn) == {"punctuated": loaded.punctuated,
                                                 "max_segment_s": loaded.max_segment_s}
    if not itn:  # the default, as a model loaded without options
        assert recognizer_traits(MODEL) == recognizer_traits(MODEL, itn=False)


def test_sentencepiece_reader():
    sp = SentencePieceBPE.from_file(MODEL / sv.BPE_MODEL)
    cases = json.loads((FIXTURES / "sentencepiece.json").read_text(encoding="utf-8"))
    assert len(sp) == cases["vocab_size"]
    assert not sp.add_dummy_prefix and sp.byte_fallback and sp.normalizer.array is not None
    for c in cases["decode"]:
        assert sp.decode(c["ids"]) == c["text"], c["ids"]
    for c in cases["encode"]:
        assert sp.encode_pieces(c["text"]) == c["pieces"], c["text"]
        assert sp.encode_ids(c["text"]) == c["ids"], c["text"]


def test_full_size_config():
    conf = sv.DUMMY_CONFIG["encoder_conf"]
    assert (conf["output_size"], conf["attention_heads"], conf["linear_units"],
            conf["num_blocks"], conf["tp_blocks"]) == (512, 4, 2048, 50, 20)
    args = sv.ModelArgs.from_config(sv.DUMMY_CONFIG,
                                    {"tokenizer": sv.SyntheticTokenizer(sv.DUMMY_VOCAB_SIZE)})
    shapes = {k: v.shape for k, v in tree_flatten(sv.Model(args).parameters())}  # lazy, small
    assert shapes["embed.weight"] == (16, 560)
    assert shapes["encoder.encoders0.0.self_attn.linear_q_k_v.weight"] == (1536, 560)
    assert shapes["ctc.ctc_lo.weight"] == (25055, 512)
    assert len({k.split(".")[2] for k in shapes if k.startswith("encoder.encoders.")}) == 49
    assert len({k.split(".")[2] for k in shapes if k.startswith("encoder.tp_encoders.")}) == 20


def test_dummy_builder(monkeypatch):
    small = {**sv.DUMMY_CONFIG, "encoder_conf": {**sv.DUMMY_CONFIG["encoder_conf"],
                                                 "output_size": 16, "linear_units": 32,
                                                 "num_blocks": 2, "tp_blocks": 1}}
    monkeypatch.setattr(sv, "DUMMY_CONFIG", small)
    from batchasr.models import loader

    monkeypatch.setattr(loader, "_cache_candidates", lambda *a: iter(()))
    asr = load_model("sensevoice-small", weights="dummy")
    assert asr.model.args.vocab_size == 25055 and asr.name.endswith(loader.DUMMY_SUFFIX)
    out = asr.transcribe([np.random.default_rng(0).standard_normal(16000).astype(np.float32)
                          * 0.1])
    assert out[0].raw_text is not None


def test_transcribe_json(tmp_path):
    from batchasr.cli import cli

    clips = ("utt_4s", "utt_2s", "utt_short")  # utt_short: timestamp pieces != decoded ones
    asr_pieces = SentencePieceBPE.from_file(MODEL / sv.BPE_MODEL).pieces
    files = [str(MODEL / EXPECTED["clips"][c]) for c in clips]
    res = CliRunner().invoke(cli, ["transcribe", "--model", str(MODEL), "--json",
                                   "--language", "auto", "--vad", "none", *files])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.output.splitlines() if x.startswith("{")]
    official = {r["clip"]: r for r in EXPECTED["runs"]["ts_auto_bs1"]["results"]}
    assert len(lines) == len(clips)
    for line, clip in zip(lines, clips):
        assert line["raw_text"] == official[clip]["raw_text"]
        assert line["text"] == official[clip]["text"]
        assert line["words"] == official[clip]["words"]
        assert line["word_timestamps"] == line["timestamps"] == official[clip]["timestamp"]
        assert line["token_ids"] == official[clip]["token_ids"]
        assert line["tokens"] == [asr_pieces[i] for i in line["token_ids"]]
        assert line.get("language") == first_tag(official[clip]["raw_text"], sv.LID)
        assert {"tokens", "token_ids", "timestamps"} <= set(line)
        assert line.get("emotion") == first_tag(official[clip]["raw_text"], EMOTIONS)
    res = CliRunner().invoke(cli, ["transcribe", "--model", str(MODEL), "--json", "--itn",
                                   "--language", "en", "--vad", "none", files[1]])
    assert json.loads(res.output.splitlines()[-1])["raw_text"] == \
        EXPECTED["runs"]["en_itn_bs1"]["results"][0]["raw_text"]
    res = CliRunner().invoke(cli, ["transcribe", "--model", str(MODEL), "--language", "fr",
                                   "--vad", "none", files[1]])
    assert res.exit_code != 0 and "unknown language 'fr'" in res.output


def test_run_job_columns(tmp_path):
    """`run`: the manifest language wins per row over --language; the export has the
    official raw_text/text and the emotion/event columns."""
    import pyarrow.parquet as pq

    from batchasr.cli import cli

    clip = MODEL / EXPECTED["clips"]["utt_2s"]
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"id,path,language\na,{clip},zh\nb,{clip},\n", encoding="utf-8")
    job = tmp_path / "job"
    res = CliRunner().invoke(cli, ["run", str(manifest), "--model", str(MODEL), "--job-dir",
                                   str(job), "--language", "en", "--itn", "--no-progress"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["export", "--job-dir", str(job), "--format", "parquet"])
    rows = {r["id"]: r for r in pq.read_table(job / "results.parquet").to_pylist()}
    asr = load_model(MODEL)
    asr.itn = True
    for key, lang in (("a", "zh"), ("b", "en")):
        t = asr.transcribe([audio("utt_2s")], languages=[lang])[0]
        assert (rows[key]["raw_text"], rows[key]["text"]) == (t.raw_text, t.text), key
        assert (rows[key]["emotion"], rows[key]["event"]) == (t.emotion, t.event), key
    assert rows["a"]["raw_text"] != rows["b"]["raw_text"]
