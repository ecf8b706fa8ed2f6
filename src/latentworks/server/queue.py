"""Persistent job queue and history in one SQLite table (stdlib sqlite3, WAL).

Each job is a row in state "pending", "running" or "done". A restart loses nothing: pending jobs stay
pending, finished ones stay in history, and a job found "running" when the store opens (the server died
while running it) is marked done with status "error" and a message saying it was interrupted by the
restart; :meth:`JobStore.requeue` puts any finished job back at the end of the queue.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latentworks.server.inputs import MAX_JSON_DEPTH, json_problem

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    prompt_id TEXT PRIMARY KEY,
    number REAL NOT NULL,
    state TEXT NOT NULL,              -- pending | running | done
    status_str TEXT,                  -- success | error | interrupted (when done)
    prompt TEXT NOT NULL,
    extra_data TEXT NOT NULL,
    outputs_to_execute TEXT NOT NULL,
    outputs TEXT NOT NULL DEFAULT '{}',
    messages TEXT NOT NULL DEFAULT '[]',
    created REAL NOT NULL,
    started REAL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS jobs_state_number ON jobs (state, number);
CREATE INDEX IF NOT EXISTS jobs_state_finished ON jobs (state, finished);
"""

log = logging.getLogger("latentworks.server")

RESTART_MESSAGE = (
    "interrupted by server restart: the server stopped while this job was running; "
    'requeue it with POST /queue {"requeue": ["<prompt_id>"]}'
)


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)


def _loads(text: Any, kind: type, what: str) -> Any:
    """Decode one stored JSON column, checking its type; raises ValueError saying which column is bad."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError, RecursionError) as e:
        raise ValueError(f"column {what} is not valid JSON ({str(e)[:80]})") from e
    if not isinstance(value, kind):
        raise ValueError(f"column {what} holds a {type(value).__name__}, expected a {kind.__name__}")
    problem = json_problem(value, MAX_JSON_DEPTH + 8)  # stored values carry a few levels of our own
    if problem is not None and problem[0] == "depth":
        raise ValueError(f"column {what} is nested too deeply to be sent back as JSON")
    return value


class JobStoreUnavailable(ValueError):
    """The database could not be opened for a reason other than damage (locked, permissions, I/O).
    A ValueError so that ``latentworks serve`` prints the message without a traceback."""


class DamagedDatabase(Exception):
    """The database file failed its start-up check (reason in the message)."""


_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


def _is_damage(e: Exception) -> bool:
    """True for a damaged file (our check, SQLITE_CORRUPT, SQLITE_NOTADB); False for a busy, locked,
    read-only or unreadable one, which must not be moved aside."""
    if isinstance(e, DamagedDatabase):
        return True
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    return not isinstance(e, sqlite3.OperationalError)


@dataclass(frozen=True)
class Job:
    prompt_id: str
    number: float
    prompt: dict
    extra_data: dict
    outputs_to_execute: list[str]

    @property
    def client_id(self) -> str | None:
        cid = self.extra_data.get("client_id")
        return cid if isinstance(cid, str) else None

    def queue_entry(self) -> list[Any]:
        """ComfyUI's queue item: [number, prompt_id, prompt, extra_data, outputs_to_execute]."""
        number = int(self.number) if float(self.number).is_integer() else self.number
        return [number, self.prompt_id, self.prompt, self.extra_data, self.outputs_to_execute]


