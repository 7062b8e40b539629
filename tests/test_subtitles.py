"""Cue building and SRT/VTT writing. Output is parsed back with the independent ``srt`` package
and checked for invariants (numbering, timing, durations, line counts and widths, text)."""
import datetime as dt
import os
import random
import re
import unicodedata
from pathlib import Path

import pytest
import srt

from batchasr.files import atomic_write, atomic_write_many
from batchasr.outputs.cues import Cue, SubtitleOptions, build_cues
from batchasr.outputs.names import safe_name, subtitle_path
from batchasr.outputs.writers import (
    WriteSRT, WriteVTT, format_timestamp, get_writer, render, write_item_subtitles,
)
from batchasr.transcript import Segment, Token, Transcript

OPTS = SubtitleOptions()
GAP = 0.083


def transcript(text, tokens, language=None):
    """tokens: (text, start_ms, end_ms) triples."""
    return Transcript(text=text, tokens=[Token(t, i, s, e) for i, (t, s, e) in enumerate(tokens)],
                      language=language)


def timed(pieces, step=300, length=250, pauses=()):
    """Tokens one after another; a pause of 900 ms before the indices in ``pauses``."""
    out, t = [], 0
    for i, p in enumerate(pieces):
        if i in pauses:
            t += 900
        out.append((p, t, t + length))
        t += step
    return out


def width(line, cjk):
    if not cjk:
        return len(line)
    return sum(1.0 if unicodedata.east_asian_width(c) in "WF" else 0.5 for c in line)


def parse_srt(cues):
    return list(srt.parse(render(cues, "srt"), ignore_errors=False))


def check_invariants(cues, *, cjk, line_w=None, duration=None, opts=OPTS):
    """What every cue list must satisfy, checked on the SRT text parsed by ``srt``."""
    line_w = line_w or (16 if cjk else 42)
    subs = parse_srt(cues)
    assert [s.index for s in subs] == list(range(1, len(subs) + 1))
    assert len(subs) == len(cues)
    for i, s in enumerate(subs):
        start, end = s.start.total_seconds(), s.end.total_seconds()
        assert 0 <= start < end
        assert end - start <= opts.max_duration + 1e-9
        assert s.content.strip() and 1 <= len(s.content.split("\n")) <= opts.max_lines
        for line in s.content.split("\n"):
            assert line == line.strip() and width(line, cjk) <= line_w, line
        if duration is not None:
            assert end <= duration + 1e-9
        if i:
            assert start >= subs[i - 1].end.total_seconds() + GAP - 1e-9  # no overlap, min gap
        # too short only when the next cue (or the end of the audio) left no room
        if end - start < opts.min_duration - 1e-9:
            nxt = subs[i + 1].start.total_seconds() if i + 1 < len(subs) else duration
            assert nxt is not None and end >= nxt - GAP - 0.002
    return subs


# --- timestamps and writers ----------------------------------------------------------------------


@pytest.mark.parametrize("seconds, srt_ts, vtt_ts", [
    (0, "00:00:00,000", "00:00.000"),
    (1.9996, "00:00:02,000", "00:02.000"),  # rounded to ms before splitting: never "01,1000"
    (59.9999, "00:01:00,000", "01:00.000"),
    (3661.5, "01:01:01,500", "01:01:01.500"),
])
def test_format_timestamp(seconds, srt_ts, vtt_ts):
    assert format_timestamp(seconds, True, ",") == srt_ts
    assert format_timestamp(seconds) == vtt_ts


def test_srt_roundtrip_through_srt_package():
    cues = [Cue(0.5, 1.75, "first line\nsecond line"), Cue(2.0, 3.0, "只有一行"), Cue(3.2, 3.3, "a --> b")]
    subs = parse_srt(cues)
    assert [s.index for s in subs] == [1, 2, 3]
    assert subs[0].start == dt.timedelta(seconds=0.5) and subs[0].end == dt.timedelta(seconds=1.75)
    assert subs[0].content == "first line\nsecond line"
    assert subs[1].content == "只有一行"
    assert subs[2].content == "a -> b"  # text can never fake a timing line


def test_srt_drops_empty_cues_and_keeps_numbering():
    text = WriteSRT().render([Cue(0, 1, "a"), Cue(1, 2, "  \n "), Cue(2, 3, "b\n\nc")])
    subs = list(srt.parse(text))
    assert [s.index for s in subs] == [1, 2]
    assert subs[1].content == "b\nc"  # a blank line inside a cue would end it early


