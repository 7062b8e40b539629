"""Issue 12, points 4 and 7 through the CLI: bad manifest rows (repeated ids, bytes that are
not UTF-8) are skipped and recorded in the job; `batchasr status` counts, lists and times a
job as a person reads it; the progress bar of `batchasr run`."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchasr.audio import decode as audio
from conftest import FakeModel, done_count, write_marked_wav
from test_cli import MODEL, SAMPLES, batchasr, big_manifest

AUDIO = SAMPLES / "audio"
GOOD = AUDIO / "en_16k_mono.wav"


def bad_manifest(tmp_path: Path, fmt: str) -> tuple[Path, dict[int, str]]:
    """A manifest of 4 rows: 2 good, then a repeated id (line 4) and a row with a Latin-1
    byte (line 5); returns it and the skipped lines with a word of their reason."""
    other = AUDIO / "en_8k.wav"
    if fmt == "jsonl":
        lines = [json.dumps({"id": "a", "path": str(GOOD)}).encode(),
                 json.dumps({"id": "b", "path": str(other)}).encode(),
                 json.dumps({"id": "a", "path": str(other)}).encode(),
                 b'{"id": "caf\xe9", "path": "' + str(GOOD).encode() + b'"}']
        data = b"\n".join(lines) + b"\n"
        first = 1
    else:
        sep = b"\t" if fmt == "tsv" else b","
        rows = [[b"id", b"path"], [b"a", str(GOOD).encode()], [b"b", str(other).encode()],
                [b"a", str(other).encode()], [b"caf\xe9", str(GOOD).encode()]]
        data = b"".join(sep.join(r) + b"\n" for r in rows)
        first = 2
    path = tmp_path / f"m.{fmt}"
    path.write_bytes(data)
    return path, {first + 2: "duplicate id 'a'", first + 3: "UTF-8"}


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_repeated_id_and_bad_utf8_rows_are_skipped_and_recorded(tmp_path, fmt):
    manifest, skipped = bad_manifest(tmp_path, fmt)
    job = tmp_path / "job"
    args = ["run", manifest, "--model", MODEL, "--job-dir", job, "--no-progress"]
    proc = batchasr(*args)
    assert proc.returncode == 3, proc.stderr  # done, with rows skipped
    for line, why in skipped.items():
        assert any(f"{manifest}:{line}: " in x and why in x and "(row skipped)" in x
                   for x in proc.stderr.splitlines()), proc.stderr
    assert "Traceback" not in proc.stderr
    assert "2 manifest row(s) skipped: see `batchasr status" in proc.stderr
    counts = json.loads(batchasr("status", "--job-dir", job, "--json", check=0).stdout)
    assert (counts["done"], counts["skipped"], counts["failed"]) == (2, 2, 0)
    text = batchasr("status", "--job-dir", job, check=0).stdout
    assert "skipped  2 manifest row(s)" in text and "--failed" in text
    # the same command again: the same two records, not four
    assert batchasr(*args).returncode == 3
    out = json.loads(batchasr("status", "--job-dir", job, "--failed", "--json", check=0).stdout)
    assert out["skipped"] == 2
    rows = out["skipped_rows"]
    assert [r["line"] for r in rows] == sorted(skipped)
    for r in rows:
        assert r["manifest"] == str(manifest.resolve()) and skipped[r["line"]] in r["reason"]
    assert str(AUDIO / "en_8k.wav") in rows[0]["raw"]  # the repeated id's own row
    assert "caf\\xe9" in rows[1]["raw"]  # the bad byte, shown
    listing = batchasr("status", "--job-dir", job, "--failed", check=0).stdout
    assert f"{manifest.resolve()}:{sorted(skipped)[0]}: duplicate id 'a'" in listing
    # the first occurrence of the id is the one queued
    with_strict = batchasr("run", manifest, "--model", MODEL, "--job-dir", tmp_path / "strict",
                           "--no-progress", "--strict-manifest")
    assert with_strict.returncode == 1 and "duplicate id 'a'" in with_strict.stderr


def test_a_fixed_manifest_replaces_its_skipped_records(tmp_path):
    manifest, _ = bad_manifest(tmp_path, "csv")
    job = tmp_path / "job"
    batchasr("run", manifest, "--model", MODEL, "--job-dir", job, "--no-progress", check=3)
    manifest.write_text(f"id,path\na,{GOOD}\nb,{AUDIO / 'en_8k.wav'}\n", encoding="utf-8")
    batchasr("run", manifest, "--model", MODEL, "--job-dir", job, "--no-progress", check=0)
    assert json.loads(batchasr("status", "--job-dir", job, "--json").stdout)["skipped"] == 0


def test_status_failed_json_lists_failures_once_without_eta(tmp_path):
    job = tmp_path / "job"
    batchasr("run", SAMPLES / "with_errors.csv", "--model", MODEL, "--job-dir", job,
             "--no-progress", check=3)
    out = json.loads(batchasr("status", "--job-dir", job, "--failed", "--json", check=0).stdout)
    assert {k: out[k] for k in ("pending", "running", "done", "failed")} == \
        {"pending": 0, "running": 0, "done": 6, "failed": 5}
    assert len(out["failed_items"]) == 5 and out["skipped_rows"] == []
    assert all(set(f) == {"id", "path", "error"} and f["error"] for f in out["failed_items"])
    text = batchasr("status", "--job-dir", job, "--failed", check=0).stdout
    for f in out["failed_items"]:
        assert text.count(f["path"]) == 1, text  # each failed path printed once
    assert "speed" in text and "eta" not in text  # nothing left: no ETA line


def test_status_of_a_live_run_then_of_a_killed_one(tmp_path):
    """During a first run: speed and ETA from the run's own figures, `running` = the items
    its worker holds; after a kill -9: those items are interrupted, none running."""
    n = 3000
    manifest = big_manifest(tmp_path, n)
    job = tmp_path / "job"
    args = [sys.executable, "-m", "batchasr.cli", "run", manifest, "--model", MODEL,
            "--job-dir", job, "--batch-seconds", "20", "--no-progress"]
    proc = subprocess.Popen(list(map(str, args)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120

        def live_audio() -> float:
            try:
                return sum(json.loads(f.read_text())["audio_s"]
                           for f in (job / "progress").glob("*.json"))
            except (OSError, ValueError):
                return 0.0

        while live_audio() <= 0 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        text = batchasr("status", "--job-dir", job, check=0).stdout
        counts = json.loads(batchasr("status", "--job-dir", job, "--json", check=0).stdout)
        assert proc.poll() is None, "the run finished first; make the job longer"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (job / "runs.jsonl").exists()  # a first run: nothing recorded yet
    assert "x real time in the run in progress" in text, text
    assert "eta      " in text and "item(s) left" in text, text
    assert counts["running"] > 0 and counts["interrupted"] == 0
    assert done_count(job) < n
    after = json.loads(batchasr("status", "--job-dir", job, "--json", check=0).stdout)
    assert after["running"] == 0 and after["interrupted"] > 0
    assert after["pending"] + after["done"] + after["failed"] == n
    assert "interrupted" in batchasr("status", "--job-dir", job, check=0).stdout


def test_progress_bar_is_labelled_and_logs_print_above_it(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"id,path\ngood,{GOOD}\nbad,{tmp_path / 'nope.wav'}\n", encoding="utf-8")
    job = tmp_path / "job"
    proc = batchasr("run", manifest, "--model", MODEL, "--job-dir", job, "--limit", "1")
    assert proc.returncode == 0, proc.stderr
    assert "first batch" in proc.stderr and "x real time" in proc.stderr
    assert " audio [" in proc.stderr  # n/total are audio time, e.g. 00:05/00:05 audio
    # resuming: the bar starts from the job's done part, and says so
    again = batchasr("run", manifest, "--model", MODEL, "--job-dir", job)
    assert again.returncode == 3
    assert "resuming: " in again.stderr and "done before" in again.stderr
    # the failure's log line is printed above the bar (cleared first), not glued onto it
    [line] = [x for x in again.stderr.split("\n") if "bad failed:" in x]
    assert line.split("\r")[-1].startswith("WARNING batchasr.worker: bad failed:"), repr(line)


# ---- the bar, on the runner ----------------------------------------------------------------


def test_bar_total_is_the_probed_audio_and_only_moves_forward(tmp_path, monkeypatch):
    from batchasr.runner import local
    from batchasr.runner.stages import progress as progress_stage
    from batchasr.manifest.read import open_manifest
    from batchasr.queue.store import JobQueue

    seen: list = []

    class Recording(progress_stage.AudioBar):
        def update(self, n=1):
            out = super().update(n)
            seen.append((self.n, self.total, self.initial))
            return out

    monkeypatch.setattr(progress_stage, "AudioBar", Recording)
    lengths = [3.0, 1.0, 2.5, 4.0, 0.5, 6.0]
    with open(tmp_path / "m.csv", "w") as f:
        f.write("path\n")
        for i, s in enumerate(lengths):
            write_marked_wav(tmp_path / f"a{i}.wav", s, i + 1)
            f.write(f"a{i}.wav\n")
    job = tmp_path / "job"
    with JobQueue(job) as q:
        q.enqueue(open_manifest(tmp_path / "m.csv"))
        assert q.probe_durations(lambda p: audio.probe(p)[0], threads=3) == len(lengths)
        assert sorted(i.duration_s for i in q.items()) == sorted(lengths)
    local.run_job(job, FakeModel(), batch_seconds=4, limit=3, progress=True)
    first = sum(lengths[:3])
    assert seen and all(t == pytest.approx(first) for _, t, _ in seen)  # known from the start
    ns = [n for n, _, _ in seen]
    assert ns == sorted(ns) and ns[-1] == pytest.approx(first)
    seen.clear()
    local.run_job(job, FakeModel(), batch_seconds=4, progress=True)
    assert all(t == pytest.approx(sum(lengths)) and i == pytest.approx(first)
               for _, t, i in seen)  # the whole job, its done part as the initial value
    ns = [n for n, _, _ in seen]
    assert ns == sorted(ns) and ns[-1] == pytest.approx(sum(lengths))
