"""worker.py with a fake model: every item done exactly once, failures per item, windows,
limit, stop, resume, and kill -9 at named points followed by a resume."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from batchasr.outputs import parquet
from batchasr.errors import JobError
from batchasr.manifest.read import open_manifest
from batchasr.queue.store import JobQueue
from batchasr.runner.local import run_job
from batchasr.runner.options import RunOptions

from conftest import FakeModel, PipelinedFakeModel, write_marked_wav

TESTS = Path(__file__).parent


def make_job(tmp_path, durations, *, extra_lines=()):
    """Audio files a<i>.wav (mark i+1, the given durations), a manifest, an enqueued job."""
    lines = ["path,id,speaker"]
    for i, d in enumerate(durations):
        write_marked_wav(tmp_path / "audio" / f"a{i}.wav", d, i + 1)
        lines.append(f"audio/a{i}.wav,item{i},s{i % 3}")
    lines += extra_lines
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    job = tmp_path / "job"
    with JobQueue(job) as q:
        q.enqueue(open_manifest(tmp_path / "m.csv"))
    return job


def check_done_exactly_once(job, expected_ids):
    """Every expected item is done, its recorded part holds exactly one row for it, with
    the text the fake model gives its audio."""
    with JobQueue(job) as q:
        items = {i.id: i for i in q.items()}
    assert {i for i, it in items.items() if it.status == "done"} == set(expected_ids)
    for item_id in expected_ids:
        it = items[item_id]
        rows = [r for r in parquet.read_part(job, it.part).to_pylist() if r["id"] == item_id]
        assert len(rows) == 1, f"{item_id} appears {len(rows)} times in {it.part}"
        mark = int(item_id.removeprefix("item")) + 1
        assert rows[0]["text"].startswith(f"m{mark}:")
        assert rows[0]["duration_s"] == pytest.approx(it.duration_s)
    return items


DURATIONS = [0.5, 3.0, 1.0, 2.5, 0.7, 4.0, 1.2, 0.3, 2.0, 1.8, 3.3, 0.9]


def test_all_items_done_exactly_once(tmp_path, fake_model):
    job = make_job(tmp_path, DURATIONS)
    s = run_job(job, fake_model, batch_seconds=4.0, progress=False)
    assert (s.done, s.failed, s.stopped) == (len(DURATIONS), 0, False)
    items = check_done_exactly_once(job, [f"item{i}" for i in range(len(DURATIONS))])
    # one piece per file, each transcribed once
    assert sorted(m for m, _ in fake_model.seen) == list(range(1, len(DURATIONS) + 1))
    assert max(fake_model.calls) > 1  # files really were batched
    assert s.remaining == {"pending": 0, "running": 0, "done": len(DURATIONS), "failed": 0}
    assert items["item3"].duration_s == pytest.approx(2.5)
    assert s.audio_s == pytest.approx(sum(DURATIONS))
    assert s.model_s > 0 and s.batches == len(fake_model.calls) and s.wall_s >= s.model_s
    # the run's start before its first batch and its end after the last, within its wall
    assert 0 < s.first_batch_s and 0 < s.drain_s
    assert s.first_batch_s + s.model_s + s.drain_s <= s.wall_s
    # subtitles per item, named by the item id
    assert len(list((job / "subtitles").glob("*.srt"))) == len(DURATIONS)
    # a second run finds nothing to do and transcribes nothing again
    again = run_job(job, fake_model, batch_seconds=4.0, progress=False)
    assert again.items == 0 and len(fake_model.seen) == len(DURATIONS)


def test_batches_respect_the_budget(tmp_path, fake_model):
    job = make_job(tmp_path, DURATIONS)
    run_job(job, fake_model, batch_seconds=4.0, progress=False)
    assert sum(len(b) for b in fake_model.batches) == len(fake_model.seen)
    for batch in fake_model.batches:
        if len(batch) > 1:
            assert max(n for _, n in batch) * len(batch) <= 4.0 * 16000


def test_a_job_under_two_batches_is_planned_whole(tmp_path, fake_model):
    """A job of less than two batches' worth waits for all of it before its first batch:
    its batches are the length-sorted plan of the whole set (what a warm-up of the same job
    sees too), not a first batch of whatever was read first."""
    from batchasr.batches.plan import plan_batches

    job = make_job(tmp_path, DURATIONS)  # 22.2 s
    run_job(job, fake_model, batch_seconds=12.0, progress=False, readers=4,
            reader_processes=0)
    lengths = [n for batch in fake_model.batches for _, n in batch]
    want = sorted(sorted(lengths[i] for i in b)
                  for b in plan_batches(lengths, max_total=12 * 16000, max_padded=12 * 16000))
    assert sorted(sorted(n for _, n in b) for b in fake_model.batches) == want


def test_the_default_budget_is_the_devices_or_what_the_model_asks_for_there(
        tmp_path, fake_model, monkeypatch):
    """Without batch_seconds a job takes the device's budget (30 s on a CPU); on a GPU a
    model with ``gpu_batch_seconds`` (Fun-ASR-Nano) gets that, and its sorting pool stays
    bounded (4 such batches, not 16)."""
    import mlx.core as mx

    from batchasr.models.fun_asr_nano import FunASRNanoASR
    from batchasr.runner import device
    from batchasr.runner.options import POOL_MAX_S, pool_samples

    job = make_job(tmp_path, [25.0, 20.0, 15.0])  # 60 s: two 30 s batches at most
    run_job(job, fake_model, progress=False, reader_processes=0)
    assert len(fake_model.batches) == 3  # 25 + 20 padded to 25 is over 30 s
    assert device.default_batch_seconds("cpu", FunASRNanoASR) == device.CPU_BATCH_SECONDS
    assert device.default_batch_seconds("gpu") == device.GPU_BATCH_SECONDS
    assert device.default_batch_seconds("gpu", fake_model) == device.GPU_BATCH_SECONDS
    nano = FunASRNanoASR.gpu_batch_seconds
    assert device.default_batch_seconds("gpu", FunASRNanoASR) == nano > device.GPU_BATCH_SECONDS
    monkeypatch.setattr(mx, "default_device", lambda: mx.gpu)  # "auto" after setup_device
    assert device.default_batch_seconds("auto", FunASRNanoASR) == nano
    assert pool_samples(None, nano) == 4 * nano * 16000
    assert pool_samples(None, device.GPU_BATCH_SECONDS) == POOL_MAX_S * 16000
    assert pool_samples(None, device.CPU_BATCH_SECONDS) == 16 * 30 * 16000


def test_an_idle_model_does_not_wait_for_a_full_pool(tmp_path, monkeypatch):
    """Readers slower than the model (long recordings through the VAD): once two batches'
    worth is decoded, an idle model runs a batch instead of waiting for the sorting pool
    (16 batches) to fill, so most batches run while files are still being read."""
    import time

    from batchasr.audio import decode as audio
    from batchasr.runner.options import POOL_BATCHES

    job = make_job(tmp_path, [1.0] * 30)
    assert 30 < POOL_BATCHES * 2.0  # the pool never fills in this job
    opened, calls = [], []
    original = audio.open_audio

    def slow_open(path, *a, **k):
        time.sleep(0.05)
        opened.append(time.monotonic())
        return original(path, *a, **k)

    monkeypatch.setattr(audio, "open_audio", slow_open)
    model = FakeModel(on_call=lambda m: calls.append(time.monotonic()))
    run_job(job, model, batch_seconds=2.0, progress=False, readers=1, reader_processes=0)
    check_done_exactly_once(job, [f"item{i}" for i in range(30)])
    assert sum(t < max(opened) for t in calls) >= 5, (len(calls), len(opened))


def test_bad_files_fail_while_the_rest_complete(tmp_path, fake_model):
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "text.wav").write_text("not audio at all\n" * 20)
    job = make_job(tmp_path, [1.0, 2.0, 1.5],
                   extra_lines=["audio/missing.wav,gone,s", "audio/text.wav,text,s"])
    s = run_job(job, fake_model, batch_seconds=10.0, progress=False)
    assert (s.done, s.failed) == (3, 2)
    check_done_exactly_once(job, ["item0", "item1", "item2"])
    with JobQueue(job) as q:
        errors = {i.id: i.error for i in q.failed()}
    assert "missing" in errors["gone"] and "missing.wav" in errors["gone"]
    assert "not audio" in errors["text"]


MODELS = [FakeModel, PipelinedFakeModel]  # called batch by batch / one batch in flight


@pytest.mark.parametrize("model_class", MODELS)
def test_model_error_on_one_item_fails_only_that_item(tmp_path, model_class):
    model = model_class(fail_marks=[3])  # item2's audio
    job = make_job(tmp_path, [1.0, 1.0, 1.0, 1.0, 1.0])
    s = run_job(job, model, batch_seconds=10.0, progress=False)
    assert (s.done, s.failed) == (4, 1)
    check_done_exactly_once(job, ["item0", "item1", "item3", "item4"])
    with JobQueue(job) as q:
        assert "model error" in q.get("item2").error and "mark 3" in q.get("item2").error
    assert model.calls[0] == 5 and model.calls[1:] == [1] * 5  # whole batch, then one by one


@pytest.mark.parametrize("model_class", MODELS)
def test_a_broken_model_stops_the_run_instead_of_failing_everything(tmp_path, model_class):
    job = make_job(tmp_path, [0.5] * 8)
    model = model_class(fail_marks=range(1, 9))
    with pytest.raises(JobError, match="3 items in a row"):
        run_job(job, model, batch_seconds=1.0, progress=False, max_model_failures_in_a_row=3)
    with JobQueue(job) as q:
        c = q.counts()
    assert c["failed"] == 3 and c["running"] == 0 and c["pending"] == 5


def test_long_file_is_windowed_and_stitched_with_file_times(tmp_path, fake_model):
    job = make_job(tmp_path, [75.0, 2.0])
    s = run_job(job, fake_model, batch_seconds=60.0, max_window_s=30.0, progress=False)
    assert s.done == 2
    long_pieces = [n for m, n in fake_model.seen if m == 1]
    assert long_pieces == [25 * 16000] * 3  # equal windows, none over 30 s
    with JobQueue(job) as q:
        it = q.get("item0")
    [row] = [r for r in parquet.read_part(job, it.part).to_pylist() if r["id"] == "item0"]
    assert row["text"] == " ".join(["m1:400000"] * 3)
    assert [t["start_s"] for t in row["tokens"]] == [0.0, 25.0, 50.0]
    assert [sg["end_s"] for sg in row["segments"]] == [25.0, 50.0, 75.0]
    assert row["duration_s"] == pytest.approx(75.0)


def test_limit_and_languages(tmp_path, fake_model):
    job = make_job(tmp_path, [1.0] * 5)
    s = run_job(job, fake_model, batch_seconds=10.0, limit=2, progress=False)
    assert s.done == 2 and s.remaining["pending"] == 3
    check_done_exactly_once(job, ["item0", "item1"])
    s = run_job(job, fake_model, batch_seconds=10.0, progress=False)
    assert s.done == 3
    assert fake_model.languages == [None, None]  # no language in the manifest


def test_stop_event_stops_after_the_current_batch(tmp_path, one_lane):
    """One batch at a time: the stop comes after it (CPU lanes: test_lanes.py)."""
    stop = threading.Event()
    model = FakeModel(on_call=lambda m: stop.set())
    job = make_job(tmp_path, [1.0] * 6)
    s = run_job(job, model, batch_seconds=2.0, progress=False, stop_event=stop)
    assert s.stopped and s.done == len(model.seen) == 2 and len(model.calls) == 1
    assert s.remaining["running"] == 0 and s.remaining["pending"] == 4
    with JobQueue(job) as q:  # released items keep their attempt count
        assert all(i.attempts == 0 for i in q.items("pending"))
    s = run_job(job, FakeModel(), batch_seconds=2.0, progress=False)
    check_done_exactly_once(job, [f"item{i}" for i in range(6)])


def test_items_left_running_are_redone(tmp_path, fake_model):
    job = make_job(tmp_path, [1.0] * 3)
    with JobQueue(job) as q:
        q.claim(2)  # as if a run died holding them
    s = run_job(job, fake_model, batch_seconds=10.0, progress=False)
    assert s.requeued == 2 and s.done == 3


def test_different_model_on_resume_is_refused(tmp_path, fake_model):
    job = make_job(tmp_path, [1.0])
    run_job(job, fake_model, batch_seconds=10.0, progress=False, meta={"model": "paraformer-zh"})
    with pytest.raises(JobError, match="paraformer-zh"):
        run_job(job, fake_model, batch_seconds=10.0, progress=False, meta={"model": "nano"})


def test_refused_while_another_runner_holds_the_job(tmp_path, fake_model):
    job = make_job(tmp_path, [1.0])
    code = "import sys,time; from batchasr.queue.lock import JobLock; JobLock(sys.argv[1]).acquire(); print('ok', flush=True); time.sleep(60)"
    p = subprocess.Popen([sys.executable, "-c", code, str(job)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ok"
        with pytest.raises(JobError, match=f"pid {p.pid}"):
            run_job(job, fake_model, batch_seconds=10.0, progress=False)
    finally:
        p.kill()
        p.wait()


def test_options_are_checked():
    with pytest.raises(ValueError):
        RunOptions(batch_seconds=0)
    with pytest.raises(TypeError):
        run_job("/nonexistent", FakeModel(), batch_seconds=1.0, no_such_option=1)


# ---- kill -9 at named points, then resume --------------------------------------------------

RUNNER = textwrap.dedent("""
    import sys, logging
    sys.path.insert(0, sys.argv[2])
    from conftest import FakeModel
    from batchasr.runner.local import run_job
    import threading
    said = threading.Lock()  # with two CPU lanes two batches run at once: one line each

    def say_batch(model):
        with said:
            print("BATCH", flush=True)

    model = FakeModel(delay_s=float(sys.argv[3]), on_call=say_batch)
    s = run_job(sys.argv[1], model, batch_seconds=2.0,
                progress=False, readers=2, claim_size=4, pool_seconds=4.0)
    print("SUMMARY", s.done, s.failed, s.stopped, flush=True)
