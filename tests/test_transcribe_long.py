"""`batchasr transcribe` cuts, batches and reassembles files as `batchasr run` does (issue 12,
point 5), in bounded memory, folders included; and `--no-guard` gives Fun-ASR-Nano's
official generated ids, with `tokens` the vocabulary pieces of those ids (point 6).

Real recordings (test_longform's clips joined with pauses, and the 45 s sample) through the
tiny Paraformer fixture, silero and the ct-punc fixture; the Nano fixture's official ids.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from batchasr.audio import decode as audio
from batchasr.audio import cut as audio_cut
from batchasr.runner import transcribe
from batchasr.manifest.scan import iter_audio_files
from batchasr.queue.store import JobQueue
from test_longform import write_recording

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "tests" / "fixtures" / "paraformer" / "zh_mixed"
PUNC = ROOT / "tests" / "fixtures" / "punc" / "zh"
NANO = ROOT / "tests" / "fixtures" / "nano" / "plain"
SAMPLES = ROOT / "sample_manifests" / "audio"
CLIPS = ROOT / "tests" / "fixtures" / "paraformer" / "audio"
SR = 16000


def batchasr(*args, check=None, timeout=300):
    proc = subprocess.run([sys.executable, "-m", "batchasr.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)
    if check is not None:
        assert proc.returncode == check, proc.stderr
    return proc


def json_lines(proc) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder as a user has one: a 150 s recording of speech with pauses, the 45 s sample
    (both longer than --max-segment-s: through the VAD), a short clip (sent whole), in a
    subfolder, plus a hidden file and a text file that the scan skips."""
    base = tmp_path_factory.mktemp("transcribe")
    rec = base / "rec"
    (rec / "day2").mkdir(parents=True)
    write_recording(rec / "meeting.wav", 150, seed=1)
    shutil.copy(SAMPLES / "long_45s.ogg", rec / "day2" / "long_45s.ogg")
    shutil.copy(SAMPLES / "zh_22k.ogg", rec / "day2" / "clip.ogg")
    shutil.copy(SAMPLES / "en_8k.wav", rec / "._hidden.wav")
    (rec / "notes.txt").write_text("not audio", encoding="utf-8")
    return base, rec


def run_rows(base: Path, rec: Path, name: str, *extra) -> list[dict]:
    job = base / name
    batchasr("run", rec, "--job-dir", job, "--model", MODEL, "--no-progress", *extra, check=0)
    batchasr("export", "--job-dir", job, "-o", job / "results.parquet", check=0)
    return pq.read_table(job / "results.parquet").to_pylist()


def as_record(row: dict) -> dict:
    """The parts of a job's row that `transcribe --json` prints, in its units."""
    ms = lambda s: int(round(s * 1000))  # noqa: E731
    return {"text": row["text"], "tokens": [t["text"] for t in row["tokens"]],
            "token_ids": [t["id"] for t in row["tokens"]],
            "timestamps": [[ms(t["start_s"]), ms(t["end_s"])] for t in row["tokens"]],
            "segments": [[round(s["start_s"], 3), round(s["end_s"], 3), s["text"]]
                         for s in row["segments"]],
            "duration_s": round(row["duration_s"], 3)}


@pytest.mark.parametrize("punc", ["none", PUNC], ids=["plain", "punc"])
def test_transcribe_gives_the_rows_of_run_for_a_folder_of_long_files(folder, punc):
    base, rec = folder
    rows = run_rows(base, rec, f"job-{Path(str(punc)).name}", "--punc", punc)
    out = batchasr("transcribe", "--model", MODEL, "--json", "--punc", punc, rec, check=0)
    got = json_lines(out)
    # the folder is scanned as `run` scans it (the hidden file and the text file skipped)
    assert [g["path"] for g in got] == [str(p) for p in iter_audio_files(rec)]
    assert [Path(g["path"]).relative_to(rec).as_posix() for g in got] == [r["id"] for r in rows]
    assert len(got) == 3
    for g, row in zip(got, rows):
        assert row["status"] == "done"
        assert {k: g[k] for k in as_record(row)} == as_record(row), row["id"]
    by_name = {Path(g["path"]).name: g for g in got}
    # the long files are cut at the VAD's pauses, in file time
    for name, duration in (("meeting.wav", 150.0), ("long_45s.ogg", 45.0)):
        g = by_name[name]
        assert g["duration_s"] == pytest.approx(duration) and len(g["segments"]) > 1, name
        starts = [s[0] for s in g["segments"]]
        assert starts == sorted(starts) and g["segments"][-1][1] > duration / 2, name
    # a short clip is sent whole: what it gives alone, as before
    alone = json_lines(batchasr("transcribe", "--model", MODEL, "--json", "--punc", punc,
                                rec / "day2" / "clip.ogg", check=0))[0]
    assert {k: v for k, v in alone.items() if k != "path"} == \
        {k: v for k, v in by_name["clip.ogg"].items() if k != "path"}


