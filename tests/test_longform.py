"""Long recordings end to end: VAD cutting, reassembly in file time, punctuation, sentence
segments, subtitles, bounded memory and segment-level resume.

The recordings are real (espeak-ng clips from sample_manifests/audio/) joined with pauses,
so silero finds speech where it is; the ASR model is the tiny random Paraformer fixture
(gibberish text, real token times) and the punctuation model the tiny random ct-punc fixture.
Sentence building is checked against the official funasr functions' recorded outputs, and
the whole chain (fsmn-vad, Paraformer, ct-punc, sentences) against funasr's AutoModel run on
the same recording (tools/record_sentence_fixtures.py). No torch needed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from batchasr.audio import cut as audio_cut
from batchasr.runner import transcribe
from batchasr.outputs.parquet import results_table
from batchasr.outputs.rows import PART_SCHEMA, row_to_transcript, transcript_to_row
from batchasr.audio.decode import load
from batchasr.batches.sentences import (PUNC_MARKS, join_vad_texts, timestamp_sentence,
                                vad_segment_sentences)
from batchasr.outputs.cues import SubtitleOptions, build_cues
from batchasr.transcript import Segment, Token, Transcript

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "tests" / "fixtures" / "paraformer" / "zh_mixed"
PUNC = ROOT / "tests" / "fixtures" / "punc" / "zh"
AUDIO = ROOT / "sample_manifests" / "audio"
OFFICIAL = json.loads((ROOT / "tests" / "fixtures" / "sentences" / "official.json")
                      .read_text(encoding="utf-8"))
SR = 16000


def batchasr(*args, check=None, env=None, timeout=300):
    proc = subprocess.run([sys.executable, "-m", "batchasr.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if check is not None:
        assert proc.returncode == check, proc.stderr
    return proc


# ---- sentences: exact to the official functions -------------------------------------------------


@pytest.mark.parametrize("case", OFFICIAL["timestamp_sentence"], ids=lambda c: c["name"])
def test_timestamp_sentence_matches_official(case):
    got = timestamp_sentence(case["punc_ids"], case["timestamps"], case["text"],
                             return_raw_text=case["return_raw_text"])
    assert got == case["expected"]


def test_join_and_vad_segment_sentences_match_official():
    for case in OFFICIAL["join_vad_texts"]:
        assert join_vad_texts(case["texts"]) == case["expected"]
    for case in OFFICIAL["vad_segment_sentences"]:
        pieces = [(r["text"], r["timestamp"], tuple(s))
                  for r, s in zip(case["restored"], case["segments"])]
        assert vad_segment_sentences(pieces) == case["expected"]


def test_sentences_take_spaced_words_not_the_drifting_join():
    """AutoModel hands timestamp_sentence the joined text, whose CJK segment boundaries glue
    two tokens into one item: from the first boundary on, sentence texts drift one token per
    boundary away from their times. batchasr passes the words joined by spaces (what
    AutoModel passes for one segment), which keeps each sentence's text with its times."""
    d = OFFICIAL["drift"]
    assert timestamp_sentence(d["punc_ids"], d["timestamps"], d["joined"]) == \
        d["official_with_joined_text"]
    drifted = [s["text"] for s in d["official_with_joined_text"]]
    assert drifted[0] == "今天天气很，"  # 很 belongs to the next sentence's times
    ours = timestamp_sentence(d["punc_ids"], d["timestamps"], " ".join(d["segment_texts"]))
    assert ours == d["official_with_spaced_words"]
    assert [s["text"] for s in ours] == ["今天天气，", "很好。", " we went out 你呢？"]


# ---- cutting ----------------------------------------------------------------------------------------


def test_audio_tail_spills_to_disk_and_reads_back_exactly(tmp_path):
    rng = np.random.default_rng(0)
    wave = rng.standard_normal(100_000).astype(np.float32)
    tail = audio_cut.AudioTail(memory_samples=20_000, spill_dir=str(tmp_path))
    for i in range(0, len(wave), 7_000):
        tail.append(wave[i : i + 7_000])
        held = sum(len(c) for c in tail.chunks)
        assert held <= 20_000 + 7_000  # memory bounded by the limit plus one block
    assert tail.spilled > 50_000 and not list(tmp_path.iterdir())  # the file has no name
    for a, b in [(0, 10), (5_000, 95_000), (69_999, 70_001), (99_000, 100_000), (3, 3)]:
        np.testing.assert_array_equal(tail.read(a, b), wave[a:b])
    tail.drop_before(60_000)
    np.testing.assert_array_equal(tail.read(60_000, 100_000), wave[60_000:])
    with pytest.raises(ValueError, match="not held"):
        tail.read(59_000, 61_000)
    tail.drop_before(95_000)  # all that was spilled is dropped: the file is emptied
    assert os.fstat(tail.file.fileno()).st_size == 0
    tail.append(wave[:10])
    np.testing.assert_array_equal(tail.read(95_000, 100_010),
                                  np.concatenate([wave[95_000:], wave[:10]]))
    tail.close()