""")


def run_worker(job, *, crash_at=None, delay_s=0.0, **popen):
    env = dict(os.environ)
    env.pop("BATCHASR_TEST_CRASH_AT", None)
    if crash_at:
        env["BATCHASR_TEST_CRASH_AT"] = crash_at
    return subprocess.Popen([sys.executable, "-c", RUNNER, str(job), str(TESTS), str(delay_s)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)


KILL_DURATIONS = [1.0, 0.5, 1.5, 0.8, 1.2, 0.6, 1.0, 0.7, 1.4, 0.9]


@pytest.mark.parametrize("crash_at", ["decode:3", "batch:2", "after_part:1", "after_part:2",
                                      "after_complete:1"])
def test_kill_9_then_resume_does_everything_exactly_once(tmp_path, crash_at):
    job = make_job(tmp_path, KILL_DURATIONS)
    p = run_worker(job, crash_at=crash_at)
    out, err = p.communicate(timeout=120)
    assert p.returncode == -signal.SIGKILL, err
    with JobQueue(job) as q:
        before = q.counts()
        done_before = {i.id: i.part for i in q.items("done")}
    assert before["running"] > 0 or crash_at.startswith("after_complete")
    parts_before = set(os.listdir(job / "parts")) if (job / "parts").exists() else set()
    if crash_at.startswith("after_part"):  # the part exists, its items are not done
        assert len(parts_before) == len(set(done_before.values())) + 1

    p = run_worker(job)  # resume
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    summary = out.split("SUMMARY")[1].split()
    ids = [f"item{i}" for i in range(len(KILL_DURATIONS))]
    items = check_done_exactly_once(job, ids)
    # items done before the kill were not redone
    assert all(items[i].part == part for i, part in done_before.items())
    assert int(summary[0]) == len(ids) - len(done_before)


CLAIM_ALL_RUNNER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    from conftest import FakeModel
    from batchasr.runner.local import run_job
    s = run_job(sys.argv[1], FakeModel(), batch_seconds=1.0, progress=False, readers=1,
                reader_processes=0, claim_size=100, prefetch_seconds=1.0, pool_seconds=1.0)
    print("SUMMARY", s.done, s.failed, flush=True)
""")


