"""The committed sample audio and manifests are what sample_manifests/README.md says they are.

Decoding is checked with soundfile directly (batchasr.audio.decode is tested on its own), and the
manifests with the standard library, so these tests stay about the samples themselves.
"""
import csv
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

HERE = Path(__file__).resolve().parent.parent / "sample_manifests"
AUDIO = HERE / "audio"

# file -> (sample rate, channels, subtype, min seconds, max seconds)
GOOD = {
    "en_16k_mono.wav": (16000, 1, "PCM_16", 1, 6),
    "zh_44k_stereo.flac": (44100, 2, "PCM_16", 1, 6),
    "en_8k.wav": (8000, 1, "PCM_16", 1, 6),
    "zh_22k.ogg": (22050, 1, "VORBIS", 1, 6),
    "en_24bit.wav": (16000, 1, "PCM_24", 1, 6),
    "long_45s.ogg": (16000, 1, "VORBIS", 44.9, 45.1),
}
BROKEN = ["empty.wav", "truncated.wav", "not_audio.wav", "corrupt.flac"]


def _rows(name):
    path = HERE / name
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))


def test_samples_are_small():
    total = sum(p.stat().st_size for p in AUDIO.iterdir())
    assert total < 1_000_000


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_files_decode(name):
    rate, channels, subtype, lo, hi = GOOD[name]
    info = sf.info(AUDIO / name)
    assert (info.samplerate, info.channels, info.subtype) == (rate, channels, subtype)
    x, sr = sf.read(AUDIO / name, dtype="float32", always_2d=True)
    assert sr == rate and x.shape == (info.frames, channels)
    assert lo <= len(x) / sr <= hi
    assert np.isfinite(x).all() and 0.01 < float(x.std()) < 0.5  # speech, not silence or clipping


def test_long_clip_has_speech_and_silences():
    x, sr = sf.read(AUDIO / "long_45s.ogg", dtype="float32")
    rms = np.sqrt((x[: len(x) // sr * sr].reshape(-1, sr) ** 2).mean(axis=1))  # per second
    silent = rms < 1e-3
    assert silent.sum() >= 15 and (~silent).sum() >= 15
    assert silent[-3:].all()  # ends in silence
    # at least one silence of 3 s or more between speech
    runs, run = [], 0
    for s in silent:
        run = run + 1 if s else 0
        runs.append(run)
    assert max(runs[:-5]) >= 3


@pytest.mark.parametrize("name", BROKEN)
def test_broken_files_exist(name):
    assert (AUDIO / name).is_file()


@pytest.mark.parametrize("name", ["empty.wav", "not_audio.wav", "corrupt.flac"])
def test_broken_files_fail_to_open(name):
    with pytest.raises(sf.LibsndfileError):
        sf.read(AUDIO / name)


def test_empty_is_empty():
    assert (AUDIO / "empty.wav").stat().st_size == 0


def test_truncated_header_promises_more_than_the_file_holds():
    data = (AUDIO / "truncated.wav").read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    pos = 12
    while data[pos : pos + 4] != b"data":  # walk the chunks to the data chunk
        pos += 8 + struct.unpack("<I", data[pos + 4 : pos + 8])[0]
    promised = struct.unpack("<I", data[pos + 4 : pos + 8])[0]
    present = len(data) - (pos + 8)
    assert present < 0.5 * promised


def test_corrupt_flac_has_flac_magic():
    assert (AUDIO / "corrupt.flac").read_bytes()[:4] == b"fLaC"


def test_demo_manifests_agree():
    csv_rows = _rows("demo.csv")
    assert [r["id"] for r in csv_rows] == [r["id"] for r in _rows("demo.tsv")] == [r["id"] for r in _rows("demo.jsonl")]
    assert _rows("demo.tsv") == csv_rows
    for a, b in zip(csv_rows, _rows("demo.jsonl")):
        assert {k: v for k, v in a.items() if v != ""} == b
    assert len({r["id"] for r in csv_rows}) == len(csv_rows)
    assert all(r["speaker"] for r in csv_rows)  # a carried column


def test_demo_lists_only_good_files():
    assert sorted(Path(r["path"]).name for r in _rows("demo.csv")) == sorted(GOOD)
    assert all((HERE / r["path"]).is_file() for r in _rows("demo.csv"))


def test_with_errors_lists_good_broken_and_missing():
    rows = _rows("with_errors.csv")
    names = [Path(r["path"]).name for r in rows]
    assert set(GOOD) | set(BROKEN) <= set(names)
    missing = [r for r in rows if not (HERE / r["path"]).exists()]
    assert [r["id"] for r in missing] == ["bad-missing"]
    assert len({r["id"] for r in rows}) == len(rows)
    assert all(r["note"] for r in rows)
