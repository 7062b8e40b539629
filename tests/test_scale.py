"""Scaling out: leases on the queue, N worker processes on one job (a worker SIGKILLed or
stalled mid-batch), the run's lock shared by its workers, --shard slices and their merged
export, the network-filesystem check, and the Ray engine on a local Ray cluster."""
from __future__ import annotations

import csv
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from batchasr.outputs.parquet import results_table
from batchasr.runner import processes as scale
from batchasr.queue import disk
from batchasr.manifest import shard
from batchasr.errors import JobError
from batchasr.manifest.read import open_manifest
from batchasr.queue.lock import JobLock
from batchasr.queue.store import JobQueue

from conftest import done_count
from test_worker import check_done_exactly_once, make_job

TESTS = Path(__file__).parent
ROOT = TESTS.parent
MODEL = TESTS / "fixtures" / "paraformer" / "zh_mixed"
AUDIO = TESTS / "fixtures" / "paraformer" / "audio"
SAMPLES = ROOT / "sample_manifests"


def batchasr(*args, check=None, timeout=300, env=None, **kw):
    proc = subprocess.run([sys.executable, "-m", "batchasr.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, **kw)
    if check is not None:
        assert proc.returncode == check, proc.stderr[-3000:]
    return proc


def clip_manifest(tmp_path: Path, n: int, name: str = "m.csv") -> Path:
    """n items over the fixture clips (ids item-0000...)."""
    clips = sorted(p for p in AUDIO.glob("utt_*.wav") if "tiny" not in p.name)
    path = tmp_path / name
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "n"])
        for i in range(n):
            w.writerow([f"item-{i:04d}", clips[i % len(clips)], i])
    return path


def export_rows(*job_dirs, out) -> list[dict]:
    args = [a for j in job_dirs for a in ("--job-dir", j)]
    batchasr("export", *args, "-o", out, check=0)
    return pq.read_table(out).to_pylist()


# ---- leases on the queue ---------------------------------------------------------------------


@pytest.fixture
def q(tmp_path):
    (tmp_path / "m.csv").write_text("path,id\n" + "".join(f"{c}.wav,{c}\n" for c in "abcdef"))
    with JobQueue(tmp_path / "job") as queue:
        queue.enqueue(open_manifest(tmp_path / "m.csv"))
        yield queue


def test_claim_leases_heartbeat_and_takeover(q):
    assert [i.id for i in q.claim(2, owner="A", lease_s=10, now=1000)] == ["a", "b"]
    assert q.get("a").lease_owner == "A" and q.get("a").lease_until == 1010
    # B gets pending items only while A's leases last
    assert [i.id for i in q.claim(2, owner="B", lease_s=10, now=1005)] == ["c", "d"]
    assert q.heartbeat("A", lease_s=10, now=1008) == 2  # A lives: until 1018
    assert q.heartbeat("B", lease_s=10, now=1014) == 2
    assert [i.id for i in q.claim(2, owner="B", lease_s=10, now=1015)] == ["e", "f"]
    assert q.claim(2, owner="B", lease_s=10, now=1017) == []
    assert q.running_elsewhere("B") == 2
    # A stops beating; after 1018 its items are B's, with an attempt counted
    took = q.claim(5, owner="B", lease_s=10, now=1019)
    assert [i.id for i in took] == ["a", "b"] and all(i.attempts == 2 for i in took)
    # the zombie A cannot complete, fail or release them any more
    assert q.complete(["a", "b"], "part-A", owner="A") == 0
    assert not q.fail("a", "boom", owner="A")
    assert q.release(["a"], owner="A") == 0
    assert q.heartbeat("A", lease_s=10) == 0
    assert q.complete(["a", "b"], "part-B", owner="B") == 2
    assert q.get("a").part == "part-B" and q.get("a").status == "done"


