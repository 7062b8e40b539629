"""The VAD in worker processes (`run --vad-processes N`): the same rows as the VAD on the
model's thread, the same errors for files that break, and nothing left behind by kill -9."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from batchasr.audio.decode import load
from batchasr.manifest.read import open_manifest
from batchasr.models.loader import load_model
from batchasr.outputs.parquet import results_table
from batchasr.queue.store import JobQueue
from batchasr.runner.local import run_job

from conftest import done_count

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "tests" / "fixtures" / "paraformer" / "zh_mixed"
SAMPLES = ROOT / "sample_manifests" / "audio"
FSMN = ROOT / "tests" / "fixtures" / "vad" / "fsmn"


def long_files(folder: Path, n: int = 3, seconds: float = 70.0) -> Path:
    """``n`` recordings of speech and pauses, and a manifest of them plus a short clip and a
    long WAV whose data is cut off (its header promises more than it holds)."""
    folder.mkdir(parents=True, exist_ok=True)
    speech = [load(SAMPLES / name) for name in ("en_16k_mono.wav", "zh_22k.ogg",
                                                "long_45s.ogg", "en_8k.wav")]
    rng = np.random.default_rng(3)
    rows = []
    for i in range(n):
        parts, total = [], 0
        while total < seconds * 16000:
            s = speech[rng.integers(len(speech))]
            gap = np.zeros(int(rng.uniform(0.2, 2.5) * 16000), np.float32)
            parts += [s, gap]
            total += len(s) + len(gap)
        path = folder / f"talk{i}.wav"
        sf.write(path, np.concatenate(parts), 16000, subtype="PCM_16")
        rows.append(f"talk{i},{path}")
    cut = folder / "cut_off.wav"
    shutil.copy(folder / "talk0.wav", cut)
    with open(cut, "r+b") as f:
        f.truncate(os.path.getsize(cut) // 3)
    rows += [f"cut_off,{cut}", f"short,{SAMPLES / 'en_16k_mono.wav'}"]
    manifest = folder / "manifest.csv"
    manifest.write_text("id,path\n" + "\n".join(rows) + "\n")
    return manifest


def rows_of(job: Path) -> list[tuple]:
    return sorted((r["id"], r["status"], r["text"], str(r["segments"]), str(r["tokens"]),
                   r["error"]) for r in results_table(job).to_pylist())


@pytest.fixture(scope="module")
def asr():
    return load_model(MODEL)


@pytest.mark.parametrize("vad", ["silero", str(FSMN)])
def test_vad_processes_give_the_rows_of_the_in_process_vad(tmp_path, asr, vad):
    manifest = long_files(tmp_path / "audio")
    got = {}
    for n in (0, 2):
        job = tmp_path / f"job{n}"
        job.mkdir()
        with JobQueue(job) as q:
            q.enqueue(open_manifest(manifest))
        summary = run_job(job, asr, batch_seconds=30, progress=False, readers=2, vad=vad,
                          max_segment_s=10, vad_processes=n)
        got[n] = rows_of(job)
        assert (summary.vad_processes_s > 0) == (n > 0)
        assert (summary.vad_s > 0) == (n == 0)
    assert got[2] == got[0]
    statuses = {r[0]: r[1] for r in got[2]}
    assert statuses == {"talk0": "done", "talk1": "done", "talk2": "done", "short": "done",
                        "cut_off": statuses["cut_off"]}
    cut_off = [r for r in got[2] if r[0] == "cut_off"][0]
    assert cut_off[1] == "done" or "cut_off.wav" in (cut_off[5] or "")


def _marked_processes(mark: str) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if mark.encode() in (d / "environ").read_bytes():
                    found.append(int(d.name))
            except OSError:
                pass
    return found


def start_run(tmp_path, **popen):
    """`batchasr run --vad-processes 2` on four long files, slowed down (2 s per batch), once
    its two VAD processes are up: (process, args, env, mark, job). ``mark`` is an environment
    entry every process of the run carries, to find them in /proc."""
    manifest = long_files(tmp_path / "audio", n=4)
    job = tmp_path / "job"
    key, value = "BATCHASR_TEST_MARK", uuid.uuid4().hex
    env = {**os.environ, key: value, "BATCHASR_TEST_SLOW_BATCH": "2"}
    args = [sys.executable, "-m", "batchasr.cli", "run", str(manifest), "--model", str(MODEL),
            "--job-dir", str(job), "--vad", "silero", "--max-segment-s", "10", "--readers", "2",
            "--vad-processes", "2", "--batch-seconds", "20", "--no-progress"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, **popen)
    mark = f"{key}={value}"
    deadline = time.monotonic() + 120
    while len(_marked_processes(mark)) < 3 and time.monotonic() < deadline:  # run + 2 VADs
        time.sleep(0.2)
    assert len(_marked_processes(mark)) >= 3, "the VAD processes never started"
    return proc, args, env, mark, job


def gone(mark: str, within_s: float = 15.0) -> bool:
    deadline = time.monotonic() + within_s
    while _marked_processes(mark) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not _marked_processes(mark)


def resumes_exactly_once(args, env, job: Path) -> None:
    """The same command, at full speed, finishes the job: each of the 6 items has one row,
    and every item is done in the queue or failed in the results."""
    env = {k: v for k, v in env.items() if k != "BATCHASR_TEST_SLOW_BATCH"}
    resumed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode in (0, 3), resumed.stderr
    rows = results_table(job).to_pylist()
    ids = [r["id"] for r in rows]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 6
    assert done_count(job) + sum(1 for r in rows if r["status"] == "failed") == 6


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_kill_9_with_vad_processes_leaves_none_behind_and_resumes_exactly_once(tmp_path):
    proc, args, env, mark, job = start_run(tmp_path)
    time.sleep(1.0)
    proc.kill()
    proc.wait(timeout=30)
    assert gone(mark), "VAD processes outlived the run"
    resumes_exactly_once(args, env, job)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_ctrl_c_to_the_process_group_stops_the_run_and_its_vad_processes(tmp_path):
    """A terminal's Ctrl-C reaches every process of the group: the VAD processes ignore it,
    the run stops after its batch (exit 130) and takes them down; the next run finishes."""
    proc, args, env, mark, job = start_run(tmp_path, start_new_session=True)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "stopped:" in err
    assert gone(mark), "VAD processes outlived the run"
    resumes_exactly_once(args, env, job)


@pytest.mark.parametrize("vad", ["silero", str(FSMN)])
def test_transcribe_with_vad_processes_prints_what_it_prints_without(tmp_path, vad):
    manifest = long_files(tmp_path / "audio")
    paths = [line.split(",", 1)[1] for line in manifest.read_text().splitlines()[1:]]
    out = {}
    for n in (0, 2):
        proc = subprocess.run([sys.executable, "-m", "batchasr.cli", "transcribe", "--model",
                               str(MODEL), "--json", "--vad", vad, "--max-segment-s", "10",
                               "--vad-processes", str(n), *paths, str(tmp_path / "missing.wav")],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 3, proc.stderr  # the missing file (and maybe the cut-off one)
        out[n] = proc.stdout.splitlines()
    assert out[2] == out[0]
    assert len(out[0]) == len(paths) + 1 and '"error"' in out[0][-1]
    assert sum('"segments": [[' in line for line in out[0]) >= 3  # the talks were cut
