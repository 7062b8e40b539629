"""Regenerate the sample audio and manifests in this folder.

Needs espeak-ng (voices ``en`` and ``cmn``) and sox with FLAC and Ogg Vorbis support:

    apt-get install -y espeak-ng sox libsox-fmt-all
    python sample_manifests/make_samples.py

The outputs are committed, so tests and CI never need espeak-ng or sox. Synthetic speech is
enough here: the samples exercise decoding, resampling, channel mixing, long-file windowing and
error handling, not recognition accuracy. Ogg files carry a random stream serial number, so
their bytes change on every run even though the audio does not.
"""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
AUDIO = HERE / "audio"
SPEED = 150  # espeak-ng words per minute

# name, espeak voice, text, sox output options (rate, channels, bits / compression)
CLIPS = [
    ("en_16k_mono.wav", "en", "Hello, this is a short test of batch transcription.",
     ["-r", "16000", "-c", "1", "-b", "16"]),
    ("zh_44k_stereo.flac", "cmn", "今天天气很好。", ["-r", "44100", "-c", "2", "-b", "16"]),
    ("en_8k.wav", "en", "Please call me back tomorrow morning.", ["-r", "8000", "-c", "1", "-b", "16"]),
    ("zh_22k.ogg", "cmn", "我们明天早上八点在公司见面。", ["-r", "22050", "-c", "1", "-C", "0"]),
    ("en_24bit.wav", "en", "Twenty four bit audio.", ["-r", "16000", "-c", "1", "-b", "24"]),
]
# ~45 s of speech and silences, longer than one model window, so long-file windowing runs.
LONG = "long_45s.ogg"
LONG_SECONDS = 45
LONG_PARTS = [  # (voice, text, silence after in seconds)
    ("en", "This recording is longer than a single window.", 3.0),
    ("cmn", "这是一段比较长的录音。", 5.0),
    ("en", "There are long silences between the sentences.", 4.0),
    ("cmn", "中间有很长的停顿。", 5.0),
    ("en", "The worker must cut it into windows and put the times back together.", 2.0),
    ("en", "This is the last sentence.", 0.0),
]

SPEAKERS = {"en_16k_mono.wav": "alice", "zh_44k_stereo.flac": "bo", "en_8k.wav": "carol",
            "zh_22k.ogg": "bo", "en_24bit.wav": "alice", LONG: "mixed"}
IDS = {"en_16k_mono.wav": "en-16k-mono", "zh_44k_stereo.flac": "zh-44k-stereo", "en_8k.wav": "en-8k-phone",
       "zh_22k.ogg": "zh-22k-ogg", "en_24bit.wav": "en-24bit", LONG: "meeting/long-45s"}
LANGUAGES = {"en": "en", "cmn": "zh"}
BROKEN = [  # name, what is wrong (the manifests' "note" column)
    ("empty.wav", "empty file (0 bytes)"),
    ("truncated.wav", "WAV cut off: the header promises more samples than the file holds"),
    ("not_audio.wav", "a text file named .wav"),
    ("corrupt.flac", "FLAC magic followed by a zeroed STREAMINFO block"),
]
MISSING = "audio/does_not_exist.wav"


def say(voice: str, text: str, out: Path) -> None:
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(SPEED), "-w", str(out), text], check=True)


def sox(*args: str) -> None:
    subprocess.run(["sox", *args], check=True)


def make_clips(tmp: Path) -> None:
    for name, voice, text, opts in CLIPS:
        raw = tmp / f"{name}.raw.wav"
        say(voice, text, raw)
        sox(str(raw), *opts, str(AUDIO / name))


def make_long(tmp: Path) -> None:
    pieces = []
    for i, (voice, text, silence) in enumerate(LONG_PARTS):
        speech = tmp / f"long{i}.wav"
        say(voice, text, speech)
        pad = ["pad", "0", str(silence)] if silence else []
        sox(str(speech), "-r", "16000", "-c", "1", "-b", "16", str(tmp / f"long{i}_16k.wav"), *pad)
        pieces.append(str(tmp / f"long{i}_16k.wav"))
    joined = tmp / "long.wav"
    sox(*pieces, str(joined))
    samples = int(subprocess.run(["soxi", "-s", str(joined)], capture_output=True, text=True, check=True).stdout)
    missing = LONG_SECONDS * 16000 - samples
    assert missing > 0, f"speech and pauses take {samples / 16000:.1f} s; shorten LONG_PARTS"
    # pad the end with silence to exactly LONG_SECONDS ("<n>s" = n samples)
    sox(str(joined), "-C", "0", str(AUDIO / LONG), "pad", "0", f"{missing}s")


def make_broken() -> None:
    (AUDIO / "empty.wav").write_bytes(b"")
    good = (AUDIO / "en_16k_mono.wav").read_bytes()
    (AUDIO / "truncated.wav").write_bytes(good[: 44 + (len(good) - 44) * 2 // 5])  # header kept, 60% of data gone
    (AUDIO / "not_audio.wav").write_text("This is a text file, not a WAV file.\n", encoding="utf-8")
    flac = (AUDIO / "zh_44k_stereo.flac").read_bytes()
    # "fLaC", then the STREAMINFO header (4 bytes) and its 34-byte body zeroed, then the rest
    (AUDIO / "corrupt.flac").write_bytes(flac[:4] + b"\x00" * 38 + flac[42:4096])


def write_manifests() -> None:
    rows = []
    for name, voice, text, _ in CLIPS:
        rows.append({"id": IDS[name], "path": f"audio/{name}", "language": LANGUAGES[voice],
                     "speaker": SPEAKERS[name], "reference": text})
    long_text = " ".join(t for _, t, _ in LONG_PARTS)
    rows.append({"id": IDS[LONG], "path": f"audio/{LONG}", "language": "", "speaker": SPEAKERS[LONG],
                 "reference": long_text})
    fields = ["id", "path", "language", "speaker", "reference"]
    _write_delimited(HERE / "demo.csv", fields, rows, ",")
    _write_delimited(HERE / "demo.tsv", fields, rows, "\t")
    with open(HERE / "demo.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for r in rows:  # JSON Lines: an empty language is simply left out
            f.write(json.dumps({k: v for k, v in r.items() if v != ""}, ensure_ascii=False) + "\n")

    bad = [{"id": f"bad-{Path(n).stem}", "path": f"audio/{n}", "language": "", "speaker": "", "reference": "",
            "note": why} for n, why in BROKEN]
    bad.append({"id": "bad-missing", "path": MISSING, "language": "", "speaker": "", "reference": "",
                "note": "path that does not exist"})
    good = [dict(r, note="good") for r in rows]
    mixed = [good[0], bad[0], good[1], bad[1], bad[2], good[2], bad[3], bad[4], *good[3:]]
    _write_delimited(HERE / "with_errors.csv", fields + ["note"], mixed, ",")


def _write_delimited(path: Path, fields, rows, delimiter: str) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, delimiter=delimiter, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def main() -> None:
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found; install it with: apt-get install -y espeak-ng sox libsox-fmt-all")
    AUDIO.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        make_clips(Path(tmp))
        make_long(Path(tmp))
    make_broken()
    write_manifests()
    total = sum(p.stat().st_size for p in AUDIO.iterdir())
    print(f"wrote {len(list(AUDIO.iterdir()))} audio files ({total / 1024:.0f} KiB) and 4 manifests in {HERE}")


if __name__ == "__main__":
    main()
