"""Reader processes (`run --reader-processes N`): decoding, the VAD and cutting in processes,
audio through shared memory. The same rows as the reader threads, the same errors for files
that break, a reader process killed mid-run costs nothing, a file that kills its reader fails
alone, and kill -9 / Ctrl-C of the run leave no process and no shared memory behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from batchasr.audio.cut import CutOptions, iter_pieces
from batchasr.manifest.read import open_manifest
from batchasr.models.loader import load_model, load_vad
from batchasr.outputs.parquet import results_table
from batchasr.queue.store import JobQueue
from batchasr.runner.local import run_job
from batchasr.runner.read_processes import (PROCESS_NAME, Cut, End, Plan, ReadProcesses,
                                          VADWindow, Window)
from batchasr.runner.subtitle_process import PROCESS_NAME as SUBTITLES_NAME

from test_vad_processes import FSMN, MODEL, _marked_processes, gone, long_files, \
    resumes_exactly_once, rows_of

ROOT = Path(__file__).resolve().parents[1]
WITH_ERRORS = ROOT / "sample_manifests" / "with_errors.csv"
needs_proc = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")


@pytest.fixture(scope="module")
def asr():
    return load_model(MODEL)


def run_rows(tmp_path: Path, name: str, manifest: Path, asr, **options):
    job = tmp_path / name
    job.mkdir()
    with JobQueue(job) as q:
        q.enqueue(open_manifest(manifest))
    summary = run_job(job, asr, batch_seconds=30, progress=False, readers=2, **options)
    return rows_of(job), summary


@pytest.mark.parametrize("vad", ["silero", str(FSMN), None])
def test_reader_processes_give_the_rows_of_the_reader_threads(tmp_path, asr, vad):
    manifest = long_files(tmp_path / "audio")
    threads, s0 = run_rows(tmp_path, "threads", manifest, asr, vad=vad, max_segment_s=10,
                           reader_processes=0)
    procs, s2 = run_rows(tmp_path, "procs", manifest, asr, vad=vad, max_segment_s=10,
                         reader_processes=2, vad_in_readers=True)
    assert procs == threads
    assert (s0.reader_processes, s2.reader_processes) == (0, 2)
    assert s2.vad_s == 0 and (s0.vad_s > 0) == (vad is not None)  # the VAD ran elsewhere
    assert {r[0]: r[1] for r in procs if r[0] != "cut_off"} == {
        "talk0": "done", "talk1": "done", "talk2": "done", "short": "done"}


@pytest.mark.parametrize("vad", ["silero", str(FSMN)])
def test_readers_that_leave_the_vad_to_the_main_thread_give_the_same_rows(tmp_path, asr, vad):
    """As with MLX on CUDA (runner.device.vad_in_reader_processes): the readers decode and
    send a long file's windows, the main thread runs the VAD; the rows are the threads'."""
    manifest = long_files(tmp_path / "audio")
    threads, _ = run_rows(tmp_path, "threads", manifest, asr, vad=vad, max_segment_s=10,
                          reader_processes=0)
    procs, s2 = run_rows(tmp_path, "procs", manifest, asr, vad=vad, max_segment_s=10,
                         reader_processes=2, vad_in_readers=False)
    assert procs == threads
    assert s2.reader_processes == 2 and s2.vad_s > 0  # the VAD ran here


def test_broken_files_fail_with_the_same_errors_in_reader_processes(tmp_path, asr):
    threads, _ = run_rows(tmp_path, "threads", WITH_ERRORS, asr, reader_processes=0)
    procs, _ = run_rows(tmp_path, "procs", WITH_ERRORS, asr, reader_processes=2)
    assert procs == threads
    assert any(r[1] == "failed" for r in procs) and any(r[1] == "done" for r in procs)


@pytest.mark.parametrize("vad", [None, "silero"])
def test_read_gives_the_pieces_of_iter_pieces(tmp_path, vad):
    """One file through a reader process: a Plan, the pieces of ``iter_pieces`` (same index,
    offset and samples), an End with the count and the duration."""
    path = long_files(tmp_path / "audio", n=1, seconds=50).parent / "talk0.wav"
    loaded = load_vad(vad) if vad else None
    cut = CutOptions(vad=loaded, max_segment_s=10, max_window_s=12)
    read: dict = {}
    want = [(i, off, wave) for i, off, wave in iter_pieces(str(path), cut, read)]
    procs = ReadProcesses(1, cut, vad)
    try:
        events = list(procs.read(str(path)))
    finally:
        procs.close()
    assert events[0] == Plan(through_vad=vad is not None)
    assert events[-1] == End(read["n_pieces"], read["duration_s"])
    pieces = events[1:-1]
    assert all(isinstance(p, Cut if vad else Window) for p in pieces)
    assert len(pieces) == len(want) > 3
    for p, (i, off, wave) in zip(pieces, want):
        offset = p.start_s if vad else p.offset_s
        assert (p.index, offset) == (i, off)
        assert p.audio.dtype == wave.dtype and (p.audio == wave).all()


def test_an_abandoned_file_leaves_the_process_ready_for_the_next(tmp_path):
    """The caller stops after two pieces: the process drops the rest of the file and reads
    the next file whole (the ring's room is given back)."""
    folder = long_files(tmp_path / "audio", n=2, seconds=60).parent
    cut = CutOptions(max_window_s=5)
    procs = ReadProcesses(1, cut)
    try:
        first = procs.read(str(folder / "talk0.wav"))
        taken = [next(first) for _ in range(3)]  # the plan and two pieces
        first.close()
        events = list(procs.read(str(folder / "talk1.wav")))
        assert len(procs.pids()) == 1 and procs.started == 1
    finally:
        procs.close()
    assert isinstance(taken[2], Window) and taken[2].index == 1
    want = list(iter_pieces(str(folder / "talk1.wav"), cut))
    got = [(e.index, e.offset_s, e.audio.tolist()) for e in events if isinstance(e, Window)]
    assert got == [(i, off, w.tolist()) for i, off, w in want]


def _shm_names() -> set[str]:
    """Python's shared memory blocks in /dev/shm (psm_*; OpenMP leaves files of its own)."""
    if not os.path.isdir("/dev/shm"):
        return set()
    return {n for n in os.listdir("/dev/shm") if n.startswith("psm_")}


def test_close_unlinks_the_shared_memory(tmp_path):
    before = _shm_names()
    procs = ReadProcesses(2, CutOptions())
    path = long_files(tmp_path / "audio", n=1, seconds=5).parent / "talk0.wav"
    list(procs.read(str(path)))
    assert _shm_names() - before, "the ring is not in /dev/shm"
    procs.close()
    assert not _shm_names() - before


@needs_proc
def test_a_file_that_kills_its_reader_fails_alone(tmp_path, asr, monkeypatch):
    """A decoder crash (the reader process dies) on one file: it is read again in a new
    process, dies again, and that item fails with a clear error; the others are done."""
    monkeypatch.setenv("BATCHASR_TEST_READER_DIES_ON", "talk1")
    manifest = long_files(tmp_path / "audio")
    rows, summary = run_rows(tmp_path, "job", manifest, asr, vad="silero", max_segment_s=10,
                             reader_processes=2)
    status = {r[0]: (r[1], r[5]) for r in rows}
    assert status["talk1"] == ("failed", "the reader process died 2 times on this file "
                                         "(last: killed by signal 9)")
    assert all(status[k][0] == "done" for k in ("talk0", "talk2", "short"))


def _readers(mark: str) -> list[int]:
    """The reader processes among a run's marked processes (not the run, nor the shared
    memory's resource tracker)."""
    found = []
    for pid in _marked_processes(mark):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == PROCESS_NAME:
                found.append(pid)
        except OSError:
            pass
    return found


def start_run(tmp_path, **popen):
    """`batchasr run --reader-processes 2` on four long files, slowed down (2 s per batch),
    once its two reader processes are up: (process, args, env, mark, job)."""
    manifest = long_files(tmp_path / "audio", n=4)
    job = tmp_path / "job"
    key, value = "BATCHASR_TEST_MARK", uuid.uuid4().hex
    env = {**os.environ, key: value, "BATCHASR_TEST_SLOW_BATCH": "2"}
    args = [sys.executable, "-m", "batchasr.cli", "run", str(manifest), "--model", str(MODEL),
            "--job-dir", str(job), "--vad", "silero", "--max-segment-s", "10",
            "--reader-processes", "2", "--batch-seconds", "20", "--no-progress"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, **popen)
    mark = f"{key}={value}"
    deadline = time.monotonic() + 120
    while len(_readers(mark)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(_readers(mark)) == 2, "the reader processes never started"
    return proc, args, env, mark, job


@needs_proc
def test_killing_a_reader_process_mid_run_loses_nothing(tmp_path):
    """kill -9 of a reader process while the run works: its file is read again in a new
    process from where it was (pieces already handed over are not sent twice); the run
    finishes with every item done exactly once and the rows of an undisturbed run."""
    proc, args, env, mark, job = start_run(tmp_path)
    os.kill(_readers(mark)[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode in (0, 3), err
    assert "a reader process died (killed by signal 9)" in err
    env = {k: v for k, v in env.items() if k != "BATCHASR_TEST_SLOW_BATCH"}
    clean = tmp_path / "clean"
    subprocess.run([*args[:args.index("--job-dir") + 1], str(clean),
                    *args[args.index("--job-dir") + 2:]], env=env, check=False,
                   capture_output=True, timeout=300)
    assert rows_of(job) == rows_of(clean)
    ids = [r["id"] for r in results_table(job).to_pylist()]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 6


@needs_proc
def test_kill_9_of_the_run_leaves_no_reader_and_no_shared_memory(tmp_path):
    before = _shm_names()
    proc, args, env, mark, job = start_run(tmp_path)
    time.sleep(1.0)
    # the subtitle process too (runs with reader processes write their subtitles there)
    assert any(Path(f"/proc/{pid}/comm").read_text().strip() == SUBTITLES_NAME
               for pid in _marked_processes(mark))
    proc.kill()
    proc.wait(timeout=30)
    assert gone(mark), "reader processes outlived the run"
    deadline = time.monotonic() + 15  # the resource tracker unlinks what the run left
    while _shm_names() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _shm_names() - before, "shared memory left behind"
    resumes_exactly_once(args, env, job)


@needs_proc
def test_ctrl_c_to_the_process_group_stops_the_run_and_its_readers(tmp_path):
    proc, args, env, mark, job = start_run(tmp_path, start_new_session=True)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "stopped:" in err
    assert gone(mark), "reader processes outlived the run"
    resumes_exactly_once(args, env, job)


def test_ctrl_c_while_a_reader_starts_does_not_kill_it(tmp_path):
    """A terminal's Ctrl-C reaches the whole process group, also a reader still importing
    (before it can ignore it): SIGINT is blocked across the spawn, so it survives, and closing
    twice is harmless."""
    path = long_files(tmp_path / "audio", n=1, seconds=5).parent / "talk0.wav"
    procs = ReadProcesses(1, CutOptions())
    try:
        procs.start()
        pid = procs.pids()[0]
        for _ in range(25):  # from the first instants of its start-up on
            os.kill(pid, signal.SIGINT)
            time.sleep(0.02)
        events = list(procs.read(str(path)))
        assert procs.started == 1 and procs.pids() == [pid]
        assert isinstance(events[-1], End)
    finally:
        procs.close()
        procs.close()


@needs_proc
@pytest.mark.parametrize("vad", ["silero", "fsmn"])
@pytest.mark.parametrize("vad_here", [True, False])
def test_reader_processes_never_load_mlx_and_never_see_the_gpu(tmp_path, vad, vad_here):
    """With MLX on CUDA every MLX process takes a device context and memory: reader processes,
    those that run the VAD (numpy) and those that leave it to the caller, must not load MLX
    at all (checked in the process's memory map), and the GPU is hidden from them."""
    path = long_files(tmp_path / "audio", n=1, seconds=40).parent / "talk0.wav"
    spec = "silero" if vad == "silero" else str(Path(__file__).parent / "fixtures" / "vad" / "fsmn")
    cut = CutOptions(vad=load_vad(spec), max_segment_s=10)
    procs = ReadProcesses(1, cut, load_vad(spec).spec, vad_here=vad_here)
    try:
        events = list(procs.read(str(path)))
        pid = procs.pids()[0]
        maps = Path(f"/proc/{pid}/maps").read_text()
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    finally:
        procs.close()
    assert events[0] == Plan(through_vad=True)
    assert all(isinstance(e, VADWindow if vad_here else Cut) for e in events[1:-1])
    assert "libmlx" not in maps
    assert b"CUDA_VISIBLE_DEVICES=" in environ


@needs_proc
def test_reader_processes_run_niced_and_named(tmp_path, monkeypatch):
    """Readers yield the CPU to the model's process (a lower priority, BATCHASR_READER_NICE
    as the run sets it when they start) and say what they are in ps."""
    monkeypatch.setenv("BATCHASR_READER_NICE", "7")
    procs = ReadProcesses(1, CutOptions())
    path = long_files(tmp_path / "audio", n=1, seconds=5).parent / "talk0.wav"
    try:
        assert isinstance(list(procs.read(str(path)))[-1], End)
        pid = procs.pids()[0]
        assert Path(f"/proc/{pid}/comm").read_text().strip() == PROCESS_NAME
        assert os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, 0) + 7
    finally:
        procs.close()


def test_readers_keep_freed_memory_unless_told_otherwise(monkeypatch):
    """Reader processes run with glibc's malloc keeping freed memory (the VADs' temporaries
    are not mapped afresh chunk after chunk); a GLIBC_TUNABLES of the user's is kept, and
    one that sets malloc already wins."""
    from batchasr.runner.read_processes import READER_MALLOC, _reader_environment

    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert _reader_environment()["GLIBC_TUNABLES"] == READER_MALLOC
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.rtld.nns=2")
    assert _reader_environment()["GLIBC_TUNABLES"] == "glibc.rtld.nns=2:" + READER_MALLOC
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert "GLIBC_TUNABLES" not in _reader_environment()
