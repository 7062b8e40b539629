"""End to end through the public interfaces: `batchasr run`, `export`, `status`,
`retry-failed`, `transcribe --json`, with the small official-layout Paraformer fixture."""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from batchasr.cli import cli
from conftest import done_count

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "tests" / "fixtures" / "paraformer" / "zh_mixed"
SAMPLES = ROOT / "sample_manifests"
AUDIO = ROOT / "tests" / "fixtures" / "paraformer" / "audio"


def batchasr(*args, check=None, timeout=300, **kw):
    proc = subprocess.run([sys.executable, "-m", "batchasr.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, **kw)
    if check is not None:
        assert proc.returncode == check, proc.stderr
    return proc


def export_rows(job: Path) -> list[dict]:
    batchasr("export", "--job-dir", job, "--format", "parquet", check=0)
    return pq.read_table(job / "results.parquet").to_pylist()


def test_every_command_has_help():
    runner = CliRunner()
    for name, command in cli.commands.items():
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, name
        assert "Example" in result.output and command.help, name


def test_run_demo_manifest_then_export_and_status(tmp_path):
    job = tmp_path / "job"
    proc = batchasr("run", SAMPLES / "with_errors.csv", "--model", MODEL, "--job-dir", job,
                    "--no-progress")
    assert proc.returncode == 3, proc.stderr  # done, with the broken files failed
    rows = export_rows(job)
    with open(SAMPLES / "with_errors.csv", encoding="utf-8") as f:
        manifest = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == [m["id"] for m in manifest]  # one row each, in order
    by_id = {r["id"]: r for r in rows}
    for m in manifest:
        r = by_id[m["id"]]
        assert r["speaker"] == m["speaker"]  # carried column, as written
        if m["id"].startswith("bad-"):
            assert r["status"] == "failed" and r["error"], m["id"]
        else:
            assert r["status"] == "done" and r["duration_s"] > 0, m["id"]
            assert r["model"] and r["tokens"], m["id"]
    # a short clip's text in the job equals `transcribe` on the same file
    clip = SAMPLES / "audio" / "en_16k_mono.wav"
    out = batchasr("transcribe", "--model", MODEL, "--json", clip, check=0)
    assert json.loads(out.stdout)["text"] == by_id["en-16k-mono"]["text"]
    # status
    counts = json.loads(batchasr("status", "--job-dir", job, "--json", check=0).stdout)
    assert counts == {"pending": 0, "running": 0, "done": 6, "failed": 5, "interrupted": 0,
                      "skipped": 0}
    listing = batchasr("status", "--job-dir", job, "--failed", check=0).stdout
    assert "bad-missing" in listing and "missing" in listing
    # subtitles: one per done file, inside the job folder
    srts = sorted((job / "subtitles").glob("*.srt"))
    assert len(srts) == 6
    # re-running does nothing twice
    again = batchasr("run", SAMPLES / "with_errors.csv", "--model", MODEL, "--job-dir", job)
    assert again.returncode == 3 and "nothing to do" in again.stderr
    assert export_rows(job) == rows
    # retry-failed requeues the failures, which fail again with the same errors
    batchasr("retry-failed", "--job-dir", job, check=0)
    assert json.loads(batchasr("status", "--job-dir", job, "--json").stdout)["pending"] == 5
    batchasr("run", "--job-dir", job, "--model", MODEL, "--no-progress", check=3)
    assert [r["status"] for r in export_rows(job)] == [r["status"] for r in rows]


def test_other_model_on_resume_is_refused(tmp_path):
    job = tmp_path / "job"
    batchasr("run", SAMPLES / "demo.csv", "--model", MODEL, "--job-dir", job, "--limit", "1",
             "--no-progress", check=0)
    other = MODEL.parent / "en"
    proc = batchasr("run", SAMPLES / "demo.csv", "--model", other, "--job-dir", job)
    assert proc.returncode == 1 and "different settings" in proc.stderr


def test_limit_transcribes_only_n(tmp_path):
    job = tmp_path / "job"
    batchasr("run", SAMPLES / "demo.csv", "--model", MODEL, "--job-dir", job, "--limit", "2",
             "--no-progress", check=0)
    counts = json.loads(batchasr("status", "--job-dir", job, "--json").stdout)
    assert counts["done"] == 2 and counts["pending"] == 4


def big_manifest(tmp_path: Path, n: int, ids=None) -> Path:
    clips = sorted(p for p in AUDIO.glob("utt_*.wav") if "tiny" not in p.name)
    path = tmp_path / "big.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "n"])
        for i in range(n):
            w.writerow([ids[i] if ids else f"item-{i:04d}", clips[i % len(clips)], i])
    return path


@pytest.mark.slow
@pytest.mark.parametrize("kill_at_done", [0, 50, 150])
def test_kill_minus_9_then_resume_exactly_once(tmp_path, kill_at_done):
    """SIGKILL the runner once `kill_at_done` items are committed (0: as soon as the queue
    exists, i.e. mid-enqueue/decode), resume, and check every item is there exactly once."""
    manifest = big_manifest(tmp_path, 240)
    job = tmp_path / "job"
    args = [sys.executable, "-m", "batchasr.cli", "run", manifest, "--model", MODEL,
            "--job-dir", job, "--batch-seconds", "20", "--no-progress"]
    proc = subprocess.Popen(list(map(str, args)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while done_count(job) < kill_at_done and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert done_count(job) < 240, "the run finished before the kill; make the job longer"
    batchasr(*args[3:], check=0)
    rows = export_rows(job)
    assert [r["id"] for r in rows] == [f"item-{i:04d}" for i in range(240)]
    assert all(r["status"] == "done" for r in rows)
    # and every done item's stored result equals a fresh transcription of its clip
    texts = {}
    for r in rows[:8]:
        texts.setdefault(r["path"], json.loads(batchasr(
            "transcribe", "--model", MODEL, "--json", r["path"]).stdout)["text"])
        assert r["text"] == texts[r["path"]]


def test_second_runner_is_refused(tmp_path):
    manifest = big_manifest(tmp_path, 240)
    job = tmp_path / "job"
    args = ["run", manifest, "--model", MODEL, "--job-dir", job, "--batch-seconds", "20",
            "--no-progress"]
    first = subprocess.Popen([sys.executable, "-m", "batchasr.cli", *map(str, args)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (job / "queue.db").exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        second = batchasr(*args)
        if first.poll() is None:  # the first one still holds the job
            assert second.returncode == 1
            assert "another" in second.stderr.lower() or "lock" in second.stderr.lower()
    finally:
        first.wait(timeout=300)
    assert first.returncode == 0, first.stderr.read()


def test_hostile_ids_stay_inside_the_job(tmp_path):
    ids = ["../../escape", "a/b/c", "/etc/passwd", "..", "CON", "x" * 300]
    manifest = big_manifest(tmp_path, len(ids), ids=ids)
    job = tmp_path / "deep" / "job"
    batchasr("run", manifest, "--model", MODEL, "--job-dir", job, "--no-progress", check=0)
    batchasr("export", "--job-dir", job, "--format", "txt", "-o", job / "txt", check=0)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(job in p.parents for p in written if p != manifest), written
    assert len(list((job / "subtitles").glob("*.srt"))) == len(ids)
    assert [r["id"] for r in export_rows(job)] == ids


def test_transcribe_json_interface(tmp_path):
    files = [AUDIO / "utt_2s.wav", tmp_path / "nope.wav", AUDIO / "utt_tiny.wav"]
    proc = batchasr("transcribe", "--model", MODEL, "--json", *files)
    assert proc.returncode == 3  # one file failed, the others were transcribed
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [x["path"] for x in lines] == [str(f) for f in files]
    first = lines[0]
    assert {"path", "text", "tokens", "token_ids", "timestamps"} <= set(first)
    assert len(first["tokens"]) == len(first["timestamps"]) == len(first["token_ids"])
    assert "error" in lines[1] and "missing" in lines[1]["error"]
    assert lines[2]["text"] == "" and lines[2]["tokens"] == []


def test_unknown_model_is_a_clear_error(tmp_path):
    proc = batchasr("transcribe", "--model", tmp_path / "nothing", AUDIO / "utt_2s.wav")
    assert proc.returncode == 1 and "not a known name" in proc.stderr