def recording(seconds: float, seed: int = 0, quiet_every: float | None = None,
              quiet_s: float = 0.0):
    """Real clips joined with 0.4-4 s pauses (and, every ``quiet_every`` s, ``quiet_s`` s of
    silence); returns the waveform and its speech spans in seconds."""
    clips = [load(AUDIO / n) for n in ("en_16k_mono.wav", "zh_44k_stereo.flac", "en_8k.wav",
                                        "zh_22k.ogg", "en_24bit.wav", "long_45s.ogg")]
    rng = np.random.default_rng(seed)
    parts, spans, n, k, next_quiet = [], [], 0, 0, quiet_every
    while n < seconds * SR:
        pause = rng.uniform(0.4, 4.0)
        if next_quiet is not None and n >= next_quiet * SR:
            pause, next_quiet = quiet_s, next_quiet + quiet_every
        parts.append(np.zeros(int(pause * SR), np.float32))
        n += len(parts[-1])
        clip = clips[k % len(clips)]
        spans.append((n / SR, (n + len(clip)) / SR))
        parts.append(clip)
        n += len(clip)
        k += 1
    return np.concatenate(parts)[: int(seconds * SR)], spans


def write_recording(path, seconds: float, seed: int = 0):
    wave, spans = recording(seconds, seed=seed)
    sf.write(path, wave, SR, subtype="PCM_16")
    return wave, spans


def test_segment_cutter_gives_the_vads_segments_in_bounded_memory(tmp_path):
    from batchasr.audio.cut import split_long_segments
    from batchasr.models.loader import load_vad

    vad = load_vad("silero")
    wave, _ = recording(150, quiet_every=40, quiet_s=30)  # silero holds a segment ~30 s back
    cut = audio_cut.CutOptions(vad=vad, max_segment_s=8.0, memory_s=20.0,
                              spill_dir=str(tmp_path))
    cutter = audio_cut.SegmentCutter(vad, cut)
    cuts, peak = [], 0
    for i in range(0, len(wave), 3 * SR + 17):
        cuts += cutter.feed(wave[i : i + 3 * SR + 17])
        peak = max(peak, sum(len(c) for c in cutter.tail.chunks))
    spilled = cutter.tail.spilled
    cuts += cutter.finish()
    expected = split_long_segments(vad.segments(wave), 8000)
    assert [(c.start_ms, c.end_ms) for c in cuts] == expected
    assert [c.index for c in cuts] == list(range(len(cuts)))
    for c in cuts:
        np.testing.assert_array_equal(c.audio, wave[c.start_ms * 16 : c.end_ms * 16])
        assert len(c.audio) <= 8 * SR
    assert spilled > 0 and peak <= 23 * SR  # the silence went to disk, not to memory


# ---- end to end -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def longform(tmp_path_factory):
    """A 5-minute recording, 40 s of silence (long: through the VAD, nothing found) and a
    short clip (sent whole); the manifest, and uninterrupted runs without and with
    punctuation."""
    base = tmp_path_factory.mktemp("longform")
    wave, spans = write_recording(base / "meeting.wav", 300)
    sf.write(base / "silence.wav", np.zeros(40 * SR, np.float32), SR, subtype="PCM_16")
    manifest = base / "m.csv"
    manifest.write_text("id,path\nmeeting,meeting.wav\nsilence,silence.wav\n"
                        f"clip,{AUDIO / 'zh_22k.ogg'}\n", encoding="utf-8")
    common = ["--model", MODEL, "--batch-seconds", "20", "--no-progress"]
    runs = {}
    for name, extra in (("plain", []), ("punc", ["--punc", PUNC])):
        job = base / name
        batchasr("run", manifest, "--job-dir", job, *common, *extra, check=0)
        runs[name] = job
    vad = json.loads(batchasr("segment", "--vad", "silero", "--json", "--max-segment-ms",
                              "30000", base / "meeting.wav", check=0).stdout)["segments"]
    return {"base": base, "manifest": manifest, "spans": spans, "runs": runs, "vad": vad,
            "common": common, "wave": wave}