def test_a_zombie_commits_only_what_it_still_holds(q):
    q.claim(2, owner="A", lease_s=10, now=1000)  # a, b
    [a] = q.claim(1, owner="B", lease_s=10, now=1011)  # b's lease expired too, B took one
    assert a.id == "a"
    assert q.complete(["a", "b"], "part-A", owner="A") == 1  # b was still A's
    assert (q.get("a").status, q.get("b").status, q.get("b").part) == ("running", "done", "part-A")
    assert q.complete(["a"], "part-B", owner="B") == 1
    # without an owner the old all-or-nothing rule holds
    q.claim(1, now=1012)  # c
    with pytest.raises(JobError):
        q.complete(["c", "d"], "p")


def test_expire_hands_a_dead_workers_items_over_at_once(q):
    q.claim(3, owner="A", lease_s=3600)
    assert q.claim(3, owner="B", lease_s=10) != [] and q.claim(3, owner="B", lease_s=10) == []
    assert q.expire("A") == 3
    assert [i.id for i in q.claim(6, owner="B", lease_s=10)] == ["a", "b", "c"]


def test_an_expired_item_that_keeps_killing_workers_fails(q):
    for k in range(3):
        [a] = q.claim(1, owner=f"W{k}", lease_s=1, max_attempts=3, now=1000 + 10 * k)
        assert a.id == "a" and a.attempts == k + 1
    assert [i.id for i in q.claim(1, owner="W3", lease_s=1, max_attempts=3, now=1030)] == ["b"]
    a = q.get("a")
    assert a.status == "failed" and "died 3 times" in a.error


def test_an_older_queue_gets_the_lease_columns(tmp_path):
    job = tmp_path / "old"
    job.mkdir()
    con = sqlite3.connect(job / "queue.db")
    con.execute("""CREATE TABLE items (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, path TEXT NOT NULL,
        language TEXT, extra TEXT NOT NULL DEFAULT '{}', status TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0, error TEXT, duration_s REAL, part TEXT,
        created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT)""")
    con.execute("INSERT INTO items (id, seq, path, created_at) VALUES ('x', 1, '/x.wav', 'now')")
    con.commit()
    con.close()
    with JobQueue(job) as queue:
        [x] = queue.claim(1, owner="A", lease_s=5, now=100)
        assert (x.lease_owner, x.lease_until) == ("A", 105)


# ---- the run's lock, shared with its workers -------------------------------------------------

HOLDER = textwrap.dedent("""
    import os, subprocess, sys, time
    from batchasr.queue.lock import JobLock
    lock = JobLock(sys.argv[1]).acquire()
    child = subprocess.Popen([sys.executable, "-c",
        "import sys, time; from batchasr.queue.lock import JobLock; "
        "JobLock.adopt(sys.argv[1], int(sys.argv[2])); print('child', flush=True); time.sleep(60)",
        sys.argv[1], str(lock.fd)], pass_fds=(lock.fd,))
    print(child.pid, flush=True)
    time.sleep(60)
""")


