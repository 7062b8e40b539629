"""`batchasr transcribe --reader-processes N`: the next files decoded, run through the VAD and
cut in reader processes while earlier ones are transcribed. The same output as without
(silero and fsmn-vad, broken files included, input order kept), a file that kills its reader
fails alone, and what is read ahead stays within its bound in audio seconds."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchasr.audio.cut import CutOptions
from batchasr.models.loader import load_model, load_vad
from batchasr.runner.read_processes import PROCESS_NAME
from batchasr.runner.transcribe import transcribe_files
from batchasr.transcript import to_record

from test_vad_processes import FSMN, MODEL, long_files

ROOT = Path(__file__).resolve().parents[1]
WITH_ERRORS = ROOT / "sample_manifests" / "with_errors.csv"
SR = 16000
needs_proc = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")


def mixed_inputs(tmp_path: Path) -> list[str]:
    """Long recordings of speech and pauses (and one cut off) interleaved with every file of
    sample_manifests/with_errors.csv (good clips, broken files, a missing one)."""
    manifest = long_files(tmp_path / "audio")
    long = [line.split(",", 1)[1] for line in manifest.read_text().splitlines()[1:]]
    with open(WITH_ERRORS, newline="", encoding="utf-8") as f:
        samples = [str(WITH_ERRORS.parent / row["path"]) for row in csv.DictReader(f)]
    paths = []
    for i in range(max(len(long), len(samples))):
        paths += long[i:i + 1] + samples[i:i + 1]
    return paths


@pytest.mark.parametrize("vad,vad_in_readers", [("silero", "1"), (str(FSMN), "1"),
                                                  (str(FSMN), "0")])
def test_transcribe_with_reader_processes_prints_what_it_prints_without(tmp_path, vad,
                                                                         vad_in_readers):
    """With the VAD in the reader processes, or (as with MLX on CUDA) on the main thread
    while the readers decode and send a long file's windows."""
    paths = mixed_inputs(tmp_path)
    out, err = {}, {}
    env = {**os.environ, "BATCHASR_VAD_IN_READERS": vad_in_readers}
    for n in (0, 2):
        proc = subprocess.run([sys.executable, "-m", "batchasr.cli", "transcribe", "--model",
                               str(MODEL), "--json", "--vad", vad, "--max-segment-s", "10",
                               "--reader-processes", str(n), *paths],
                              capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 3, proc.stderr  # the broken files
        out[n] = proc.stdout.splitlines()
        err[n] = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
    assert out[2] == out[0]
    assert err[2] == err[0]
    got = [json.loads(line) for line in out[0]]
    assert [g["path"] for g in got] == paths  # input order
    failed = {Path(g["path"]).name for g in got if "error" in g}
    assert {"empty.wav", "truncated.wav", "not_audio.wav", "corrupt.flac",
            "does_not_exist.wav"} <= failed
    assert {"talk0.wav", "talk1.wav", "talk2.wav", "long_45s.ogg"}.isdisjoint(failed)
    assert sum('"segments": [[' in line for line in out[0]) >= 3  # the talks were cut


@pytest.fixture(scope="module")
def asr():
    return load_model(MODEL)


def records(results, asr) -> list[dict]:
    return [{"path": r.path, "error": r.error} if r.error is not None
            else to_record(r.transcript, path=r.path, duration_s=r.duration_s, asr=asr)
            for r in results]


@needs_proc
def test_a_file_that_kills_its_reader_fails_alone(tmp_path, asr, monkeypatch):
    """A decoder crash (the reader process dies) on one file: read again in a new process,
    it dies again and fails with a clear error; every other file gives what it gives
    without reader processes."""
    paths = mixed_inputs(tmp_path)
    cut = CutOptions(vad=load_vad("silero"), max_segment_s=10)
    files = [(p, None) for p in paths]
    want = records(transcribe_files(asr, files, cut, batch_seconds=30, reader_processes=0), asr)
    monkeypatch.setenv("BATCHASR_TEST_READER_DIES_ON", "talk1")
    got = records(transcribe_files(asr, files, cut, batch_seconds=30, reader_processes=2), asr)
    assert [g["path"] for g in got] == paths
    dead = paths.index(next(p for p in paths if Path(p).name == "talk1.wav"))
    assert got[dead] == {"path": paths[dead], "error": "the reader process died 2 times on "
                                                      "this file (last: killed by signal 9)"}
    assert "error" not in want[dead]
    assert got[:dead] + got[dead + 1:] == want[:dead] + want[dead + 1:]


def test_what_is_read_ahead_stays_within_its_bound(tmp_path, asr):
    """Three 70 s recordings read ahead within 8 s of audio: the pieces queued stay within
    the bound plus one piece (of at most --max-segment-s), and the results are those read
    here."""
    manifest = long_files(tmp_path / "audio")
    files = [(line.split(",", 1)[1], None) for line in manifest.read_text().splitlines()[1:]]
    cut = CutOptions(vad=load_vad("silero"), max_segment_s=5)
    stats: dict = {}
    got = records(transcribe_files(asr, files, cut, batch_seconds=10, reader_processes=2,
                                   read_ahead_s=8, stats=stats), asr)
    want = records(transcribe_files(asr, files, cut, batch_seconds=10, reader_processes=0),
                   asr)
    assert got == want
    assert 0 < stats["peak_read_ahead_samples"] <= (8 + 5) * SR


def _parent(pid) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _reader_children() -> list[int]:
    """This process's reader processes (named so; children of this process or of its fork
    server)."""
    me, found = os.getpid(), []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if (d / "comm").read_text().strip() != PROCESS_NAME:
                continue
            ppid = _parent(d.name)
            if ppid == me or _parent(ppid) == me:
                found.append(int(d.name))
        except (OSError, ValueError, IndexError):
            pass
    return found


@needs_proc
def test_readers_killed_mid_run_change_nothing(tmp_path, asr, caplog):
    """kill -9 of the reader processes while they read the first files (when the third is
    asked for): each file is read again in a new process from the next piece not yet handed
    over; every result is the one without reader processes, in input order."""
    paths = mixed_inputs(tmp_path)
    cut = CutOptions(vad=load_vad("silero"), max_segment_s=10)
    files = [(p, None) for p in paths]
    want = records(transcribe_files(asr, files, cut, batch_seconds=30, reader_processes=0), asr)
    killed = []

    def killing(files):
        for k, f in enumerate(files):
            if k == 2:  # the first two files are handed to the readers
                deadline = time.monotonic() + 60
                while len(_reader_children()) < 2 and time.monotonic() < deadline:
                    time.sleep(0.05)
                killed.extend(_reader_children())
                for pid in killed:
                    os.kill(pid, signal.SIGKILL)
            yield f

    got = records(transcribe_files(asr, killing(files), cut, batch_seconds=30,
                                   reader_processes=2), asr)
    assert len(killed) == 2
    assert got == want
    assert "a reader process died (killed by signal 9)" in caplog.text  # and was replaced
