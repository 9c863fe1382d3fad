"""The results store: SQLite in WAL mode, one row per cell, keyed by a content hash.

Cells are inserted once (INSERT OR IGNORE on the key) in a single transaction, so a
process killed at any moment leaves either the whole cell or nothing, and two scorers on
one store never duplicate a cell. Large per-cell payloads (adversarial audio) are files
in `artifacts/`, written to a temporary name and renamed before the row that points at
them is committed. A `claims` table lets concurrent scorers skip work another one is
doing; a claim older than its lease is free again (its owner died).

A new store records its schema version in `meta`; a store without one (written before
versions) is read when its tables have the columns this code reads. A store that cannot be
read (not SQLite, another schema, a cell whose metrics do not parse) raises StoreError naming
the file, and is never changed: it is checked, read-only, before anything writes to it.
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from contextlib import closing, contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,          -- attack | defense | clean | transfer
    attack TEXT, budget TEXT, defense TEXT, model TEXT, source_model TEXT,
    split TEXT, seed_tag TEXT, profile TEXT,
    metrics TEXT NOT NULL,       -- JSON
    error TEXT,
    artifact TEXT,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS cells_kind ON cells(kind);
CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY, owner TEXT NOT NULL, expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT);
"""

COLUMNS = ("key", "kind", "attack", "budget", "defense", "model", "source_model", "split",
           "seed_tag", "profile", "metrics", "error", "artifact", "created")
TABLES = {"cells": COLUMNS, "claims": ("key", "owner", "expires"), "meta": ("name", "value")}
SCHEMA_VERSION = 1          # raise it when the tables change (and read the older ones)
VERSION = "schema_version"  # its name in meta; not part of meta() (the board's meta)


class StoreError(ValueError):
    """A results store that cannot be read; the message names its file and what is wrong."""