def test_vtt_header_and_escaping():
    text = WriteVTT().render([Cue(0.5, 61.25, "Tom & Jerry <3 -->")])
    assert text.startswith("WEBVTT\n\n")
    assert "00:00.500 --> 01:01.250\n" in text
    assert "Tom &amp; Jerry &lt;3 -&gt;" in text
    assert "\n1\n" not in text  # no cue numbers


def test_empty_renders():
    assert render([], "srt") == ""
    assert render([], "vtt") == "WEBVTT\n\n"
    assert build_cues(Transcript(text="")) == []


def test_get_writer_lists_formats():
    with pytest.raises(ValueError, match="srt"):
        get_writer("ass")


def test_options_validated():
    with pytest.raises(ValueError):
        SubtitleOptions(max_lines=0)
    with pytest.raises(ValueError):
        SubtitleOptions(min_duration=8, max_duration=7)


# --- text joining --------------------------------------------------------------------------------


def all_text(cues, cjk):
    return ("" if cjk else " ").join(c.text.replace("\n", "" if cjk else " ") for c in cues)


def test_cjk_never_gets_spaces():
    text = "今天天气很好，我们去公园散步吧。你觉得怎么样？我觉得这个主意非常好，不过下午可能会下雨，所以我们最好早点出发。"
    chars = [c for c in text if c not in "，。？"]
    cues = build_cues(transcript(text, timed(chars), "zh"))
    assert len(cues) > 1
    assert all(" " not in c.text for c in cues)
    assert all_text(cues, True) == text  # punctuation from the reference text is kept
    check_invariants(cues, cjk=True)


def test_cjk_cues_end_at_sentence_punctuation():
    text = "今天天气很好，我们去公园散步吧。你觉得怎么样？"
    chars = [c for c in text if c not in "，。？"]
    cues = build_cues(transcript(text, timed(chars), "zh"))
    assert [c.text for c in cues] == ["今天天气很好，我们去公园散步吧。", "你觉得怎么样？"]


def test_mixed_cjk_latin_follows_reference_spelling():
    # Paraformer-zh: CJK characters and lowercase BPE pieces; the text has the final spelling
    toks = timed(["我", "们", "用", "py@@", "thon", "写", "代", "码"])
    cues = build_cues(transcript("我们用Python写代码", toks, "zh"))
    assert [c.text for c in cues] == ["我们用Python写代码"]


@pytest.mark.parametrize("text, tokens", [
    # outputs of the official FunASR implementation (tests/fixtures/paraformer/*/expected.json)
    ("VH him him him v", ["v", "h", "him", "him", "him", "v"]),
    ("him 's inhim him v inv VV", ["him", "'s", "in@@", "him", "him", "v", "in@@", "v", "v", "v"]),
    ("for for for加加for for for for for for for", ["for", "for", "for", "加", "加"] + ["for"] * 7),
])
def test_official_paraformer_text_is_kept(text, tokens):
    cues = build_cues(transcript(text, timed(tokens, step=500, length=450)))
    assert all_text(cues, False) == text


def test_latin_joined_by_rule_without_text():
    toks = timed(["hel@@", "lo", "world", ",", "how", "are", "you", "?"])
    cues = build_cues(transcript("", toks))
    assert [c.text for c in cues] == ["hello world, how are you?"]


def test_sentencepiece_markers_without_text():
    toks = timed(["\u2581Hel", "lo", "\u2581world", "!"])
    assert [c.text for c in build_cues(transcript("", toks))] == ["Hello world!"]


def test_cjk_joined_by_rule_without_text():
    toks = timed(["我", "们", "用", "py@@", "thon", "写", "代", "码"])
    assert [c.text for c in build_cues(transcript("", toks))] == ["我们用python写代码"]


def test_unmatched_tokens_fall_back_to_rule():
    cues = build_cues(transcript("completely different", timed(["hel@@", "lo", "there"])))
    assert [c.text for c in cues] == ["hello there"]


def test_a_few_unexplained_characters_are_kept():
    # ITN-style text: "100" has no token of its own; it stays, attached to its neighbour
    toks = timed(["我", "有", "个", "苹", "果"])
    cues = build_cues(transcript("我有100个苹果", toks, "zh"))
    assert all_text(cues, True) == "我有100个苹果"


# --- cue building ----------------------------------------------------------------------------------


def english_words(n, seed=0):
    rng = random.Random(seed)
    vocab = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "transcription", "batch",
             "subtitle", "window", "speech", "model", "a", "is", "and", "international"]
    return [rng.choice(vocab) for _ in range(n)]


