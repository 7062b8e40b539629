"""batching.py: batch plans respect their budgets and keep padding small; stitching windows."""
from __future__ import annotations

import random

import pytest

from batchasr.batches.plan import padded_size, padding_fraction, plan_batches, shift, stitch
from batchasr.transcript import Segment, Token, Transcript


def check_plan(lengths, batches, *, max_total, max_padded=None, max_items=None):
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(lengths))), "every piece exactly once"
    for b in batches:
        if len(b) == 1:
            continue  # a piece over budget on its own is still transcribed
        assert sum(lengths[i] for i in b) <= max_total
        if max_padded is not None:
            assert padded_size(lengths, b) <= max_padded
        if max_items is not None:
            assert len(b) <= max_items


def test_empty():
    assert plan_batches([], max_total=10) == []


@pytest.mark.parametrize("seed", range(5))
def test_random_plans_respect_budgets(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 30 * 16000) for _ in range(rng.randint(1, 400))]
    kw = dict(max_total=120 * 16000, max_padded=150 * 16000, max_items=rng.choice([None, 8]))
    batches = plan_batches(lengths, **kw)
    check_plan(lengths, batches, **kw)


@pytest.mark.parametrize("seed", range(5))
def test_stable_shapes_respect_budgets_and_repeat_shapes(seed):
    """With a quantum, a batch's size is a function of its longest length rounded up to the
    quantum: every piece once, both budgets hold, and the shapes of a long stream of 2-20 s
    pieces planned pool by pool repeat (at most a full and a partial size per bucket) where
    the greedy plan makes new ones."""
    rng = random.Random(seed)
    q = 15360  # Paraformer on a GPU: 16 frames of 60 ms
    kw = dict(max_total=1000 * 16000, max_padded=1000 * 16000,
              max_items=rng.choice([None, 64]))
    shapes = {"stable": set(), "greedy": set()}
    for _ in range(30):  # pools of a long job
        lengths = [rng.randint(2 * 16000, 20 * 16000) for _ in range(rng.randint(60, 300))]
        for name, quantum in (("stable", q), ("greedy", None)):
            batches = plan_batches(lengths, quantum=quantum, **kw)
            check_plan(lengths, batches, **kw)
            for b in batches:
                bucket = -(-max(lengths[i] for i in b) // q)
                shapes[name].add((len(b), bucket))
                if name == "stable" and b is not batches[-1]:  # full batches: size by bucket
                    full = min(kw["max_padded"] // (bucket * q), kw["max_items"] or 10**9)
                    assert len(b) == full
    buckets = {t for _, t in shapes["stable"]}
    assert len(shapes["stable"]) < len(shapes["greedy"])
    assert len(shapes["stable"]) <= 2 * len(buckets) + 30  # full sizes, plus each pool's last


def test_stable_shapes_with_a_piece_over_budget_and_bad_quantum():
    assert plan_batches([50, 10, 10], max_total=20, quantum=8) == [[0], [1], [2]]
    assert plan_batches([7, 7, 7, 7], max_total=20, quantum=4) == [[0, 1], [2, 3]]
    with pytest.raises(ValueError):
        plan_batches([1], max_total=10, quantum=0)


def test_sorting_keeps_padding_small():
    rng = random.Random(0)
    lengths = [rng.choice([rng.randint(16000, 3 * 16000), rng.randint(20 * 16000, 30 * 16000)])
               for _ in range(500)]
    batches = plan_batches(lengths, max_total=200 * 16000)
    assert padding_fraction(lengths, batches) < 0.15
    # the same batch sizes in arrival order would pad a lot more
    naive, i = [], 0
    for b in batches:
        naive.append(list(range(i, i + len(b))))
        i += len(b)
    assert padding_fraction(lengths, naive) > 0.3


def test_longest_first_and_oversized_pieces_alone():
    lengths = [5, 100, 7, 6]
    assert plan_batches(lengths, max_total=20) == [[1], [2, 3, 0]]


def test_padded_budget_limits_rows_of_long_pieces():
    lengths = [10] * 6 + [1] * 6
    batches = plan_batches(lengths, max_total=1000, max_padded=30)
    assert [len(b) for b in batches] == [3, 3, 6]


def test_max_items():
    assert [len(b) for b in plan_batches([1] * 10, max_total=100, max_items=4)] == [4, 4, 2]


def test_deterministic_with_ties():
    assert plan_batches([3, 3, 3, 3], max_total=6) == [[0, 1], [2, 3]]


def test_bad_budgets():
    with pytest.raises(ValueError):
        plan_batches([1], max_total=0)
    with pytest.raises(ValueError):
        plan_batches([1], max_total=1, max_items=0)


def window(text, t0_ms, n, *, lang=None, flags=()):
    toks = [Token(c, i, t0_ms + 100 * i, t0_ms + 100 * i + 80) for i, c in enumerate(text[:n])]
    return Transcript(text=text, tokens=toks, segments=[Segment(t0_ms / 1000, (t0_ms + 100 * n) / 1000, text)],
                      language=lang, flags=list(flags))


def test_shift_moves_tokens_and_segments():
    t = shift(window("ab", 0, 2), 30.0)
    assert [(k.start_ms, k.end_ms) for k in t.tokens] == [(30000, 30080), (30100, 30180)]
    assert (t.segments[0].start_s, t.segments[0].end_s) == (30.0, 30.2)
    none = shift(Transcript("x", tokens=[Token("x", 1)]), 5.0)
    assert none.tokens[0].start_ms is None


def test_stitch_orders_offsets_and_joins_text():
    out = stitch([(30.0, window("world again", 0, 3, flags=["token_cap"])),
                  (0.0, window("hello", 0, 2, lang="en"))])
    assert out.text == "hello world again"
    assert out.language == "en" and out.flags == ["token_cap"]
    starts = [k.start_ms for k in out.tokens]
    assert starts == sorted(starts) and starts[2] == 30000
    assert [s.start_s for s in out.segments] == [0.0, 30.0]


def test_stitch_cjk_without_spaces_and_empty_windows():
    out = stitch([(0.0, Transcript("你好")), (30.0, Transcript("")), (60.0, Transcript("世界"))])
    assert out.text == "你好世界"
    assert stitch([(0.0, Transcript("안녕")), (30.0, Transcript("여러분"))]).text == "안녕 여러분"
    assert stitch([(0.0, Transcript("OK")), (30.0, Transcript("好的"))]).text == "OK好的"


def test_stitch_single_window_at_offset():
    assert stitch([(0.0, Transcript("a"))]) == Transcript("a")