class ResultsStore:
    _checked = False   # the file's schema was checked (subclasses may open without __init__)

    def __init__(self, root):
        self.root = Path(root)
        self.artifacts = self.root / "artifacts"
        self.path = self.root / "results.sqlite"
        self.owner = _owner_id(os.getpid())
        new = True
        if self.path.exists():   # checked read-only: a store we cannot read is left as it is
            with self._errors(), closing(sqlite3.connect(
                    f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=60)) as db:
                new = not self._check(db, empty_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        self.artifacts.mkdir(exist_ok=True)
        if new:   # one transaction: a concurrent opener sees no tables or all of them
            stamp = f"INSERT OR IGNORE INTO meta VALUES ('{VERSION}', '{SCHEMA_VERSION}');"
            with self._errors(), self._connect() as db:
                db.executescript(f"BEGIN IMMEDIATE;{SCHEMA}{stamp}COMMIT;")
        self._checked = True

    @contextmanager
    def _errors(self):
        """SQLite's errors as StoreError naming the file (a programming error stays itself)."""
        try:
            yield
        except sqlite3.ProgrammingError:
            raise
        except sqlite3.DatabaseError as e:
            what = "not a results store: " if "not a database" in str(e) else ""
            raise StoreError(f"{self.path}: {what}{e}") from None

    def _check(self, db, empty_ok: bool = False) -> bool:
        """StoreError unless the store's tables are the ones this code reads; False for a
        file with no tables at all (a new store: allowed when empty_ok)."""
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables and empty_ok:
            return False
        old = f"{self.path}: results store of an older or unknown schema"
        missing_tables = [t for t in TABLES if t not in tables]
        if missing_tables:
            raise StoreError(f"{old}: no table {', '.join(missing_tables)}")
        row = db.execute("SELECT value FROM meta WHERE name=?", (VERSION,)).fetchone()
        if row is not None and str(row[0]) != str(SCHEMA_VERSION):
            found = str(row[0])
            if not found.isdigit():
                raise StoreError(f"{self.path}: results store of an unknown schema version "
                                 f"({found[:40]!r})")
            newer = " (a newer arena wrote it)" if int(found) > SCHEMA_VERSION else ""
            raise StoreError(f"{self.path}: results store of schema version {found}{newer}; this "
                             f"arena reads version {SCHEMA_VERSION}")
        for table, columns in TABLES.items():
            have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
            missing = [c for c in columns if c not in have]
            if missing:
                raise StoreError(f"{old}: table {table} has no column {', '.join(missing)}")
        return True

    @contextmanager
    def _db(self, write: bool = True):
        """A connection to the store, checked on first use; SQLite errors name the file."""
        with self._errors(), self._connect(write) as db:
            if not self._checked:
                self._check(db)
                self._checked = True
            yield db

    @contextmanager
    def _connect(self, write: bool = True):
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            if write:   # switching to WAL rewrites the file's header: a reader leaves it as it is
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=60000")
            yield db
        finally:
            db.close()

    # ---------------------------------------------------------------- cells
    def has(self, key: str) -> bool:
        with self._db(write=False) as db:
            return db.execute("SELECT 1 FROM cells WHERE key=?", (key,)).fetchone() is not None

    def get(self, key: str) -> dict | None:
        with self._db(write=False) as db:
            row = db.execute(f"SELECT {', '.join(COLUMNS)} FROM cells WHERE key=?", (key,)).fetchone()
        return _row(self.path, row) if row else None

    def put(self, key: str, kind: str, metrics: dict, *, error: str | None = None,
            artifact: str | None = None, **axes) -> bool:
        """Insert a finished cell; returns False if it was already there (never duplicates)."""
        values = dict(key=key, kind=kind, metrics=json.dumps(metrics, sort_keys=True),
                      error=error, artifact=artifact, created=time.time(),
                      **{k: axes.get(k) for k in ("attack", "budget", "defense", "model",
                                                  "source_model", "split", "seed_tag", "profile")})
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            cur = db.execute(f"INSERT OR IGNORE INTO cells ({', '.join(COLUMNS)}) VALUES "
                             f"({', '.join('?' for _ in COLUMNS)})", [values[c] for c in COLUMNS])
            db.execute("DELETE FROM claims WHERE key=?", (key,))
            db.execute("COMMIT")
            return cur.rowcount == 1

    def cells(self, kind: str | None = None, **where) -> list[dict]:
        clauses, args = [], []
        if kind:
            clauses.append("kind=?")
            args.append(kind)
        for k, v in where.items():
            if v is not None:
                clauses.append(f"{k}=?")
                args.append(v)
        sql = f"SELECT {', '.join(COLUMNS)} FROM cells"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        with self._db(write=False) as db:
            return [_row(self.path, r) for r in db.execute(sql + " ORDER BY key", args)]

    def count(self) -> int:
        with self._db(write=False) as db:
            return db.execute("SELECT COUNT(*) FROM cells").fetchone()[0]

    # ---------------------------------------------------------------- claims
    def claim(self, key: str, lease_s: float = 3600) -> bool:
        """Take a cell to compute; False if it is done or another live scorer holds it."""
        now = time.time()
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                if db.execute("SELECT 1 FROM cells WHERE key=?", (key,)).fetchone():
                    return False
                row = db.execute("SELECT owner, expires FROM claims WHERE key=?", (key,)).fetchone()
                if row and row[0] != self.owner and row[1] > now and _owner_alive(row[0]):
                    return False
                db.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?)",
                           (key, self.owner, now + lease_s))
                return True
            finally:
                db.execute("COMMIT")

    def release(self, key: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM claims WHERE key=? AND owner=?", (key, self.owner))

    def release_all(self) -> None:
        """Drop every claim this scorer holds (after a job it could not finish)."""
        with self._db() as db:
            db.execute("DELETE FROM claims WHERE owner=?", (self.owner,))

    # ---------------------------------------------------------------- meta and artifacts
    def set_meta(self, name: str, value) -> None:
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, json.dumps(value)))

    def meta(self) -> dict:
        with self._db(write=False) as db:
            rows = db.execute("SELECT name, value FROM meta WHERE name!=?", (VERSION,)).fetchall()
        out = {}
        for name, value in rows:
            try:
                out[name] = json.loads(value)
            except (TypeError, ValueError, RecursionError) as e:
                raise StoreError(f"{self.path}: meta {name} is unreadable ({_reason(e)})") from None
        return out

    def has_artifact(self, name: str) -> bool:
        return (self.artifacts / name).is_file()

    def artifact_path(self, key: str) -> Path:
        return self.artifacts / f"{key}.safetensors"

    def write_waves(self, key: str, waves: dict[str, torch.Tensor]) -> str:
        """Store a cell's audio (utterance id -> 1-D float tensor); returns the file name."""
        ids = list(waves)
        flat = torch.cat([waves[u].float().flatten() for u in ids]) if ids else torch.zeros(0)
        return self.write_artifact(key, {
            "audio": flat, "lengths": torch.tensor([len(waves[u]) for u in ids], dtype=torch.long),
            "ids": torch.tensor(list(json.dumps(ids).encode()), dtype=torch.uint8)})

    def read_waves(self, name: str) -> dict[str, np.ndarray]:
        tensors = self.read_artifact(name)
        ids = json.loads(bytes(tensors["ids"].tolist()).decode())
        out, start = {}, 0
        for uid, n in zip(ids, tensors["lengths"].tolist()):
            out[uid] = tensors["audio"][start:start + n].numpy()
            start += n
        return out

    def write_artifact(self, key: str, tensors: dict) -> str:
        path = self.artifact_path(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, path)
        return path.name

    def read_artifact(self, name: str) -> dict:
        return load_file(str(self.artifacts / name))


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' when unknown): with the pid it
    names one process, even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _owner_id(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def _owner_alive(owner: str) -> bool:
    """False when the claim's owner is a process on this host that no longer runs (killed
    scorer): its cells are free at once instead of after the lease. Other hosts: trust the
    lease."""
    host, _, rest = owner.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    return _owner_id(int(pid)) == owner if started else Path(f"/proc/{pid}").exists()


def _reason(e: Exception) -> str:
    return e.msg if isinstance(e, json.JSONDecodeError) else f"{type(e).__name__}: {e}"[:120]


def _row(path: Path, row) -> dict:
    d = dict(zip(COLUMNS, row))
    try:
        d["metrics"] = json.loads(d["metrics"])
    except (TypeError, ValueError, RecursionError) as e:
        raise StoreError(f"{path}: cell {d['key']} has unreadable metrics ({_reason(e)})") from None
    if not isinstance(d["metrics"], dict):
        raise StoreError(f"{path}: cell {d['key']} has unreadable metrics (not a JSON object: "
                         f"{type(d['metrics']).__name__})")
    return d
