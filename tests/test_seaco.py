"""Parity with the official FunASR 1.4.16 SeACo-Paraformer on committed fixtures
(tools/reference_seaco.py): the same token ids, text, token and word timestamps as
`AutoModel.generate` without hotwords, with a hotword string, a hotword file and more than 50
hotwords (the ASF filter); layer outputs within float tolerance; a padded batch equals each
clip alone; the full-size dummy build; `transcribe --json --hotwords` and `run` with a
manifest `hotwords` column.
"""
import csv
import json
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pyarrow.parquet as pq
import pytest

from batchasr.models.loader import load_model
from batchasr.models.seaco_paraformer import cif_v3, hotword_strings

FIXTURE = Path(__file__).parent / "fixtures" / "seaco" / "zh"
AUDIO = Path(__file__).parent / "fixtures" / "paraformer" / "audio"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text(encoding="utf-8"))
CLIPS = EXPECTED["clips"]
LABELS = ["none", "list", "file", "many"]


def hotwords(label):
    if label == "none":
        return None
    value = EXPECTED["hotwords"][label]
    return str(FIXTURE / value) if label == "file" else value


def wave(clip):
    return np.load(FIXTURE / "tensors" / f"{clip}.npz")["waveform"]


@pytest.fixture(scope="module")
def asr():
    return load_model(FIXTURE)


def rel_err(a, b):
    return float(np.abs(np.asarray(a) - b).max() / max(np.abs(b).max(), 1e-12))


def test_the_fixture_exercises_the_hotword_branch():
    """Otherwise the parity below proves nothing about it."""
    changed = [c for c, e in CLIPS.items() if e["list"]["token_ids"] != e["none"]["token_ids"]]
    assert len(changed) >= 4
    assert len(EXPECTED["hotword_ids"]["many"]) > 51  # the ASF filter runs


@pytest.mark.parametrize("label", LABELS)
def test_tokens_text_timestamps_identical(asr, label):
    for clip, e in CLIPS.items():
        exp = e[label]
        t = asr.transcribe([wave(clip)], hotwords=hotwords(label))[0]
        assert [k.id for k in t.tokens] == exp["token_ids"], (label, clip)
        assert [k.text for k in t.tokens] == exp["tokens"], (label, clip)
        assert [[k.start_ms, k.end_ms] for k in t.tokens] == exp["token_timestamps"], clip
        assert t.text == exp["text"], (label, clip)
        if t.tokens:
            words, times = asr.word_timestamps(t)
            assert " ".join(words) == exp["text"] and times == exp["timestamp"], clip


def test_hotword_lists_tokenized_as_official(asr):
    for label, ids in EXPECTED["hotword_ids"].items():
        assert asr.hotword_ids(hotwords(label)) == ids, label
    assert asr.hotword_ids(None) is None and asr.hotword_ids(" ") is None
    assert hotword_strings("a b, c") == ["a b", "c"]  # a comma list keeps spaces in an item
    assert hotword_strings("a b") == ["a", "b"]  # no comma: the official string form


def test_layer_outputs_within_tolerance(asr):
    model = asr.model
    hw = EXPECTED["hotword_ids"]["list"]
    for clip in CLIPS:
        ref = np.load(FIXTURE / "tensors" / f"{clip}.npz")
        feats, lens = asr.features([ref["waveform"]])
        if int(lens[0]) == 0:
            continue
        enc, alphas = model(feats, lens)
        assert rel_err(enc[0], ref["encoder_out"]) < 1e-4, clip
        n_tok, weights, _ = cif_v3(np.array(alphas), np.array(lens),
                                   model.predictor.args.tail_threshold)
        assert n_tok.tolist() == ref["token_num"].tolist(), clip
        if "decoder_logp" not in ref:
            continue
        hidden = mx.pad(enc, [(0, 0), (0, 1), (0, 0)])
        embeds = mx.array(weights) @ hidden
        assert rel_err(embeds[0], ref["acoustic_embeds"]) < 1e-4, clip
        up = np.array(model.predictor.upsampled_alphas(enc, np.array(lens)))[0]
        up = up * np.float32(n_tok[0] / up.sum(dtype=np.float32))
        np.testing.assert_allclose(up, ref["us_alphas"], atol=1e-5)
        T = enc.shape[1]
        tm = mx.arange(embeds.shape[1])[None] < int(n_tok[0])
        dec_hidden = model.decoder.hidden(enc, mx.arange(T)[None] < lens[:, None], embeds, tm)
        assert rel_err(dec_hidden[0], ref["decoder_hidden"]) < 1e-4, clip
        assert rel_err(model.decoder.log_probs(dec_hidden)[0], ref["decoder_logp"]) < 1e-4
        selected = model.hotword_embeddings(hw)
        assert rel_err(selected, ref["hotword_embeds"]) < 1e-4, clip
        memory = selected[None]
        sd = model.seaco_decoder
        assert rel_err(sd.hidden(memory, None, embeds, tm)[0], ref["seaco_cif_attended"]) < 1e-4
        assert rel_err(sd.hidden(memory, None, dec_hidden, tm)[0],
                       ref["seaco_dec_attended"]) < 1e-4
        from batchasr.models.seaco_paraformer import SeacoDecodeRun

        run = SeacoDecodeRun(model, feats, lens, hw)
        merged = run.merge(model.decoder.log_probs(dec_hidden), embeds, dec_hidden, tm)
        assert rel_err(merged[0], ref["merged_logp"]) < 1e-4, clip


