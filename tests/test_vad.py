"""VAD parity and behaviour on committed fixtures (tools/make_reference_fixtures.py vad).

fsmn-vad: a tiny random checkpoint in the official layout, run by funasr 1.4.16's
AutoModel.generate (60 s chunks, dynamic end silence): identical segments, per-frame silence
posteriors within 1e-5, the same end silence per chunk. silero: the package's own
TorchScript model and get_speech_timestamps (silero-vad 6.2.3): probabilities within 1e-4,
identical timestamps. The clips are real espeak-ng recordings joined with silences, rebuilt
here from speech.flac exactly as the official code read them. No torch needed.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from batchasr.cli import cli
from batchasr.audio.cut import split_long_segments
from batchasr.models.fsmn_vad import FsmnVAD
from batchasr.models.loader import load_vad
from batchasr.models.silero_vad import SileroOptions, SileroVAD, SpeechTimestamps

FIXTURES = Path(__file__).parent / "fixtures" / "vad"
FSMN = json.loads((FIXTURES / "fsmn" / "expected.json").read_text())
SILERO = json.loads((FIXTURES / "silero_expected.json").read_text())
SR = 16000


@pytest.fixture(scope="module")
def store():
    return sf.read(FIXTURES / "speech.flac", dtype="int16")[0]


def assemble(pieces, store):
    return np.concatenate([np.zeros(p[1], np.int16) if p[0] == "zeros" else store[p[1]:p[2]]
                           for p in pieces]).astype(np.float32) / 32768


@pytest.fixture(scope="module")
def fsmn():
    vad = load_vad(FIXTURES / "fsmn")
    assert isinstance(vad, FsmnVAD)
    return vad


@pytest.fixture(scope="module")
def silero():
    vad = load_vad("silero")
    assert isinstance(vad, SileroVAD)
    return vad


# ---- fsmn-vad ---------------------------------------------------------------------------------
@pytest.mark.parametrize("clip", [c for c in FSMN["clips"] if "segments" in FSMN["clips"][c]])
def test_fsmn_matches_official(fsmn, store, clip):
    ref = FSMN["clips"][clip]
    wave = assemble(ref["pieces"], store)
    st = fsmn.stream(keep_probs=True)
    segments = st.feed(wave) + st.finish()
    assert [list(s) for s in segments] == ref["segments"]
    # the end silence (ms, less speech_to_sil) in force at each 60 s chunk: dynamic schedule
    assert st.end_silence == [c[1] for c in ref["chunks"]]
    probs = np.concatenate(st.frame_probs)[:, 0] if st.frame_probs else np.zeros(0)
    official = np.load(FIXTURES / "fsmn" / "frame_probs.npz")[clip]
    assert len(probs) == ref["n_frames"] == len(official)
    np.testing.assert_allclose(probs, official, atol=1e-5)


@pytest.mark.parametrize("clip", [c for c in FSMN["clips"] if "segments" in FSMN["clips"][c]])
def test_fsmn_network_on_the_device_matches_official(store, clip):
    """The FSMN in MLX (batchasr.models.fsmn_vad_device), the endpoints on the host: the
    official segments, posteriors within 1e-5."""
    from batchasr.models.fsmn_vad_device import DeviceNetwork

    vad = load_vad(FIXTURES / "fsmn")
    vad.network = DeviceNetwork(vad.model)
    ref = FSMN["clips"][clip]
    wave = assemble(ref["pieces"], store)
    st = vad.stream(keep_probs=True)
    assert [list(s) for s in st.feed(wave) + st.finish()] == ref["segments"]
    probs = np.concatenate(st.frame_probs)[:, 0] if st.frame_probs else np.zeros(0)
    official = np.load(FIXTURES / "fsmn" / "frame_probs.npz")[clip]
    np.testing.assert_allclose(probs, official, atol=1e-5)


def test_fsmn_network_on_the_device_batches_streams(fsmn):
    import mlx.core as mx

    from batchasr.models.fsmn_vad_device import DeviceNetwork

    net = DeviceNetwork(fsmn.model)
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((3, 50, fsmn.model.args.input_dim)).astype(np.float32)
    cache = [rng.standard_normal(c.shape).astype(np.float32) for c in fsmn.model.make_cache(3)]
    ids = list(fsmn.options.sil_pdf_ids)
    batched, batched_cache = net.silence(mx.array(feats), [mx.array(c) for c in cache], ids)
    batched, batched_cache = np.array(batched), [np.array(c) for c in batched_cache]
    assert batched.shape == (3, 50, len(ids))
    for i in range(3):  # each row of the batch is that stream alone (GEMMs' rounding aside)
        one, one_cache = fsmn.model.silence(feats[i : i + 1], [c[i : i + 1] for c in cache], ids)
        np.testing.assert_allclose(batched[i : i + 1], one, atol=1e-6)
        for a, b in zip(batched_cache, one_cache):
            np.testing.assert_allclose(a[i : i + 1], b, atol=1e-5)
    # rows padded at the end: each row's posteriors and new cache are its own
    lengths = [50, 31, 7]
    padded = feats.copy()
    for i, n in enumerate(lengths):
        padded[i, n:] = 1e3
    probs, new_cache = net.silence(mx.array(padded), [mx.array(c) for c in cache], ids, lengths)
    for i, n in enumerate(lengths):
        one, one_cache = fsmn.model.silence(feats[i : i + 1, :n], [c[i : i + 1] for c in cache],
                                            ids)
        np.testing.assert_allclose(np.array(probs[i : i + 1, :n]), one, atol=1e-6)
        for a, b in zip(new_cache, one_cache):
            np.testing.assert_allclose(np.array(a[i : i + 1]), b, atol=1e-5)


@pytest.mark.parametrize("clip", list(FSMN["fixed"]))
def test_fsmn_fixed_end_silence_matches_official(fsmn, store, clip):
    ref = FSMN["fixed"][clip]
    wave = assemble(FSMN["clips"][clip]["pieces"], store)
    st = fsmn.stream(max_end_silence_time=ref["max_end_silence_time"])
    assert [list(s) for s in st.feed(wave) + st.finish()] == ref["segments"]
    assert st.end_silence == [c[1] for c in ref["chunks"]]


def test_fsmn_official_cases_covered():
    """The fixture exercises what the port must get right: several chunks, a chunk starting
    inside speech (50 ms end silence), the 60 s segment cut, an empty final chunk."""
    long_mix = FSMN["clips"]["long_mix"]
    assert [c[1] for c in long_mix["chunks"]] == [1850, 50, 1850]
    cut = FSMN["fixed"]["long_mix"]["segments"]
    assert cut[0][1] - cut[0][0] > 59000 and cut[1][0] == cut[0][1]
    assert len(FSMN["clips"]["exact_60s"]["chunks"]) == 2  # 960,000 samples: 2nd chunk empty
    assert FSMN["clips"]["silence"]["segments"] == []
    assert "official_error" in FSMN["clips"]["tiny"]  # generate() divides by zero < 25 ms


def test_fsmn_tiny_and_empty(fsmn, store):
    assert fsmn.segments(assemble(FSMN["clips"]["tiny"]["pieces"], store)) == []
    assert fsmn.segments(np.zeros(0, np.float32)) == []


def test_fsmn_stream_any_window_size(fsmn, store):
    wave = assemble(FSMN["clips"]["long_mix"]["pieces"], store)
    n = 7 * SR + 123  # windows that do not line up with the 60 s chunks
    windows = [(i / SR, wave[i:i + n]) for i in range(0, len(wave), n)]
    assert [list(s) for s in fsmn.segments_stream(windows)] == FSMN["clips"]["long_mix"]["segments"]


# ---- silero -------------------------------------------------------------------------------------
@pytest.mark.parametrize("clip", list(SILERO["clips"]))
def test_silero_matches_package(silero, store, clip):
    ref = SILERO["clips"][clip]
    wave = assemble(ref["pieces"], store)
    st = silero.stream(keep_probs=True)
    segments = st.feed(wave) + st.finish()
    probs = np.concatenate(st.probs) if st.probs else np.zeros(0)
    official = np.load(FIXTURES / "silero_probs.npz")[clip]
    assert len(probs) == len(official)
    np.testing.assert_allclose(probs, official, atol=1e-4)
    assert [[s["start"], s["end"]] for s in st.raw] == ref["timestamps"]
    # ms as FunASR's SileroVad adapter converts samples
    assert segments == [(int(a * 1000 / SR), int(b * 1000 / SR)) for a, b in ref["timestamps"]]


@pytest.mark.parametrize("variant", ["max_speech_4s", "max_speech_4s_last_silence", "strict"])
def test_silero_timestamp_options_match_package(store, variant):
    """get_speech_timestamps' other options, on the package's own probabilities."""
    opts = {"max_speech_4s": SileroOptions(max_speech_duration_s=4.0),
            "max_speech_4s_last_silence": SileroOptions(max_speech_duration_s=4.0,
                                                        use_max_poss_sil_at_max_speech=False),
            "strict": SileroOptions(threshold=0.7, min_silence_duration_ms=300,
                                    speech_pad_ms=100, min_speech_duration_ms=500)}[variant]
    probs = np.load(FIXTURES / "silero_probs.npz")
    for clip, ref in SILERO["clips"].items():
        ts = SpeechTimestamps(opts)
        out = [s for p in probs[clip].tolist() for s in ts.push(p)]
        n = len(assemble(ref["pieces"], store))
        out += ts.finish(n)
        assert [[s["start"], s["end"]] for s in out] == ref["variants"][variant], clip


def test_silero_finds_speech_not_silence(silero, store):
    """Real recordings joined with digital silence and a -55 dBFS noise floor: nearly every
    spoken 10 ms frame is inside a segment, and no segment reaches into a silence more than
    0.2 s away from speech."""
    for clip in ("short_mix", "long_mix", "exact_60s"):
        pieces = SILERO["clips"][clip]["pieces"]
        wave = assemble(pieces, store)
        n = len(wave) // 160
        covered = np.zeros(n, bool)
        for a, b in silero.segments(wave):
            covered[a // 10 : b // 10] = True
        spoken = np.sqrt((wave[: n * 160].reshape(n, 160) ** 2).mean(1)) > 0.01
        silent = np.zeros(n, bool)  # inside silence pieces, 0.2 s from their edges
        pos = 0
        for p in pieces:
            length = p[1] if p[0] == "zeros" else p[2] - p[1]
            if p[0] == "zeros" or p[1] >= len(store) - 6 * SR:  # zeros or the noise floor
                silent[(pos + 2 * 1600) // 160 : (pos + length - 2 * 1600) // 160] = True
            pos += length
        assert spoken.sum() > 1000 and silent.sum() > 100
        assert (covered & spoken).sum() / spoken.sum() > 0.98, clip
        assert not (covered & silent).any(), clip


def test_silero_silence_and_noise_give_nothing(silero, store):
    for clip in ("silence", "noise", "tiny"):
        assert silero.segments(assemble(SILERO["clips"][clip]["pieces"], store)) == []
    assert silero.segments(np.zeros(0, np.float32)) == []


def test_silero_stream_matches_whole(silero, store):
    wave = assemble(SILERO["clips"]["long_mix"]["pieces"], store)
    n = 3 * SR + 77
    windows = [(i / SR, wave[i:i + n]) for i in range(0, len(wave), n)]
    assert list(silero.segments_stream(windows)) == silero.segments(wave)


# ---- interface ----------------------------------------------------------------------------------
def test_split_long_segments():
    assert split_long_segments([(0, 100), (200, 250)], 40) == \
        [(0, 33), (33, 66), (66, 100), (200, 225), (225, 250)]
    assert split_long_segments([(0, 100)], None) == [(0, 100)]
    assert split_long_segments([(0, 100)], 100) == [(0, 100)]
    for start, end, cap in [(1000, 61999, 30000), (0, 7, 2), (5, 123456, 1000)]:
        parts = split_long_segments([(start, end)], cap)
        assert parts[0][0] == start and parts[-1][1] == end
        assert all(b - a <= cap and a < b for a, b in parts)
        assert all(p[1] == q[0] for p, q in zip(parts, parts[1:]))
        assert len(parts) == -(-(end - start) // cap)


def test_max_segment_ms(fsmn, store):
    wave = assemble(FSMN["clips"]["long_mix"]["pieces"], store)
    whole = fsmn.segments(wave)
    cut = fsmn.segments(wave, max_segment_ms=10000)
    assert cut == split_long_segments(whole, 10000)
    assert max(b - a for a, b in cut) <= 10000 < max(b - a for a, b in whole)


def test_windows_must_be_contiguous(silero):
    with pytest.raises(ValueError, match="contiguous"):
        list(silero.segments_stream([(0.0, np.zeros(1600, np.float32)),
                                     (0.2, np.zeros(1600, np.float32))]))


def test_load_vad_names(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    assert isinstance(load_vad("auto"), SileroVAD)  # no fsmn-vad checkpoint cached
    assert isinstance(load_vad("silero-vad"), SileroVAD)
    from batchasr.errors import CheckpointError

    with pytest.raises(CheckpointError):
        load_vad("fsmn-vad")
    with pytest.raises(CheckpointError, match="not a VAD"):
        load_vad(Path(__file__).parent / "fixtures" / "paraformer" / "en")
    from batchasr.models.loader import load_model

    with pytest.raises(CheckpointError, match="is a VAD, not a recognizer"):
        load_model(FIXTURES / "fsmn")


def test_vads_open_without_mlx():
    """models.vads opens both VADs in a process that has never imported MLX, and leaves it
    so (reader and VAD processes rely on it: no device context, no device memory)."""
    import subprocess
    import sys

    code = ("import sys; from batchasr.models.vads import open_vad; "
            f"v = open_vad({str(FIXTURES / 'fsmn')!r}); s = open_vad('silero'); "
            "import numpy as np; w = np.zeros(16000 * 3, np.float32); "
            "v.stream().feed(w); s.stream().feed(w); "
            "print('mlx' in ' '.join(sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"


def test_cli_segment(tmp_path, store):
    wave = assemble(SILERO["clips"]["short_mix"]["pieces"], store)
    path = tmp_path / "mix.flac"
    sf.write(path, wave, SR, subtype="PCM_16")
    runner = CliRunner()
    res = runner.invoke(cli, ["segment", "--vad", "silero", "--json", str(path),
                              str(tmp_path / "missing.wav")])
    assert res.exit_code == 3
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    expected = [[int(a * 1000 / SR), int(b * 1000 / SR)]
                for a, b in SILERO["clips"]["short_mix"]["timestamps"]]
    assert lines[0] == {"path": str(path), "segments": expected}
    assert lines[1]["path"].endswith("missing.wav") and "error" in lines[1]
    res = runner.invoke(cli, ["segment", "--vad", str(FIXTURES / "fsmn"), str(path)])
    assert res.exit_code == 0
    assert [list(map(int, line.split("\t"))) for line in res.stdout.splitlines()] == \
        [list(s) for s in load_vad(FIXTURES / "fsmn").segments(wave)]


def test_silero_is_quiet_where_its_gates_saturate(silero):
    """Input that drives the LSTM gates past float32 exp's range (the old 1 / (1 + exp(-x))
    printed 'RuntimeWarning: overflow encountered in exp') gives no warning, and the same
    probabilities as that formula with the overflow ignored."""
    import warnings

    from batchasr.models import silero_vad

    wave = np.random.default_rng(1).normal(0, 4, 5 * SR).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        st = silero.stream(keep_probs=True)
        st.feed(wave), st.finish()
    probs = np.concatenate(st.probs)

    old = silero.stream(keep_probs=True)
    with pytest.MonkeyPatch.context() as mp:
        def exp_sigmoid(x, out=None):
            y = 1.0 / (1.0 + np.exp(-x))
            if out is None:
                return y
            out[...] = y
            return out

        mp.setattr(silero_vad, "_sigmoid", exp_sigmoid)
        with pytest.warns(RuntimeWarning, match="overflow"):  # this input did overflow
            old.feed(wave), old.finish()
    np.testing.assert_allclose(probs, np.concatenate(old.probs), atol=1e-6)
