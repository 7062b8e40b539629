"""fsmn-vad's endpoint state machine: the chunk-at-once path (frame states decided together,
long runs taken whole) against the official frame-by-frame loop, on random and structured
input, with options that make every branch decide: every counter and every segment equal."""
import dataclasses

import numpy as np
import pytest

from batchasr.models.blocks import fsmn_endpoint as E
from batchasr.models.blocks.fsmn_frames import speech_flags

OPTIONS = {
    "published": {},
    "no-extend": {"do_extend": 0},
    "short-segments": {"max_single_segment_time": 1500, "max_end_silence_time": 300},
    "snr-and-decibels": {"snr_thres": 4.0, "decibel_thres": -40.0, "noise_frame_num_used_for_snr": 7},
    "ratio": {"speech_2_noise_ratio": 0.5, "speech_noise_thres": 0.1, "window_size_ms": 70,
              "sil_to_speech_time_thres": 30, "speech_to_sil_time_thres": 50},
    "long-look": {"lookahead_time_end_point": 900, "lookback_time_start_point": 0,
                  "max_end_silence_time": 1200},
    "prior": {"fe_prior_thres": 2.0},
}


def _input(rng, n):
    """Silence posteriors in runs of speech, silence and noise around the threshold, and
    decibels with quiet and loud stretches."""
    probs, db = [], []
    while len(probs) < n:
        kind = rng.integers(5)
        k = int(rng.choice([1, 3, 12, 40, 150, 700]) * rng.uniform(0.5, 1.5)) + 1
        if kind == 0:
            p = rng.uniform(0, 0.05, k)  # speech
        elif kind == 1:
            p = rng.uniform(0.9, 1.0, k)  # silence
        elif kind == 2:
            p = np.full(k, 0.2) + rng.normal(0, 1e-11, k)  # at the default threshold: 1-p = p+0.6
        elif kind == 3:
            p = rng.choice([0.0, 1.0, 0.2, 0.45], k)  # log(0), and exact values
        else:
            p = rng.uniform(0, 1, k)
        probs += list(p)
        db += list(rng.uniform(-60, 20, k) if rng.random() < 0.5 else rng.uniform(-45, -35, k))
    return np.asarray(probs[:n]), np.asarray(db[:n])


def _state(ep):
    v = {k: (list(x) if isinstance(x, list) else x) for k, x in vars(ep).items() if k not in ("o", "bulk")}
    v["output"] = [dataclasses.astuple(s) for s in ep.output]
    # the window as the detector reads it: oldest value first
    v["win_state"] = ep.win_state[ep.cur_win_pos:] + ep.win_state[: ep.cur_win_pos]
    del v["cur_win_pos"]
    return v


@pytest.mark.parametrize("name", sorted(OPTIONS))
@pytest.mark.parametrize("seed", range(6))
def test_chunk_at_once_is_the_frame_loop(name, seed):
    rng = np.random.default_rng(seed)
    opts = E.FsmnVADOptions(**OPTIONS[name])
    fast, slow = E.Endpointer(opts), E.Endpointer(opts)
    slow.bulk = False
    probs, db = _input(rng, 6000)
    cuts = np.sort(rng.choice(np.arange(1, 6000), 5, replace=False))
    pieces = np.split(np.arange(6000), cuts)
    for i, idx in enumerate(pieces):
        final = i == len(pieces) - 1
        thres = float(rng.choice([opts.speech_noise_thres, 0.6, 0.3]))
        end_sil = int(rng.choice([opts.max_end_silence_time, 500, 2000]))
        seg_fast, seg_slow = [], []
        for ep, segs in ((fast, seg_fast), (slow, seg_slow)):
            ep.speech_noise_thres = thres  # as the dynamic schedule moves them per chunk
            ep.max_end_sil_frame_cnt_thresh = max(end_sil - opts.speech_to_sil_time_thres, 0)
            ep.add_frames(probs[idx][:, None], db[idx])
            ep.detect(len(idx), final)
            segs += ep.take_segments(final)
        assert seg_fast == seg_slow
        assert _state(fast) == _state(slow), f"chunk {i}"


def test_runs_are_taken_whole():
    """The fast path is used: a long silence then a long speech stretch takes a handful of
    frame-by-frame steps, not thousands."""
    ep = E.Endpointer(E.FsmnVADOptions())
    calls = []
    one = ep._detect_one
    ep._detect_one = lambda *a: (calls.append(a), one(*a))
    p = np.r_[np.full(2000, 0.99), np.full(2000, 0.01), np.full(2000, 0.99)]
    ep.add_frames(p[:, None], np.zeros(6000))
    ep.detect(6000, True)
    assert ep.take_segments(True)
    assert len(calls) < 200


