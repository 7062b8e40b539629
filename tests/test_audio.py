"""audio.py: every format libsndfile reads decodes to 16 kHz mono float32; every bad file
raises one AudioError that names the file and the reason."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import soxr

from batchasr.audio import decode as audio
from batchasr.errors import AudioError


def tone(sr: int, seconds: float = 1.0, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    x = 0.5 * np.sin(2 * np.pi * freq * t)
    if channels > 1:  # different content per channel so averaging is visible
        x = np.stack([x * (c + 1) / channels for c in range(channels)], axis=1)
    return x.astype(np.float32)


@pytest.mark.parametrize(
    "fmt,subtype,ext,atol",
    [
        ("WAV", "PCM_U8", "wav", 1e-2),
        ("WAV", "PCM_16", "wav", 1e-4),
        ("WAV", "PCM_24", "wav", 1e-6),
        ("WAV", "PCM_32", "wav", 1e-6),
        ("WAV", "FLOAT", "wav", 1e-7),
        ("WAV", "DOUBLE", "wav", 1e-7),
        ("FLAC", "PCM_16", "flac", 1e-4),
        ("FLAC", "PCM_24", "flac", 1e-6),
        ("AIFF", "PCM_16", "aiff", 1e-4),
        ("OGG", "VORBIS", "ogg", None),
        ("OGG", "OPUS", "ogg", None),
        ("MP3", "MPEG_LAYER_III", "mp3", None),
    ],
)
def test_formats_decode_to_16k_mono_float32(tmp_path, fmt, subtype, ext, atol):
    x = tone(16000)
    p = tmp_path / f"a.{ext}"
    sf.write(p, x, 16000, format=fmt, subtype=subtype)
    y = audio.load(p)
    assert y.dtype == np.float32 and y.ndim == 1
    if atol is None:  # lossy codecs: length may differ by codec delay/padding; check energy
        assert abs(len(y) - len(x)) < 0.05 * len(x)
        assert 0.1 < float(np.sqrt(np.mean(y**2))) < 0.6
    else:
        assert len(y) == len(x)
        np.testing.assert_allclose(y, x, atol=atol)


def test_stereo_is_averaged_like_funasr(tmp_path):
    x = tone(16000, channels=2)
    sf.write(tmp_path / "s.wav", x, 16000, subtype="FLOAT")
    y = audio.load(tmp_path / "s.wav")
    np.testing.assert_array_equal(y, x.mean(axis=1, dtype=np.float32))


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
def test_resampled_with_soxr_hq(tmp_path, sr):
    x = tone(sr, 1.5)
    sf.write(tmp_path / "r.wav", x, sr, subtype="FLOAT")
    y = audio.load(tmp_path / "r.wav")
    assert len(y) == round(1.5 * 16000)
    np.testing.assert_array_equal(y, soxr.resample(x, sr, 16000, "HQ"))


@pytest.mark.parametrize("sr,seconds", [(44100, 1.2345), (8000, 0.77), (22050, 3.0001)])
def test_n_samples_predicts_the_resampled_length(tmp_path, sr, seconds):
    sf.write(tmp_path / "n.wav", tone(sr, seconds), sr)
    with audio.open_audio(tmp_path / "n.wav") as f:
        assert f.info.n_samples() == len(f.read())


def test_probe_reads_header_only(tmp_path):
    sf.write(tmp_path / "p.flac", tone(44100, 2.0, channels=2), 44100)
    assert audio.probe(tmp_path / "p.flac") == (2.0, 44100, 2)


@pytest.mark.parametrize("sr,window_s", [(16000, 0.25), (44100, 0.4), (8000, 1.0)])
def test_windows_concatenate_to_the_whole_file(tmp_path, sr, window_s):
    x = tone(sr, 2.3, channels=2)
    sf.write(tmp_path / "w.wav", x, sr, subtype="FLOAT")
    whole = audio.load(tmp_path / "w.wav")
    # block_s smaller than the window, so windows straddle several reads
    pieces = list(audio.iter_windows(tmp_path / "w.wav", window_s, block_s=0.1))
    n = round(window_s * 16000)
    assert [off for off, _ in pieces] == pytest.approx([i * window_s for i in range(len(pieces))])
    assert all(len(w) == n for _, w in pieces[:-1]) and 0 < len(pieces[-1][1]) <= n
    np.testing.assert_array_equal(np.concatenate([w for _, w in pieces]), whole)


def test_window_longer_than_file_gives_one_piece(tmp_path):
    sf.write(tmp_path / "s.wav", tone(16000, 0.5), 16000)
    pieces = list(audio.iter_windows(tmp_path / "s.wav", 30.0))
    assert len(pieces) == 1 and pieces[0][0] == 0.0
    np.testing.assert_array_equal(pieces[0][1], audio.load(tmp_path / "s.wav"))


def test_real_flac_with_wav_extension_decodes(tmp_path):
    # libsndfile sniffs the content; the extension is only a hint
    sf.write(tmp_path / "x.wav", tone(16000), 16000, format="FLAC")
    assert len(audio.load(tmp_path / "x.wav")) == 16000


# ---- bad files: one error type, the file and the reason in the message ---------------------


def _cut(src, dst, keep):
    data = src.read_bytes()
    dst.write_bytes(data[: keep if keep >= 0 else len(data) + keep])
    return dst


def expect(path, *reasons):
    with pytest.raises(AudioError) as info:
        audio.load(path)
    err = info.value
    assert err.reason in reasons, str(err)
    assert str(path) in str(err) and err.reason.replace("_", " ") in str(err)
    return err


def test_missing(tmp_path):
    expect(tmp_path / "nope.wav", "missing")


def test_folder_is_not_a_file(tmp_path):
    expect(tmp_path, "not_a_file")


def test_zero_bytes(tmp_path):
    (tmp_path / "e.wav").write_bytes(b"")
    expect(tmp_path / "e.wav", "empty")


def test_zero_frames(tmp_path):
    sf.write(tmp_path / "z.wav", np.zeros(0, np.float32), 16000)
    expect(tmp_path / "z.wav", "empty")


def test_text_file_is_not_audio(tmp_path):
    (tmp_path / "t.wav").write_text("this is not audio\n" * 50)
    expect(tmp_path / "t.wav", "not_audio")


def test_random_bytes_are_not_audio(tmp_path):
    (tmp_path / "r.flac").write_bytes(np.random.default_rng(0).bytes(5000))
    expect(tmp_path / "r.flac", "not_audio")


def test_unsupported_container_says_how_to_convert(tmp_path):
    (tmp_path / "v.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(200))
    err = expect(tmp_path / "v.m4a", "unsupported")
    assert "ffmpeg" in str(err)


def test_unknown_wav_codec_is_unsupported(tmp_path):
    sf.write(tmp_path / "a.wav", tone(16000), 16000)
    data = bytearray((tmp_path / "a.wav").read_bytes())
    data[20:22] = (0x55).to_bytes(2, "little")  # WAVE_FORMAT_MPEGLAYER3 tag on PCM data
    (tmp_path / "c.wav").write_bytes(bytes(data))
    expect(tmp_path / "c.wav", "unsupported")


@pytest.mark.parametrize(
    "fmt,subtype,ext",
    [("WAV", "PCM_16", "wav"), ("AIFF", "PCM_16", "aiff"), ("FLAC", "PCM_16", "flac"),
     ("OGG", "VORBIS", "ogg"), ("MP3", "MPEG_LAYER_III", "mp3")],
)
def test_truncated(tmp_path, fmt, subtype, ext):
    sf.write(tmp_path / f"a.{ext}", tone(16000, 2.0), 16000, format=fmt, subtype=subtype)
    src = tmp_path / f"a.{ext}"
    half = _cut(src, tmp_path / f"t.{ext}", src.stat().st_size // 2)
    # Where a lossy stream is cut decides whether libsndfile notices at open ("corrupt")
    # or while reading ("truncated"); PCM containers always say "truncated".
    expect(half, "truncated", *(["corrupt"] if fmt in ("OGG", "MP3") else []))


def test_header_only_flac_is_corrupt(tmp_path):
    sf.write(tmp_path / "a.flac", tone(16000), 16000)
    expect(_cut(tmp_path / "a.flac", tmp_path / "h.flac", 30), "corrupt", "truncated")


def test_truncated_wav_header_only(tmp_path):
    sf.write(tmp_path / "a.wav", tone(16000), 16000)
    expect(_cut(tmp_path / "a.wav", tmp_path / "h.wav", 30), "truncated")


def test_truncation_found_while_streaming_windows(tmp_path):
    sf.write(tmp_path / "a.flac", tone(16000, 4.0), 16000)
    t = _cut(tmp_path / "a.flac", tmp_path / "t.flac", (tmp_path / "a.flac").stat().st_size // 2)
    with pytest.raises(AudioError) as info:
        for _ in audio.iter_windows(t, 0.5, block_s=0.25):
            pass
    assert info.value.reason == "truncated"


def test_streaming_wav_placeholder_size_is_not_truncation(tmp_path):
    # Writers that cannot seek back (ffmpeg to a pipe) leave 0xFFFFFFFF as the data size.
    sf.write(tmp_path / "a.wav", tone(16000), 16000)
    data = bytearray((tmp_path / "a.wav").read_bytes())
    i = data.index(b"data")
    data[i + 4 : i + 8] = (0xFFFFFFFF).to_bytes(4, "little")
    data[4:8] = (0xFFFFFFFF).to_bytes(4, "little")
    (tmp_path / "s.wav").write_bytes(bytes(data))
    assert len(audio.load(tmp_path / "s.wav")) == 16000


def test_probe_of_bad_files(tmp_path):
    with pytest.raises(AudioError, match="missing"):
        audio.probe(tmp_path / "nope.wav")
    (tmp_path / "t.wav").write_text("not audio " * 40)
    with pytest.raises(AudioError, match="not audio"):
        audio.probe(tmp_path / "t.wav")