def rows_of(job: Path) -> dict[str, dict]:
    batchasr("export", "--job-dir", job, "-o", job / "results.parquet", check=0)
    return {r["id"]: r for r in pq.read_table(job / "results.parquet").to_pylist()}


def last_run(job: Path) -> dict:
    return json.loads((job / "runs.jsonl").read_text().splitlines()[-1])


def test_vad_cuts_a_long_recording_where_people_speak(longform):
    vad, spans = longform["vad"], longform["spans"]
    # the VAD's segments cover the speech and leave the pauses out
    wave = longform["wave"]
    n = len(wave) // 160
    covered = np.zeros(n, bool)
    for a, b in vad:
        covered[a // 10 : b // 10] = True
    loud = np.sqrt((wave[: n * 160].reshape(n, 160) ** 2).mean(1)) > 0.01
    assert covered[loud].mean() > 0.95
    speech = np.zeros(n, bool)
    for a, b in spans:
        speech[max(0, int(a * 100) - 20) : int(b * 100) + 20] = True  # 0.2 s around a clip
    assert not (covered & ~speech).any()
    assert len(vad) > 40 and max(b - a for a, b in vad) <= 30000

    rows = rows_of(longform["runs"]["plain"])
    meeting = rows["meeting"]
    assert meeting["status"] == "done" and meeting["duration_s"] == pytest.approx(300.0)
    assert meeting["raw_text"] is None  # no punctuation model ran
    # one result segment per VAD segment the model gave text for, in file time, in order
    starts = [s["start_s"] for s in meeting["segments"]]
    assert starts == sorted(starts) and len(meeting["segments"]) > 30
    # every token lies inside a VAD segment: absolute times, silence never transcribed
    for t in meeting["tokens"]:
        assert any(a - 1 <= t["start_s"] * 1000 and t["end_s"] * 1000 <= b + 100
                   for a, b in vad), t
    assert meeting["tokens"][-1]["end_s"] > 250  # reaches the end of the recording
    # the model saw the VAD's segments and nothing else
    run = last_run(longform["runs"]["plain"])
    vad_audio = sum(b - a for a, b in vad) / 1000
    clip_audio = len(load(AUDIO / "zh_22k.ogg")) / SR
    assert run["model_audio_s"] == pytest.approx(vad_audio + clip_audio, abs=0.1)
    # silence gives nothing; a short file is sent whole, as `transcribe` sees it
    assert rows["silence"]["status"] == "done" and rows["silence"]["text"] == ""
    assert rows["silence"]["tokens"] == []
    clip = json.loads(batchasr("transcribe", "--model", MODEL, "--json", AUDIO / "zh_22k.ogg",
                               check=0).stdout)
    assert rows["clip"]["text"] == clip["text"]
    # subtitles: cues in order, inside the recording
    srt = sorted((longform["runs"]["plain"] / "subtitles").glob("meeting*.srt"))
    assert [p.name for p in srt] == ["meeting.srt"]  # a safe id is its own file name
    cues = srt[0].read_text(encoding="utf-8").strip().split("\n\n")
    assert len(cues) > 20 and cues[0].startswith("1\n00:00:")
    assert not (longform["runs"]["plain"] / "checkpoints").exists()  # removed once done


def test_punctuation_gives_punctuated_text_and_sentence_segments(longform):
    plain, punc = rows_of(longform["runs"]["plain"]), rows_of(longform["runs"]["punc"])
    for item in ("meeting", "clip"):
        p, q = plain[item], punc[item]
        assert q["raw_text"] == p["text"] and q["tokens"] == p["tokens"]
        assert q["text"] != p["text"] and any(m in q["text"] for m in "，。？、")
    meeting = punc["meeting"]
    # the sentences are timestamp_sentence's, from the punctuation ids and the word times
    # (recomputed here from the stored tokens: no word of this recording spans two segments)
    from batchasr.models.loader import load_model
    from batchasr.models.loader import load_punctuator

    model, punctuator = load_model(MODEL), load_punctuator(PUNC)
    tokens = row_to_transcript(meeting).tokens  # absolute times
    words, times = model.word_timestamps(Transcript("", tokens=tokens))
    text, ids = punctuator.punctuate(" ".join(words))
    assert text == meeting["text"]
    expected = [(s["start"] / 1000, s["end"] / 1000, s["text"].strip())
                for s in timestamp_sentence(ids, times, " ".join(words))]
    got = [(s["start_s"], s["end_s"], s["text"]) for s in meeting["segments"]]
    assert got == expected and len(got) > 5
    # subtitles: a cue starts at every sentence that follows a full stop or question mark
    job = longform["runs"]["punc"]
    [srt] = (job / "subtitles").glob("meeting.srt")
    cue_starts = {c.split("\n")[1].split(" --> ")[0]
                  for c in srt.read_text(encoding="utf-8").strip().split("\n\n")}
    after_stop = [k for k in range(1, len(got)) if got[k - 1][2][-1:] in "。？"]
    assert after_stop
    # room: how long a cue starting with sentence k could be shown before the next one
    room = [b[0] - a[0] - 0.083 for a, b in zip(got, got[1:])] + [float("inf")]
    joined = 0
    for k in after_stop:
        ms = round(got[k][0] * 1000)
        if f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}" \
                not in cue_starts:  # only where a sentence too short for 1 s joined its neighbour
            assert min(room[k - 1], room[k]) < 1.0, got[k - 1: k + 1]
            joined += 1
    assert joined < len(after_stop) / 2  # most sentences still start their own cue