def test_never_cut_inside_a_word_or_token():
    words = english_words(120)
    pieces = []
    for w in words:  # long words as two BPE pieces, so a cut between pieces would be visible
        pieces += [w[:4] + "@@", w[4:]] if len(w) > 6 else [w]
    cues = build_cues(transcript(" ".join(words), timed(pieces, step=200, length=180)))
    assert [w for c in cues for w in c.text.split()] == words
    check_invariants(cues, cjk=False)


def test_pause_starts_a_new_cue():
    toks = timed(["one", "two", "three", "four"], pauses={2})
    cues = build_cues(transcript("one two three four", toks))
    assert [c.text for c in cues] == ["one two", "three four"]
    check_invariants(cues, cjk=False)


def test_sentence_punctuation_ends_a_long_enough_cue():
    text = "This is the first sentence. And here is the second one."
    toks = timed(text.replace(".", "").lower().split())
    cues = build_cues(transcript(text, toks))
    assert [c.text for c in cues] == ["This is the first sentence.", "And here is the second one."]


def test_short_cue_extended_into_silence_but_not_into_the_next():
    toks = [("hi", 0, 200), ("there", 3000, 3200), ("you", 3800, 4000)]
    narrow = SubtitleOptions(pause=0.5, max_lines=1, max_line_width=6)  # no room for "there you"
    cues = build_cues(transcript("hi there you", toks, "en"), narrow)
    assert [c.text for c in cues] == ["hi", "there", "you"]
    assert cues[0].end_s == pytest.approx(1.0)  # room: extended to min_duration
    assert cues[1].end_s == pytest.approx(3.8 - GAP)  # blocked by the next cue, cannot join it
    check_invariants(cues, cjk=False, line_w=6, opts=narrow)


def test_a_blocked_short_cue_joins_its_nearer_neighbour():
    toks = [("hi", 0, 200), ("there", 3000, 3200), ("you", 3800, 4000)]
    cues = build_cues(transcript("hi there you", toks, "en"), SubtitleOptions(pause=0.5))
    assert [(c.start_s, c.end_s, c.text) for c in cues] == [(0.0, 1.0, "hi"), (3.0, 4.0, "there you")]
    check_invariants(cues, cjk=False)


def test_a_short_single_character_sentence_is_merged_not_flashed():
    # "好。" is a 0.4 s sentence with the next sentence 0.1 s after it: alone it could only be
    # shown for 0.417 s, so it joins the nearer neighbour (the next sentence)
    text = "今天天气很好。好。我们走吧。"
    toks = [(c, 300 * i, 300 * i + 300) for i, c in enumerate("今天天气很好")]
    toks += [("好", 2000, 2400)] + [(c, 2500 + 300 * i, 2800 + 300 * i) for i, c in enumerate("我们走吧")]
    tr = Transcript(text=text, tokens=[Token(t, i, s, e) for i, (t, s, e) in enumerate(toks)],
                    segments=[Segment(0.0, 1.8, "今天天气很好。"), Segment(2.0, 2.4, "好。"),
                              Segment(2.5, 3.7, "我们走吧。")],
                    raw_text="今天天气很好好我们走吧", language="zh")
    cues = build_cues(tr)
    assert [c.text for c in cues] == ["今天天气很好。", "好。我们走吧。"]
    assert all(c.end_s - c.start_s >= OPTS.min_duration for c in cues)
    check_invariants(cues, cjk=True)


def test_speech_shorter_than_the_minimum_stays_short():
    cues = build_cues(transcript("好", [("好", 50, 450)]), duration_s=0.5)  # a 0.5 s file
    assert cues == [Cue(0.05, 0.5, "好")]
    check_invariants(cues, cjk=True, duration=0.5)


def test_long_cue_split_by_duration():
    words = ["word"] * 12  # 12 words at one per second: no width problem, but 12 s long
    toks = [(w, i * 1000, i * 1000 + 400) for i, w in enumerate(words)]
    cues = build_cues(transcript(" ".join(words), toks), SubtitleOptions(pause=2))
    assert len(cues) >= 2
    check_invariants(cues, cjk=False)


def test_long_lines_wrap_into_two_balanced_lines():
    text = "This sentence is long enough that it cannot fit on one single line of forty two characters"
    cues = build_cues(transcript(text, timed(text.lower().split())))
    subs = check_invariants(cues, cjk=False)
    first = subs[0].content.split("\n")
    assert len(first) == 2 and abs(len(first[0]) - len(first[1])) < 20


def test_cjk_width_counts_half_width_as_half():
    # 28 Latin letters = 14 in CJK mode: one 16-wide line, although it is 28 characters long
    text = "我们" + "abcdefghijklmn" + "opqrstuvwxyzab"
    toks = timed(["我", "们", "abcdefghijklmn@@", "opqrstuvwxyzab"])
    cues = build_cues(transcript(text, toks), SubtitleOptions(cjk=True))
    assert [c.text for c in cues] == [text]


