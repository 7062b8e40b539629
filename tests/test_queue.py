"""queue.py: enqueue/resume/conflicts, the state machine, meta, and the job lock."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from batchasr.errors import JobError, ManifestError
from batchasr.manifest.read import ManifestRow, open_manifest
from batchasr.queue.lock import JobLock
from batchasr.queue.store import JobQueue


def mrows(*names, base="/a"):
    return [ManifestRow(i + 2, n, f"{base}/{n}.wav", None, {"k": n}) for i, n in enumerate(names)]


@pytest.fixture
def q(tmp_path):
    with JobQueue(tmp_path / "job") as q:
        yield q


def test_enqueue_then_resume_adds_only_new_items_and_keeps_state(q):
    r = q.enqueue(mrows("a", "b", "c"))
    assert (r.added, r.existing) == (3, 0)
    [a] = q.claim(1)
    q.complete([a.id], "part-1.parquet")
    r = q.enqueue(mrows("a", "b", "c", "d"))
    assert (r.added, r.existing) == (1, 3)
    items = {i.id: i for i in q.items()}
    assert items["a"].status == "done" and items["a"].part == "part-1.parquet"
    assert [i.id for i in q.items()] == ["a", "b", "c", "d"]  # manifest order kept
    assert items["d"].seq > items["c"].seq
    assert items["b"].extra == {"k": "b"}


def test_wal_and_busy_timeout(q):
    assert q.db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert q.db.conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000


def test_same_id_different_path_is_a_conflict_and_changes_nothing(q):
    q.enqueue(mrows("a", "b"))
    with pytest.raises(JobError) as info:
        q.enqueue(mrows("a", "new") + [ManifestRow(9, "b", "/elsewhere/b.wav")])
    msg = str(info.value)
    assert "line 9" in msg and "'b'" in msg and "/a/b.wav" in msg and "/elsewhere/b.wav" in msg
    assert q.counts()["pending"] == 2 and q.get("new") is None


def test_duplicate_ids_reported_with_line_numbers_and_nothing_queued(q):
    rows = mrows("a", "b") + [ManifestRow(7, "a", "/x/other.wav"), ManifestRow(8, "b", "/a/b.wav")]
    with pytest.raises(ManifestError) as info:
        q.enqueue(rows)
    assert [n for n, _ in info.value.problems] == [7, 8]
    assert "first used on line 2" in info.value.problems[0][1]
    assert sum(q.counts().values()) == 0


def test_manifest_problems_block_enqueue_unless_not_strict(tmp_path, q):
    (tmp_path / "m.csv").write_text("path,id\na.wav,\n,x\nb.wav,\n")
    with pytest.raises(ManifestError, match="line 3: empty path"):
        q.enqueue(open_manifest(tmp_path / "m.csv"))
    assert sum(q.counts().values()) == 0
    r = q.enqueue(open_manifest(tmp_path / "m.csv"), strict=False)
    assert r.added == 2 and r.problems == [(3, "empty path")]


def test_enqueue_streams_100k_rows(tmp_path, q):
    n = 100_000
    with open(tmp_path / "big.csv", "w") as f:
        f.write("path\n")
        f.writelines(f"a/{i:06d}.wav\n" for i in range(n))
    t = time.perf_counter()
    r = q.enqueue(open_manifest(tmp_path / "big.csv"))
    assert r.added == n and q.counts()["pending"] == n
    assert q.enqueue(open_manifest(tmp_path / "big.csv")).added == 0
    assert time.perf_counter() - t < 30
    assert [i.id for i in q.claim(2)] == ["a/000000.wav", "a/000001.wav"]


def test_claim_complete_fail_counts(q):
    q.enqueue(mrows("a", "b", "c", "d"))
    got = q.claim(3, now=1000.0)
    assert [i.id for i in got] == ["a", "b", "c"]
    assert all(i.status == "running" and i.attempts == 1 for i in got)
    assert q.claim(0) == []
    assert q.complete(["a", "b"], "p1", durations={"a": 1.5}) == 2
    assert q.fail("c", "AudioError: c.wav: missing", duration_s=None)
    assert q.counts() == {"pending": 1, "running": 0, "done": 2, "failed": 1}
    assert q.get("a").duration_s == 1.5 and q.get("a").part == "p1"
    assert [(i.id, i.error) for i in q.failed()] == [("c", "AudioError: c.wav: missing")]
    assert [i.id for i in q.claim(10)] == ["d"] and q.claim(10) == []


def test_complete_is_all_or_nothing(q):
    q.enqueue(mrows("a", "b"))
    q.claim(1)  # only a is running
    with pytest.raises(JobError, match="not running"):
        q.complete(["a", "b"], "p")
    assert q.get("a").status == "running" and q.get("a").part is None


def test_reset_running_and_poison_items(q):
    q.enqueue(mrows("a", "b", "c"))
    q.claim(3)
    assert q.reset_running() == (3, 0)
    assert q.counts()["pending"] == 3
    q.claim(3)  # a second crash with a, b, c in flight
    assert q.reset_running(max_attempts=3) == (3, 0)
    q.claim(1)  # a's third claim; it "crashes" again
    assert q.reset_running(max_attempts=3) == (0, 1)
    assert q.get("a").status == "failed" and "died 3 times" in q.get("a").error
    assert q.get("b").status == "pending"


def test_a_kill_counts_an_attempt_only_for_the_items_its_worker_began(q):
    """The recovery gives the attempt back to the items a killed worker had claimed but not
    begun (its log, queue.started); an item that keeps killing its workers still fails."""
    from batchasr.queue.started import StartedLog, begun, log_path

    q.enqueue(mrows("a", "b", "c", "d"))
    q.claim(3, owner="host:1:x", lease_s=60)  # a, b, c; the worker begins b, then is killed
    StartedLog(q.job_dir, "host:1:x").begin("b")
    with open(log_path(q.job_dir, "host:1:x"), "ab") as f:
        f.write(b'"c')  # killed inside the write of c's line: c had not begun
    q.claim(1, owner="old-run", lease_s=60)  # d, by a run that kept no log: counted
    assert q.reset_running(max_attempts=3) == (4, 0)
    assert {i: q.get(i).attempts for i in "abcd"} == {"a": 0, "b": 1, "c": 0, "d": 1}
    assert begun(q.job_dir, "host:1:x") is None  # spent: the logs are cleared
    for k in range(2):  # b kills its worker twice more, as soon as it is begun
        q.claim(4, owner=f"host:{k + 2}:x", lease_s=60)
        StartedLog(q.job_dir, f"host:{k + 2}:x").begin("b")
        q.reset_running(max_attempts=3)
    assert q.get("b").status == "failed" and "died 3 times" in q.get("b").error
    assert {i: (q.get(i).status, q.get(i).attempts) for i in "acd"} == {
        "a": ("pending", 0), "c": ("pending", 0), "d": ("pending", 1)}


def test_a_clean_end_removes_the_log_and_a_log_that_cannot_be_written_is_dropped(q, tmp_path):
    from batchasr.queue.started import StartedLog, begun

    log = StartedLog(q.job_dir, "w")
    log.begin("a")
    assert begun(q.job_dir, "w") == {"a"}
    log.close(remove=True)
    assert begun(q.job_dir, "w") is None
    log = StartedLog(q.job_dir, "w")
    os.close(log._fd)  # the next write fails (as on a full disk)
    log.begin("b")
    assert begun(q.job_dir, "w") is None and log._fd is None  # its owner keeps every attempt
    log.begin("c")  # and nothing more is tried


def test_release_does_not_count_an_attempt(q):
    q.enqueue(mrows("a"))
    q.claim(1)
    assert q.release(["a"]) == 1
    assert q.get("a").status == "pending" and q.get("a").attempts == 0


def test_retry_failed(q):
    q.enqueue(mrows("a", "b"))
    q.claim(2)
    q.fail("a", "boom")
    q.complete(["b"], "p")
    assert q.retry_failed() == 1
    a = q.get("a")
    assert (a.status, a.attempts, a.error) == ("pending", 0, None)
    assert q.get("b").status == "done"


def test_meta_recorded_then_enforced(q, tmp_path):
    assert q.ensure_meta({"model": "paraformer-zh", "dtype": "float16"})["model"] == "paraformer-zh"
    assert q.ensure_meta({"model": "paraformer-zh", "batch_seconds": 300})["batch_seconds"] == 300
    with pytest.raises(JobError) as info:
        q.ensure_meta({"model": "fun-asr-nano"})
    assert "paraformer-zh" in str(info.value) and "fun-asr-nano" in str(info.value)
    with JobQueue(q.job_dir) as again:  # persisted
        assert again.meta() == {"model": "paraformer-zh", "dtype": "float16", "batch_seconds": 300}


def test_transaction_rolls_back_on_error(q):
    q.enqueue(mrows("a"))
    with pytest.raises(RuntimeError):
        with q.transaction():
            q.db.conn.execute("UPDATE items SET status = 'done'")
            raise RuntimeError
    assert q.get("a").status == "pending"


# ---- the job lock ------------------------------------------------------------------------------

LOCKER = textwrap.dedent("""
    import sys, time
    from batchasr.queue.lock import JobLock
    JobLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(60)