def test_kills_count_attempts_only_for_the_items_begun(tmp_path):
    """One claim takes the whole job, one reader begins a file at a time: a kill at the first
    batch leaves every item running, few of them begun. Five kills (max_attempts) then fail
    only what was begun every time (item0, and a file the reader began before every kill:
    from the queue's side they killed five workers); the items never begun get their
    attempts back, and the resume does them exactly once."""
    from batchasr.queue.started import begun
    from batchasr.runner.local import recover

    durations = [1.0] * 12
    job = make_job(tmp_path, durations)
    env = dict(os.environ, BATCHASR_TEST_CRASH_AT="batch:1")
    ever_begun: set[str] = set()
    always_begun = set(f"item{i}" for i in range(len(durations)))
    for kill in range(5):
        p = subprocess.run([sys.executable, "-c", CLAIM_ALL_RUNNER, str(job), str(TESTS)],
                           env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == -signal.SIGKILL, p.stderr
        with JobQueue(job) as q:
            running = {i.id: i for i in q.items("running")}
            assert len(running) == len(durations)  # one claim took them all
            listed = begun(job, next(iter(running.values())).lease_owner)
            assert listed and listed < set(running)  # few begun
            ever_begun |= listed
            always_begun &= listed
            recover(job, q)
            after = {i.id: i for i in q.items()}
        for i, it in running.items():
            assert after[i].attempts == it.attempts - (i not in listed)
    failed = {i for i, it in after.items() if it.status == "failed"}
    # item0 is begun by every run; the reader may begin the next file before the kill too,
    # depending on timing: what fails is exactly what every run began
    assert "item0" in failed and failed == always_begun
    assert all("died 5 times" in after[i].error for i in failed)
    never = set(running) - ever_begun
    assert never and all(after[i].attempts == 0 for i in never)
    p = subprocess.run([sys.executable, "-c", CLAIM_ALL_RUNNER, str(job), str(TESTS)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    # the resume does the rest (what every run began failed: item0, maybe one more)
    assert p.stdout.split("SUMMARY")[1].split() == [str(len(durations) - len(failed)), "0"]
    check_done_exactly_once(job, sorted(set(running) - failed))
    assert not any((job / "started").glob("*.log"))  # a clean end leaves no log


def test_ctrl_c_stops_cleanly_and_twice_stops_at_once(tmp_path):
    job = make_job(tmp_path, KILL_DURATIONS)
    # slow batches so the signals land while the model is working
    p = run_worker(job, delay_s=0.5)
    assert p.stdout.readline().strip() == "BATCH"  # the handler is installed by now
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert out.split("SUMMARY")[1].split()[2] == "True"  # stopped early
    with JobQueue(job) as q:
        c = q.counts()
    assert c["running"] == 0 and c["done"] > 0 and c["pending"] > 0

    p = run_worker(job, delay_s=2.0)
    assert p.stdout.readline().strip() == "BATCH"
    p.send_signal(signal.SIGINT)
    seen = []  # wait until the first Ctrl-C is acknowledged, so the two cannot merge into one
    while not any("stopping after the current batch" in line for line in seen):
        line = p.stderr.readline()
        assert line, "".join(seen)
        seen.append(line)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    err = "".join(seen) + err
    # Either the main thread unwinds (KeyboardInterrupt) or, when the kernel delivered the
    # signal to another thread and the main thread sleeps on in the model call past
    # hard_stop_s, the watchdog hands the items back and exits 128 + SIGINT: both stop at once.
    assert "stopping now; unfinished items go back to pending" in err, err
    assert (p.returncode != 0 and "KeyboardInterrupt" in err) or (
        p.returncode == 128 + signal.SIGINT and "item(s) left" in err), (p.returncode, err)
    with JobQueue(job) as q:
        assert q.counts()["running"] == 0  # handed back on the way out

    p = run_worker(job)
    assert p.wait(timeout=120) == 0
    check_done_exactly_once(job, [f"item{i}" for i in range(len(KILL_DURATIONS))])


def test_parts_hold_only_finished_items(tmp_path, fake_model):
    job = make_job(tmp_path, DURATIONS)
    run_job(job, fake_model, batch_seconds=4.0, progress=False)
    with JobQueue(job) as q:
        recorded = {i.part for i in q.items("done")}
    on_disk = {p.name for p in (job / "parts").glob("*.parquet")}
    assert on_disk == recorded  # no empty or orphan parts in a clean run
    assert all(parquet.read_part(job, p).num_rows > 0 for p in on_disk)


def test_disk_full_stops_the_run_and_keeps_what_is_written(tmp_path, fake_model, monkeypatch):
    job = make_job(tmp_path, DURATIONS)
    real, calls = parquet.write_part, []

    def flaky_write_part(job_dir, rows):
        calls.append(len(rows))
        if len(calls) == 2:
            raise JobError("cannot write results part: No space left on device")
        return real(job_dir, rows)

    monkeypatch.setattr(parquet, "write_part", flaky_write_part)
    with pytest.raises(JobError, match="No space left"):
        run_job(job, fake_model, batch_seconds=4.0, progress=False)
    with JobQueue(job) as q:
        c = q.counts()
    assert c["running"] == 0 and c["done"] == calls[0] and c["failed"] == 0
    monkeypatch.setattr(parquet, "write_part", real)
    run_job(job, fake_model, batch_seconds=4.0, progress=False)
    check_done_exactly_once(job, [f"item{i}" for i in range(len(DURATIONS))])


def test_a_subtitle_problem_does_not_fail_the_item(tmp_path, fake_model, monkeypatch, caplog):
    from batchasr.outputs import writers
    real = writers.item_file

    def broken_for_item1(folder, item_id, *a, **kw):
        if item_id == "item1":
            raise ValueError("cue trouble")
        return real(folder, item_id, *a, **kw)

    monkeypatch.setattr(writers, "item_file", broken_for_item1)
    job = make_job(tmp_path, [1.0, 1.0, 1.0])
    s = run_job(job, fake_model, batch_seconds=10.0, progress=False)
    assert s.done == 3
    assert "could not write srt subtitles for item1" in caplog.text
    assert len(list((job / "subtitles").glob("*.srt"))) == 2


def test_bounded_prefetch_with_many_long_files(tmp_path, monkeypatch):
    # 4 files of 40 s in 5 s windows, a 10 s buffer, a 10 s pool and a slow model: readers
    # must wait for the model instead of decoding everything up front (the buffer may take
    # what the pool lacks, so pool and buffer together hold at most 20 s and one window);
    # every window arrives in order.
    from batchasr.runner import threads
    from batchasr.runner.stages import pool as pool_stage
    peak, pools = [0], []
    real_put, real_init = threads.Prefetch.put, pool_stage.Pool.__init__

    def init(self, **kw):
        real_init(self, **kw)
        pools.append(self)

    def put(self, msg, samples=0, abandon=lambda: False):
        ok = real_put(self, msg, samples, abandon)
        peak[0] = max(peak[0], self._samples + pools[0].samples)
        return ok

    monkeypatch.setattr(threads.Prefetch, "put", put)
    monkeypatch.setattr(pool_stage.Pool, "__init__", init)
    model = FakeModel(delay_s=0.01)
    job = make_job(tmp_path, [40.0] * 4)
    s = run_job(job, model, batch_seconds=10.0, max_window_s=5.0, progress=False,
                prefetch_seconds=10.0, pool_seconds=10.0)
    assert s.done == 4 and len(model.seen) == 32
    assert 10 * 16000 < peak[0] <= 25 * 16000
    with JobQueue(job) as q:
        for it in q.items():
            [row] = [r for r in parquet.read_part(job, it.part).to_pylist() if r["id"] == it.id]
            assert [t["start_s"] for t in row["tokens"]] == [5.0 * k for k in range(8)]


def test_readers_fill_the_pool_while_the_model_works(tmp_path, monkeypatch):
    # The buffer takes what the sorting pool lacks besides the prefetch, so a job's second
    # batch is cut from a full pool (the prefetch alone let the pool grow one batch per
    # batch run: the first batches came from a part-filled pool, one CPU lane at a time).
    from batchasr.runner.stages import pool as pool_stage
    seen = []
    real_next = pool_stage.Pool.next_batch

    def next_batch(self):
        seen.append(self.samples)
        return real_next(self)

    monkeypatch.setattr(pool_stage.Pool, "next_batch", next_batch)
    model = FakeModel(delay_s=0.1)
    job = make_job(tmp_path, [2.0] * 40)
    s = run_job(job, model, batch_seconds=4.0, progress=False, readers=2,
                reader_processes=0, prefetch_seconds=8.0, pool_seconds=40.0)
    assert s.done == 40
    # the pool whole by the third batch (with the prefetch alone it held 8, 12, 16 s then;
    # readers that finish before the loop's first step may fill it for the first batch)
    assert max(seen[:3]) >= 40 * 16000


# ---- models that keep a batch in flight (submit/result, as Paraformer) ---------------------

@pytest.fixture
def one_lane(monkeypatch):
    """One batch at a time on the CPU too (the submit/result path; lanes: test_lanes.py)."""
    monkeypatch.setenv("BATCHASR_CPU_LANES", "1")


def test_pipelined_model_does_everything_exactly_once(tmp_path, one_lane):
    model = PipelinedFakeModel()
    job = make_job(tmp_path, DURATIONS)
    s = run_job(job, model, batch_seconds=4.0, progress=False)
    assert (s.done, s.failed, s.stopped) == (len(DURATIONS), 0, False)
    check_done_exactly_once(job, [f"item{i}" for i in range(len(DURATIONS))])
    assert sorted(m for m, _ in model.seen) == list(range(1, len(DURATIONS) + 1))
    assert model.submitted == model.calls and len(model.calls) > 1  # each batch once
    assert s.batches == len(model.calls) and s.audio_s == pytest.approx(sum(DURATIONS))


def test_pipelined_model_refusing_a_batch_retries_its_pieces(tmp_path, one_lane):
    model = PipelinedFakeModel(fail_submit_marks=[3])
    job = make_job(tmp_path, [1.0, 1.0, 1.0, 1.0, 1.0])
    s = run_job(job, model, batch_seconds=10.0, progress=False)
    assert (s.done, s.failed) == (5, 0)
    check_done_exactly_once(job, [f"item{i}" for i in range(5)])
    assert model.submitted == [] and model.calls == [1] * 5


def test_pipelined_stop_keeps_the_batch_in_flight(tmp_path, one_lane):
    stop = threading.Event()
    model = PipelinedFakeModel(on_call=lambda m: stop.set())
    job = make_job(tmp_path, [1.0] * 8)
    s = run_job(job, model, batch_seconds=2.0, progress=False, stop_event=stop)
    # the batch whose result set the stop is kept, and so is a batch in flight by then
    assert s.stopped and s.done == len(model.seen) and model.calls in ([2], [2, 2])
    assert s.remaining["running"] == 0 and s.remaining["pending"] == 8 - s.done
    run_job(job, PipelinedFakeModel(), batch_seconds=2.0, progress=False)
    check_done_exactly_once(job, [f"item{i}" for i in range(8)])