def test_segments_when_no_token_times():
    segs = [Segment(0.5, 4.0, "First segment here."), Segment(6.0, 9.0, "第二段在这里。")]
    tr = Transcript(text="First segment here. 第二段在这里。", tokens=[Token("x", 1)], segments=segs)
    cues = build_cues(tr)
    assert [c.text for c in cues] == ["First segment here.", "第二段在这里。"]
    assert cues[0].start_s == 0.5 and cues[1].start_s == 6.0 and cues[1].end_s == 9.0


def test_text_only_spans_the_item_duration():
    cues = build_cues(Transcript(text="只有文字没有时间。"), duration_s=3.0)
    assert [(c.start_s, c.end_s, c.text) for c in cues] == [(0.0, 3.0, "只有文字没有时间。")]


def test_long_text_only_is_split_within_the_duration():
    text = " ".join(english_words(150, seed=3))
    cues = build_cues(Transcript(text=text), duration_s=45.0)
    assert len(cues) > 5 and all_text(cues, False) == text
    check_invariants(cues, cjk=False, duration=45.0)


def test_cues_do_not_run_past_the_audio():
    cues = build_cues(transcript("end", [("end", 4800, 4900)]), duration_s=5.0)
    assert cues[-1].end_s == 5.0


def random_transcript(rng):
    cjk = rng.random() < 0.5
    n = rng.randint(1, 120)
    pieces, words, t = [], [], rng.randint(0, 2000)
    for i in range(n):
        if cjk:
            p = rng.choice("我们今天天气很好公园散步觉得怎么样主意非常下午可能会雨所以最早点出发")
            words.append(p + (rng.choice("，。？") if rng.random() < 0.1 else ""))
        else:
            p = rng.choice(english_words(1, seed=rng.random()))
            words.append(p + (rng.choice(",.?") if rng.random() < 0.1 else ""))
        start = t + (rng.choice([0, 0, 0, 100, 600, 2000]) if i else 0)
        end = start + rng.randint(0, 600)
        pieces.append((p, start, end))
        t = end + rng.randint(-50, 150)  # token times may even overlap a little
    text = ("" if cjk else " ").join(words)
    return transcript(text, pieces, "zh" if cjk else "en"), cjk, text


@pytest.mark.parametrize("seed", range(40))
def test_invariants_on_random_transcripts(seed):
    rng = random.Random(seed)
    tr, cjk, text = random_transcript(rng)
    cues = build_cues(tr)
    check_invariants(cues, cjk=cjk)
    assert all_text(cues, cjk) == text
    if cjk:
        assert all(" " not in c.text for c in cues)


@pytest.mark.parametrize("opts", [
    SubtitleOptions(max_lines=1, max_line_width=20),
    SubtitleOptions(max_lines=3, max_duration=4, min_duration=0.5),
])
def test_invariants_with_other_options(opts):
    for seed in range(10):
        tr, cjk, text = random_transcript(random.Random(100 + seed))
        cues = build_cues(tr, opts)
        check_invariants(cues, cjk=cjk, line_w=opts.max_line_width, opts=opts)
        assert all_text(cues, cjk) == text


# --- files -------------------------------------------------------------------------------------------

NASTY_IDS = ["../../x", "a/b", "a?b", "/etc/passwd", "..", ".", "", "a\x00b", "CON", "con.txt", "nul",
             "x" * 5000, "中文/名字" * 40, "a\\b", "~", " lead", "C:\\Windows\\x", ".hidden", "A", "a",
             "-rf", "line\nbreak", "\ud800"]


def test_safe_name_properties():
    names = [safe_name(i) for i in NASTY_IDS]
    assert len(set(n.lower() for n in names)) == len(NASTY_IDS)  # distinct, even case-insensitively
    for n in names:
        assert n and not n.startswith((".", "-")) and len(n.encode()) <= 120
        assert not set(n) & set("/\\\x00\n:?*<>|\"")
        assert n.split(".")[0].split("-")[0].upper() not in {"CON", "PRN", "AUX", "NUL"}
    assert safe_name("talk-01") == safe_name("talk-01")  # stable across runs
    assert safe_name("talk-01") == "talk-01"  # and readable: a safe id is its own name


