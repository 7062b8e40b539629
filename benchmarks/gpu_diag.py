"""Isolate a GPU crash on the first (largest) Paraformer batch: run one variant per process."""
import dataclasses
import sys

import batchasr  # noqa: F401
import mlx.core as mx
import numpy as np

from batchasr.models.loader import load_model
from batchasr.models.blocks.tuning import Tuning, tune
from benchmarks.bench import speechlike

variant = sys.argv[1]
if "imports" in variant:  # what the runner brings into the process
    import batchasr.runner.local  # noqa: F401
    import pyarrow.parquet  # noqa: F401,F811
if "files" in variant:
    from batchasr.audio.decode import load
asr = load_model(sys.argv[2], dtype=mx.bfloat16)
if "shift" in variant:
    tune(asr.model, dataclasses.replace(Tuning.from_env(), fsmn="shift"))
if "nocompile" in variant:
    asr.model.compile(False)
if "nobucket" in variant:
    asr.frame_bucket = 1
rng = np.random.default_rng(0)
waves = [speechlike(float(d), rng) for d in (19.9, 19.5, 19.0, 18.7, 18.2, 17.9, 17.5, 17.1, 16.6,
                                             16.2, 15.8, 15.3, 14.9, 14.5, 14.1, 13.8)]
if "files" in variant:
    import glob
    files = sorted(glob.glob("/tmp/bb/audio-1800s/*.wav"))
    allw = [load(f) for f in files]
    waves = sorted(allw, key=len, reverse=True)[:16]
r = asr.transcribe(waves)
print(variant, "ok", sum(len(x.tokens) for x in r), flush=True)