def test_speech_flags_are_frame_state():
    """The frames' states and the noise average, against `frame_state` one frame at a time,
    two silence classes summed as the official sums them."""
    rng = np.random.default_rng(7)
    for snr, dbt in ((-100.0, -100.0), (3.0, -40.0)):
        opts = E.FsmnVADOptions(snr_thres=snr, decibel_thres=dbt, silence_pdf_num=2,
                                sil_pdf_ids=(0, 1))
        p, db = _input(rng, 3000)
        two = np.stack([p * 0.25, p * 0.75], axis=1)
        ep = E.Endpointer(opts)
        ep.add_frames(two, db)
        want = [ep.frame_state(t) == E.SPEECH for t in range(3000)]
        got = speech_flags(two, db, speech_noise_thres=opts.speech_noise_thres,
                           speech_2_noise_ratio=1.0, snr_thres=snr, decibel_thres=dbt,
                           noise_frames=opts.noise_frame_num_used_for_snr, noise_average=-100.0)
        assert got.speech.tolist() == want
        assert got.noise_after == ep.noise_average_decibel
        again = E.Endpointer(opts)  # the noise average before any frame, as the loop has it
        again.add_frames(two, db)
        decided = 0
        for t in (0, 1, 700, 2999):
            while decided < t:
                again.frame_state(decided)
                decided += 1
            assert got.noise_before(t) == again.noise_average_decibel
        assert 0 < sum(want) < 3000


@pytest.mark.parametrize("seed", range(30))
def test_chunk_at_once_is_the_frame_loop_under_random_options(seed):
    """Random `model_conf` values (another checkpoint's config.yaml may set any of them)."""
    rng = np.random.default_rng(100 + seed)
    win = int(rng.choice([30, 50, 100, 200, 300]))
    opts = E.FsmnVADOptions(
        window_size_ms=win,
        sil_to_speech_time_thres=int(rng.integers(0, win + 20)),
        speech_to_sil_time_thres=int(rng.integers(0, win + 20)),
        max_end_silence_time=int(rng.choice([0, 100, 400, 800, 3000])),
        max_start_silence_time=int(rng.choice([100, 3000])),
        do_extend=int(rng.integers(0, 2)),
        lookback_time_start_point=int(rng.choice([0, 50, 200, 600])),
        lookahead_time_end_point=int(rng.choice([0, 30, 100, 700])),
        max_single_segment_time=int(rng.choice([300, 2000, 60000])),
        speech_noise_thres=float(rng.choice([-0.2, 0.0, 0.3, 0.6, 0.95])),
        speech_2_noise_ratio=float(rng.choice([0.5, 1.0, 1.5])),
        snr_thres=float(rng.choice([-100.0, -20.0, 3.0])),
        decibel_thres=float(rng.choice([-100.0, -50.0, -38.0])))
    fast, slow = E.Endpointer(opts), E.Endpointer(opts)
    slow.bulk = False
    probs, db = _input(rng, 4000)
    for i, idx in enumerate(np.array_split(np.arange(4000), int(rng.integers(1, 6)))):
        final = idx[-1] == 3999
        out = []
        for ep in (fast, slow):
            ep.add_frames(probs[idx][:, None], db[idx])
            try:
                ep.detect(len(idx), final)
                out.append(ep.take_segments(final))
            except IndexError as e:  # as the official's own loop fails (see below)
                out.append(type(e))
        assert out[0] == out[1]
        if out[0] is IndexError:
            return
        assert _state(fast) == _state(slow), f"chunk {i}"


def test_an_end_past_its_frame_reads_as_the_official():
    """max_end_silence_time below speech_to_sil_time_thres makes the end silence negative:
    a pause ends speech at the next frame, whose history is then released, and the official
    frame loop reads the frames' scores from the end of what is left (negative indices). The
    chunk-at-once path falls back to the frame loop there, so it reads the same."""
    opts = E.FsmnVADOptions(window_size_ms=50, sil_to_speech_time_thres=30,
                            speech_to_sil_time_thres=40, max_end_silence_time=0, do_extend=0)
    rng = np.random.default_rng(3)
    p = np.r_[np.full(300, 0.01), np.full(40, 0.99), rng.uniform(0, 1, 500)]
    db = rng.uniform(-60, 20, len(p))
    fast, slow = E.Endpointer(opts), E.Endpointer(opts)
    slow.bulk = False
    segs = []
    for ep in (fast, slow):
        ep.add_frames(p[:, None], db)
        ep.detect(len(p), False)
        segs.append(ep.take_segments(False))
    assert segs[0] == segs[1] and segs[0]
    assert _state(fast) == _state(slow)