def test_safe_name_is_the_bare_id_unless_making_it_safe_changed_it():
    for item_id in ("talk-01", "utt_2s", "a.b", "中文名字", "x" * 100):
        assert safe_name(item_id) == item_id
    hashed = re.compile(r"^(.+)-[0-9a-f]{12}$")
    for item_id, slug in (("a/b", "a_b"), ("../../x", "x"), ("A", "A"), ("..", "item"),
                          (".", "item"), ("", "item"), (".hidden", "hidden"), ("con", "_con"),
                          ("a b", "a_b"), ("x" * 101, "x" * 100), ("中文/名字" * 40, None),
                          ("a_b-" + "0" * 12, "a_b-" + "0" * 12)):
        m = hashed.match(safe_name(item_id))
        assert m, item_id
        assert slug is None or m.group(1) == slug, item_id
    assert len({safe_name("a/b"), safe_name("a_b"), safe_name("a?b")}) == 3  # no collision
    assert safe_name("a_b") == "a_b"
    assert safe_name("A").lower() != safe_name("a").lower()  # apart on a case-insensitive disk
    assert len(safe_name("中文/名字" * 40).encode()) <= 113


@pytest.mark.parametrize("item_id", NASTY_IDS)
def test_subtitles_never_leave_the_job_folder(tmp_path, item_id):
    job = tmp_path / "jobs" / "j"
    job.mkdir(parents=True)
    tr = transcript("hello", [("hello", 0, 500)])
    path = write_item_subtitles(job, item_id, tr)
    assert path.parent == job / "subtitles" and path.exists()
    assert os.path.realpath(path).startswith(os.path.realpath(job / "subtitles") + os.sep)
    written = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs]
    assert written == [str(path)]  # nothing anywhere else, no temp files left


def test_write_item_subtitles_formats(tmp_path):
    tr = transcript("hello world", [("hello", 0, 500), ("world", 600, 1000)])
    p = write_item_subtitles(tmp_path, "a/b", tr)
    assert p.suffix == ".srt" and list(srt.parse(p.read_text(encoding="utf-8")))[0].content == "hello world"
    v = write_item_subtitles(tmp_path, "a/b", tr, fmt="vtt", folder=tmp_path / "out")
    assert v == subtitle_path(tmp_path / "out", "a/b", "vtt") and v.read_text().startswith("WEBVTT")


def test_atomic_write_failure_leaves_nothing(tmp_path):
    target = tmp_path / "x.srt"
    target.write_text("old")

    def boom(f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(target, boom)
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["x.srt"]


def test_atomic_write_many_each_file_all_or_nothing(tmp_path, monkeypatch):
    """Many files at once: each is written whole or not at all, each one's error is its own,
    every file is fsynced before its rename, and no temp file is left behind."""
    from concurrent.futures import ThreadPoolExecutor

    (tmp_path / "b.srt").write_text("old b")
    (tmp_path / "c.srt").write_text("old c")
    synced, renamed = [], []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else ""
        if ".c.srt." in name:
            raise OSError(5, "Input/output error")
        synced.append(name)
        return real_fsync(fd)

    def replace(a, b):
        assert any(str(a) in n for n in synced) or not os.path.exists("/proc/self/fd")
        renamed.append(Path(b).name)
        return real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    files = [(tmp_path / "a.srt", b"new a"), (tmp_path / "b.srt", b"new b" * 10000),
             (tmp_path / "c.srt", b"new c"), (tmp_path / "missing" / "d.srt", b"d")]
    with ThreadPoolExecutor(4) as pool:
        errors = atomic_write_many(files, pool)
    assert errors[0] is None and errors[1] is None
    assert errors[2] is not None and errors[2].errno == 5
    assert isinstance(errors[3], FileNotFoundError)
    assert (tmp_path / "a.srt").read_bytes() == b"new a"
    assert (tmp_path / "b.srt").read_bytes() == b"new b" * 10000
    assert (tmp_path / "c.srt").read_text() == "old c"  # its fsync failed: untouched
    assert sorted(renamed) == ["a.srt", "b.srt"]
    assert sorted(os.listdir(tmp_path)) == ["a.srt", "b.srt", "c.srt"]


def test_atomic_write_many_interrupted_leaves_no_temp_files(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    real_replace, calls = os.replace, [0]

    def replace(a, b):
        calls[0] += 1
        if calls[0] == 2:
            raise KeyboardInterrupt
        return real_replace(a, b)

    monkeypatch.setattr(os, "replace", replace)
    with ThreadPoolExecutor(2) as pool, pytest.raises(KeyboardInterrupt):
        atomic_write_many([(tmp_path / f"{i}.srt", b"x") for i in range(4)], pool)
    assert sorted(os.listdir(tmp_path)) == ["0.srt"]


def test_atomic_write_respects_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "x.srt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "x.srt").stat().st_mode & 0o777 == 0o644  # readable by others, like any file
