"""batchasr.models.blocks.generate: batched prefill, KV caches, and the two decoding modes (tiny Qwen3)."""
import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_map

from batchasr.models.blocks import generate as G
from batchasr.models.blocks.qwen3 import Model, ModelArgs

EOS = 36  # occurs in some rows of this random model, not in others


@pytest.fixture(scope="module")
def model():
    args = ModelArgs(hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=61,
                     rope_theta=1e6, tie_word_embeddings=True, eos_token_id=EOS)
    mx.random.seed(3)
    m = Model(args)
    m.update(tree_map(lambda p: mx.random.normal(p.shape) * 0.4, m.parameters()))
    return m


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(1)
    return [mx.array(rng.standard_normal((n, 32)).astype(np.float32))
            for n in (7, 3, 12, 5, 9, 1, 4)]


BUDGETS = [20, 15, 25, 10, 30, 12, 18]


def run(model, prompts, mode, **kw):
    kw = {"max_tokens": BUDGETS[:len(prompts)], "stop_ids": [EOS], **kw}
    return G.generate(model, prompts, mode=mode, **kw)


def test_modes_and_batching_agree(model, prompts):
    alone = [run(model, [p], "sequential", max_tokens=[b])[0]
             for p, b in zip(prompts, BUDGETS)]
    ref = [(r.tokens, r.finish_reason) for r in alone]
    assert {r.finish_reason for r in alone} == {"stop", "length"}  # both endings occur
    for mode, kw in (("sequential", {}), ("continuous", {}),
                     ("continuous", {"max_batch": 2}), ("continuous", {"max_batch": 3,
                                                                       "prefill_batch": 1}),
                     ("continuous", {"retire_at": 0.5}), ("continuous", {"retire_at": 1.0}),
                     ("continuous", {"max_batch": 3, "retire_at": 0.5})):
        got = [(r.tokens, r.finish_reason) for r in run(model, prompts, mode, **kw)]
        assert got == ref, (mode, kw)


def test_idle_rows_retire_together(model, prompts, monkeypatch):
    """retire_at: finished rows wait in the batch until they are that fraction of it, so the
    caches are rebuilt fewer times (the tokens are the same: test above)."""
    filters = []
    original = G.BatchKVCache.filter
    monkeypatch.setattr(G.BatchKVCache, "filter",
                        lambda self, rows: (filters.append(len(rows)), original(self, rows)))
    n_layers = len(model.layers)
    run(model, prompts, "continuous")
    at_once = len(filters) // n_layers
    filters.clear()
    run(model, prompts, "continuous", retire_at=0.5)
    assert len(filters) // n_layers < at_once, (len(filters) // n_layers, at_once)
    assert at_once >= 3, at_once  # several finishing steps, one retirement each


def test_greedy_is_argmax_of_the_full_forward(model, prompts):
    p = prompts[0]
    toks = run(model, [p], "continuous", max_tokens=[6], stop_ids=[])[0].tokens
    x = p
    for t in toks:  # re-run the whole sequence each step, no cache
        cache = G.make_cache(model, [0])
        logits = model(cache=cache, mask=G.batch_mask(cache[0], x.shape[0]),
                       input_embeddings=x[None])
        assert int(mx.argmax(logits[0, -1]).item()) == t
        x = mx.concatenate([x, model.embed(mx.array([t]))])


def test_budget_stop_check_and_empty(model, prompts):
    res = run(model, prompts[:3], "continuous", max_tokens=[0, 1, 4], stop_ids=[])
    assert [len(r.tokens) for r in res] == [0, 1, 4]
    assert [r.finish_reason for r in res] == ["length"] * 3
    seen = []

    def stop_after_two(uid, tokens):
        seen.append(uid)
        return "custom" if len(tokens) == 2 else None

    for mode in ("sequential", "continuous"):
        res = run(model, prompts[:3], mode, stop_ids=[], stop_check=stop_after_two)
        assert [(len(r.tokens), r.finish_reason) for r in res] == [(2, "custom")] * 3
    assert G.generate(model, [], mode="continuous", max_tokens=5, stop_ids=[]) == []
    with pytest.raises(ValueError):
        G.generate(model, prompts, mode="beam", max_tokens=5, stop_ids=[])


def test_sampling_is_per_sequence_deterministic(model, prompts):
    s = G.make_sampler(temperature=0.9, top_p=0.8, seed=7)
    a = run(model, prompts, "sequential", sampler=s)
    b = run(model, prompts, "continuous", sampler=s, max_batch=2)
    assert [r.tokens for r in a] == [r.tokens for r in b]
    greedy = run(model, prompts, "sequential")
    assert [r.tokens for r in a] != [r.tokens for r in greedy]
    # top_p keeps the smallest set above the mass: a peaked row keeps only its top token
    logits = mx.array([[10.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    picks = {int(G.make_sampler(1.0, 0.5, seed=k)(logits, [(0, 0), (1, 0)])[0].item())
             for k in range(20)}
    assert picks == {0}


def test_cache_filter_and_extend(model, prompts):
    _, c1 = G.prefill(model, prompts[:3])  # lengths 7, 3, 12
    _, c2 = G.prefill(model, prompts[3:5])  # lengths 5, 9
    k = c1[0]
    assert (k.idx, k.lp) == (12, [5, 9, 0])
    k.filter([0, 1])  # drop the longest row: 5 leading slots are unused now
    assert (k.idx, k.lp) == (7, [0, 4]) and k.keys.shape[2] == 7
    k.extend(c2[0])
    assert (k.idx, k.lp) == (9, [2, 6, 4, 0]) and k.keys.shape[0] == 4
    assert np.array(k.offset).tolist() == [7, 3, 5, 9]
    rows = k.split()
    assert [r.offset for r in rows] == [7, 3, 5, 9]
    ref = c2[0].split()[1]
    np.testing.assert_array_equal(np.array(rows[3].keys), np.array(ref.keys))
