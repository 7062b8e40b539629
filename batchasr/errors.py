"""Domain exceptions. The CLI maps each to a one-line ``Error: ...`` and exit code 1.

Every message says *which* file/row/job is concerned and, where there is one, what to do.
"""
from __future__ import annotations


class BatchasrError(Exception):
    """Base class for every error batchasr reports to the user."""


class AudioError(BatchasrError):
    """An audio file cannot be used: missing, empty, truncated, not audio, unsupported codec.

    ``path`` is the file and ``reason`` a short machine-readable word (``"missing"``,
    ``"empty"``, ``"truncated"``, ``"corrupt"``, ``"not_audio"``, ``"unsupported"``,
    ``"not_a_file"``, ``"unreadable"``);
    ``str(err)`` names both, plus the decoder's own message when there is one.
    """

    def __init__(self, path, reason: str, detail: str = ""):
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        msg = f"{self.path}: {reason.replace('_', ' ')}"
        super().__init__(f"{msg} ({detail})" if detail else msg)


class ManifestError(BatchasrError):
    """A manifest cannot be used. ``problems`` lists ``(line_number, message)`` pairs
    (line 0 = the whole file, e.g. a missing ``path`` column); ``total`` counts them all
    when only the first ones were kept."""

    def __init__(self, source, problems: list[tuple[int, str]], *, total: int | None = None,
                 max_shown: int = 20):
        self.source = str(source)
        self.problems = sorted(problems)
        self.total = max(total or 0, len(self.problems))
        shown = [f"  line {n}: {m}" if n else f"  {m}" for n, m in self.problems[:max_shown]]
        if self.total > max_shown:
            shown.append(f"  ... and {self.total - max_shown} more")
        super().__init__(
            f"{self.source}: {self.total} problem(s) in the manifest:\n" + "\n".join(shown)
        )


class JobError(BatchasrError):
    """A job folder cannot be used as asked: locked by a live runner, a different model than
    it was started with, or a manifest that contradicts items already queued."""


class CheckpointError(BatchasrError):
    """A model checkpoint is missing pieces, has unexpected keys, or fails its checksum."""
