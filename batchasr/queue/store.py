"""The job's SQLite store: one row per audio file and its state, plus the job's settings.

A job folder holds ``queue.db`` (this module), ``lock`` (held by the one live run,
:mod:`batchasr.queue.lock`), ``progress/`` (:mod:`batchasr.queue.progress`), ``started/``
(the items each live worker has begun, :mod:`batchasr.queue.started`) and the result
files the workers write. Item states::

    pending --claim--> running --complete--> done
                        |  |  \\--fail-----> failed --retry_failed--> pending
                        |  \\--release / reset_running (after a crash)--> pending
                        \\--lease expired: claim again (another worker takes it over)

Every state change is one ``BEGIN IMMEDIATE`` transaction, so a kill at any instant leaves
each item in exactly one state. ``done`` is set only after the item's results are durable
(the caller writes them first), and records the name of the Parquet part that holds them.

Leases (several worker processes on one queue). A claim with an ``owner`` also sets
``lease_until`` = now + ``lease_s``; the owner's heartbeat (:meth:`JobQueue.heartbeat`)
pushes it forward while the owner lives. A running item whose lease has expired is claimable
again, by anyone. ``complete``/``fail``/``release`` with an ``owner`` only touch items that
owner still holds, so a worker that stalled past its lease (a "zombie") and whose items were
taken over can never mark them done a second time: its part file is an orphan the export
ignores. Claims without an owner (the tests, old callers) have no lease and never expire.

A connection belongs to the thread that opened it (sqlite3's default); the worker keeps the
queue on its main thread. ``now`` parameters exist for tests (as in huey).

Size: above 400 lines because it is one class over one schema whose transactions together are
the queue's state machine; splitting them would scatter its invariants.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import sqlite_utils

from batchasr.errors import JobError, ManifestError
from batchasr.manifest.read import ManifestRow
from batchasr.queue import started

DB_NAME = "queue.db"  # results.export reads it by this name
STATES = ("pending", "running", "done", "failed")
BUSY_TIMEOUT_MS = 30_000  # a `status` reader may briefly hold the database

DDL = [
    """CREATE TABLE IF NOT EXISTS items (
        id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,             -- manifest order (across resumes)
        path TEXT NOT NULL,               -- absolute
        language TEXT,
        extra TEXT NOT NULL DEFAULT '{}', -- JSON object of carried manifest columns
        status TEXT NOT NULL DEFAULT 'pending'
            CHECK (status IN ('pending', 'running', 'done', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,  -- times claimed
        error TEXT,
        duration_s REAL,                  -- once decoded
        part TEXT,                        -- Parquet part file holding the result (done items)
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        lease_owner TEXT,                 -- worker that claimed it last
        lease_until REAL                  -- running: claimable again after this (epoch s)
    )""",
    "CREATE INDEX IF NOT EXISTS items_status_seq ON items (status, seq)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # Manifest rows that were not queued (bad rows, repeated ids), per manifest file; each
    # enqueue of a manifest replaces that manifest's records.
    """CREATE TABLE IF NOT EXISTS skipped (
        manifest TEXT NOT NULL,           -- the manifest file (absolute)
        line INTEGER NOT NULL,            -- 1-based line where the row starts
        reason TEXT NOT NULL,
        raw TEXT NOT NULL DEFAULT '',     -- the row as written (bad bytes as \\xNN)
        PRIMARY KEY (manifest, line)
    )""",
]
# Manifest rows land here first, inside the enqueue transaction, so that duplicate ids and
# conflicts with queued items are found by SQLite on disk rather than in Python memory.
STAGING = "_incoming"
STAGING_DDL = f"""CREATE TABLE {STAGING} (
    n INTEGER PRIMARY KEY, line INTEGER, id TEXT, path TEXT, language TEXT, extra TEXT,
    raw TEXT)"""
MAX_REPORTED = 20  # conflicts listed in one error message
# Columns added after the first release: (name, type), added to older queue.db files on open.
ADDED_COLUMNS = [("lease_owner", "TEXT"), ("lease_until", "REAL")]


@dataclass(frozen=True)
class Item:
    id: str
    seq: int
    path: str
    language: str | None
    extra: dict[str, str]
    status: str
    attempts: int
    error: str | None
    duration_s: float | None
    part: str | None
    lease_owner: str | None = None
    lease_until: float | None = None

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> Item:
        return cls(r["id"], r["seq"], r["path"], r["language"], json.loads(r["extra"] or "{}"),
                   r["status"], r["attempts"], r["error"], r["duration_s"], r["part"],
                   r.get("lease_owner"), r.get("lease_until"))


@dataclass(frozen=True)
class EnqueueResult:
    added: int  # new items, now pending
    existing: int  # rows whose id was already queued (their state is kept)
    problems: list[tuple[int, str]]  # skipped bad rows (only with strict=False), by line
    skipped: int = 0  # how many rows were skipped (problems may hold only the first ones)


@dataclass(frozen=True)
class SkippedRow:
    manifest: str
    line: int
    reason: str
    raw: str


_DIED_ERROR = ("lease_until = NULL, error = 'the worker died ' || attempts || ' times while "
               "this item was in progress (crash, kill or out of memory)'")


def _marks(values: Sequence) -> str:
    """``?, ?, ...``: one SQL parameter per value."""
    return ", ".join("?" * len(values))


def _iso(now: float | None = None) -> str:
    t = datetime.now(timezone.utc) if now is None else datetime.fromtimestamp(now, timezone.utc)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JobQueue:
    """The items of one job folder (created on first use)."""

    def __init__(self, job_dir: str | os.PathLike):
        self.job_dir = Path(job_dir)
        self.job_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.job_dir / DB_NAME
        self.db = sqlite_utils.Database(self.path)
        conn = self.db.conn
        conn.isolation_level = None  # autocommit: every transaction below is explicit
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self.db.enable_wal()
        # FULL: a commit survives power loss too; commits are per batch, so it costs nothing.
        conn.execute("PRAGMA synchronous = FULL")
        with self.transaction():
            for statement in DDL:
                conn.execute(statement)
            have = {r[1] for r in conn.execute("PRAGMA table_info(items)")}
            for name, kind in ADDED_COLUMNS:
                if name not in have:
                    conn.execute(f"ALTER TABLE items ADD COLUMN {name} {kind}")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> JobQueue:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` (take the write lock now, not at the first write) ... COMMIT,
        or ROLLBACK on any exception, KeyboardInterrupt included.

        ``durable=False``: the commit is not synced to the disk (WAL with ``synchronous =
        NORMAL``). It survives the process (kill -9 included), not a power loss, and the next
        durable commit syncs it with its own: the WAL is one file, written in order. For
        commits whose loss in a power cut loses nothing (a claim: its items are simply still
        pending), each of which cost 40 ms of the model's thread on a GPU host's disk."""
        conn = self.db.conn
        if conn.in_transaction:  # a KeyboardInterrupt between BEGIN and `try` left one open
            conn.execute("ROLLBACK")
        if not durable:
            conn.execute("PRAGMA synchronous = NORMAL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            if not durable:
                conn.execute("PRAGMA synchronous = FULL")

    def _q(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.query(sql, params)]

    # ---- job settings ---------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        return {r["key"]: json.loads(r["value"]) for r in self._q("SELECT * FROM meta")}

    def ensure_meta(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Record the settings a job is started with; on resume, refuse different values.

        Keys already recorded must match (e.g. ``model``); new keys are added. Returns the
        recorded settings. Raises JobError naming each difference.
        """
        with self.transaction():
            recorded = self.meta()
            diffs = [(k, recorded[k], v) for k, v in settings.items()
                     if k in recorded and recorded[k] != v]
            if diffs:
                said = "; ".join(f"{k}={old!r} (now {new!r})" for k, old, new in diffs)
                hint = " ".join(f"--{k.replace('_', '-')} {old}" for k, old, _ in diffs)
                raise JobError(
                    f"{self.job_dir} was started with different settings: {said}. Resume it "
                    f"with the same settings ({hint}), or give another --job-dir to start a "
                    f"new job."
                )
            new = {k: v for k, v in settings.items() if k not in recorded}
            self.db.conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in new.items()],
            )
        return {**recorded, **new}

    def set_meta(self, values: dict[str, Any]) -> None:
        """Record ``values`` whatever was recorded before: labels such as ``model_name``
        (not settings that a resume must match), or a setting rewritten in a newer form."""
        with self.transaction():
            self.db.conn.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in values.items()],
            )

    # ---- filling the queue ---------------------------------------------------------------

    def enqueue(self, rows: Iterable[ManifestRow], *, strict: bool = True,
                batch_size: int = 5000, now: float | None = None) -> EnqueueResult:
        """Add manifest rows as pending items; rows whose id is already queued keep their state.

        Streams: rows are inserted ``batch_size`` at a time into a staging table, and all
        checks run in SQL, so memory stays flat for any manifest size. All-or-nothing: one
        transaction, so a kill or an error leaves the queue as it was.

        Rows repeating an id of an earlier row are skipped (the first one is kept), like
        the bad rows the manifest reports (``rows.problems``, collected while streaming);
        every skipped row is recorded in the ``skipped`` table with its line, reason and
        raw text, replacing what an earlier enqueue of the same manifest recorded. When
        ``strict``, any skipped row raises ManifestError instead (nothing is queued or
        recorded). Raises JobError when an id is already queued with a different path.
        """
        conn = self.db.conn
        source = str(getattr(rows, "path", "manifest"))
        key = os.path.abspath(source) if hasattr(rows, "path") else source
        with self.transaction():
            conn.execute("DELETE FROM skipped WHERE manifest = ?", (key,))

            def record(line: int, reason: str, raw: str) -> None:
                conn.execute("INSERT OR REPLACE INTO skipped (manifest, line, reason, raw) "
                             "VALUES (?, ?, ?, ?)", (key, line, reason, raw))

            sink = getattr(rows, "set_problem_sink", None)
            if sink is not None:
                sink(record)
            conn.execute(f"DROP TABLE IF EXISTS {STAGING}")
            conn.execute(STAGING_DDL)
            try:
                self.db[STAGING].insert_all(
                    ({"line": r.line, "id": r.id, "path": r.path, "language": r.language,
                      "extra": json.dumps(r.extra, ensure_ascii=False), "raw": r.raw}
                     for r in rows),
                    batch_size=batch_size,
                )
            finally:
                if sink is not None:
                    sink(None)
            conn.execute(f"CREATE INDEX {STAGING}_id ON {STAGING} (id)")
            problems = list(getattr(rows, "problems", []))
            n_problems = getattr(rows, "n_problems", len(problems))
            dups, n_dups = self._duplicates()
            if strict and (dups or n_problems):
                raise ManifestError(source, problems + dups, total=n_problems + n_dups)
            if n_dups:  # keep the first row of each id, record the others as skipped
                conn.execute(
                    f"""INSERT OR REPLACE INTO skipped (manifest, line, reason, raw)
                        SELECT ?, s.line, 'duplicate id ' || quote(s.id) || ' (first used on '
                               || 'line ' || (SELECT min(f.line) FROM {STAGING} AS f
                                              WHERE f.id = s.id) || ')', coalesce(s.raw, '')
                        {self._DUP_ROWS}""", (key,))
                conn.execute(f"DELETE FROM {STAGING} WHERE n IN (SELECT s.n {self._DUP_ROWS})")
            self._raise_on_conflicts()
            base = conn.execute("SELECT coalesce(max(seq), 0) FROM items").fetchone()[0]
            added = conn.execute(
                f"""INSERT INTO items (id, seq, path, language, extra, created_at)
                    SELECT id, ? + n, path, language, extra, ? FROM {STAGING} AS s
                    WHERE NOT EXISTS (SELECT 1 FROM items WHERE items.id = s.id)
                    ORDER BY n""",
                (base, _iso(now)),
            ).rowcount
            total = conn.execute(f"SELECT count(*) FROM {STAGING}").fetchone()[0]
            conn.execute(f"DROP TABLE {STAGING}")
        return EnqueueResult(added, total - added, sorted(problems + dups),
                             n_problems + n_dups)

    _DUP_ROWS = f"""FROM {STAGING} AS s WHERE EXISTS
            (SELECT 1 FROM {STAGING} AS e WHERE e.id = s.id AND e.n < s.n)"""

    def _duplicates(self) -> tuple[list[tuple[int, str]], int]:
        """Rows repeating an id seen earlier in the same manifest: (kept problems, count)."""
        first_line = f"(SELECT min(line) FROM {STAGING} AS f WHERE f.id = s.id)"
        dup_rows = self._DUP_ROWS
        count = self.db.conn.execute(f"SELECT count(*) {dup_rows}").fetchone()[0]
        found = self._q(f"SELECT line, id, {first_line} AS first {dup_rows} ORDER BY n LIMIT 1000")
        return [(d["line"], f"duplicate id {d['id']!r} (first used on line {d['first']})")
                for d in found], count

    def _raise_on_conflicts(self) -> None:
        join = f"FROM {STAGING} AS s JOIN items AS i ON i.id = s.id WHERE i.path != s.path"
        count = self.db.conn.execute(f"SELECT count(*) {join}").fetchone()[0]
        if not count:
            return
        shown = self._q(f"SELECT s.line, s.id, s.path, i.path AS queued {join} "
                        f"ORDER BY s.n LIMIT {MAX_REPORTED}")
        lines = [f"  line {c['line']}: id {c['id']!r} is queued for {c['queued']}, "
                 f"the manifest now says {c['path']}" for c in shown]
        if count > len(shown):
            lines.append(f"  ... and {count - len(shown)} more")
        raise JobError(
            f"{count} manifest row(s) reuse an id of this job for a different file:\n"
            + "\n".join(lines)
            + "\nGive those rows their own ids, or start a new job folder."
        )

    # ---- the worker's side ---------------------------------------------------------------

    def claim(self, n: int, *, owner: str | None = None, lease_s: float | None = None,
              max_attempts: int | None = None, now: float | None = None) -> list[Item]:
        """Atomically move up to ``n`` items (in manifest order) to running, counting an
        attempt for each, and return them in manifest order ([] when none).

        Without ``owner``: pending items only, with no lease. With ``owner`` and ``lease_s``:
        first running items of other owners whose lease has expired (their worker died or
        stalled), then pending ones, each leased to ``owner`` until now + ``lease_s``. An
        expired item taken over first gets its attempt back if its owner's log of begun items
        does not list it (:mod:`batchasr.queue.started`; once: the take-over makes it
        another owner's). One already claimed ``max_attempts`` times after that is failed
        instead of claimed again: it has probably been killing its workers (the same rule as
        :meth:`reset_running`).
        """
        if n <= 0:
            return []
        t = time.time() if now is None else now
        until = None if owner is None or lease_s is None else t + lease_s
        claim_sql = """UPDATE items SET status = 'running', attempts = attempts + 1,
                           started_at = ?, error = NULL, lease_owner = ?, lease_until = ?
                       WHERE id IN ({}) RETURNING *"""
        stamp = (_iso(now), owner, until)
        claimed: list[dict] = []
        # not synced: after a power cut an unsynced claim is undone whole (its items pending,
        # their attempts uncounted), and no result can be recorded without a synced commit
        with self.transaction(durable=False):
            if owner is not None:
                expired = self.db.conn.execute(  # never our own: we still have them
                    "SELECT id, lease_owner FROM items WHERE status = 'running' AND "
                    "lease_until < ? AND lease_owner IS NOT ? ORDER BY seq LIMIT ?",
                    (t, owner, n)).fetchall()
                self._give_back_unbegun_attempts(expired)
                ids = [i for i, _ in expired]
                if max_attempts is not None and ids:
                    self.db.conn.execute(
                        f"""UPDATE items SET status = 'failed', finished_at = ?, {_DIED_ERROR}
                            WHERE id IN ({_marks(ids)}) AND attempts >= ?""",
                        (_iso(now), *ids, max_attempts))
                if ids:
                    claimed += self._q(claim_sql.format(
                        f"SELECT id FROM items WHERE id IN ({_marks(ids)}) AND "
                        "status = 'running'"), (*stamp, *ids))
            if len(claimed) < n:
                claimed += self._q(claim_sql.format(
                    "SELECT id FROM items WHERE status = 'pending' ORDER BY seq LIMIT ?"),
                    (*stamp, n - len(claimed)))
        return sorted((Item.from_row(r) for r in claimed), key=lambda it: it.seq)

    def heartbeat(self, owner: str, *, lease_s: float, now: float | None = None) -> int:
        """Extend every lease ``owner`` holds to now + ``lease_s``; returns how many it holds."""
        t = time.time() if now is None else now
        with self.transaction(durable=False):  # a lease lost in a power cut was moot
            return self.db.conn.execute(
                "UPDATE items SET lease_until = ? WHERE status = 'running' AND lease_owner = ?",
                (t + lease_s, owner),
            ).rowcount

    def expire(self, owner: str) -> int:
        """End ``owner``'s leases now (the coordinator saw that worker die), so the others
        take its items over at once instead of after the lease time. Returns how many."""
        with self.transaction():
            return self.db.conn.execute(
                "UPDATE items SET lease_until = 0 WHERE status = 'running' AND lease_owner = ?",
                (owner,),
            ).rowcount

    def running_elsewhere(self, owner: str) -> int:
        """Running items not held by ``owner``: work another worker may still finish, or
        leave behind when it dies (then they become claimable when the lease expires)."""
        return self.db.conn.execute(
            "SELECT count(*) FROM items WHERE status = 'running' "
            "AND lease_owner IS NOT ?", (owner,),
        ).fetchone()[0]

    def complete(self, ids: Iterable[str], part: str, *, owner: str | None = None,
                 durations: dict[str, float] | None = None, now: float | None = None) -> int:
        """Mark running items done, with the part file holding their results, in one
        transaction, and return how many were marked. Call only after the part is durable.

        Without ``owner``: all or nothing; raises JobError (and changes nothing) if any item
        is not running, which would mean two runners on one job. With ``owner``: marks the
        items that ``owner`` still holds and skips the others (another worker took them over
        after this one's lease expired; their rows in ``part`` are ignored by the export)."""
        ids = list(ids)
        durations = durations or {}
        stamp = _iso(now)
        owned = "" if owner is None else " AND lease_owner = ?"
        with self.transaction():
            changed = sum(
                self.db.conn.execute(
                    f"""UPDATE items SET status = 'done', part = ?, finished_at = ?, error = NULL,
                           duration_s = coalesce(?, duration_s), lease_until = NULL
                       WHERE id = ? AND status = 'running'{owned}""",
                    (part, stamp, durations.get(i), i, *([] if owner is None else [owner])),
                ).rowcount
                for i in ids
            )
            if owner is None and changed != len(ids):
                raise JobError(f"complete(): {len(ids) - changed} of {len(ids)} items were "
                               "not running; is another process working on this job?")
        return changed

    def fail(self, item_id: str, error: str, *, owner: str | None = None,
             duration_s: float | None = None, now: float | None = None) -> bool:
        """Mark a running item failed with its error (kept until retry_failed); with
        ``owner``, only while that owner holds it."""
        with self.transaction():
            return self.db.conn.execute(
                """UPDATE items SET status = 'failed', error = ?, finished_at = ?,
                       duration_s = coalesce(?, duration_s), lease_until = NULL
                   WHERE id = ? AND status = 'running' AND (? IS NULL OR lease_owner = ?)""",
                (error, _iso(now), duration_s, item_id, owner, owner),
            ).rowcount == 1

    def release(self, ids: Iterable[str], *, owner: str | None = None) -> int:
        """Give running items back (pending, attempt not counted): the runner stopped
        before finishing them, through no fault of theirs. With ``owner``, only the items
        that owner still holds."""
        ids = list(ids)
        with self.transaction():
            return sum(
                self.db.conn.execute(
                    """UPDATE items SET status = 'pending', started_at = NULL,
                           attempts = max(attempts - 1, 0), lease_owner = NULL,
                           lease_until = NULL
                       WHERE id = ? AND status = 'running' AND (? IS NULL OR lease_owner = ?)""",
                    (i, owner, owner),
                ).rowcount
                for i in ids
            )

    def reset_running(self, *, max_attempts: int | None = None,
                      now: float | None = None) -> tuple[int, int]:
        """Startup recovery: items left running by a process that died go back to pending.

        An item its owner had claimed but not begun (not in the owner's log of begun items,
        :mod:`batchasr.queue.started`) first gets its attempt back: the kill was not its
        doing. With ``max_attempts``, an item that was already claimed that many times is
        marked failed instead: it has probably been killing the worker (a decoder crash,
        memory). Call only while holding the job lock, before any worker of it starts.
        Returns ``(requeued, failed)``.
        """
        with self.transaction():
            self._give_back_unbegun_attempts(self.db.conn.execute(
                "SELECT id, lease_owner FROM items WHERE status = 'running'").fetchall())
            failed = 0
            if max_attempts is not None:
                failed = self.db.conn.execute(
                    f"""UPDATE items SET status = 'failed', finished_at = ?, {_DIED_ERROR}
                       WHERE status = 'running' AND attempts >= ?""",
                    (_iso(now), max_attempts),
                ).rowcount
            requeued = self.db.conn.execute(
                "UPDATE items SET status = 'pending', started_at = NULL, lease_owner = NULL, "
                "lease_until = NULL WHERE status = 'running'"
            ).rowcount
        started.clear(self.job_dir)  # nothing of this job runs now: every log is spent
        return requeued, failed

    def _give_back_unbegun_attempts(self, items: Iterable[tuple[str, str | None]]) -> None:
        """In a transaction: one attempt less for each of ``items`` (running ``(id, lease
        owner)`` pairs) whose owner kept a log of the items it began and did not list it."""
        held: dict[str, list[str]] = {}
        for item_id, owner in items:
            if owner is not None:
                held.setdefault(owner, []).append(item_id)
        for owner, ids in held.items():
            listed = started.begun(self.job_dir, owner)
            if listed is not None:
                self.db.conn.executemany(
                    "UPDATE items SET attempts = attempts - 1 WHERE id = ? AND attempts > 0",
                    [(i,) for i in ids if i not in listed])

    def retry_failed(self) -> int:
        """Move every failed item back to pending with a fresh attempt count."""
        with self.transaction():
            return self.db.conn.execute(
                "UPDATE items SET status = 'pending', attempts = 0, error = NULL, "
                "finished_at = NULL, started_at = NULL WHERE status = 'failed'"
            ).rowcount

    # ---- reading -------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Items per state, every state present (0 when none)."""
        found = {r["status"]: r["n"] for r in
                 self._q("SELECT status, count(*) AS n FROM items GROUP BY status")}
        return {s: found.get(s, 0) for s in STATES}

    def live_counts(self, *, run_alive: bool = True, now: float | None = None) -> dict[str, int]:
        """Counts for a person: ``running`` only for items leased by a live worker (lease
        in the future, and ``run_alive``); running items whose lease expired or whose run
        died are counted in ``pending`` and as ``interrupted``; ``skipped`` manifest rows."""
        t = time.time() if now is None else now
        # one statement, so one snapshot: an item finished between two queries would be
        # counted as running by the first and not live by the second (a false interruption)
        found, live = {}, 0
        for status, n, leased in self.db.conn.execute(
                "SELECT status, count(*), sum(lease_until > ?) FROM items GROUP BY status",
                (t,)):
            found[status] = n
            if status == "running" and run_alive:
                live = int(leased or 0)
        counts = {s: found.get(s, 0) for s in STATES}
        interrupted = counts["running"] - live
        return {"pending": counts["pending"] + interrupted, "running": live,
                "done": counts["done"], "failed": counts["failed"],
                "interrupted": interrupted, "skipped": self.skipped_count()}

    def skipped_count(self) -> int:
        return self.db.conn.execute("SELECT count(*) FROM skipped").fetchone()[0]

    def skipped_rows(self, limit: int | None = None) -> list[SkippedRow]:
        """Manifest rows not queued, by manifest and line."""
        sql = "SELECT manifest, line, reason, raw FROM skipped ORDER BY manifest, line"
        params = [] if limit is None else [limit]
        if limit is not None:
            sql += " LIMIT ?"
        return [SkippedRow(*r) for r in self.db.conn.execute(sql, params)]

    def audio_seconds(self, statuses: Iterable[str], *, limit: int | None = None,
                      mean_s: float | None = None) -> tuple[float, int]:
        """``(seconds, unknown)``: the audio of the items in ``statuses`` (the first
        ``limit`` in manifest order), with items of unknown duration counted at ``mean_s``
        (default: the mean of the job's known durations); ``unknown`` counts those."""
        statuses = list(statuses)
        marks = ", ".join("?" * len(statuses))
        sql = (f"SELECT count(*) - count(duration_s), coalesce(sum(duration_s), 0) FROM "
               f"(SELECT duration_s FROM items WHERE status IN ({marks}) ORDER BY seq"
               + (" LIMIT ?)" if limit is not None else ")"))
        unknown, known = self.db.conn.execute(
            sql, statuses + ([] if limit is None else [limit])).fetchone()
        if mean_s is None:
            n, total = self.known_durations()
            mean_s = total / n if n else 0.0
        return float(known) + unknown * mean_s, unknown

    def done_seconds(self) -> float:
        """The audio of the done items whose duration is known (seconds)."""
        return float(self.db.conn.execute(
            "SELECT coalesce(sum(duration_s), 0) FROM items WHERE status = 'done'").fetchone()[0])

    def probe_durations(self, probe: Callable[[str], float], *, threads: int = 8,
                        batch: int = 512) -> int:
        """Store the duration of pending items not known yet, as ``probe(path)`` reads it
        from the file's header (``audio.probe``: no decoding), ``threads`` files at a time (a network share answers slowly, not
        serially), and store it; a file that cannot be probed keeps NULL (it fails when it
        is run). Returns how many were stored."""
        from concurrent.futures import ThreadPoolExecutor

        def one(item_id_path):
            try:
                d = probe(item_id_path[1])
            except Exception:  # missing, not audio, ...: the reader will say why
                return None
            return (d, item_id_path[0]) if d > 0 else None

        stored, last = 0, -1
        with ThreadPoolExecutor(max(1, threads), thread_name_prefix="batchasr-probe") as pool:
            while True:
                todo = self.db.conn.execute(
                    "SELECT id, path, seq FROM items WHERE status = 'pending' AND duration_s "
                    "IS NULL AND seq > ? ORDER BY seq LIMIT ?", (last, batch)).fetchall()
                if not todo:
                    return stored
                last = todo[-1][2]
                found = [r for r in pool.map(one, [(t[0], t[1]) for t in todo]) if r]
                if found:
                    with self.transaction():
                        self.db.conn.executemany(
                            "UPDATE items SET duration_s = ? WHERE id = ? AND duration_s IS NULL",
                            found)
                    stored += len(found)

    def failed(self, limit: int | None = None) -> list[Item]:
        return list(self.items("failed", limit=limit))

    def items(self, status: str | None = None, *, limit: int | None = None) -> Iterator[Item]:
        """Items in manifest order, optionally of one state (streams)."""
        where, params = ("WHERE status = ?", [status]) if status else ("", [])
        sql = f"SELECT * FROM items {where} ORDER BY seq"
        if limit is not None:
            sql, params = sql + " LIMIT ?", params + [limit]
        for r in self.db.query(sql, params):
            yield Item.from_row(r)

    def get(self, item_id: str) -> Item | None:
        rows = self._q("SELECT * FROM items WHERE id = ?", [item_id])
        return Item.from_row(rows[0]) if rows else None

    def known_durations(self) -> tuple[int, float]:
        """``(count, total seconds)`` of items whose duration is known (for ETA estimates)."""
        n, total = self.db.conn.execute(
            "SELECT count(duration_s), coalesce(sum(duration_s), 0) FROM items"
        ).fetchone()
        return n, float(total)