class JobStore:
    """Thread-safe queue + history backed by ``path`` (created if missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self.recovered: list[str] = []
        self.moved_aside: list[dict[str, str]] = []  # {"path": where the damaged file went, "reason": why}
        self.damaged_rows: dict[str, str] = {}  # prompt_id -> why the row could not be decoded
        self.open()

    def open(self) -> None:
        """Connect (no-op if open) and mark jobs left 'running' by a previous process as failed.

        A database that fails the start-up check (zero bytes, not a database, ``PRAGMA quick_check`` not
        'ok', or unreadable schema) is moved aside (renamed ``queue.sqlite3.damaged-<UTC time>``, with its
        -wal/-shm files; nothing is deleted), logged, listed in :attr:`moved_aside`, and a new one started.
        """
        with self._lock:
            if self._db is not None:
                return
            try:
                self._connect(check=True)
            except (sqlite3.DatabaseError, DamagedDatabase) as e:
                self.close()
                if not _is_damage(e):  # locked, no permission, I/O error: the file may be fine; leave it
                    raise JobStoreUnavailable(
                        f"could not open the job database {self.path}: {e}. Is another server using this "
                        "data folder, or is it not writable? The file was left untouched."
                    ) from e
                self._move_aside(str(e))
                self._connect(check=False)

    def _connect(self, *, check: bool) -> None:
        if check and self.path.exists() and self.path.stat().st_size == 0:
            raise DamagedDatabase("the file is empty (0 bytes): its history was lost before this start")
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        if check:
            rows = self._conn.execute("PRAGMA quick_check").fetchall()
            if rows != [("ok",)]:
                found = "; ".join(str(r[0]) for r in rows[:3])
                raise DamagedDatabase(f"PRAGMA quick_check found damage: {found}")
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        self.recovered = self._recover()

    def _move_aside(self, reason: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        n = 1
        while target.exists():
            target = self.path.with_name(f"{self.path.name}.damaged-{stamp}-{n}")
            n += 1
        for suffix in ("", "-wal", "-shm"):
            src = self.path.with_name(self.path.name + suffix)
            if src.exists():
                src.rename(target.with_name(target.name + suffix))
        self.moved_aside.append({"path": str(target), "reason": reason})
        log.error(
            "the job database %s is damaged (%s). It was moved aside to %s (nothing deleted) and a new, empty "
            "queue and history started. To look at the old one: sqlite3 %s '.recover' | sqlite3 recovered.sqlite3",
            self.path,
            reason,
            target,
            target,
        )

    def report(self) -> dict[str, Any]:
        """What the store skipped or moved aside, for /system_stats."""
        return {
            "damaged_rows": len(self.damaged_rows),
            "damaged_row_ids": sorted(self.damaged_rows)[:100],
            "moved_aside": list(self.moved_aside),
        }

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"the job store {self.path} is closed; call open() first")
        return self._db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- internals -------------------------------------------------------------------------------

    def _recover(self) -> list[str]:
        with self._lock:
            ids = [r[0] for r in self._conn.execute("SELECT prompt_id FROM jobs WHERE state='running'")]
            now = time.time()
            for prompt_id in ids:
                msg = {
                    "prompt_id": prompt_id,
                    "node_id": None,
                    "node_type": None,
                    "executed": [],
                    "exception_message": RESTART_MESSAGE,
                    "exception_type": "ServerRestart",
                    "traceback": [],
                    "current_inputs": {},
                    "current_outputs": {},
                    "timestamp": int(now * 1000),
                }
                self._conn.execute(
                    "UPDATE jobs SET state='done', status_str='error', messages=?, finished=? WHERE prompt_id=?",
                    (_dumps([["execution_error", msg]]), now, prompt_id),
                )
            return ids

    def _job(self, row: tuple) -> Job:
        """Raises ValueError if a column cannot be decoded."""
        if not isinstance(row[0], str) or isinstance(row[1], bool) or not isinstance(row[1], int | float):
            raise ValueError("prompt_id or number has the wrong type")
        outputs = _loads(row[4], list, "outputs_to_execute")
        return Job(
            prompt_id=row[0],
            number=row[1],
            prompt=_loads(row[2], dict, "prompt"),
            extra_data=_loads(row[3], dict, "extra_data"),
            outputs_to_execute=[str(o) for o in outputs],
        )

    def _damaged(self, prompt_id: Any, reason: str) -> None:
        """Record (and log once) a row that cannot be decoded; it is skipped, not fatal."""
        key = str(prompt_id)
        if key not in self.damaged_rows:
            log.warning("job %s in %s cannot be read and is skipped: %s", key, self.path, reason)
        self.damaged_rows[key] = reason

    _JOB_COLS = "prompt_id, number, prompt, extra_data, outputs_to_execute"

    # -- queue -----------------------------------------------------------------------------------

    def add(
        self,
        prompt_id: str,
        prompt: dict,
        extra_data: dict,
        outputs_to_execute: list[str],
        *,
        front: bool = False,
        number: float | None = None,
    ) -> float:
        """Queue a job; returns its number (the queue is ordered by number). Raises KeyError on a duplicate id."""
        with self._lock:
            if number is None:
                if front:
                    row = self._conn.execute("SELECT MIN(number) FROM jobs WHERE state='pending'").fetchone()
                    number = (row[0] if row[0] is not None else self._next_number()) - 1
                else:
                    number = self._next_number()
            try:
                self._conn.execute(
                    "INSERT INTO jobs (prompt_id, number, state, prompt, extra_data, outputs_to_execute, created) "
                    "VALUES (?, ?, 'pending', ?, ?, ?, ?)",
                    (
                        prompt_id,
                        number,
                        _dumps(prompt),
                        _dumps(extra_data),
                        _dumps(outputs_to_execute),
                        time.time(),
                    ),
                )
            except sqlite3.IntegrityError as e:
                raise KeyError(f"a job with prompt_id {prompt_id!r} already exists") from e
            return number

    def _next_number(self) -> float:
        row = self._conn.execute("SELECT MAX(number) FROM jobs").fetchone()
        return float(int(row[0]) + 1) if row[0] is not None else 0.0

    def claim_next(self) -> Job | None:
        """Mark the first pending job running and return it (None if the queue is empty). A pending row that
        cannot be decoded is marked done with status 'error' (and recorded in :attr:`damaged_rows`)."""
        with self._lock:
            while True:
                row = self._conn.execute(
                    f"SELECT {self._JOB_COLS} FROM jobs WHERE state='pending' ORDER BY number LIMIT 1"
                ).fetchone()
                if row is None:
                    return None
                try:
                    job = self._job(row)
                except ValueError as e:
                    self._damaged(row[0], str(e))
                    self._conn.execute(
                        "UPDATE jobs SET state='done', status_str='error', finished=? WHERE prompt_id=?",
                        (time.time(), row[0]),
                    )
                    continue
                self._conn.execute(
                    "UPDATE jobs SET state='running', started=? WHERE prompt_id=?", (time.time(), row[0])
                )
                return job

    def finish(self, prompt_id: str, status_str: str, outputs: dict, messages: list) -> None:
        with self._lock:
            self._conn.execute(
                "UPDATE jobs SET state='done', status_str=?, outputs=?, messages=?, finished=? WHERE prompt_id=?",
                (status_str, _dumps(outputs), _dumps(messages), time.time(), prompt_id),
            )

    def jobs(self, state: str) -> list[Job]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {self._JOB_COLS} FROM jobs WHERE state=? ORDER BY number", (state,)
            ).fetchall()
        jobs = []
        for row in rows:
            try:
                jobs.append(self._job(row))
            except ValueError as e:
                self._damaged(row[0], str(e))
        return jobs

    def times(self) -> dict[str, tuple[float, float | None, float | None]]:
        """prompt_id -> (created, started, finished), seconds since the epoch, for every job (the Jobs API)."""
        with self._lock:
            rows = self._conn.execute("SELECT prompt_id, created, started, finished FROM jobs").fetchall()
        return {
            str(r[0]): (
                float(r[1]),
                None if r[2] is None else float(r[2]),
                None if r[3] is None else float(r[3]),
            )
            for r in rows
            if isinstance(r[1], int | float)
        }

    def pending_count(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM jobs WHERE state='pending'").fetchone()[0]

    def state_of(self, prompt_id: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT state FROM jobs WHERE prompt_id=?", (prompt_id,)).fetchone()
        return row[0] if row else None

    def delete_pending(self, ids: Iterable[str] | None = None) -> int:
        """Remove pending jobs (all of them when ``ids`` is None); running/finished jobs are untouched."""
        with self._lock:
            if ids is None:
                return self._conn.execute("DELETE FROM jobs WHERE state='pending'").rowcount
            return sum(
                int(
                    self._conn.execute(
                        "DELETE FROM jobs WHERE state='pending' AND prompt_id=?", (i,)
                    ).rowcount
                )
                for i in ids
            )

    def requeue(self, ids: Iterable[str]) -> list[str]:
        """Put finished jobs back at the end of the queue (their old result is dropped); returns those moved."""
        moved = []
        with self._lock:
            for prompt_id in ids:
                number = self._next_number()
                n = self._conn.execute(
                    "UPDATE jobs SET state='pending', status_str=NULL, outputs='{}', messages='[]', number=?, "
                    "started=NULL, finished=NULL WHERE prompt_id=? AND state='done'",
                    (number, prompt_id),
                ).rowcount
                if n:
                    moved.append(prompt_id)
        return moved

    # -- history ---------------------------------------------------------------------------------

    def history(self, max_items: int | None = None, prompt_id: str | None = None) -> dict[str, dict]:
        """Finished jobs in ComfyUI's history shape, oldest first; the newest ``max_items`` if given."""
        sql = (
            "SELECT prompt_id, number, prompt, extra_data, outputs_to_execute, status_str, outputs, messages "
            "FROM jobs WHERE state='done'"
        )
        args: tuple = ()
        if prompt_id is not None:
            sql += " AND prompt_id=?"
            args = (prompt_id,)
        sql += " ORDER BY finished DESC, number DESC"
        if max_items is not None:
            sql += " LIMIT ?"
            args += (min(max(0, int(max_items)), 2**62),)  # SQLite integers are 64-bit
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        out: dict[str, dict] = {}
        for row in reversed(rows):
            try:
                job = self._job(row[:5])
                outputs = _loads(row[6], dict, "outputs")
                messages = _loads(row[7], list, "messages")
            except ValueError as e:
                self._damaged(row[0], str(e))
                continue
            status_str = row[5] if isinstance(row[5], str) else None
            status: dict[str, Any] = {
                "status_str": status_str,
                "completed": status_str == "success",
                "messages": messages,
            }
            if any(
                isinstance(m, list)
                and len(m) == 2
                and m[0] == "execution_error"
                and isinstance(m[1], dict)
                and m[1].get("exception_type") == "ServerRestart"
                for m in messages
            ):
                status["message"] = RESTART_MESSAGE
            out[job.prompt_id] = {
                "prompt": job.queue_entry(),
                "outputs": outputs,
                "status": status,
                "meta": {},
            }
        return out

    def delete_history(self, ids: Iterable[str] | None = None) -> int:
        with self._lock:
            if ids is None:
                return self._conn.execute("DELETE FROM jobs WHERE state='done'").rowcount
            return sum(
                self._conn.execute("DELETE FROM jobs WHERE state='done' AND prompt_id=?", (i,)).rowcount
                for i in ids
            )