@pytest.mark.parametrize("label", ["none", "list", "many"])
def test_batched_equals_unbatched(asr, label):
    names = list(CLIPS)[::-1]
    got = asr.transcribe([wave(c) for c in names], hotwords=hotwords(label))
    for clip, t in zip(names, got):
        exp = CLIPS[clip][label]
        assert [k.id for k in t.tokens] == exp["token_ids"], (label, clip)
        assert [[k.start_ms, k.end_ms] for k in t.tokens] == exp["token_timestamps"], clip


def test_batches_finished_on_their_own_thread(monkeypatch):
    """BATCHASR_FINISH=thread: SeACo's batch ends (after advance()) on the finishing thread
    while the next batch is submitted; the official tokens and timestamps all the same."""
    monkeypatch.setenv("BATCHASR_FINISH", "thread")
    threaded = load_model(FIXTURE)
    names = list(CLIPS)
    batches = [names[:2], names[2:]]
    pending = []
    for batch in batches:
        p = threaded.submit([wave(c) for c in batch], hotwords=hotwords("list"))
        p.advance()
        assert p._finishing is not None
        pending.append(p)
    for batch, p in zip(batches, pending):
        for clip, t in zip(batch, p.result()):
            exp = CLIPS[clip]["list"]
            assert [k.id for k in t.tokens] == exp["token_ids"], clip
            assert [[k.start_ms, k.end_ms] for k in t.tokens] == exp["token_timestamps"], clip


def test_batch_padding_is_invisible(asr):
    """Pairs of very different lengths, with hotwords: each row as if alone (the official
    batch lets the padding into the CIF and runs its BLSTM back from the padded end)."""
    long_w, hw = wave("utt_11s"), hotwords("list")
    for clip in ("utt_2s", "utt_short"):
        exp = CLIPS[clip]["list"]
        for batch, pos in (([wave(clip), long_w], 0), ([long_w, wave(clip), long_w], 1)):
            row = asr.transcribe(batch, hotwords=hw)[pos]
            assert [k.id for k in row.tokens] == exp["token_ids"], clip
            assert [[k.start_ms, k.end_ms] for k in row.tokens] == exp["token_timestamps"]


def test_empty_and_silent_input(asr):
    out = asr.transcribe([np.zeros(0, np.float32), np.zeros(100, np.float32)],
                         hotwords="a,b")
    assert [t.text for t in out] == ["", ""]


def test_dummy_full_size_build():
    asr = load_model("paraformer-zh-seaco", weights="dummy")
    m = asr.model
    assert asr.name.endswith("(dummy weights)")
    assert len(m.encoder.encoders) == 49 and len(m.decoder.decoders) == 16
    assert len(m.seaco_decoder.decoders) == 6 and "output_layer" not in m.seaco_decoder
    assert m.seaco_decoder.decoders[0].self_attn.fsmn_block.weight.shape == (512, 1, 21)
    assert m.bias_encoder.weight_ih_l1.shape == (2048, 512)
    assert m.predictor.upsample_cnn["weight"].shape == (512, 512, 3)
    assert m.predictor.cif_output2.weight.shape == (1, 1024)
    assert m.hotword_output_layer.weight.shape == (8404, 512)
    t = asr.transcribe([np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)],
                       hotwords="达摩院,魔搭")[0]
    assert all(k.start_ms is not None for k in t.tokens)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "batchasr.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_transcribe_json_with_hotwords():
    clips = ["utt_2s", "utt_4s"]
    hw = EXPECTED["hotwords"]["list"].replace(" ", ",")
    proc = cli("transcribe", "--model", FIXTURE, "--json", "--hotwords", hw,
               *[AUDIO / f"{c}.wav" for c in clips])
    assert proc.returncode == 0, proc.stderr
    for clip, line in zip(clips, proc.stdout.splitlines()):
        rec, exp = json.loads(line), CLIPS[clip]["list"]
        assert rec["token_ids"] == exp["token_ids"] and rec["tokens"] == exp["tokens"]
        assert rec["text"] == exp["text"] and rec["timestamps"] == exp["token_timestamps"]
        assert rec["word_timestamps"] == exp["timestamp"]


