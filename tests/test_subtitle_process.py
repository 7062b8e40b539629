"""The subtitle process (runner.subtitle_process): the same files as the writer's own threads,
a process that dies mid-run loses nothing, and its errors keep their meaning (a full disk
stops the run, anything else is logged and the item stays done)."""
from __future__ import annotations

import errno
import logging
import os

import pytest

from batchasr.errors import DiskFullError, is_disk_full
from batchasr.runner.local import run_job
from batchasr.runner.subtitle_process import SubtitleProcess, _described, _rebuilt

from test_worker import DURATIONS, check_done_exactly_once, make_job


def _subtitles(job):
    folder = job / "subtitles"
    return {n: (folder / n).read_bytes() for n in sorted(os.listdir(folder))}


@pytest.fixture
def two_jobs(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    return make_job(tmp_path / "a", DURATIONS), make_job(tmp_path / "b", DURATIONS)


def test_the_same_files_as_the_writer_threads(two_jobs, fake_model):
    here, there = two_jobs
    a = run_job(here, fake_model, batch_seconds=2.0, progress=False, subtitle_process=False)
    b = run_job(there, fake_model, batch_seconds=2.0, progress=False, subtitle_process=True,
                subtitle_formats=("srt", "vtt"))
    assert a.done == b.done == len(DURATIONS)
    assert _subtitles(here) == _subtitles(there)
    assert len(_subtitles(there)) == len(DURATIONS)
    assert len(os.listdir(there / "subtitles-vtt")) == len(DURATIONS)
    check_done_exactly_once(there, [f"item{i}" for i in range(len(DURATIONS))])


def test_a_process_killed_mid_run_loses_nothing(two_jobs, fake_model, monkeypatch, caplog):
    here, there = two_jobs
    run_job(here, fake_model, batch_seconds=2.0, progress=False, subtitle_process=False)
    real, calls = SubtitleProcess.send, [0]

    def killed_on_the_second_batch(self, *a, **k):
        calls[0] += 1
        if calls[0] == 2:
            self.proc.kill()
            self.proc.join()
        return real(self, *a, **k)

    monkeypatch.setattr(SubtitleProcess, "send", killed_on_the_second_batch)
    with caplog.at_level(logging.WARNING, logger="batchasr.worker"):
        s = run_job(there, fake_model, batch_seconds=2.0, progress=False, subtitle_process=True)
    assert calls[0] == 2  # the writer's threads took over after it died
    assert "the subtitle process ended (killed by signal 9)" in caplog.text
    assert s.done == len(DURATIONS)
    assert _subtitles(here) == _subtitles(there)


def test_errors_cross_the_pipe_with_their_meaning():
    full = _rebuilt(_described(OSError(errno.ENOSPC, "No space left on device")))
    assert isinstance(full, OSError) and is_disk_full(full)
    other = _rebuilt(_described(ValueError("cue trouble")))
    assert not is_disk_full(other) and "ValueError: cue trouble" in str(other)


def test_a_full_disk_in_the_process_stops_the_run_and_resume_completes(tmp_path, fake_model,
                                                                     monkeypatch):
    job = make_job(tmp_path, DURATIONS)
    real, calls = SubtitleProcess.receive, [0]

    def full_on_the_second_batch(self):
        calls[0] += 1
        errors, folder_error = real(self)
        if calls[0] == 2:  # as the process reports ENOSPC
            return [_rebuilt(_described(OSError(errno.ENOSPC, "No space left on device")))
                    for _ in errors], None
        return errors, folder_error

    monkeypatch.setattr(SubtitleProcess, "receive", full_on_the_second_batch)
    with pytest.raises(DiskFullError):
        run_job(job, fake_model, batch_seconds=2.0, progress=False, subtitle_process=True)
    monkeypatch.undo()
    run_job(job, fake_model, batch_seconds=2.0, progress=False, subtitle_process=True)
    check_done_exactly_once(job, [f"item{i}" for i in range(len(DURATIONS))])
    assert len(_subtitles(job)) == len(DURATIONS)


def test_other_errors_are_logged_and_the_item_stays_done(tmp_path, fake_model, monkeypatch,
                                                         caplog):
    job = make_job(tmp_path, DURATIONS[:3])
    real_send, real_receive, sent = SubtitleProcess.send, SubtitleProcess.receive, []

    def remember(self, fmt, folder, options, items):
        sent.append(items)
        return real_send(self, fmt, folder, options, items)

    def item1_fails(self):
        errors, folder_error = real_receive(self)
        return [RuntimeError("cue trouble") if item_id == "item1" else e
                for (item_id, _, _), e in zip(sent.pop(0), errors)], folder_error

    monkeypatch.setattr(SubtitleProcess, "send", remember)
    monkeypatch.setattr(SubtitleProcess, "receive", item1_fails)
    s = run_job(job, fake_model, batch_seconds=10.0, progress=False, subtitle_process=True)
    assert s.done == 3
    assert "could not write srt subtitles for item1" in caplog.text


def test_the_process_ends_with_the_run(tmp_path, fake_model, monkeypatch):
    started = []
    real_init = SubtitleProcess.__init__

    def remember(self):
        real_init(self)
        started.append(self)

    monkeypatch.setattr(SubtitleProcess, "__init__", remember)
    job = make_job(tmp_path, DURATIONS[:2])
    run_job(job, fake_model, batch_seconds=10.0, progress=False, subtitle_process=True)
    assert len(started) == 1 and not started[0].proc.is_alive()
    assert started[0].proc.exitcode == 0


def test_a_failed_folder_fsync_stops_the_run(tmp_path, fake_model, monkeypatch):
    """The folder's fsync makes the new names durable before the commit: when it fails in the
    process, the run stops as it would on the writer's own threads, and nothing is done
    without its files."""
    job = make_job(tmp_path, DURATIONS[:2])
    real = SubtitleProcess.receive

    def fsync_fails(self):
        errors, _ = real(self)
        return errors, OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(SubtitleProcess, "receive", fsync_fails)
    with pytest.raises(OSError, match="Input/output error"):
        run_job(job, fake_model, batch_seconds=10.0, progress=False, subtitle_process=True)
    monkeypatch.undo()
    run_job(job, fake_model, batch_seconds=10.0, progress=False, subtitle_process=True)
    check_done_exactly_once(job, ["item0", "item1"])
