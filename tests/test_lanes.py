"""CPU lanes (runner.stages.lanes): batches through the model at once on threads of their own,
each with its own MLX stream; exactly once, failures per piece, the same results as one lane."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from batchasr import _blas
from batchasr.manifest.read import open_manifest
from batchasr.models.loader import load_model
from batchasr.outputs import parquet
from batchasr.queue.store import JobQueue
from batchasr.runner.device import cpu_lanes
from batchasr.runner.local import run_job
from batchasr.runner.stages.lanes import Lanes

from conftest import FakeModel
from test_worker import DURATIONS, check_done_exactly_once, make_job

FIXTURES = Path(__file__).parent / "fixtures" / "paraformer"


class CountingFake(FakeModel):
    """Records how many calls run at the same time."""

    def __init__(self, **kw):
        super().__init__(delay_s=0.05, **kw)
        self.active = self.most = 0
        self.count_lock = threading.Lock()

    def transcribe(self, waveforms, *, languages=None):
        with self.count_lock:
            self.active += 1
            self.most = max(self.most, self.active)
        try:
            return super().transcribe(waveforms, languages=languages)
        finally:
            with self.count_lock:
                self.active -= 1


def test_default_lanes_follow_the_cores(monkeypatch):
    monkeypatch.delenv("BATCHASR_CPU_LANES", raising=False)
    monkeypatch.setenv("BATCHASR_CPU_CORES", "1")
    assert cpu_lanes() == 1
    monkeypatch.setenv("BATCHASR_CPU_CORES", "8")
    assert cpu_lanes() == 2
    monkeypatch.setenv("BATCHASR_CPU_LANES", "3")
    assert cpu_lanes() == 3


def test_two_lanes_run_at_once_and_do_everything_exactly_once(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHASR_CPU_LANES", "2")
    model = CountingFake()
    job = make_job(tmp_path, DURATIONS)
    s = run_job(job, model, batch_seconds=3.0, progress=False)
    assert (s.done, s.failed, s.stopped) == (len(DURATIONS), 0, False)
    check_done_exactly_once(job, [f"item{i}" for i in range(len(DURATIONS))])
    assert model.most == 2  # two batches were in the model at the same time
    assert sorted(m for m, _ in model.seen) == list(range(1, len(DURATIONS) + 1))
    assert s.batches == len(model.calls)


def test_a_failing_batch_in_a_lane_retries_its_pieces_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHASR_CPU_LANES", "2")
    model = CountingFake(fail_marks=[3])
    job = make_job(tmp_path, [1.0] * 6)
    s = run_job(job, model, batch_seconds=3.0, progress=False)
    assert (s.done, s.failed) == (5, 1)
    with JobQueue(job) as q:
        failed = [it for it in q.items() if it.status == "failed"]
    assert [it.id for it in failed] == ["item2"] and "model error" in failed[0].error


def test_stop_takes_the_results_of_every_lane(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHASR_CPU_LANES", "2")
    stop = threading.Event()
    model = CountingFake(on_call=lambda m: len(m.calls) >= 2 and stop.set())
    job = make_job(tmp_path, [1.0] * 10)
    s = run_job(job, model, batch_seconds=2.0, progress=False, stop_event=stop)
    assert s.stopped and s.done == len(model.seen)  # what the model finished is kept
    assert s.remaining["running"] == 0 and s.remaining["pending"] == 10 - s.done
    run_job(job, FakeModel(), batch_seconds=2.0, progress=False)
    check_done_exactly_once(job, [f"item{i}" for i in range(10)])


def test_lanes_share_the_blas_threads_and_give_them_back():
    if _blas.get_threads() is None:
        pytest.skip("no BLAS was preloaded (not Linux x86-64 with MKL/OpenBLAS)")
    before = _blas.get_threads()
    seen = []
    lanes = Lanes(2, cores=2)
    gate = threading.Event()

    def call():
        seen.append(_blas.get_threads())
        gate.wait(5)

    lanes.start("a", call)
    lanes.start("b", call)
    deadline = time.monotonic() + 5
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _blas.get_threads() == 1  # two lanes busy: one core each
    gate.set()
    assert {lanes.next_done()[0], lanes.next_done()[0]} == {"a", "b"}
    lanes.close()
    assert _blas.get_threads() == before


def results(job):
    with JobQueue(job) as q:
        rows = [r for it in q.items() for r in parquet.read_part(job, it.part).to_pylist()
                if r["id"] == it.id]
    return {r["id"]: (r["text"], [(t["text"], t["start_s"], t["end_s"]) for t in r["tokens"]])
            for r in rows}


def fixture_runs(tmp_path, monkeypatch, variable, values):
    """The fixture Paraformer through the runner once per value of an environment
    variable: {value: results}."""
    asr = load_model(FIXTURES / "en")
    audio = sorted((FIXTURES / "audio").glob("*.wav"))
    assert audio
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,path\n" + "".join(f"u{i},{p}\n" for i, p in
                                              enumerate(audio * 3)))
    out = {}
    for value in values:
        monkeypatch.setenv(variable, value)
        job = tmp_path / f"job-{variable}-{value}"
        with JobQueue(job) as q:
            q.enqueue(open_manifest(manifest))
        s = run_job(job, asr, batch_seconds=4.0, progress=False)
        assert s.done == len(audio) * 3 and s.failed == 0
        out[value] = results(job)
    return out


def test_two_lanes_give_the_same_results_as_one(tmp_path, monkeypatch):
    """The fixture Paraformer through the runner with one lane and with two: identical text
    and token times (each lane computes on an MLX stream of its own)."""
    out = fixture_runs(tmp_path, monkeypatch, "BATCHASR_CPU_LANES", ("1", "2"))
    assert out["1"] == out["2"]


def test_stable_shapes_give_the_same_results(tmp_path, monkeypatch):
    """BATCHASR_STABLE_SHAPES=1 (batch sizes by padded length, for GPUs' plan caches): the
    fixture Paraformer through the runner gives the same text and token times, and its
    batches follow the stable plan."""
    from batchasr.runner.stages import pool as pool_mod

    assert load_model(FIXTURES / "en").length_quantum == 960  # CPU: bucket of one 60 ms frame
    quanta = []
    plan = pool_mod.batch_plan
    monkeypatch.setattr(pool_mod, "batch_plan",
                        lambda *a, **kw: quanta.append(kw.get("quantum")) or plan(*a, **kw))
    out = fixture_runs(tmp_path, monkeypatch, "BATCHASR_STABLE_SHAPES", ("0", "1"))
    assert out["0"] == out["1"]
    assert None in quanta and 960 in quanta


EXIT_AFTER_LANES = """
import mlx.core as mx
import mlx.nn as nn
from batchasr.runner.stages.lanes import Lanes

lanes = Lanes(2, 2)

def calls(k):
    def call():  # mlx.nn's activations are mx.compile'd: a compile cache per lane thread
        x = [mx.ones((n, k)) - 0.5 for n in range(1, 40)]
        return sum(f(a).sum().item() for a in x for f in (nn.relu, nn.gelu, nn.silu, nn.elu))
    return call

for k in range(1, 9):
    lanes.start(None, calls(k))
    if lanes.full:
        lanes.next_done()
while lanes.inflight:
    lanes.next_done()
lanes.close()
"""


def test_a_process_may_end_right_after_its_lanes_close():
    # A lane thread drops its thread-local compile cache after Python's join() returned,
    # and needs the GIL for it: a process ending at once aborted ("terminate called without
    # an active exception"), as `batchasr transcribe` did after its last batch, most times.
    import subprocess
    import sys
    for _ in range(3):
        proc = subprocess.run([sys.executable, "-c", EXIT_AFTER_LANES], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("lanes", ["1", "2"])
def test_transcribe_streams_on_lanes_with_the_same_results(tmp_path, monkeypatch, lanes):
    # `batchasr transcribe` (runner.transcribe) runs its batches on the lanes as `run` does:
    # two at once on a CPU, each file still whole and in input order.
    from batchasr.audio.cut import CutOptions
    from batchasr.runner.transcribe import transcribe_files

    from conftest import write_marked_wav
    monkeypatch.setenv("BATCHASR_CPU_LANES", lanes)
    files = [(str(write_marked_wav(tmp_path / f"f{i}.wav", d, i + 1)), None)
             for i, d in enumerate([1.0, 7.5, 2.0, 3.5, 1.5, 9.0, 2.5, 4.0])]
    model = CountingFake()
    cut = CutOptions(vad=None, max_window_s=3.0, max_segment_s=3.0)
    got = list(transcribe_files(model, iter(files), cut, batch_seconds=3.0,
                                reader_processes=0))
    assert [r.path for r in got] == [f for f, _ in files]
    assert all(r.error is None for r in got)
    texts = [[s.text for s in r.transcript.segments] for r in got]
    marks = [{int(t.split(":")[0][1:]) for t in ts} for ts in texts]
    assert marks == [{i + 1} for i in range(len(files))]
    assert sum(model.calls) == sum(len(ts) for ts in texts)
    assert model.most == int(lanes)


def test_runs_in_one_process_reuse_the_lane_threads():
    # MLX never frees a stream and each CPU stream keeps an OS thread: lanes made anew for
    # every run (a Ray actor makes one per block) would add threads without end.
    import os
    import mlx.core as mx
    if not os.path.isdir("/proc/self/task"):
        pytest.skip("counts threads through /proc")

    def threads() -> int:
        return len(os.listdir("/proc/self/task"))

    def one_run():
        lanes = Lanes(2, 2)
        for _ in range(4):
            lanes.start(None, lambda: mx.eval(mx.ones((8, 8)) @ mx.ones((8, 8))))
            if lanes.full:
                lanes.next_done()
        while lanes.inflight:
            lanes.next_done()
        lanes.close()

    one_run()
    before = threads()
    for _ in range(10):
        one_run()
    assert threads() <= before
