"""Parquet parts and the export: roundtrip, atomicity, exactly one row per queue item."""
import errno
import io
import json
import os
import sqlite3
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import srt

from batchasr.outputs import parquet
from batchasr.errors import JobError
from batchasr.outputs.export import FORMATS, export_results
from batchasr.outputs.names import safe_name
from batchasr.outputs.parquet import read_part, results_table, write_part
from batchasr.outputs.rows import PART_SCHEMA, RESULT_SCHEMA, row_to_transcript, transcript_to_row
from batchasr.outputs.writers import write_item_subtitles
from batchasr.transcript import Segment, Token, Transcript

# The queue table as the contract describes it (the real one is batchasr.queue.store's).
DDL = """CREATE TABLE items (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, path TEXT NOT NULL,
    language TEXT, extra TEXT NOT NULL DEFAULT '{}', status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0, error TEXT, duration_s REAL, part TEXT,
    created_at TEXT, started_at TEXT, finished_at TEXT)"""


def make_job(job, items):
    """items: dicts with id, seq and optional path/language/extra/duration_s."""
    job.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(job / "queue.db")
    con.execute(DDL)
    for it in items:
        con.execute(
            "INSERT INTO items (id, seq, path, language, extra, duration_s) VALUES (?, ?, ?, ?, ?, ?)",
            (it["id"], it["seq"], it.get("path", f"/audio/{it['seq']}.wav"), it.get("language"),
             json.dumps(it.get("extra", {}), ensure_ascii=False), it.get("duration_s")),
        )
    con.commit()
    con.close()
    return job


def set_status(job, item_id, status, *, part=None, error=None, duration_s=None):
    con = sqlite3.connect(job / "queue.db")
    con.execute("UPDATE items SET status = ?, part = ?, error = ?, duration_s = coalesce(?, duration_s) "
                "WHERE id = ?", (status, part, error, duration_s, item_id))
    con.commit()
    con.close()


def queue_item(job, item_id):
    con = sqlite3.connect(job / "queue.db")
    con.row_factory = sqlite3.Row
    row = dict(con.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone())
    con.close()
    return row


def tr(text="hello world", lang=None):
    words = text.split()
    toks = [Token(w, i, 600 * i, 600 * i + 500) for i, w in enumerate(words)]
    return Transcript(text=text, tokens=toks, segments=[Segment(0.0, 0.6 * len(words), text)], language=lang)


def finish(job, ids, texts=None, *, part_rows_extra=()):
    """Write one part holding ``ids`` (plus any extra rows) and mark the ids done with it."""
    rows = [transcript_to_row(queue_item(job, i), tr((texts or {}).get(i, f"text of {i}")), model_name="m")
            for i in ids]
    name = write_part(job, rows + list(part_rows_extra))
    for i in ids:
        set_status(job, i, "done", part=name)
    return name


# --- parts -------------------------------------------------------------------------------------------


def test_part_roundtrip(tmp_path):
    original = Transcript(
        text="你好 world",
        tokens=[Token("你", 5, 0, 120), Token("好", 6, 120, 250), Token("wor@@", 7, 300, 400),
                Token("ld", 8, None, None)],
        segments=[Segment(0.0, 0.25, "你好"), Segment(0.3, 0.5, "world")],
        language="zh",
        flags=["token_cap"],
    )
    item = {"id": "a/1", "seq": 0, "path": "/x/a.wav", "language": None, "extra": '{"speaker": "bo"}',
            "duration_s": 1.5}
    name = write_part(tmp_path, [transcript_to_row(item, original, model_name="paraformer-zh")])
    table = read_part(tmp_path, name)
    assert table.schema == PART_SCHEMA
    (row,) = table.to_pylist()
    assert row_to_transcript(row) == original  # ms times survive as seconds exactly
    assert (row["id"], row["path"], row["model"], row["duration_s"]) == ("a/1", "/x/a.wav", "paraformer-zh", 1.5)
    assert json.loads(row["extra"]) == {"speaker": "bo"} and row["status"] == "done"


