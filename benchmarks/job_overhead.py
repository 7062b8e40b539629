#!/usr/bin/env python3
"""What the job around the model costs: `run_job` over the bench's short clips with a
recognizer that does no work (pipelined like Paraformer: submit -> advance -> result, one
transcript of 4 timed tokens per audio second each), so the wall is the runner's own: the
readers, the pool, the writer thread (Parquet parts, the subtitle process, the queue's
commits). On a GPU the model's thread shares the interpreter with all of it.

``--device-ms-per-s``: the recognizer's result waits that long per second of a batch's
audio, counted from its submit (a device working while the host goes on), so that the
loop's overlap shows: ``overlapped`` counts the batches started while another was in
flight (the pipelined steps), of ``batches``.

    python benchmarks/job_overhead.py --audio-s 6000 --reader-processes 2
    python benchmarks/job_overhead.py --audio-s 18000 --subtitles none
    python benchmarks/job_overhead.py --audio-s 18000 --device-ms-per-s 0.2 --reader-processes 2
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("BATCHASR_CPU_LANES", "1")  # one batch in flight through submit, as on a GPU

from batchasr.transcript import Segment, Token, Transcript  # noqa: E402
from benchmarks.bench import job_in_new_folder, machine, make_audio  # noqa: E402


class _Pending:
    """A batch on the simulated device: done at ``ready_at``; ``taken`` once its results
    were asked for."""

    def __init__(self, waves, ready_at: float):
        self.waves, self.ready_at, self.taken = waves, ready_at, False

    def advance(self):
        pass

    def result(self):
        self.taken = True
        time.sleep(max(0.0, self.ready_at - time.perf_counter()))
        out = []
        for w in self.waves:
            n = max(1, int(len(w) / 16000 * 4))
            tokens = [Token(f"t{i}", i, i * 250, i * 250 + 200) for i in range(n)]
            out.append(Transcript(text=" ".join(t.text for t in tokens), tokens=tokens,
                                  segments=[Segment(0.0, len(w) / 16000, "x")]))
        return out


class NoWork:
    """A recognizer that does no work (the ASRModel protocol, pipelined); its batches take
    ``device_ms_per_s`` per audio second on a simulated device that runs them in turn."""

    name, sample_rate, punctuated, max_segment_s = "no-work", 16000, True, 30.0

    def __init__(self, device_ms_per_s: float = 0.0):
        self.device_s_per_sample = device_ms_per_s / 1000 / 16000
        self.overlapped = 0  # batches submitted while another was in flight
        self.last: _Pending | None = None

    def transcribe(self, waves, languages=None, **options):
        return self.submit(waves).result()

    def submit(self, waves, languages=None, **options):
        now = time.perf_counter()
        if self.last is not None and not self.last.taken:
            self.overlapped += 1
        start = max(now, self.last.ready_at) if self.last is not None else now
        self.last = _Pending(waves, start + sum(map(len, waves)) * self.device_s_per_sample)
        return self.last


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--audio-s", type=float, default=6000.0)
    ap.add_argument("--batch-seconds", type=float, default=1000.0)
    ap.add_argument("--reader-processes", type=int, default=None)
    ap.add_argument("--subtitles", default="srt", help="comma-separated formats, or none")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device-ms-per-s", type=float, default=0.0,
                    help="simulated device time per audio second of a batch")
    ap.add_argument("--workdir", default="/tmp/batchasr-bench")
    args = ap.parse_args(argv)
    work = Path(args.workdir)
    manifest = make_audio(work / f"audio-{int(args.audio_s)}s", args.audio_s)
    formats = tuple(f for f in args.subtitles.split(",") if f and f != "none")
    for rep in range(args.repeats + 1):  # the first pass warms the page cache and imports
        model = NoWork(args.device_ms_per_s)
        s, _ = job_in_new_folder(model, manifest, work / "job-no-work",
                                 batch_seconds=args.batch_seconds, readers=8,
                                 reader_processes=args.reader_processes,
                                 subtitle_formats=formats)
        if rep:
            print(json.dumps(dict(machine=machine(), items=s.done, audio_s=round(s.audio_s, 1),
                                  subtitles=list(formats), wall_s=round(s.wall_s, 3),
                                  per_item_ms=round(1000 * s.wall_s / max(1, s.done), 3),
                                  rtfx=round(s.audio_s / s.wall_s, 1),
                                  waiting_for_audio_s=round(s.wait_s, 3),
                                  write_thread_s=round(s.write_s, 3),
                                  first_batch_s=round(s.first_batch_s, 3),
                                  drain_s=round(s.drain_s, 3),
                                  reader_cpu_s=round(s.decode_s, 3), batches=s.batches,
                                  device_ms_per_s=args.device_ms_per_s,
                                  overlapped=model.overlapped)),
                  flush=True)


if __name__ == "__main__":
    main()