def test_the_lock_lives_while_any_process_of_the_run_does(tmp_path):
    job = tmp_path / "job"
    parent = subprocess.Popen([sys.executable, "-c", HOLDER, str(job)], stdout=subprocess.PIPE,
                              text=True)
    child_pid = None
    try:
        child_pid = int(parent.stdout.readline())
        assert parent.stdout.readline().strip() == "child"  # it adopted the lock
        with pytest.raises(JobError, match=f"pid {parent.pid}"):
            JobLock(job).acquire()
        parent.kill()
        parent.wait()
        with pytest.raises(JobError, match="another batchasr process"):
            JobLock(job).acquire()  # the worker still runs: still refused
        os.kill(child_pid, signal.SIGKILL)
        deadline = time.time() + 10
        while True:  # the child is reaped by init; its lock goes with it
            try:
                JobLock(job).acquire().release()
                break
            except JobError:
                assert time.time() < deadline
                time.sleep(0.05)
    finally:
        parent.kill()
        if child_pid:
            try:
                os.kill(child_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_adopt_refuses_a_descriptor_that_is_not_the_jobs_lock(tmp_path):
    (tmp_path / "job").mkdir()
    fd = os.open(tmp_path / "other", os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(JobError, match="not this job's lock"):
            JobLock.adopt(tmp_path / "job", fd)
    finally:
        os.close(fd)


# ---- two worker processes on one job ---------------------------------------------------------

WORKER = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[2])
    from conftest import FakeModel
    from batchasr.runner.local import run_job
    import threading
    said = threading.Lock()  # with two CPU lanes two batches run at once: one line each

    def say_batch(model):
        with said:
            print("BATCH", flush=True)

    model = FakeModel(delay_s=float(sys.argv[4]), on_call=say_batch)
    s = run_job(sys.argv[1], model, batch_seconds=2.0, progress=False, readers=1, claim_size=2,
                pool_seconds=2.0, lock_fd=int(sys.argv[3]), owner=sys.argv[5],
                lease_s=1.0, heartbeat_s=0.2)
    print("SUMMARY", json.dumps({"done": s.done, "taken_over": s.taken_over}), flush=True)
""")

DURATIONS = [1.0, 0.5, 1.5, 0.8, 1.2, 0.6, 1.0, 0.7, 1.4, 0.9, 1.1, 0.6]


def start_worker(job, lock, owner, delay_s):
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(job), str(TESTS), str(lock.fd), str(delay_s), owner],
        pass_fds=(lock.fd,), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def summary_of(out: str) -> dict:
    return json.loads(out.split("SUMMARY", 1)[1])


def test_two_workers_one_killed_mid_batch_the_other_finishes_exactly_once(tmp_path):
    job = make_job(tmp_path, DURATIONS)
    with JobLock(job) as lock:  # as `batchasr run --workers 2` holds it
        doomed = start_worker(job, lock, "doomed", delay_s=1.0)
        assert doomed.stdout.readline().strip() == "BATCH"  # inside its first model call
        survivor = start_worker(job, lock, "survivor", delay_s=0.05)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
        with JobQueue(job) as q:
            held = [i.id for i in q.items("running") if i.lease_owner == "doomed"]
        assert held, "the killed worker held no item; the test did not kill it mid-batch"
        out, err = survivor.communicate(timeout=120)
        assert survivor.returncode == 0, err
    items = check_done_exactly_once(job, [f"item{i}" for i in range(len(DURATIONS))])
    assert all(items[i].lease_owner == "survivor" for i in held)  # taken over after expiry
    assert summary_of(out)["done"] == len(DURATIONS)  # the doomed one committed nothing


def wait_stopped(pid: int, timeout_s: float = 5.0) -> None:
    """Wait until every thread of ``pid`` is stopped (Linux: state T in /proc; elsewhere a
    short pause)."""
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.is_dir():
        time.sleep(0.05)
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        states = []
        for t in tasks.iterdir():
            try:
                states.append((t / "stat").read_text().rsplit(")", 1)[1].split()[0])
            except (OSError, IndexError):
                pass  # the thread ended
        if states and all(st in "tT" for st in states):
            return
        time.sleep(0.002)


def stop_outside_a_transaction(proc: subprocess.Popen, job: Path, tries: int = 100) -> None:
    """SIGSTOP `proc` at a moment it holds no SQLite write lock. A process frozen inside a
    transaction (its heartbeat renewing leases, say) blocks every writer of the job, which is
    SQLite's nature and not what this test is about."""
    for _ in range(tries):
        proc.send_signal(signal.SIGSTOP)
        wait_stopped(proc.pid)  # SIGSTOP lands a moment later: a commit may begin meanwhile
        con = sqlite3.connect(job / "queue.db", timeout=0.05, isolation_level=None)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:  # stopped mid-transaction: let it finish, try again
            proc.send_signal(signal.SIGCONT)
            time.sleep(0.02)
        finally:
            con.close()
    raise AssertionError("could not stop the worker outside a transaction")


def test_a_stalled_worker_is_taken_over_and_cannot_commit_twice(tmp_path):
    job = make_job(tmp_path, DURATIONS)
    with JobLock(job) as lock:
        zombie = start_worker(job, lock, "zombie", delay_s=0.5)
        assert zombie.stdout.readline().strip() == "BATCH"
        stop_outside_a_transaction(zombie, job)  # stalls mid-batch: no heartbeat, lease runs out
        try:
            with JobQueue(job) as q:
                held = [i.id for i in q.items("running") if i.lease_owner == "zombie"]
            other = start_worker(job, lock, "other", delay_s=0.0)
            out, err = other.communicate(timeout=120)
            assert other.returncode == 0, err
        finally:
            zombie.send_signal(signal.SIGCONT)  # wakes up, finishes its batch, tries to commit
        zout, zerr = zombie.communicate(timeout=60)
        assert zombie.returncode == 0, zerr
    items = check_done_exactly_once(job, [f"item{i}" for i in range(len(DURATIONS))])
    assert held and all(items[i].lease_owner == "other" for i in held)
    zs = summary_of(zout)
    assert zs["done"] == 0 and zs["taken_over"] > 0 and "taken over by another worker" in zerr
    # its part is on disk but named by no item: the export ignores it
    recorded = {it.part for it in items.values()}
    assert len(list((job / "parts").glob("*.parquet"))) > len(recorded)
    assert len(results_table(job)) == len(DURATIONS)


# ---- `batchasr run --workers 2` with the fixture model --------------------------------------


def test_run_with_two_workers_one_dies_mid_batch(tmp_path):
    manifest = clip_manifest(tmp_path, 24)
    job = tmp_path / "job"
    env = {"BATCHASR_TEST_CRASH_AT": "batch:2", "BATCHASR_TEST_CRASH_ONCE": str(tmp_path / "once")}
    proc = batchasr("run", manifest, "--model", MODEL, "--job-dir", job, "--workers", "2",
                    "--batch-seconds", "6", "--no-progress", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "once").exists()  # one worker really was killed
    assert "died" in proc.stderr and "on 2 workers" in proc.stderr
    rows = export_rows(job, out=tmp_path / "r.parquet")
    assert [r["id"] for r in rows] == [f"item-{i:04d}" for i in range(24)]
    assert all(r["status"] == "done" for r in rows)
    run = json.loads((job / "runs.jsonl").read_text().splitlines()[-1])
    assert run["workers"] == 2 and run["remaining"]["done"] == 24
    # same text as one worker gives
    single = tmp_path / "single"
    batchasr("run", manifest, "--model", MODEL, "--job-dir", single, "--no-progress", check=0)
    assert [r["text"] for r in export_rows(single, out=tmp_path / "s.parquet")] == \
        [r["text"] for r in rows]


@pytest.mark.slow
def test_kill_9_of_a_multi_worker_run_then_resume_exactly_once(tmp_path):
    manifest = clip_manifest(tmp_path, 160)
    job = tmp_path / "job"
    args = [sys.executable, "-m", "batchasr.cli", "run", manifest, "--model", MODEL,
            "--job-dir", job, "--workers", "2", "--batch-seconds", "10", "--no-progress"]
    proc = subprocess.Popen(list(map(str, args)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120

    while done_count(job) < 20 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert done_count(job) < 160, "the run finished before the kill; make the job longer"
    # the workers die with the run (no stale lock): the same command resumes at once
    resumed = batchasr(*args[3:], check=0)
    assert "being processed" not in resumed.stderr
    rows = export_rows(job, out=tmp_path / "r.parquet")
    assert [r["id"] for r in rows] == [f"item-{i:04d}" for i in range(160)]
    assert all(r["status"] == "done" for r in rows)


def test_a_second_independent_run_is_refused_while_workers_run(tmp_path):
    job = make_job(tmp_path, [1.0] * 4)
    with JobLock(job) as lock:
        worker = start_worker(job, lock, "w", delay_s=5.0)
        try:
            assert worker.stdout.readline().strip() == "BATCH"
            lock.release()  # the run's own process lets go; its worker still holds the lock
            proc = batchasr("run", "--job-dir", job, "--model", MODEL, "--no-progress")
            assert proc.returncode == 1 and "being processed by another" in proc.stderr
        finally:
            worker.kill()
            worker.wait()


def test_workers_per_gpu(monkeypatch):
    assert scale.plan_devices(None, None) == [None]
    assert scale.plan_devices(3, None) == [None, None, None]
    assert scale.plan_devices(None, "0,1") == ["0", "1"]
    assert scale.plan_devices(4, "0, 1") == ["0", "1", "0", "1"]  # two per GPU
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3,5")
    assert scale.plan_devices(None, "all") == ["2", "3", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(JobError, match="no CUDA device"):
        scale.plan_devices(None, "all")
    with pytest.raises(ValueError, match="--gpus"):
        scale.plan_devices(None, "0,,1")


# ---- static shards ---------------------------------------------------------------------------


def test_shard_parsing():
    assert shard.parse_shard("0/4") == (0, 4) and shard.parse_shard(" 3 / 4 ") == (3, 4)
    for bad in ("4/4", "-1/4", "1", "a/b", "0/0", ""):
        with pytest.raises(ValueError, match="i/N"):
            shard.parse_shard(bad)


def test_shards_cover_the_ids_with_no_overlap_whatever_the_order():
    rng = random.Random(7)
    ids = [f"clip/{rng.random():.12f}.wav" for _ in range(2000)] + ["日本語", "", "a b"]
    for n in (1, 2, 3, 7, 16):
        slices = [{i for i in ids if shard.shard_of(i, n) == k} for k in range(n)]
        assert sum(len(s) for s in slices) == len(ids) and set().union(*slices) == set(ids)
        if n > 1:  # roughly even
            assert min(len(s) for s in slices) > 0.6 * len(ids) / n
    # fixed values: the same on every machine and Python (PYTHONHASHSEED plays no part)
    assert [shard.shard_of(f"item-{i:04d}", 4) for i in range(8)] == \
        [shard.shard_of(f"item-{i:04d}", 4) for i in range(8)]
    assert shard.shard_of("item-0000", 1000) == int.from_bytes(
        __import__("hashlib").blake2b(b"item-0000", digest_size=8).digest(), "big") % 1000


def test_shard_jobs_cover_the_manifest_and_export_merges_them(tmp_path):
    manifest = clip_manifest(tmp_path, 12)
    shuffled = tmp_path / "shuffled.csv"
    lines = manifest.read_text().splitlines()
    body = lines[1:]
    random.Random(3).shuffle(body)
    shuffled.write_text("\n".join([lines[0], *body]) + "\n")
    jobs = []
    for k in range(3):
        src = manifest if k != 1 else shuffled  # row order plays no part
        job = tmp_path / "jobs" / f"m.shard-{k}-of-3"
        batchasr("run", src, "--model", MODEL, "--job-dir", job, "--shard", f"{k}/3",
                 "--no-progress", check=0)
        jobs.append(job)
    per_job = [{r["id"] for r in export_rows(j, out=tmp_path / f"{k}.parquet")}
               for k, j in enumerate(jobs)]
    assert sum(len(s) for s in per_job) == 12 and all(per_job)
    merged = tmp_path / "all.parquet"
    batchasr("export", "--job-dir", tmp_path / "jobs" / "m.shard-*", "-o", merged, check=0)
    rows = pq.read_table(merged).to_pylist()
    assert sorted(r["id"] for r in rows) == [f"item-{i:04d}" for i in range(12)]
    assert all(r["status"] == "done" and r["n"] is not None for r in rows)
    # a shard given twice would duplicate items: refused
    proc = batchasr("export", "--job-dir", jobs[0], "--job-dir", jobs[0], "-o", merged)
    assert proc.returncode == 1 and "is in both" in proc.stderr
    # resuming a shard with another slice is refused
    proc = batchasr("run", manifest, "--model", MODEL, "--job-dir", jobs[0], "--shard", "1/3")
    assert proc.returncode == 1 and "shard" in proc.stderr
    # several folders need -o
    assert batchasr("export", "--job-dir", jobs[0], "--job-dir", jobs[1]).returncode == 1


# ---- network filesystems ---------------------------------------------------------------------

PROC_MOUNTS = """\
/dev/nvme0n1p2 / ext4 rw,relatime 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /tmp tmpfs rw,nosuid,nodev 0 0
nas:/export/audio /mnt/nas nfs4 rw,relatime,vers=4.2,rsize=1048576 0 0
//fs/share /mnt/smb cifs rw,relatime,vers=3.1.1 0 0
me@box:/data /home/me/remote fuse.sshfs rw,nosuid,nodev,relatime 0 0
/dev/sdb1 /mnt/nas/local\\040disk ext4 rw,relatime 0 0
"""

MAC_MOUNT = """\
/dev/disk3s1s1 on / (apfs, sealed, local, read-only, journaled)
/dev/disk3s5 on /System/Volumes/Data (apfs, local, journaled, nobrowse)
//me@nas._smb._tcp.local/audio on /Volumes/audio (smbfs, nodev, nosuid, mounted by me)
nas:/export on /Volumes/nfs share (nfs, asynchronous)
"""


def test_proc_mounts_parser_and_lookup():
    mounts = disk.parse_proc_mounts(PROC_MOUNTS)
    assert ("/mnt/nas/local disk", "ext4") in mounts
    look = lambda p: disk.mount_of(p, mounts)  # noqa: E731
    assert look("/home/me/jobs/x") == ("/", "ext4")
    assert look("/mnt/nas/jobs/x") == ("/mnt/nas", "nfs4")
    assert look("/mnt/nas") == ("/mnt/nas", "nfs4")
    assert look("/mnt/nasty/x") == ("/", "ext4")  # a prefix of the name is not a parent
    assert look("/mnt/nas/local disk/jobs") == ("/mnt/nas/local disk", "ext4")
    assert look("/mnt/smb/j")[1] == "cifs" and look("/home/me/remote/j")[1] == "fuse.sshfs"
    assert look("/tmp/j") == ("/tmp", "tmpfs")


def test_mac_mount_output_parser():
    mounts = disk.parse_mount_output(MAC_MOUNT)
    assert disk.mount_of("/Volumes/audio/jobs/x", mounts) == ("/Volumes/audio", "smbfs")
    assert disk.mount_of("/Volumes/nfs share/j", mounts) == ("/Volumes/nfs share", "nfs")
    assert disk.mount_of("/Users/me/jobs", mounts) == ("/", "apfs")


def test_a_job_on_a_network_filesystem_is_refused_clearly(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(disk, "filesystem_of", lambda p: ("/mnt/nas", "nfs4"))
    with pytest.raises(JobError, match=r"network filesystem \(nfs4, mounted at /mnt/nas\)") as e:
        disk.check_local_disk(tmp_path / "job")
    assert "--allow-network-fs" in str(e.value) and "local disk" in str(e.value)
    disk.check_local_disk(tmp_path / "job", allow_network=True)
    assert "running anyway" in caplog.text
    monkeypatch.setattr(disk, "filesystem_of", lambda p: ("/", "ext4"))
    disk.check_local_disk(tmp_path / "job")
    # this machine's own disk is local, and the check reads the real mount table
    assert disk.filesystem_of(tmp_path) is not None
    disk.check_local_disk(tmp_path)


# ---- Ray -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        pytest.skip(f"the ray extra is not installed (pip install 'batchasr[ray]'): {e}")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def run_on_ray(manifest, out, **kw):
    from batchasr.runner.ray import run_ray

    model_args = {"model": str(MODEL), "weights": "checkpoint", "dtype": "float32",
                  "device": "cpu", "download": False}
    return run_ray(open_manifest(manifest) if manifest else None, str(out),
                   model_args=model_args, settings={"model": str(MODEL)}, batch_seconds=8.0,
                   items_per_call=4, progress=False, **kw)


def test_ray_job_exactly_once_and_equal_to_the_local_runner(tmp_path, ray_cluster):
    manifest = SAMPLES / "with_errors.csv"  # good files and broken ones
    out = tmp_path / "out"
    summary, problems = run_on_ray(manifest, out)
    assert (summary.done, summary.failed, problems) == (6, 5, [])
    rows = export_rows(out, out=tmp_path / "ray.parquet")
    local = tmp_path / "local"
    batchasr("run", manifest, "--model", MODEL, "--job-dir", local, "--no-progress", check=3)
    expected = export_rows(local, out=tmp_path / "local.parquet")
    assert [r["id"] for r in rows] == [r["id"] for r in expected]  # manifest order, once each
    for r, e in zip(rows, expected):
        assert (r["status"], r["text"], r["tokens"], r["speaker"]) == \
            (e["status"], e["text"], e["tokens"], e["speaker"]), r["id"]
        assert (r["error"] is None) == (e["error"] is None)
    assert export_rows(f"file://{out}", out=tmp_path / "uri.parquet") == rows  # a URI works too
    # the two engines never share a folder
    proc = batchasr("run", manifest, "--model", MODEL, "--job-dir", out)
    assert proc.returncode == 1 and "--engine ray" in proc.stderr
    with pytest.raises(JobError, match="queue.db"):
        run_on_ray(manifest, local)
    # a second run skips what is done (and tries the failures again)
    again, _ = run_on_ray(None, out)
    assert (again.skipped, again.done, again.failed) == (6, 0, 5)
    assert export_rows(out, out=tmp_path / "ray2.parquet") == rows
    # another model on the same output is refused
    from batchasr.runner.ray import run_ray
    with pytest.raises(JobError, match="different settings"):
        run_ray(None, str(out), model_args={}, settings={"model": "other"}, batch_seconds=8.0)


def test_ray_actor_killed_mid_run_still_exactly_once(tmp_path, ray_cluster, monkeypatch):
    manifest = clip_manifest(tmp_path, 16)
    out = tmp_path / "out"
    once = tmp_path / "once"
    monkeypatch.setenv("BATCHASR_TEST_CRASH_AT", "after_part:2")  # its 2nd part is written
    monkeypatch.setenv("BATCHASR_TEST_CRASH_ONCE", str(once))
    summary, _ = run_on_ray(manifest, out)
    assert once.exists(), "no actor was killed"
    assert summary.failed == 0 and summary.done >= 16  # a retried call may count twice
    rows = export_rows(out, out=tmp_path / "r.parquet")
    assert [r["id"] for r in rows] == [f"item-{i:04d}" for i in range(16)]
    assert all(r["status"] == "done" and r["text"] is not None for r in rows)
    # the retried call rewrote its own part: no item is in two parts
    ids = [i for p in (out / "parts").glob("*.parquet") for i in pq.read_table(p)["id"].to_pylist()]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 16


def test_ray_per_row_hotwords_equal_the_local_engine(tmp_path, ray_cluster):
    """SeACo with a manifest `hotwords` column through --engine ray: rows with their own list
    (a comma list, a file next to the manifest), rows with none (the run's --hotwords),
    several lists in one actor call; each row as the local engine and the official give it."""
    from batchasr.runner.ray import run_ray

    seaco = TESTS / "fixtures" / "seaco" / "zh"
    official = json.loads((seaco / "expected.json").read_text(encoding="utf-8"))
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "hw.txt").write_bytes((seaco / official["hotwords"]["file"])
                                                .read_bytes())
    comma_list = official["hotwords"]["list"].replace(" ", ",")
    # (id, clip, cell, the official run it equals); utt_7s tells the file from the list
    rows = [("a", "utt_7s", comma_list, "list"), ("b", "utt_7s", "lists/hw.txt", "file"),
            ("c", "utt_7s", "", "list"), ("d", "utt_2s", "lists/hw.txt", "file"),
            ("e", "utt_4s", "", "list"), ("f", "utt_11s", comma_list, "list")]
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "hotwords"])
        for i, clip, cell, _ in rows:
            w.writerow([i, AUDIO / f"{clip}.wav", cell])
    out = tmp_path / "out"
    model_args = {"model": str(seaco), "weights": "checkpoint", "dtype": "float32",
                  "device": "cpu", "download": False, "hotwords": comma_list}
    summary, problems = run_ray(open_manifest(manifest), str(out), model_args=model_args,
                                settings={"model": str(seaco), "hotwords": comma_list},
                                batch_seconds=30.0, vad=None, items_per_call=6,
                                progress=False)
    assert (summary.done, summary.failed, problems) == (6, 0, [])
    got = export_rows(out, out=tmp_path / "ray.parquet")
    local = tmp_path / "local"
    batchasr("run", manifest, "--model", seaco, "--job-dir", local, "--no-progress",
             "--vad", "none", "--batch-seconds", "30", "--hotwords", comma_list, check=0)
    expected = export_rows(local, out=tmp_path / "local.parquet")
    assert [r["id"] for r in got] == [r["id"] for r in expected] == [r[0] for r in rows]
    for r, e, (i, clip, _, label) in zip(got, expected, rows):
        for key in ("status", "text", "tokens", "segments", "hotwords"):
            assert r[key] == e[key], (i, key)
        assert r["text"] == official["clips"][clip][label]["text"], i


def test_workers_sharing_a_gpu_bound_their_memory(monkeypatch):
    """Two workers on one GPU each take under half of it (MLX's cache would otherwise grow
    towards the whole device in both: out of memory on an H200)."""
    import mlx.core as mx

    from batchasr.runner import device

    calls = {}
    monkeypatch.setattr(device, "gpu_available", lambda: True)
    monkeypatch.setattr(device, "gpu_memory_bytes", lambda: 100 * 2**30)
    monkeypatch.setattr(mx, "set_memory_limit", lambda n: calls.setdefault("memory", n))
    monkeypatch.setattr(mx, "set_cache_limit", lambda n: calls.setdefault("cache", n))
    assert device.share_gpu_memory(1) is None and not calls
    share = device.share_gpu_memory(2)
    assert share == calls["memory"] == int(100 * 2**30 * 0.9 / 2)
    assert calls["cache"] == share // 4


def test_sigterm_reaches_the_workers_and_twice_stops_them_at_once(tmp_path):
    from test_cli import check_stopped_then_resume, start_run

    job = tmp_path / "job"
    args = [clip_manifest(tmp_path, 24), "--model", MODEL, "--job-dir", job, "--workers", "2",
            "--batch-seconds", "5", "--no-progress"]
    proc, err = start_run(*args, slow_s=30)  # each worker's first model call takes 30 s
    err.wait_for("batchasr-test: slow batch", count=2)  # both inside a model call
    proc.send_signal(signal.SIGTERM)
    err.wait_for("SIGTERM: stopping after the current batch", count=2)  # each worker says so
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    assert proc.wait(timeout=30) == 143
    assert time.monotonic() - sent < 6
    assert "died" not in err.text  # a stop is not a dead worker
    check_stopped_then_resume(job, args, err.text, 24)


def test_a_take_over_gives_back_the_attempts_of_items_never_begun(q):
    """A sibling taking over a dead worker's expired items gives back the attempt of each one
    the dead worker's log of begun items does not list, once (the item is then the sibling's):
    an item that keeps killing its workers still fails, the others never do."""
    from batchasr.queue import started

    log = started.StartedLog(q.job_dir, "A")
    assert len(q.claim(3, owner="A", lease_s=1, max_attempts=2, now=1000)) == 3  # a, b, c
    log.begin("a")  # A read "a", then died with b and c never begun
    log.close(remove=False)
    took = q.claim(2, owner="B", lease_s=1, max_attempts=2, now=1002)
    assert [(i.id, i.attempts) for i in took] == [("a", 2), ("b", 1)]
    # c was not taken over by that claim: still A's, its attempt not yet given back
    assert (q.get("c").lease_owner, q.get("c").attempts) == ("A", 1)
    assert [(i.id, i.attempts) for i in q.claim(1, owner="B", lease_s=1, max_attempts=2,
                                                now=1002)] == [("c", 1)]
    # B dies too, having begun only "a": a fails (2 attempts, begun each time), b and c not
    blog = started.StartedLog(q.job_dir, "B")
    blog.begin("a")
    blog.close(remove=False)
    took = q.claim(6, owner="C", lease_s=1, max_attempts=2, now=1010)
    assert [(i.id, i.attempts) for i in took] == [("b", 1), ("c", 1), ("d", 1), ("e", 1),
                                                  ("f", 1)]
    assert q.get("a").status == "failed" and "died 2 times" in q.get("a").error


def test_a_take_over_from_an_owner_without_a_log_counts_every_attempt(q):
    q.claim(2, owner="A", lease_s=1, now=1000)
    assert [(i.id, i.attempts) for i in q.claim(2, owner="B", lease_s=1, now=1002)] == [
        ("a", 2), ("b", 2)]
