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
    # naming both models, and how to go on
    assert str(MODEL.resolve()) in proc.stderr and str(other.resolve()) in proc.stderr
    assert "another --job-dir" in proc.stderr and f"batchasr run --job-dir {job}" in proc.stderr


def test_dummy_weights_are_marked_in_results_and_status(tmp_path):
    job = tmp_path / "job"
    batchasr("run", SAMPLES / "demo.csv", "--model", MODEL, "--weights", "dummy", "--job-dir",
             job, "--limit", "1", "--no-progress", check=0)
    done = [r for r in export_rows(job) if r["status"] == "done"]
    assert [r["model"] for r in done] == ["zh_mixed (dummy weights)"]
    assert "(model zh_mixed (dummy weights))" in batchasr("status", "--job-dir", job).stdout
    assert job_meta(job)["model"] == str(MODEL.resolve())  # the setting is the model, no label
    proc = batchasr("run", "--job-dir", job, "--limit", "1", "--no-progress", check=0)
    assert "different settings" not in proc.stderr


def test_export_to_stdout(tmp_path):
    import io

    job = tmp_path / "job"
    batchasr("run", SAMPLES / "demo.csv", "--model", MODEL, "--job-dir", job, "--limit", "2",
             "--no-progress", check=0)
    proc = batchasr("export", "--job-dir", job, "--format", "jsonl", "-o", "-", check=0)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == 6 and sum(r["status"] == "done" for r in rows) == 2
    assert not (job / "results.jsonl").exists() and not (tmp_path / "-").exists()
    lines = batchasr("export", "--job-dir", job, "--format", "txt", "-o", "-",
                     check=0).stdout.splitlines()
    assert len(lines) == 2 and all(len(line.split("\t")) == 2 for line in lines)
    raw = subprocess.run([sys.executable, "-m", "batchasr.cli", "export", "--job-dir", job,
                          "--format", "parquet", "-o", "-"], capture_output=True, check=True).stdout
    assert pq.read_table(io.BytesIO(raw)).to_pylist() == rows == export_rows(job)
    for fmt in ("srt", "vtt"):
        proc = batchasr("export", "--job-dir", job, "--format", fmt, "-o", "-")
        assert proc.returncode == 2 and "writes one file per item" in proc.stderr, proc.stderr
        assert proc.stdout == ""


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


# ---- issue 12: a failed start, the model's identity, interrupts ------------------------------


def job_meta(job: Path) -> dict:
    from batchasr.queue.store import JobQueue

    with JobQueue(job) as q:
        return q.meta()


def test_a_failed_start_never_pins_the_job_folder(tmp_path):
    job = tmp_path / "J"
    proc = batchasr("run", SAMPLES / "demo.csv", "--model", "does-not-exist", "--job-dir", job)
    assert proc.returncode == 1 and "does-not-exist" in proc.stderr
    assert not job.exists()
    for bad in (["--vad", tmp_path / "no-vad"], ["--punc", tmp_path / "no-punc"],
                ["--workers", "2", "--model", tmp_path / "no-model"],
                ["--workers", "2", "--vad", tmp_path / "no-vad"]):
        proc = batchasr("run", SAMPLES / "demo.csv", "--model", MODEL, "--job-dir", job, *bad)
        assert proc.returncode == 1 and str(bad[-1]) in proc.stderr, bad
        assert not job.exists(), bad
    proc = batchasr("run", SAMPLES / "demo.csv", "--model", MODEL, "--job-dir", job,
                    "--no-progress", check=0)
    assert "loading model" in proc.stderr
    assert json.loads(batchasr("status", "--job-dir", job, "--json").stdout)["done"] == 6


def test_the_same_model_spelled_three_ways_and_job_dir_alone_resume_one_job(tmp_path):
    job = tmp_path / "job"
    rel = MODEL.relative_to(ROOT)
    for spelling in (rel, f"./{rel}", MODEL):
        batchasr("run", SAMPLES / "demo.csv", "--model", spelling, "--job-dir", job,
                 "--limit", "1", "--no-progress", cwd=ROOT, check=0)
    meta = job_meta(job)
    assert meta["model"] == str(MODEL.resolve()) and meta["model_name"] == "zh_mixed"
    # --job-dir alone, from another folder: the job's own model and settings
    batchasr("run", "--job-dir", job, "--no-progress", cwd=tmp_path, check=0)
    assert json.loads(batchasr("status", "--job-dir", job, "--json").stdout)["done"] == 6
    assert job_meta(job) == meta


def test_an_older_job_recording_the_typed_path_still_resumes(tmp_path):
    from batchasr.queue.store import JobQueue

    job = tmp_path / "job"
    batchasr("run", SAMPLES / "demo.csv", "--model", MODEL, "--job-dir", job, "--limit", "1",
             "--no-progress", check=0)
    with JobQueue(job) as q:  # as an older version recorded it: the string typed
        q.set_meta({"model": str(MODEL.relative_to(ROOT))})
    batchasr("run", "--job-dir", job, "--model", MODEL, "--limit", "1", "--no-progress",
             check=0)
    assert job_meta(job)["model"] == str(MODEL.resolve())