""")


def spawn_locker(job_dir):
    p = subprocess.Popen([sys.executable, "-c", LOCKER, str(job_dir)], stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_runner_is_refused_with_the_holders_pid(tmp_path):
    p = spawn_locker(tmp_path / "job")
    try:
        with pytest.raises(JobError, match=f"pid {p.pid}"):
            JobLock(tmp_path / "job").acquire()
    finally:
        p.kill()
        p.wait()


def test_lock_of_a_killed_process_never_blocks(tmp_path):
    p = spawn_locker(tmp_path / "job")
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert (tmp_path / "job" / "lock").exists()  # the stale file is still there
    with JobLock(tmp_path / "job"):
        assert (tmp_path / "job" / "lock").read_text().strip() == str(os.getpid())


def test_lock_is_reentrant_in_one_process_and_released(tmp_path):
    outer = JobLock(tmp_path).acquire()
    with JobLock(tmp_path):
        pass
    # still held by the outer one: a child process is refused
    r = subprocess.run([sys.executable, "-c", LOCKER, str(tmp_path)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode != 0 and "being processed" in r.stderr
    outer.release()
    p = spawn_locker(tmp_path)  # free now
    p.kill()
    p.wait()


def test_repeated_ids_are_skipped_rows_unless_strict(tmp_path, q):
    (tmp_path / "m.csv").write_text("path,id\na.wav,a\nb.wav,b\nc.wav,a\n,x\nd.wav,b\n")
    r = q.enqueue(open_manifest(tmp_path / "m.csv"), strict=False)
    assert (r.added, r.skipped) == (2, 3)
    assert [n for n, _ in r.problems] == [4, 5, 6]
    assert q.get("a").path == str(tmp_path / "a.wav")  # the first occurrence is kept
    rows = q.skipped_rows()
    assert [(s.line, s.raw) for s in rows] == [(4, "c.wav,a"), (5, ",x"), (6, "d.wav,b")]
    assert rows[0].reason == "duplicate id 'a' (first used on line 2)"
    assert rows[0].manifest == str(tmp_path / "m.csv")
    q.enqueue(open_manifest(tmp_path / "m.csv"), strict=False)  # again: replaced, not added
    assert q.skipped_count() == 3 and q.live_counts()["skipped"] == 3
    with pytest.raises(ManifestError, match="duplicate id 'a'"):
        q.enqueue(open_manifest(tmp_path / "m.csv"))
    assert q.skipped_count() == 3  # a refused manifest changes nothing


def test_claims_and_heartbeats_commit_unsynced_and_results_synced(q):
    """A claim or a lease renewal is committed with synchronous = NORMAL (no fsync: a power
    cut undoes it whole, losing nothing); completions and failures stay FULL, and the setting
    is back to FULL after each, an interrupted one included."""
    q.enqueue(mrows("a", "b", "c"))
    statements: list[str] = []
    q.db.conn.set_trace_callback(statements.append)

    def synced_level(call):
        statements.clear()
        call()
        levels = [s for s in statements if "synchronous" in s]
        commit = next(i for i, s in enumerate(statements) if s == "COMMIT")
        before = [s for s in statements[:commit] if "synchronous" in s]
        return before[-1].split("=")[-1].strip() if before else "FULL", levels

    assert synced_level(lambda: q.claim(2, owner="w", lease_s=60))[0] == "NORMAL"
    assert synced_level(lambda: q.heartbeat("w", lease_s=60))[0] == "NORMAL"
    assert synced_level(lambda: q.complete(["a"], "p1", owner="w"))[0] == "FULL"
    assert synced_level(lambda: q.fail("b", "AudioError: b"))[0] == "FULL"
    q.db.conn.set_trace_callback(None)
    assert q.db.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with pytest.raises(RuntimeError):
        with q.transaction(durable=False):
            raise RuntimeError("interrupted")
    assert q.db.conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert [i.id for i in q.claim(5)] == ["c"]  # the interrupted transaction changed nothing
