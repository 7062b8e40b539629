"""Batched prefill and KV-cached decoding for a causal LM fed with ready-made prompt embeddings.

Shaped after mlx-lm (`generate_step`, `KVCache`, `BatchKVCache`, `BatchGenerator`), cut down to
what batchasr uses. Prompts are (L_i, D) embedding arrays (text embeddings with audio frames
spliced in); prompts of different lengths share one prefill with **left padding**: row b has
`left_padding[b]` pad slots before its first real position, pad keys are masked out, and RoPE
positions count real tokens only (the first real token is position 0), exactly as the official
`position_ids = cumsum(attention_mask) - 1`.

Two decoding modes give the same tokens:
- `generate_sequential`: one batched prefill, then each sequence decodes alone with its own cache.
- `generate_continuous`: all live sequences decode together, one forward per step; finished
  rows leave the cache (`filter`) and waiting prompts are prefilled and join it (`extend`).

Both pipeline with `mx.async_eval` (step n+1 is queued before token n is read on the host) and
return results in input order. No I/O here.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import mlx.core as mx

STEP = 256  # cache growth, in positions


# ---------------------------------------------------------------------------------------------
# caches
# ---------------------------------------------------------------------------------------------
class KVCache:
    """One sequence's keys/values (B=1, no padding); `offset` = positions so far."""

    def __init__(self):
        self.keys = self.values = None
        self.offset = 0

    def update_and_fetch(self, k: mx.array, v: mx.array):
        prev, L = self.offset, k.shape[2]
        if self.keys is None or prev + L > self.keys.shape[2]:
            n = ((prev + L + STEP - 1) // STEP) * STEP
            grow = lambda a, x: mx.concatenate(
                [a[..., :prev, :], mx.zeros((*x.shape[:2], n - prev, x.shape[3]), x.dtype)],
                axis=2) if a is not None else mx.zeros((*x.shape[:2], n, x.shape[3]), x.dtype)
            self.keys, self.values = grow(self.keys, k), grow(self.values, v)
        self.keys[..., prev:prev + L, :] = k
        self.values[..., prev:prev + L, :] = v
        self.offset += L
        return self.keys[..., :self.offset, :], self.values[..., :self.offset, :]

    @property
    def state(self):
        return self.keys, self.values


class BatchKVCache:
    """Keys/values of a left-padded batch. Row b's real positions are slots
    [left_padding[b], idx); `offset[b] = idx - left_padding[b]` is its next RoPE position.
    The padding is also kept as a host list, so masks and trims never wait on the device.

    Example: prompts of lengths 3, 1 and 2 give left_padding [0, 2, 1]:
        slot:   0  1  2
        row 0:  a  b  c
        row 1:  _  _  d
        row 2:  _  e  f
    """

    def __init__(self, left_padding: Sequence[int]):
        self.lp = [int(p) for p in left_padding]
        self.idx = 0
        self.keys = self.values = None
        self._sync()

    def _sync(self):
        self.left_padding = mx.array(self.lp, dtype=mx.int32)

    @property
    def offset(self) -> mx.array:
        return self.idx - self.left_padding

    @property
    def batch_size(self) -> int:
        return len(self.lp)

    def update_and_fetch(self, k: mx.array, v: mx.array):
        prev, L = self.idx, k.shape[2]
        if self.keys is None or prev + L > self.keys.shape[2]:
            n = ((prev + L + STEP - 1) // STEP) * STEP
            zeros = lambda x, m: mx.zeros((x.shape[0], x.shape[1], m, x.shape[3]), x.dtype)
            if self.keys is None:
                self.keys, self.values = zeros(k, n), zeros(v, n)
            else:
                self.keys = mx.concatenate([self.keys[..., :prev, :], zeros(k, n - prev)], 2)
                self.values = mx.concatenate([self.values[..., :prev, :], zeros(v, n - prev)], 2)
        self.keys[..., prev:prev + L, :] = k
        self.values[..., prev:prev + L, :] = v
        self.idx += L
        return self.keys[..., :self.idx, :], self.values[..., :self.idx, :]

    def filter(self, rows: Sequence[int]) -> None:
        """Keep only `rows` (in that order) and drop the slots no kept row uses."""
        rows = list(rows)
        self.lp = [self.lp[r] for r in rows]
        if self.keys is not None:
            sel = mx.array(rows, dtype=mx.int32)
            trim = min(self.lp) if rows else 0
            self.keys = self.keys[sel][..., trim:self.idx, :]
            self.values = self.values[sel][..., trim:self.idx, :]
            self.idx -= trim
            self.lp = [p - trim for p in self.lp]
        self._sync()

    def extend(self, other: "BatchKVCache") -> None:
        """Append the rows of `other`, right-aligning both caches' last slots."""
        if self.keys is None:
            self.keys, self.values, self.idx, self.lp = other.keys, other.values, other.idx, other.lp
            self._sync()
            return
        n = max(self.idx, other.idx)

        def aligned(c):
            pad = n - c.idx
            k, v = c.keys[..., :c.idx, :], c.values[..., :c.idx, :]
            if pad:
                z = mx.zeros((k.shape[0], k.shape[1], pad, k.shape[3]), k.dtype)
                k, v = mx.concatenate([z, k], 2), mx.concatenate([z, v], 2)
            return k, v, [p + pad for p in c.lp]

        k1, v1, lp1 = aligned(self)
        k2, v2, lp2 = aligned(other)
        self.keys, self.values = mx.concatenate([k1, k2]), mx.concatenate([v1, v2])
        self.lp, self.idx = lp1 + lp2, n
        self._sync()

    def split(self) -> list[KVCache]:
        """One KVCache per row, without its padding (sequential decoding after a prefill)."""
        out = []
        for b, p in enumerate(self.lp):
            c = KVCache()
            c.keys = self.keys[b:b + 1, :, p:self.idx, :]
            c.values = self.values[b:b + 1, :, p:self.idx, :]
            c.offset = self.idx - p
            out.append(c)
        return out

    @property
    def state(self):
        return self.keys, self.values


def batch_mask(cache: BatchKVCache, L: int) -> mx.array | None:
    """Boolean (B, 1, L, idx + L) mask for L new positions: causal, pad keys hidden. A pad
    query sees itself only, so no softmax row is empty (its output is never used)."""
    if L == 1 and max(cache.lp, default=0) == 0:
        return None
    k = mx.arange(cache.idx + L)[None, None, None, :]
    q = (cache.idx + mx.arange(L))[None, None, :, None]
    lp = cache.left_padding[:, None, None, None]
    return (k <= q) & ((k >= lp) | (k == q))


def single_mask(cache: KVCache, L: int) -> mx.array | None:
    if L == 1:
        return None
    k = mx.arange(cache.offset + L)[None, None, None, :]
    q = (cache.offset + mx.arange(L))[None, None, :, None]
    return k <= q


# ---------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------
def make_sampler(temperature: float = 0.0, top_p: float = 1.0, top_k: int = -1,
                 seed: int = 0) -> Callable:
    """sampler(logits (B, V), keys (B,) of (uid, step)) -> token ids (B,).

    temperature 0 is greedy (argmax). Otherwise logits / temperature, then top-k (if > 0) and
    top-p filtering with the Hugging Face/vLLM rule (keep the smallest high-probability set
    whose mass exceeds top_p, at least one token), then a draw. Each row's draw uses its own
    random key made from (seed, uid, step), so a sequence samples the same tokens whatever
    else shares its batch and in either decoding mode."""
    if temperature <= 0.0:
        return lambda logits, keys: mx.argmax(logits, axis=-1)

    def sample(logits: mx.array, keys) -> mx.array:
        logits = logits.astype(mx.float32) / temperature
        neg = mx.array(-float("inf"), mx.float32)
        if top_k > 0 and top_k < logits.shape[-1]:
            kth = mx.sort(logits, axis=-1)[:, -top_k][:, None]
            logits = mx.where(logits < kth, neg, logits)
        if top_p < 1.0:
            order = mx.argsort(logits, axis=-1)  # ascending
            sorted_logits = mx.take_along_axis(logits, order, axis=-1)
            cum = mx.cumsum(mx.softmax(sorted_logits, axis=-1), axis=-1)
            drop = cum <= (1.0 - top_p)
            drop = mx.concatenate([drop[:, :-1], mx.zeros_like(drop[:, -1:])], axis=-1)
            drop = mx.put_along_axis(mx.zeros_like(drop), order, drop, axis=-1)
            logits = mx.where(drop, neg, logits)
        noise = mx.stack([mx.random.gumbel((logits.shape[-1],),
                                           key=mx.random.key(_mix(seed, uid, step)))
                          for uid, step in keys])
        return mx.argmax(logits + noise, axis=-1)

    return sample


def _mix(seed: int, uid: int, step: int) -> int:
    return (seed * 1_000_003 + uid * 65_537 + step * 257 + 12_345) % (1 << 32)


# ---------------------------------------------------------------------------------------------
# prefill and decoding
# ---------------------------------------------------------------------------------------------
def make_cache(model, left_padding: Sequence[int]) -> list[BatchKVCache]:
    return [BatchKVCache(left_padding) for _ in model.layers]


def prefill(model, prompts: Sequence[mx.array]) -> tuple[mx.array, list[BatchKVCache]]:
    """Left-padded batched prefill of prompt embeddings [(L_i, D), ...] -> last-position
    logits (B, vocab) and the batch caches."""
    lengths = [p.shape[0] for p in prompts]
    n = max(lengths)
    pads = [n - l for l in lengths]
    x = mx.stack([mx.pad(p, [(n - p.shape[0], 0), (0, 0)]) for p in prompts])
    cache = make_cache(model, pads)
    mask = batch_mask(cache[0], n)
    logits = model(cache=cache, mask=mask, input_embeddings=x, last_only=True)
    return logits[:, -1, :], cache


@dataclass
class GenerationResult:
    tokens: list[int] = field(default_factory=list)  # new tokens, the stop token included
    finish_reason: str = ""  # "stop", "length", or what `stop_check` returned


def _finish(res: GenerationResult, tok: int, stop_ids, max_tokens: int, stop_check,
            uid: int) -> bool:
    res.tokens.append(tok)
    if tok in stop_ids:
        res.finish_reason = "stop"
    elif len(res.tokens) >= max_tokens:
        res.finish_reason = "length"
    elif stop_check is not None and (reason := stop_check(uid, res.tokens)):
        res.finish_reason = reason
    return bool(res.finish_reason)


def _budgets(max_tokens, n: int) -> list[int]:
    return [int(max_tokens)] * n if isinstance(max_tokens, int) else [int(m) for m in max_tokens]


def generate_sequential(model, prompts: Sequence[mx.array], *, max_tokens: int | Sequence[int],
                        stop_ids: Sequence[int], sampler: Callable | None = None,
                        stop_check: Callable | None = None) -> list[GenerationResult]:
    """One batched prefill, then per-sequence KV-cached decoding (simple and exact).

    max_tokens: cap per sequence (the stop token counts). stop_check(uid, tokens) may end a
    sequence early by returning a reason string."""
    sampler = sampler or make_sampler()
    budgets = _budgets(max_tokens, len(prompts))
    results = [GenerationResult() for _ in prompts]
    if not prompts:
        return results
    logits, cache = prefill(model, prompts)
    first = sampler(logits, [(i, 0) for i in range(len(prompts))])
    per_row = list(zip(*[c.split() for c in cache]))
    for i, row_cache in enumerate(per_row):
        if budgets[i] <= 0:
            results[i].finish_reason = "length"
            continue
        y = first[i:i + 1]
        while True:
            nxt = sampler(model(y[:, None], cache=list(row_cache))[:, -1, :],
                          [(i, len(results[i].tokens) + 1)])
            mx.async_eval(nxt)
            if _finish(results[i], int(y.item()), stop_ids, budgets[i], stop_check, i):
                break
            y = nxt
    return results


def generate_continuous(model, prompts: Sequence[mx.array], *, max_tokens: int | Sequence[int],
                        stop_ids: Sequence[int], sampler: Callable | None = None,
                        stop_check: Callable | None = None, max_batch: int = 64,
                        prefill_batch: int | None = None,
                        retire_at: float = 0.0) -> list[GenerationResult]:
    """Continuous batching: every live sequence advances by one token per forward pass;
    finished sequences retire and waiting prompts are prefilled and admitted.

    max_batch bounds the rows; prefill_batch (default max_batch) bounds one prefill.
    retire_at: finished rows stay in the batch, idle (their tokens are never read), until
    they are at least this fraction of it or waiting prompts need their room. A retirement
    rebuilds every layer's cache (a gather, then a copy to grow it again); on a GPU, where
    a decode step costs its launches rather than its rows, a few idle rows are cheaper. 0
    (the default) retires at once, as a CPU wants (there a row is compute). Rows do not
    see each other, so the tokens are the same either way."""
    sampler = sampler or make_sampler()
    budgets = _budgets(max_tokens, len(prompts))
    results = [GenerationResult() for _ in prompts]
    waiting = deque(i for i in range(len(prompts)) if budgets[i] > 0)
    for i in range(len(prompts)):
        if budgets[i] <= 0:
            results[i].finish_reason = "length"
    prefill_batch = prefill_batch or max_batch
    cache: list[BatchKVCache] | None = None
    uids: list[int | None] = []  # per row: its prompt, or None for a finished (idle) row
    y: mx.array | None = None  # current token per row, not yet read on the host

    def retire(y: mx.array) -> mx.array:
        nonlocal cache, uids
        keep = [r for r, u in enumerate(uids) if u is not None]
        if not keep:
            cache, uids = None, []
            return y
        for c in cache:
            c.filter(keep)
        uids = [uids[r] for r in keep]
        return y[mx.array(keep, dtype=mx.int32)]

    while waiting or any(u is not None for u in uids):
        if waiting and len(uids) - uids.count(None) < max_batch:  # admit
            if None in uids:  # the idle rows make room first
                y = retire(y)
            take = [waiting.popleft() for _ in range(min(len(waiting), max_batch - len(uids),
                                                         prefill_batch))]
            logits, new_cache = prefill(model, [prompts[i] for i in take])
            y_new = sampler(logits, [(i, 0) for i in take])
            if cache is None:
                cache, y, uids = new_cache, y_new, take
            else:
                for c, nc in zip(cache, new_cache):
                    c.extend(nc)
                y, uids = mx.concatenate([y, y_new]), uids + take
        steps = [(-1, 0) if u is None else (u, len(results[u].tokens) + 1) for u in uids]
        nxt = sampler(model(y[:, None], cache=cache, mask=batch_mask(cache[0], 1))[:, -1, :],
                      steps)
        mx.async_eval(nxt)
        for r, (u, tok) in enumerate(zip(uids, y.tolist())):
            if u is not None and _finish(results[u], tok, stop_ids, budgets[u], stop_check, u):
                uids[r] = None
        idle = uids.count(None)
        if idle and (idle == len(uids) or idle >= retire_at * len(uids)):
            nxt = retire(nxt)
        y = nxt
    return results


def generate(model, prompts: Sequence[mx.array], *, mode: str = "continuous",
             **kwargs) -> list[GenerationResult]:
    """Decode every prompt; `mode` "continuous" (default) or "sequential"."""
    if mode == "continuous":
        return generate_continuous(model, prompts, **kwargs)
    if mode == "sequential":
        for key in ("max_batch", "prefill_batch", "retire_at"):
            kwargs.pop(key, None)
        return generate_sequential(model, prompts, **kwargs)
    raise ValueError(f"decode mode must be 'continuous' or 'sequential', not {mode!r}")