def test_transcript_to_row_accepts_objects_and_dicts():
    class Item:
        id, seq, path, language, duration_s = "x", 0, "/p.wav", "en", None
        extra = {"speaker": "ann"}

    row = transcript_to_row(Item(), Transcript(text="hi"), model_name="m")
    assert row["language"] == "en" and json.loads(row["extra"]) == {"speaker": "ann"}


def test_write_part_names_are_unique_and_leave_no_temp(tmp_path):
    names = {write_part(tmp_path, []) for _ in range(20)}
    assert len(names) == 20
    assert sorted(os.listdir(tmp_path / "parts")) == sorted(names)
    assert all(n.startswith("part-") and n.endswith(".parquet") for n in names)


class FullDisk(io.FileIO):
    """A file on a disk that fills up after 64 bytes."""

    def write(self, b):
        if self.tell() + len(b) > 64:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(b)


@pytest.mark.parametrize("where", ["file", "writer", "fsync"])
def test_write_part_full_disk(tmp_path, monkeypatch, where):
    def write_some_then_fail(table, f, **kw):
        f.write(b"PAR1 and then the disk filled up")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fsync_fails(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if where == "file":  # the real Parquet writer hits a full disk part-way through
        monkeypatch.setattr(os, "fdopen", lambda fd, mode: FullDisk(fd, mode))
    elif where == "writer":
        monkeypatch.setattr(parquet.pq, "write_table", write_some_then_fail)
    else:  # delayed allocation: the error only shows at fsync
        monkeypatch.setattr(os, "fsync", fsync_fails)
    rows = [transcript_to_row({"id": "a", "path": "/a.wav"}, tr(), model_name="m")]
    with pytest.raises(JobError, match="disk is full") as info:
        write_part(tmp_path, rows)
    assert str(tmp_path / "parts") in str(info.value)
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
    assert os.listdir(tmp_path / "parts") == []  # no final file, no temp file


# --- export: exactly one row per queue item --------------------------------------------------------


@pytest.fixture
def job(tmp_path):
    # seq order differs from id order and from insertion order, on purpose
    items = [{"id": f"item-{i}", "seq": s, "extra": {"speaker": f"s{i}"}, "duration_s": 2.0}
             for i, s in enumerate([3, 0, 4, 1, 2, 5])]
    return make_job(tmp_path / "job", items)


def test_export_exactly_once_with_orphans_and_duplicates(job):
    # a crashed run wrote a part (stale text for item-0, and item-1) but never marked anything done
    stale = [transcript_to_row(queue_item(job, i), tr("stale"), model_name="m") for i in ("item-0", "item-1")]
    write_part(job, stale)
    # the retry wrote item-0 again, in the part the queue names; item-2 is in there twice
    dup = transcript_to_row(queue_item(job, "item-2"), tr("text of item-2"), model_name="m")
    finish(job, ["item-0", "item-2"], part_rows_extra=[dup])
    finish(job, ["item-1"])
    # an orphan part holding an id the queue has never heard of
    write_part(job, [transcript_to_row({"id": "ghost", "path": "/g.wav"}, tr("boo"), model_name="m")])
    set_status(job, "item-3", "failed", error="AudioError: truncated")
    set_status(job, "item-4", "running")

    out = export_results(job, "parquet")
    assert out == job / "results.parquet"
    table = pq.read_table(out)
    rows = table.to_pylist()
    by_seq = ["item-1", "item-3", "item-4", "item-0", "item-2", "item-5"]
    assert [r["id"] for r in rows] == by_seq  # one row per queue item, manifest order
    got = {r["id"]: r for r in rows}
    assert got["item-0"]["text"] == "text of item-0" and got["item-1"]["text"] == "text of item-1"
    assert [got[i]["status"] for i in by_seq] == ["done", "failed", "pending", "done", "done", "pending"]
    assert got["item-3"]["error"] == "AudioError: truncated" and got["item-3"]["text"] is None
    assert got["item-5"]["tokens"] == [] and got["item-5"]["error"] is None
    assert [r["speaker"] for r in rows] == ["s1", "s3", "s4", "s0", "s2", "s5"]  # carried column
    assert table.schema.names == RESULT_SCHEMA.names + ["speaker"]
    assert row_to_transcript(got["item-0"]) == tr("text of item-0")


def test_each_part_read_once(job, monkeypatch):
    finish(job, ["item-0", "item-1"])
    finish(job, ["item-2"])
    finish(job, ["item-3", "item-4", "item-5"])
    calls = []
    real = parquet.read_part
    monkeypatch.setattr(parquet, "read_part", lambda j, n: calls.append(n) or real(j, n))
    assert results_table(job).num_rows == 6
    assert len(calls) == len(set(calls)) == 3


def test_export_many_items(tmp_path, monkeypatch):
    n, per_part = 3000, 250
    job = make_job(tmp_path / "big", [{"id": f"i{k:05d}", "seq": n - k} for k in range(n)])
    con = sqlite3.connect(job / "queue.db")
    for start in range(0, n, per_part):
        ids = [f"i{k:05d}" for k in range(start, start + per_part)]
        rows = [transcript_to_row({"id": i, "path": "/a.wav"}, tr(f"t {i}"), model_name="m") for i in ids]
        name = write_part(job, rows)
        con.executemany("UPDATE items SET status = 'done', part = ? WHERE id = ?", [(name, i) for i in ids])
    con.commit()
    con.close()
    table = results_table(job)
    assert table.num_rows == n and table["id"][0].as_py() == f"i{n - 1:05d}"
    assert table["text"][-1].as_py() == "t i00000"


def test_missing_result_is_an_error(job):
    name = finish(job, ["item-0"])
    set_status(job, "item-1", "done", part=name)  # the queue says so, the part disagrees
    with pytest.raises(JobError, match="item-1"):
        export_results(job, "parquet")
    os.remove(job / "parts" / name)
    with pytest.raises(JobError, match="2 done item"):
        export_results(job, "jsonl")


def test_not_a_job_folder(tmp_path):
    with pytest.raises(JobError, match="queue.db"):
        export_results(tmp_path, "parquet")


def test_unknown_format(job):
    with pytest.raises(ValueError, match="parquet"):
        export_results(job, "docx")


def test_duration_from_queue_when_part_has_none(tmp_path):
    job = make_job(tmp_path / "j", [{"id": "a", "seq": 0}])
    name = write_part(job, [transcript_to_row(queue_item(job, "a"), tr(), model_name="m")])  # duration None
    set_status(job, "a", "done", part=name, duration_s=3.25)
    assert results_table(job)["duration_s"].to_pylist() == [3.25]


def test_carried_columns_clash_and_types(tmp_path):
    job = make_job(tmp_path / "j", [
        {"id": "a", "seq": 0, "extra": {"text": "from the manifest", "n": 3}},
        {"id": "b", "seq": 1, "extra": {"room": "b2"}},
    ])
    table = results_table(job)
    assert table.schema.names[-3:] == ["manifest_text", "n", "room"]
    assert table["manifest_text"].to_pylist() == ["from the manifest", None]
    assert table["n"].to_pylist() == ["3", None] and table["room"].to_pylist() == [None, "b2"]


# --- export formats ------------------------------------------------------------------------------------


@pytest.fixture
def done_job(job):
    finish(job, ["item-0", "item-1", "item-2"], {"item-1": "line one\nline\ttwo"})
    set_status(job, "item-3", "failed", error="boom")
    return job


def test_export_jsonl(done_job):
    path = export_results(done_job, "jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    objs = [json.loads(x) for x in lines]
    assert [o["id"] for o in objs] == ["item-1", "item-3", "item-4", "item-0", "item-2", "item-5"]
    assert objs[1]["status"] == "failed" and objs[1]["error"] == "boom"
    assert objs[0]["tokens"][0] == {"text": "line", "id": 0, "start_s": 0.0, "end_s": 0.5}
    assert objs[0]["speaker"] == "s1"


def test_export_txt_combined(done_job, tmp_path):
    path = export_results(done_job, "txt", tmp_path / "all.txt")
    assert path.read_text(encoding="utf-8") == (
        "item-1\tline one line two\nitem-0\ttext of item-0\nitem-2\ttext of item-2\n"
    )
    assert export_results(done_job, "txt") == done_job / "results.txt"


def test_export_txt_folder(done_job, tmp_path):
    folder = export_results(done_job, "txt", tmp_path / "texts")
    assert sorted(os.listdir(folder)) == sorted(f"{safe_name(i)}.txt" for i in ("item-0", "item-1", "item-2"))
    assert (folder / f"{safe_name('item-1')}.txt").read_text(encoding="utf-8") == "line one\nline\ttwo\n"


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_export_subtitles_rerendered_from_results(done_job, tmp_path, fmt):
    folder = export_results(done_job, fmt)
    assert folder == done_job / ("subtitles" if fmt == "srt" else "subtitles-vtt")
    names = sorted(os.listdir(folder))
    assert names == sorted(f"{safe_name(i)}.{fmt}" for i in ("item-0", "item-1", "item-2"))
    # same bytes as writing straight from the transcript (the worker's path)
    direct = write_item_subtitles(None, "item-0", tr("text of item-0"), duration_s=2.0, fmt=fmt,
                                  folder=tmp_path / "direct")
    assert (folder / direct.name).read_bytes() == direct.read_bytes()
    text = (folder / direct.name).read_text(encoding="utf-8")
    if fmt == "srt":
        assert [s.content for s in srt.parse(text)] == ["text of item-0"]
    else:
        assert text.startswith("WEBVTT\n\n")
    other = export_results(done_job, fmt, tmp_path / "elsewhere")
    assert sorted(os.listdir(other)) == names


def test_every_format_exports(done_job, tmp_path):
    for fmt in FORMATS:
        out = export_results(done_job, fmt, tmp_path / f"out-{fmt}" / (f"r.{fmt}" if fmt != "srt" else ""))
        assert out.exists()
    leftovers = [f for d, _, fs in os.walk(tmp_path) for f in fs if f.endswith(".tmp")]
    assert leftovers == []


def test_failed_export_keeps_the_previous_file(done_job, monkeypatch):
    path = export_results(done_job, "parquet")
    before = path.read_bytes()

    def fail(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(parquet.pq, "write_table", fail)
    with pytest.raises(OSError):
        export_results(done_job, "parquet")
    assert path.read_bytes() == before
    assert sorted(os.listdir(done_job)) == ["parts", "queue.db", "results.parquet"]


# --- contract with the real queue ----------------------------------------------------------------------


def test_with_the_real_queue_and_sample_manifest(tmp_path):
    queue = pytest.importorskip("batchasr.queue.store")
    manifest = pytest.importorskip("batchasr.manifest.read")
    sample = Path(__file__).resolve().parent.parent / "sample_manifests" / "with_errors.csv"
    job = tmp_path / "job"
    with queue.JobQueue(job) as q:
        q.enqueue(manifest.Manifest(sample))
        items = q.claim(100)
        good = [it for it in items if it.extra.get("note") == "good"]
        name = write_part(job, [transcript_to_row(it, tr(it.extra["reference"]), model_name="m") for it in good])
        q.complete([it.id for it in good], name, durations={it.id: 1.0 for it in good})
        for it in items:
            if it not in good:
                q.fail(it.id, f"AudioError: {it.extra['note']}")
    table = results_table(job)
    assert table["id"].to_pylist() == [it.id for it in items]
    status = dict(zip(table["id"].to_pylist(), table["status"].to_pylist()))
    assert sum(s == "done" for s in status.values()) == len(good) == 6
    assert status["bad-missing"] == "failed"
    assert "note" in table.schema.names and "reference" in table.schema.names
    folder = export_results(job, "srt")
    assert len(os.listdir(folder)) == 6
    assert f"{safe_name('meeting/long-45s')}.srt" in os.listdir(folder)
