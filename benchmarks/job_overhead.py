#!/usr/bin/env python3
"""What the job around the model costs: `run_job` over the bench's short clips with a
recognizer that does no work (pipelined like Paraformer: submit -> advance -> result, one
transcript of 4 timed tokens per audio second each), so the wall is the runner's own: the
readers, the pool, the writer thread (Parquet parts, the subtitle process, the queue's
commits). On a GPU the model's thread shares the interpreter with all of it.

    python benchmarks/job_overhead.py --audio-s 6000 --reader-processes 2
    python benchmarks/job_overhead.py --audio-s 18000 --subtitles none
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("BATCHASR_CPU_LANES", "1")  # one batch in flight through submit, as on a GPU

from batchasr.transcript import Segment, Token, Transcript  # noqa: E402
from benchmarks.bench import job_in_new_folder, machine, make_audio  # noqa: E402


class _Pending:
    def __init__(self, waves):
        self.waves = waves

    def advance(self):
        pass

    def result(self):
        out = []
        for w in self.waves:
            n = max(1, int(len(w) / 16000 * 4))
            tokens = [Token(f"t{i}", i, i * 250, i * 250 + 200) for i in range(n)]
            out.append(Transcript(text=" ".join(t.text for t in tokens), tokens=tokens,
                                  segments=[Segment(0.0, len(w) / 16000, "x")]))
        return out


class NoWork:
    """A recognizer that returns at once (the ASRModel protocol, pipelined)."""

    name, sample_rate, punctuated, max_segment_s = "no-work", 16000, True, 30.0

    def transcribe(self, waves, languages=None, **options):
        return _Pending(waves).result()

    def submit(self, waves, languages=None, **options):
        return _Pending(waves)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--audio-s", type=float, default=6000.0)
    ap.add_argument("--batch-seconds", type=float, default=1000.0)
    ap.add_argument("--reader-processes", type=int, default=None)
    ap.add_argument("--subtitles", default="srt", help="comma-separated formats, or none")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default="/tmp/batchasr-bench")
    args = ap.parse_args(argv)
    work = Path(args.workdir)
    manifest = make_audio(work / f"audio-{int(args.audio_s)}s", args.audio_s)
    formats = tuple(f for f in args.subtitles.split(",") if f and f != "none")
    for rep in range(args.repeats + 1):  # the first pass warms the page cache and imports
        s, _ = job_in_new_folder(NoWork(), manifest, work / "job-no-work",
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
                                  reader_cpu_s=round(s.decode_s, 3), batches=s.batches)),
                  flush=True)


if __name__ == "__main__":
    main()