def test_retry_failed_help_example_resumes_with_the_jobs_model(tmp_path):
    job = tmp_path / "job"
    batchasr("run", SAMPLES / "with_errors.csv", "--model", MODEL, "--job-dir", job,
             "--no-progress", check=3)
    batchasr("retry-failed", "--job-dir", job, check=0)
    proc = batchasr("run", "--job-dir", job, "--no-progress", check=3)
    assert "different settings" not in proc.stderr
    assert json.loads(batchasr("status", "--job-dir", job, "--json").stdout) == \
        {"pending": 0, "running": 0, "done": 6, "failed": 5, "interrupted": 0, "skipped": 0}


class StderrLines:
    """A running command's stderr lines, read by a thread, to wait for a message."""

    def __init__(self, proc: subprocess.Popen):
        import threading

        self.proc, self.lines, self.cv = proc, [], threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stderr:
            with self.cv:
                self.lines.append(line)
                self.cv.notify_all()

    def wait_for(self, text: str, count: int = 1, timeout: float = 120) -> float:
        """Block until ``text`` has appeared in ``count`` lines; returns the time it did."""
        with self.cv:
            ok = self.cv.wait_for(lambda: sum(text in x for x in self.lines) >= count, timeout)
        assert ok, f"no {text!r} in:\n{self.text}"
        return time.monotonic()

    @property
    def text(self) -> str:
        self.thread.join(0.5) if self.proc.poll() is not None else None
        return "".join(self.lines)


def start_run(*args, slow_s: float | None = None):
    """`batchasr run` in the background; ``slow_s``: every model call first blocks that long
    in C code with the signals blocked on the model's thread (BATCHASR_TEST_SLOW_BATCH)."""
    import os

    env = {**os.environ, **({"BATCHASR_TEST_SLOW_BATCH": str(slow_s)} if slow_s else {})}
    proc = subprocess.Popen([sys.executable, "-m", "batchasr.cli", "run", *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    return proc, StderrLines(proc)


def queue_state(job: Path):
    from batchasr.queue.store import JobQueue

    with JobQueue(job) as q:
        return q.counts(), {i.id: i for i in q.items()}


def check_stopped_then_resume(job, args, err, n):
    """After a stop: nothing running, none lost, pending items with no attempt counted, the
    stop line naming what is left; then the same command finishes every item exactly once."""
    counts, items = queue_state(job)
    assert counts["running"] == 0 and counts["failed"] == 0
    assert counts["done"] + counts["pending"] == n and counts["pending"] > 0
    assert all(i.attempts == 0 for i in items.values() if i.status == "pending")
    assert (f"stopped: {counts['pending']} item(s) left, run the same command to continue"
            in err)
    done_before = {i.id: i.part for i in items.values() if i.status == "done"}
    batchasr("run", *args, check=0)
    rows = export_rows(job)
    assert [r["id"] for r in rows] == [f"item-{i:04d}" for i in range(n)]
    assert all(r["status"] == "done" for r in rows)
    _, items = queue_state(job)
    assert all(items[i].part == part for i, part in done_before.items())  # not redone


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_after_the_batch_in_flight_and_exits_128_plus_it(tmp_path, sig):
    job = tmp_path / "job"
    args = [big_manifest(tmp_path, 24), "--model", MODEL, "--job-dir", job,
            "--batch-seconds", "5", "--no-progress"]
    proc, err = start_run(*args, slow_s=3)
    err.wait_for("batchasr-test: slow batch")  # the model's thread is in C, signals blocked
    sent = time.monotonic()
    proc.send_signal(sig)
    # said at once (not when the model call returns), with what the stop waits for
    assert err.wait_for("stopping after the current batch") - sent < 1.5
    assert "s of audio in the model" in err.text
    assert proc.wait(timeout=60) == 128 + sig  # 130 / 143
    check_stopped_then_resume(job, args, err.text, 24)


def test_a_second_ctrl_c_stops_at_once_inside_a_long_model_call(tmp_path):
    job = tmp_path / "job"
    args = [big_manifest(tmp_path, 24), "--model", MODEL, "--job-dir", job,
            "--batch-seconds", "5", "--no-progress"]
    proc, err = start_run(*args, slow_s=30)  # one model call of 30 s
    err.wait_for("batchasr-test: slow batch")
    proc.send_signal(signal.SIGINT)
    err.wait_for("stopping after the current batch")
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    assert proc.wait(timeout=20) == 130
    assert time.monotonic() - sent < 5
    assert "stopping now" in err.text
    check_stopped_then_resume(job, args, err.text, 24)


def test_export_job_dir_patterns_expand_in_natural_order_or_fail_clearly(tmp_path):
    from batchasr.outputs.export import expand_job_dirs

    for n in (10, 2, 1):
        (tmp_path / f"m.shard-{n}").mkdir()
    assert expand_job_dirs([str(tmp_path / "m.shard-*"), "plain"]) == \
        [str(tmp_path / f"m.shard-{n}") for n in (1, 2, 10)] + ["plain"]
    result = CliRunner().invoke(cli, ["export", "--job-dir", str(tmp_path / "none-*")])
    assert result.exit_code == 1
    assert f"Error: --job-dir {tmp_path / 'none-*'}: no folder matches" in result.output
