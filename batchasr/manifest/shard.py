"""Static shards (``--shard i/N``): a stable hash of the item id picks the items of shard
``i``, so the N slices cover a manifest exactly, whatever its row order, and each can run as
its own job (a Slurm array task) to be merged by ``batchasr export``."""
from __future__ import annotations

import hashlib
import logging
import re
from typing import Any, Iterator


logger = logging.getLogger("batchasr.scale")  # the name log lines show (stable)

# ---- static shards ---------------------------------------------------------------------------


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` -> ``(i, N)`` with ``0 <= i < N`` (Slurm: ``$SLURM_ARRAY_TASK_ID/N`` with
    ``--array=0-<N-1>``); ValueError otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise ValueError(f"--shard {text!r}: expected i/N with 0 <= i < N, e.g. 0/4 ... 3/4")
    return int(m.group(1)), int(m.group(2))


def shard_of(item_id: str, n_shards: int) -> int:
    """The shard of an item: a stable hash of its id (BLAKE2b, the same on every machine
    and Python version, unlike ``hash()``), modulo ``n_shards``."""
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n_shards


class ShardedManifest:
    """The rows of a manifest whose id falls in shard ``index`` of ``count``; everything
    else (``path``, ``problems``, ``n_problems``, ...) is the manifest's own."""

    def __init__(self, manifest, index: int, count: int):
        self._manifest, self.index, self.count = manifest, index, count

    def __iter__(self) -> Iterator:
        return (r for r in self._manifest if shard_of(r.id, self.count) == self.index)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._manifest, name)