def test_hotwords_refused_by_a_model_without_them():
    para = Path(__file__).parent / "fixtures" / "paraformer" / "zh_mixed"
    proc = cli("transcribe", "--model", para, "--hotwords", "a,b", AUDIO / "utt_2s.wav")
    assert proc.returncode != 0 and "--hotwords does not apply" in proc.stderr


def test_run_with_a_manifest_hotwords_column(tmp_path):
    """Rows with their own list, rows with none (the run's --hotwords then) and a row with the
    file: each row as the official gives its clip with that list, in shared batches."""
    rows = [("a", "utt_2s", "list"), ("b", "utt_4s", ""), ("c", "utt_7s", "file"),
            ("d", "utt_short", "list"), ("e", "utt_11s", "")]
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "hotwords"])
        for i, clip, label in rows:
            w.writerow([i, AUDIO / f"{clip}.wav", hotwords(label) if label else ""])
    job = tmp_path / "job"
    proc = cli("run", manifest, "--model", FIXTURE, "--job-dir", job, "--no-progress",
               "--vad", "none", "--hotwords", str(FIXTURE / EXPECTED["hotwords"]["file"]))
    assert proc.returncode == 0, proc.stderr
    assert cli("export", "--job-dir", job, "--format", "parquet").returncode == 0
    got = {r["id"]: r for r in pq.read_table(job / "results.parquet").to_pylist()}
    for i, clip, label in rows:
        exp = CLIPS[clip][label or "file"]
        assert got[i]["text"] == exp["text"], (i, clip, label)
        assert [t["text"] for t in got[i]["tokens"]] == exp["tokens"], (i, clip, label)


def test_manifest_hotword_file_is_found_from_the_manifests_folder(tmp_path, asr):
    """A hotwords cell naming a file relative to the manifest's folder (not the current
    directory) reads that file, as a relative audio path is; a comma list and an absolute
    file still work."""
    folder = tmp_path / "manifests"
    (folder / "lists").mkdir(parents=True)
    (folder / "lists" / "hw.txt").write_bytes((FIXTURE / EXPECTED["hotwords"]["file"])
                                              .read_bytes())
    comma_list = EXPECTED["hotwords"]["list"].replace(" ", ",")
    # utt_7s: the clip whose result tells the file's hotwords from other lists
    rows = [("rel", "utt_7s", "lists/hw.txt", "file"), ("dot", "utt_7s", "./lists/hw.txt", "file"),
            ("abs", "utt_7s", str(folder / "lists" / "hw.txt"), "file"),
            ("comma", "utt_7s", comma_list, "list")]
    manifest = folder / "m.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "hotwords"])
        for i, clip, cell, _ in rows:
            w.writerow([i, AUDIO / f"{clip}.wav", cell])
    assert not (Path.cwd() / "lists" / "hw.txt").exists()  # only the manifest's folder has it
    job = tmp_path / "job"
    proc = cli("run", manifest, "--model", FIXTURE, "--job-dir", job, "--no-progress",
               "--vad", "none")
    assert proc.returncode == 0, proc.stderr
    assert cli("export", "--job-dir", job, "--format", "parquet").returncode == 0
    got = {r["id"]: r for r in pq.read_table(job / "results.parquet").to_pylist()}
    for i, clip, cell, label in rows:
        exp = CLIPS[clip][label]
        # the cell's text taken as a hotword would give another result
        assert asr.transcribe([wave(clip)], hotwords=[cell])[0].text != exp["text"], i
        assert got[i]["text"] == exp["text"], (i, clip, label)
        assert [t["text"] for t in got[i]["tokens"]] == exp["tokens"], (i, clip, label)


def test_each_hubs_paraformer_zh_alias(tmp_path, monkeypatch):
    """`paraformer-zh` is SeACo in a ModelScope cache and plain Paraformer in a Hugging Face
    cache (the HF one first); `paraformer-zh-seaco` only the ModelScope SeACo folder."""
    from batchasr.models.loader import SEACO_MS, CheckpointError, recognizer_traits, resolve

    plain = Path(__file__).parent / "fixtures" / "paraformer" / "zh_mixed"
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(CheckpointError, match="ModelScope"):
        resolve("paraformer-zh-seaco", download=True)  # not on Hugging Face
    ms = tmp_path / "ms" / "hub" / "models" / SEACO_MS
    ms.parent.mkdir(parents=True)
    ms.symlink_to(FIXTURE)
    assert resolve("paraformer-zh") == ms and resolve("paraformer-zh-seaco") == ms
    assert recognizer_traits("paraformer-zh")["max_segment_s"] == 30.0
    assert type(load_model("paraformer-zh")).__name__ == "SeacoParaformerASR"
    snap = tmp_path / "hf" / "models--funasr--paraformer-zh" / "snapshots" / "abc"
    snap.parent.mkdir(parents=True)
    snap.symlink_to(plain)
    assert resolve("paraformer-zh") == snap and resolve("paraformer-zh-seaco") == ms