def test_kill_mid_file_then_resume_keeps_finished_segments(longform, tmp_path):
    job = tmp_path / "job"
    args = ["run", longform["manifest"], "--job-dir", job, *longform["common"], "--punc", PUNC]
    crashed = batchasr(*args, env={"BATCHASR_TEST_CRASH_AT": "after_segment_cache:1"})
    assert crashed.returncode == -9, crashed.stderr  # SIGKILLed, mid-file
    saved = [r for p in (job / "checkpoints").rglob("seg-*.parquet")
             for r in pq.read_table(p).to_pylist()]
    assert saved and {r["id"] for r in saved} == {"meeting"}
    saved_s = sum(r["end_ms"] - r["start_ms"] for r in saved) / 1000
    assert saved_s >= 120  # one checkpoint per 120 s of the file's audio through the model
    batchasr(*args, check=0)  # the same command resumes
    run = last_run(job)
    assert run["segments_reused"] == len(saved)
    # the saved segments were not sent to the model again
    vad_audio = sum(b - a for a, b in longform["vad"]) / 1000
    assert run["model_audio_s"] <= vad_audio - saved_s + 6.0  # + the short clip
    # exactly once, and the same result as a run never interrupted
    rows = rows_of(job)
    expected = rows_of(longform["runs"]["punc"])
    assert list(rows) == ["meeting", "silence", "clip"]
    for key in ("status", "text", "raw_text", "tokens", "segments"):
        assert [r[key] for r in rows.values()] == [r[key] for r in expected.values()], key
    assert not (job / "checkpoints").exists()


def test_kill_before_any_checkpoint_then_resume_exactly_once(longform, tmp_path):
    job = tmp_path / "job"
    args = ["run", longform["manifest"], "--job-dir", job, *longform["common"]]
    crashed = batchasr(*args, env={"BATCHASR_TEST_CRASH_AT": "batch:3"})
    assert crashed.returncode == -9
    batchasr(*args, check=0)
    rows, expected = rows_of(job), rows_of(longform["runs"]["plain"])
    assert [(r["id"], r["status"], r["text"], r["tokens"]) for r in rows.values()] == \
        [(r["id"], r["status"], r["text"], r["tokens"]) for r in expected.values()]


def test_resumed_sense_voice_file_gives_the_uninterrupted_rows(longform, tmp_path):
    """SenseVoice's own Transcript fields (raw_text, emotion, event, aligned_pieces) come
    back from the segment cache: a long file resumed after a save gives every column of the
    rows of a run never interrupted."""
    sense_voice = ROOT / "tests" / "fixtures" / "sense_voice" / "tiny"
    common = ["--model", sense_voice, "--vad", "silero", "--batch-seconds", "20",
              "--no-progress"]
    whole = tmp_path / "whole"
    batchasr("run", longform["manifest"], "--job-dir", whole, *common, check=0)
    job = tmp_path / "job"
    args = ["run", longform["manifest"], "--job-dir", job, *common]
    crashed = batchasr(*args, env={"BATCHASR_TEST_CRASH_AT": "after_segment_cache:1"})
    assert crashed.returncode == -9, crashed.stderr  # SIGKILLed, mid-file
    assert list((job / "checkpoints").rglob("seg-*.parquet"))
    batchasr(*args, check=0)
    assert last_run(job)["segments_reused"] > 0
    rows, expected = rows_of(job), rows_of(whole)
    meeting = expected["meeting"]
    assert meeting["raw_text"] and meeting["emotion"] and meeting["event"]
    assert meeting["aligned_pieces"]
    assert list(rows) == list(expected)
    for item_id, row in rows.items():
        assert row == expected[item_id], item_id