def test_transcribe_of_the_45s_sample_equals_its_row_in_a_job(tmp_path):
    """The issue's case: the 45 s sample came back as one 45 s segment."""
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"id,path\nlong,{SAMPLES / 'long_45s.ogg'}\n", encoding="utf-8")
    job = tmp_path / "job"
    batchasr("run", manifest, "--job-dir", job, "--model", MODEL, "--no-progress", check=0)
    batchasr("export", "--job-dir", job, "-o", job / "r.parquet", check=0)
    [row] = pq.read_table(job / "r.parquet").to_pylist()
    [got] = json_lines(batchasr("transcribe", "--model", MODEL, "--json",
                                SAMPLES / "long_45s.ogg", check=0))
    assert {k: got[k] for k in as_record(row)} == as_record(row)
    assert len(got["segments"]) > 1 and all(e - s <= 30 for s, e, _ in got["segments"])
    # --vad none: equal windows of --max-window-s (2 x 22.5 s), as the job cuts them too
    job = tmp_path / "windows"
    batchasr("run", manifest, "--job-dir", job, "--model", MODEL, "--no-progress", "--vad",
             "none", "--max-window-s", "25", check=0)
    batchasr("export", "--job-dir", job, "-o", job / "r.parquet", check=0)
    [row] = pq.read_table(job / "r.parquet").to_pylist()
    [win] = json_lines(batchasr("transcribe", "--model", MODEL, "--json", "--vad", "none",
                                "--max-window-s", "25", SAMPLES / "long_45s.ogg", check=0))
    assert {k: win[k] for k in as_record(row)} == as_record(row)
    assert win["text"] != got["text"] and any(s >= 22.5 for s, _, _ in win["segments"])


def test_errors_stay_per_file_and_in_input_order(folder, tmp_path):
    base, rec = folder
    empty = tmp_path / "empty"
    empty.mkdir()
    args = [SAMPLES / "truncated.wav", rec / "day2", empty, tmp_path / "nope.wav",
            SAMPLES / "en_16k_mono.wav"]
    proc = batchasr("transcribe", "--model", MODEL, "--json", *args)
    assert proc.returncode == 3
    got = json_lines(proc)
    assert [g["path"] for g in got] == [str(args[0]), str(rec / "day2" / "clip.ogg"),
                                        str(rec / "day2" / "long_45s.ogg"), str(empty),
                                        str(args[3]), str(args[4])]
    assert ["error" in g for g in got] == [True, False, False, True, True, False]
    assert "truncated" in got[0]["error"] and "missing" in got[4]["error"]
    assert got[3]["error"] == f"{empty}: no audio files in the folder"
    assert [line for line in proc.stderr.splitlines() if line.startswith("Error")] == \
        [f"Error: {got[i]['error']}" for i in (0, 3, 4)]
    # plain text: one "path<TAB>text" line per file, errors on stderr
    text = batchasr("transcribe", "--model", MODEL, rec)
    assert text.returncode == 0
    assert [line.split("\t")[0] for line in text.stdout.splitlines()] == \
        [str(p) for p in iter_audio_files(rec)]


def test_a_long_file_is_never_decoded_whole(folder, tmp_path, monkeypatch):
    """The streaming API `transcribe` uses: pieces go through a pool of a few batches; the
    whole file is never read (AudioFile.read, audio.load) and the audio held stays bounded
    whatever the file's length."""
    from batchasr.models.loader import load_model
    from batchasr.models.loader import load_vad

    _, rec = folder
    long_file = tmp_path / "long.wav"  # 10 minutes: 4 x the meeting, decoded a window at a time
    wave = sf.read(rec / "meeting.wav", dtype="float32")[0]
    sf.write(long_file, np.tile(wave, 4), SR, subtype="PCM_16")

    def whole(*a, **k):
        raise AssertionError("a whole file was decoded")

    monkeypatch.setattr(audio.AudioFile, "read", whole)
    monkeypatch.setattr(audio, "load", whole)
    model = load_model(MODEL)
    cut = audio_cut.CutOptions(vad=load_vad("silero"), max_segment_s=30.0)
    stats: dict = {}
    files = [(long_file, None), (rec / "day2" / "clip.ogg", None)]
    out = list(transcribe.transcribe_files(model, files, cut, batch_seconds=20.0, stats=stats))
    assert [r.path for r in out] == [str(p) for p, _ in files] and not any(r.error for r in out)
    assert out[0].duration_s == pytest.approx(600.0) and len(out[0].transcript.segments) > 50
    # the pool (4 batches of 20 s) plus one 30 s window of VAD segments, not 600 s
    assert 0 < stats["peak_pool_samples"] <= (4 * 20 + 30) * SR
    assert stats["batches"] > 10 and stats["model_audio_s"] < 500  # no silence sent


