"""The node's memory: a small SQLite database under --state (`node.sqlite`).

It holds the number of the last Orthanc change read and one row per series taken: its state (queued ->
downloading -> predicting -> uploading -> done, or failed), tries, the reason of the last failure, the times
and the sCT written. Every change is one SQLite transaction, so a `kill -9` leaves either the old or the new
row: reading a batch of changes and queueing its series commit together (nothing skipped), and a series
killed mid-way is still unfinished and is taken again (its sCT UIDs are derived, so nothing is doubled).
"""
from __future__ import annotations

import contextlib
import datetime
import sqlite3
from pathlib import Path

UNFINISHED = ("queued", "downloading", "predicting", "uploading")
SCHEMA = """
CREATE TABLE IF NOT EXISTS progress (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS series (
    orthanc_id TEXT PRIMARY KEY, series_uid TEXT, description TEXT, instances INTEGER,
    state TEXT NOT NULL, tries INTEGER NOT NULL DEFAULT 0, reason TEXT,
    received TEXT, queued TEXT, started TEXT, sent TEXT, seconds REAL,
    sct_series_uid TEXT, sct_orthanc_id TEXT, sha256 TEXT);
"""


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class NodeState:
    def __init__(self, folder: str | Path):
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.path = Path(folder) / "node.sqlite"
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.executescript(SCHEMA)

    @contextlib.contextmanager
    def transaction(self):
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

    # ---------------------------------------------------------------------------------------- changes feed
    def last_change(self) -> int:
        row = self.db.execute("SELECT value FROM progress WHERE key = 'last_change'").fetchone()
        return int(row[0]) if row else 0

    def enqueue(self, series: list[dict], last_change: int) -> None:
        """Queue `series` ({orthanc_id, series_uid, description, instances, received}) and move the change
        index to `last_change`, in one transaction. A finished series comes back only with another number of
        instances (more arrived); an unfinished one stays where it is."""
        with self.transaction() as db:
            for item in series:
                row = db.execute("SELECT state, instances FROM series WHERE orthanc_id = ?",
                                 (item["orthanc_id"],)).fetchone()
                if row is not None and (row["state"] in UNFINISHED or row["instances"] == item["instances"]):
                    continue
                db.execute("INSERT OR REPLACE INTO series (orthanc_id, series_uid, description, instances, state, "
                           "tries, received, queued) VALUES (?, ?, ?, ?, 'queued', 0, ?, ?)",
                           (item["orthanc_id"], item["series_uid"], item["description"], item["instances"],
                            item["received"], now()))
            db.execute("INSERT OR REPLACE INTO progress (key, value) VALUES ('last_change', ?)", (int(last_change),))

    # ----------------------------------------------------------------------------------------- one series
    def exhausted(self, max_tries: int) -> list[sqlite3.Row]:
        """Unfinished series that already used `max_tries` tries (a worker killed while on them counts)."""
        marks = ",".join("?" * len(UNFINISHED))
        return self.db.execute(f"SELECT * FROM series WHERE state IN ({marks}) AND tries >= ? ORDER BY queued",
                               (*UNFINISHED, max_tries)).fetchall()

    def next_series(self) -> sqlite3.Row | None:
        """The oldest unfinished series (one a killed worker left mid-way first)."""
        marks = ",".join("?" * len(UNFINISHED))
        return self.db.execute(f"SELECT * FROM series WHERE state IN ({marks}) ORDER BY state = 'queued', queued "
                               f"LIMIT 1", UNFINISHED).fetchone()

    def start(self, orthanc_id: str) -> str:
        """A new try at the series; returns its start time."""
        started = now()
        with self.transaction() as db:
            db.execute("UPDATE series SET state = 'downloading', tries = tries + 1, started = ? WHERE orthanc_id = ?",
                       (started, orthanc_id))
        return started

    def stage(self, orthanc_id: str, state: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE series SET state = ? WHERE orthanc_id = ?", (state, orthanc_id))

    def undo_try(self, orthanc_id: str) -> None:
        """Orthanc went away: the try does not count, the series waits in the queue."""
        with self.transaction() as db:
            db.execute("UPDATE series SET state = 'queued', tries = MAX(tries - 1, 0) WHERE orthanc_id = ?",
                       (orthanc_id,))

    def retry_later(self, orthanc_id: str, reason: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE series SET state = 'queued', reason = ? WHERE orthanc_id = ?", (reason, orthanc_id))

    def fail(self, orthanc_id: str, reason: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE series SET state = 'failed', reason = ?, sent = NULL WHERE orthanc_id = ?",
                       (reason, orthanc_id))

    def done(self, orthanc_id: str, **values) -> None:
        """Record the sCT sent (`values`: sent, seconds, sct_series_uid, sct_orthanc_id, sha256; others ignored)."""
        keys = ("sent", "seconds", "sct_series_uid", "sct_orthanc_id", "sha256")
        with self.transaction() as db:
            db.execute(f"UPDATE series SET state = 'done', reason = NULL, {', '.join(f'{k} = ?' for k in keys)} "
                       f"WHERE orthanc_id = ?", (*[values.get(k) for k in keys], orthanc_id))

    # ------------------------------------------------------------------------------------------- reading
    def rows(self) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM series ORDER BY queued").fetchall()