def test_ray_engine_steps_give_the_worker_results(longform):
    """The Ray actors' path (decode_pieces in a task, transcribe_items with the punctuator
    in an actor) gives exactly the local worker's rows."""
    from batchasr.models.loader import load_model
    from batchasr.models.loader import load_punctuator
    from batchasr.models.loader import load_vad

    model = load_model(MODEL)
    cut = audio_cut.CutOptions(vad=load_vad("silero"), max_segment_s=30.0)
    items = []
    for item_id, path in (("meeting", longform["base"] / "meeting.wav"),
                          ("clip", AUDIO / "zh_22k.ogg")):
        pieces, duration = audio_cut.decode_pieces(str(path), cut)
        items.append(transcribe.DecodedItem({"id": item_id, "path": str(path)}, pieces, duration))
    rows = transcribe.transcribe_items(model, items, batch_seconds=37.0,
                                     punctuator=load_punctuator(PUNC))
    expected = rows_of(longform["runs"]["punc"])
    for row in rows:
        e = expected[row["id"]]
        for key in ("text", "raw_text", "tokens", "segments"):
            assert row[key] == e[key], (row["id"], key)


def test_the_whole_pipeline_matches_funasr_automodel(tmp_path):
    """`batchasr run --vad <fsmn-vad fixture> --punc <ct-punc fixture>` against funasr's own
    AutoModel(model, vad_model, punc_model).generate(sentence_timestamp=True) on the same
    recording (tools/record_sentence_fixtures.py automodel): the same punctuated text, word
    times in file time and sentence times; the sentence texts differ where AutoModel's joined
    text drifts (see test_sentences_take_spaced_words_not_the_drifting_join)."""
    import hashlib

    from batchasr.models.loader import load_model

    ref = json.loads((ROOT / "tests" / "fixtures" / "sentences" / "automodel.json")
                     .read_text(encoding="utf-8"))
    wav = tmp_path / "r.wav"
    write_recording(wav, 150, seed=3)
    assert hashlib.sha256(wav.read_bytes()).hexdigest() == ref["wav_sha256"], \
        "the recording differs from the one AutoModel was run on"
    (tmp_path / "m.csv").write_text(f"id,path\nr,{wav}\n", encoding="utf-8")
    job = tmp_path / "job"
    batchasr("run", tmp_path / "m.csv", "--job-dir", job, "--model", MODEL, "--vad",
             ROOT / "tests" / "fixtures" / "vad" / "fsmn", "--max-segment-s", "60", "--punc",
             PUNC, "--no-progress", check=0)
    row = rows_of(job)["r"]
    assert row["text"] == ref["text"]
    assert row["raw_text"] == ref["raw_text"].replace(" ", "")  # AutoModel: words + spaces
    words, times = load_model(MODEL).word_timestamps(
        Transcript("", tokens=row_to_transcript(row).tokens))
    assert times == ref["timestamp"] and len(times) > 200
    ours = [(round(s["start_s"] * 1000), round(s["end_s"] * 1000), s["text"])
            for s in row["segments"]]
    assert [s[:2] for s in ours] == [tuple(s[:2]) for s in ref["sentences"]]
    # the same words in the same order, but AutoModel's marks (which follow the punctuation
    # ids) land after other words, and its last sentences have marks and no words
    squeeze = lambda texts: "".join(c for t in texts for c in t if c not in " ，。？、")  # noqa
    assert squeeze(s[2] for s in ours) == squeeze(s[2] for s in ref["sentences"])
    assert [s[2] for s in ours] != [s[2].strip() for s in ref["sentences"]]
    assert ref["sentences"][-1][2] in PUNC_MARKS and ours[-1][2] not in PUNC_MARKS


# ---- results and subtitles -------------------------------------------------------------------------


