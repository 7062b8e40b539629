"""Result rows: the Arrow schemas of the job's results and the conversions to and from them.

* :data:`RESULT_SCHEMA`: one exported row per item (done, failed or pending).
* :data:`PART_SCHEMA`: a row of a part file, the result schema plus the item's carried
  manifest columns (``extra``, JSON) so a part is self-describing.
* :func:`transcript_to_row` / :func:`failure_to_row` build part rows; :func:`row_to_transcript`
  gives back the :class:`Transcript` a row stores (to re-render outputs without a model).

Invariant: token times are the model's integer milliseconds stored as seconds, and
:func:`row_to_transcript` (``round(s * 1000)``) gives them back exactly.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

import pyarrow as pa

from batchasr.transcript import Segment, Token, Transcript

__all__ = [
    "SEGMENT", "TOKEN", "RESULT_SCHEMA", "PART_SCHEMA", "transcript_to_row", "failure_to_row",
    "row_to_transcript",
]

SEGMENT = pa.struct([("start_s", pa.float64()), ("end_s", pa.float64()), ("text", pa.string())])
# Token times are the model's integer milliseconds / 1000: round(t * 1000) gives them back exactly.
TOKEN = pa.struct(
    [("text", pa.string()), ("id", pa.int64()), ("start_s", pa.float64()), ("end_s", pa.float64())]
)
RESULT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("path", pa.string()),
        ("status", pa.string()),  # done / failed / pending
        ("error", pa.string()),
        ("duration_s", pa.float64()),
        ("language", pa.string()),
        ("text", pa.string()),
        # the model's text before punctuation was restored (null when no punctuation model
        # ran: then text is the model's own); parts written before this column read it as null
        ("raw_text", pa.string()),
        ("segments", pa.list_(SEGMENT)),
        ("tokens", pa.list_(TOKEN)),
        ("model", pa.string()),
        ("flags", pa.list_(pa.string())),
        # SenseVoice: the emotion and audio event its tags report (null for other models; the
        # language column holds its detected language, raw_text its tagged text)
        ("emotion", pa.string()),
        ("event", pa.string()),
        # SenseVoice with timestamps: the pieces its official timestamps are for, with their
        # times (the tokens column then holds the decoded ids without times); empty otherwise
        ("aligned_pieces", pa.list_(TOKEN)),
    ]
)
# Part files also keep the item's carried manifest columns (JSON), so a part is self-describing;
# the export takes them from the queue and spreads them into string columns.
PART_SCHEMA = RESULT_SCHEMA.append(pa.field("extra", pa.string()))


def _seconds(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000


def transcript_to_row(item: Mapping | Any, transcript: Transcript, *, model_name: str) -> dict:
    """One :data:`PART_SCHEMA` row for a done item.

    ``item`` is a queue row (a dict, or an object with the same attributes) with ``id, path,
    language, extra, duration_s``; ``extra`` may be a JSON string, a dict or None. The language
    is the model's when it reports one, else the manifest's.
    """
    get = item.get if isinstance(item, Mapping) else (lambda key: getattr(item, key, None))
    extra = get("extra")
    if extra is not None and not isinstance(extra, str):
        extra = json.dumps(extra, ensure_ascii=False)
    return {
        "id": str(get("id")),
        "path": get("path"),
        "status": "done",
        "error": None,
        "duration_s": get("duration_s"),
        "language": transcript.language or get("language"),
        "text": transcript.text,
        "raw_text": transcript.raw_text,
        "segments": [{"start_s": s.start_s, "end_s": s.end_s, "text": s.text} for s in transcript.segments],
        "tokens": [
            {"text": t.text, "id": t.id, "start_s": _seconds(t.start_ms), "end_s": _seconds(t.end_ms)}
            for t in transcript.tokens
        ],
        "model": model_name,
        "flags": list(transcript.flags),
        "emotion": transcript.emotion,
        "event": transcript.event,
        "aligned_pieces": [
            {"text": t.text, "id": t.id, "start_s": _seconds(t.start_ms), "end_s": _seconds(t.end_ms)}
            for t in transcript.aligned_pieces
        ],
        "extra": extra,
    }


def failure_to_row(item: Mapping | Any, error: str, *, model_name: str) -> dict:
    """One :data:`PART_SCHEMA` row for an item that failed (engines without a queue, such
    as Ray, record failures in their parts)."""
    row = transcript_to_row(item, Transcript(text=""), model_name=model_name)
    return {**row, "status": "failed", "error": error, "text": None,
            "language": row["language"] if row["language"] else None}


def row_to_transcript(row: dict) -> Transcript:
    """Rebuild the Transcript stored in a row (for re-rendering subtitles without a model)."""
    ms = lambda s: None if s is None else int(round(s * 1000))  # noqa: E731
    return Transcript(
        text=row.get("text") or "",
        tokens=[Token(t["text"], t["id"], ms(t["start_s"]), ms(t["end_s"])) for t in row.get("tokens") or []],
        segments=[Segment(s["start_s"], s["end_s"], s["text"]) for s in row.get("segments") or []],
        language=row.get("language"),
        flags=list(row.get("flags") or []),
        raw_text=row.get("raw_text"),
        emotion=row.get("emotion"),
        event=row.get("event"),
        aligned_pieces=[Token(t["text"], t["id"], ms(t["start_s"]), ms(t["end_s"]))
                        for t in row.get("aligned_pieces") or []],
    )