# ---- point 6: --no-guard and the tokens of LLM models --------------------------------------------


def nano_official(clip: str) -> list[int]:
    exp = json.loads((NANO / "expected.json").read_text(encoding="utf-8"))
    eos = json.loads((NANO / "Qwen3-0.6B" / "config.json").read_text())["eos_token_id"]
    eos = eos if isinstance(eos, list) else [eos]
    return [i for i in exp["clips"][clip]["generated_ids"] if i not in eos], exp["max_length"]


def test_no_guard_gives_the_official_ids_and_tokens_are_vocabulary_pieces():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(NANO / "Qwen3-0.6B" / "tokenizer.json"))
    official, cap = nano_official("utt_short")  # ' wa' then 'p' repeated to the cap
    clip = CLIPS / "utt_short.wav"
    common = ["--model", NANO, "--json", "--max-new-tokens", cap]
    [guarded] = json_lines(batchasr("transcribe", *common, clip, check=0))
    [exact] = json_lines(batchasr("transcribe", *common, "--no-guard", clip, check=0))
    # default: the loop is cut back to one copy of its unit and flagged
    assert guarded["flags"] == ["repetition_loop"]
    assert guarded["token_ids"] == official[:len(guarded["token_ids"])]
    assert len(guarded["token_ids"]) < len(official)
    # --no-guard: exactly the official ids, to the cap
    assert exact["token_ids"] == official and len(official) == cap
    assert exact["flags"] == ["token_cap"]
    # tokens: the vocabulary pieces of the ids; token_texts: what each adds to the text
    for rec in (guarded, exact):
        assert rec["tokens"] == [tok.id_to_token(i) for i in rec["token_ids"]]
        special = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
        assert "".join(t for t, i in zip(rec["token_texts"], rec["token_ids"])
                       if i not in special) == tok.decode(rec["token_ids"])
    assert any(p != t for p, t in zip(exact["tokens"], exact["token_texts"]))  # pieces, not text
    # the ceiling per audio second: 2 s of audio would allow 50 tokens; without the guard
    # the loop runs to --max-new-tokens
    [long_cap] = json_lines(batchasr("transcribe", "--model", NANO, "--json", "--no-guard",
                                     "--max-new-tokens", 80, clip, check=0))
    assert len(long_cap["token_ids"]) == 80 and long_cap["token_ids"][:cap] == official
    # Paraformer has no guard: the option is refused
    proc = batchasr("transcribe", "--model", MODEL, "--no-guard", clip)
    assert proc.returncode == 1 and "--no-guard does not apply to zh_mixed models" in proc.stderr


def test_run_no_guard_is_a_job_setting_and_gives_the_official_ids(tmp_path):
    official, cap = nano_official("utt_short")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"id,path\nshort,{CLIPS / 'utt_short.wav'}\n", encoding="utf-8")
    rows = {}
    for name, extra in (("guarded", []), ("exact", ["--no-guard"])):
        job = tmp_path / name
        batchasr("run", manifest, "--job-dir", job, "--model", NANO, "--max-new-tokens", cap,
                 "--no-progress", *extra, check=0)
        batchasr("export", "--job-dir", job, "-o", job / "r.parquet", check=0)
        [rows[name]] = pq.read_table(job / "r.parquet").to_pylist()
        with JobQueue(job) as q:
            assert q.meta().get("no_guard") is (True if extra else None)
    assert [t["id"] for t in rows["exact"]["tokens"]] == official
    assert rows["exact"]["flags"] == ["token_cap"]
    assert rows["guarded"]["flags"] == ["repetition_loop"]
    assert len(rows["guarded"]["tokens"]) < len(official)