def test_parts_written_before_raw_text_still_export(tmp_path):
    from batchasr.manifest.read import ManifestRow
    from batchasr.queue.store import JobQueue

    job = tmp_path / "job"
    with JobQueue(job) as q:
        q.enqueue([ManifestRow(line=2, id="a", path="a.wav", language=None, extra={})])
        [item] = q.claim(1, owner="me", lease_s=60)
        row = transcript_to_row({"id": "a", "path": "a.wav"}, Transcript("hi"),
                                        model_name="m")
        table = pa.Table.from_pylist([row], schema=PART_SCHEMA).drop_columns(["raw_text"])
        (job / "parts").mkdir()
        pq.write_table(table, job / "parts" / "part-old.parquet")
        q.complete(["a"], "part-old.parquet", owner="me")
    out = results_table(job).to_pylist()
    assert out[0]["text"] == "hi" and out[0]["raw_text"] is None


def test_segment_cache_keeps_every_transcript_field(tmp_path):
    """A saved segment reads back as the Transcript that was saved, whatever fields the
    dataclass has (each one set here to a value other than its default); a file saved
    before a field had its column still loads, with that field at its default."""
    from dataclasses import fields

    from batchasr.outputs import segment_cache

    t = Transcript(text="好的", tokens=[Token("好", 7, 0, 90), Token("的", 8, 100, 190)],
                   segments=[Segment(0.0, 0.19, "好的")], language="zh",
                   flags=["token_cap"], raw_text="<|zh|><|HAPPY|><|Speech|><|woitn|>好的",
                   emotion="HAPPY", event="Speech", aligned_pieces=[Token("▁好的", 9, 30, 150)])
    default = Transcript(text="")
    unset = [f.name for f in fields(Transcript) if getattr(t, f.name) == getattr(default, f.name)]
    assert not unset, f"give these fields a value in this test: {unset}"
    segment_cache.save_segments(tmp_path, "a", "src", [(3, 1000, 1190, t)])
    assert segment_cache.load_segments(tmp_path, "a", "src") == {(1000, 1190): t}
    # an older file: only the columns of the first version
    [path] = segment_cache.cache_folder(tmp_path, "a").glob("seg-*.parquet")
    old = pq.read_table(path).select(["id", "source", "index", "start_ms", "end_ms", "text",
                                      "tokens", "segments", "language", "flags"])
    pq.write_table(old, path)
    back = segment_cache.load_segments(tmp_path, "a", "src")[(1000, 1190)]
    assert back == Transcript(text=t.text, tokens=t.tokens, segments=t.segments,
                              language=t.language, flags=t.flags)


def test_cues_start_at_sentences_of_a_punctuated_transcript():
    # four tokens, the sentences 1 s apart: without sentences they all fit one cue (the pause
    # rule is widened so that the gap does not cut), with them a cue starts at each sentence
    opts = SubtitleOptions(pause=2.0)
    toks = [Token(c, i, t, t + 90) for i, (c, t) in enumerate(zip("好的是吗", (0, 100, 1200, 1300)))]
    sentences = [Segment(0.0, 0.19, "好的。"), Segment(1.2, 1.39, "是吗？")]
    plain = Transcript("好的。是吗？", tokens=toks, segments=sentences)
    assert len(build_cues(plain, opts)) == 1
    punctuated = Transcript("好的。是吗？", tokens=toks, segments=sentences, raw_text="好的是吗")
    cues = build_cues(punctuated, opts)
    assert [c.text for c in cues] == ["好的。", "是吗？"] and cues[1].start_s == 1.2
    # two sentences of 0.19 s each, 10 ms apart: neither can be shown for the minimum 1 s on
    # its own, so they share one cue (no cue shorter than the minimum unless the speech is)
    short = [Token(c, i, 100 * i, 100 * i + 90) for i, c in enumerate("好的是吗")]
    quick = Transcript("好的。是吗？", tokens=short, raw_text="好的是吗",
                       segments=[Segment(0.0, 0.19, "好的。"), Segment(0.2, 0.39, "是吗？")])
    assert [c.text for c in build_cues(quick)] == ["好的。是吗？"]
    # a comma ends a segment too, but only as a preferred cut
    commas = [Segment(0.0, 0.19, "好的，"), Segment(1.2, 1.39, "是吗？")]
    assert len(build_cues(Transcript("好的，是吗？", tokens=toks, segments=commas,
                                     raw_text="好的是吗"), opts)) == 1
