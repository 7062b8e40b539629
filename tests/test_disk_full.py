"""Issue 12 point 10: a full disk stops a run with one line naming the job folder and the
free space (exit 1, no traceback), the queue intact; the same command after freeing space
completes every item exactly once. A real small tmpfs for the CLI, fault injection for the
part and subtitle writers."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from batchasr.outputs import parquet
from batchasr.outputs import writers
from batchasr.errors import DiskFullError, is_disk_full
from batchasr.queue.store import JobQueue
from batchasr.runner.local import run_job

from conftest import done_count
from test_worker import DURATIONS, check_done_exactly_once, make_job

REPO = Path(__file__).resolve().parents[1]


def _full(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def _fail_after(n, real):
    calls = [0]

    def write(*a, **k):
        calls[0] += 1
        if calls[0] > n:
            _full()
        return real(*a, **k)
    return write


def _check_no_done_without_part(job):
    with JobQueue(job) as q:
        items = list(q.items())
    done = [i for i in items if i.status == "done"]
    for it in done:
        ids = parquet.read_part(job, it.part).column("id").to_pylist()
        assert ids.count(it.id) == 1
    assert not [i for i in items if i.status == "running"]  # handed back cleanly
    return len(done)


def test_recognises_full_disk_errors():
    import sqlite3

    assert is_disk_full(OSError(errno.ENOSPC, "x"))
    assert is_disk_full(OSError(errno.EDQUOT, "x"))
    assert is_disk_full(sqlite3.OperationalError("database or disk is full"))
    wrapped = RuntimeError("cannot write part")
    wrapped.__cause__ = OSError(errno.ENOSPC, "x")
    assert is_disk_full(wrapped)
    assert not is_disk_full(OSError(errno.EACCES, "x"))
    assert not is_disk_full(sqlite3.OperationalError("database is locked"))


@pytest.mark.parametrize("where", ["part", "subtitles"])
def test_full_disk_while_writing_stops_the_run_and_resume_completes(tmp_path, fake_model,
                                                                     monkeypatch, where):
    job = make_job(tmp_path, DURATIONS)
    if where == "part":
        monkeypatch.setattr(parquet, "write_part", _fail_after(2, parquet.write_part))
    else:
        monkeypatch.setattr(writers, "item_file", _fail_after(3, writers.item_file))
    with pytest.raises(DiskFullError) as e:
        run_job(job, fake_model, batch_seconds=2.0, progress=False)
    msg = str(e.value)
    assert str(job) in msg and "free" in msg and "run the same command" in msg
    first = _check_no_done_without_part(job)
    assert 0 < first < len(DURATIONS)
    monkeypatch.undo()
    s = run_job(job, fake_model, batch_seconds=2.0, progress=False)
    assert s.done == len(DURATIONS) - first
    check_done_exactly_once(job, [f"item{i}" for i in range(len(DURATIONS))])


def test_other_subtitle_errors_stay_logged(tmp_path, fake_model, monkeypatch):
    job = make_job(tmp_path, DURATIONS[:3])

    def broken(*a, **k):
        raise OSError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(writers, "item_file", broken)
    s = run_job(job, fake_model, batch_seconds=4.0, progress=False)
    assert s.done == 3


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")


@pytest.mark.parametrize("readers", [[], ["--reader-processes", "2"]],
                         ids=["reader-threads", "reader-processes"])
def test_cli_full_tmpfs_one_line_error_then_resume(tmp_path, readers):
    """A real full disk (tmpfs); with reader processes the subtitle files are written by the
    subtitle process, whose ENOSPC must stop the run the same way."""
    n = 150
    audio = REPO / "sample_manifests" / "audio"
    files = ["en_8k.wav", "zh_22k.ogg", "en_16k_mono.wav"]
    manifest = tmp_path / "many.csv"
    manifest.write_text("id,path\n" + "".join(f"x{i:03d},{audio / files[i % 3]}\n"
                                              for i in range(n)))
    mnt = tmp_path / "mnt"
    _mount_tmpfs(mnt, "4m")
    try:
        job = mnt / "job"
        ballast = mnt / "ballast"
        free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
        ballast.write_bytes(b"\0" * (free - 400 * 1024))  # room for the queue, not the SRTs
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        cmd = [sys.executable, "-m", "batchasr.cli", "run", str(manifest), "--model",
               str(REPO / "tests/fixtures/paraformer/zh_mixed"), "--job-dir", str(job),
               "--no-progress", *readers]
        first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300,
                               cwd=tmp_path)
        assert first.returncode == 1, first.stderr
        assert "Traceback" not in first.stderr
        errors = [line for line in first.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, first.stderr
        assert str(job) in errors[0] and "free on" in errors[0] and "disk is full" in errors[0]
        done = done_count(job)
        assert 0 < done < n, first.stderr  # it filled mid-run
        ballast.unlink()
        again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300,
                               cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert done_count(job) == n
        out = tmp_path / "all.parquet"
        subprocess.run([sys.executable, "-m", "batchasr.cli", "export", "--job-dir", str(job),
                        "--format", "parquet", "-o", str(out)], env=env, check=True,
                       capture_output=True, timeout=120)
        ids = pq.read_table(out).column("id").to_pylist()
        assert sorted(ids) == [f"x{i:03d}" for i in range(n)]
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
