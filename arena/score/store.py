"""The results store: SQLite in WAL mode, one row per cell, keyed by a content hash.

Cells are inserted once (INSERT OR IGNORE on the key) in a single transaction, so a
process killed at any moment leaves either the whole cell or nothing, and two scorers on
one store never duplicate a cell. Large per-cell payloads (adversarial audio) are files
in `artifacts/`, written to a temporary name and renamed before the row that points at
them is committed. A `claims` table lets concurrent scorers skip work another one is
doing; a claim older than its lease is free again (its owner died).
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from contextlib import contextmanager
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


class ResultsStore:
    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.artifacts = self.root / "artifacts"
        self.artifacts.mkdir(exist_ok=True)
        self.path = self.root / "results.sqlite"
        self.owner = _owner_id(os.getpid())
        with self._connect() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self):
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=60000")
            yield db
        finally:
            db.close()

    # ---------------------------------------------------------------- cells
    def has(self, key: str) -> bool:
        with self._connect() as db:
            return db.execute("SELECT 1 FROM cells WHERE key=?", (key,)).fetchone() is not None

    def get(self, key: str) -> dict | None:
        with self._connect() as db:
            row = db.execute(f"SELECT {', '.join(COLUMNS)} FROM cells WHERE key=?", (key,)).fetchone()
        return _row(row) if row else None

    def put(self, key: str, kind: str, metrics: dict, *, error: str | None = None,
            artifact: str | None = None, **axes) -> bool:
        """Insert a finished cell; returns False if it was already there (never duplicates)."""
        values = dict(key=key, kind=kind, metrics=json.dumps(metrics, sort_keys=True),
                      error=error, artifact=artifact, created=time.time(),
                      **{k: axes.get(k) for k in ("attack", "budget", "defense", "model",
                                                  "source_model", "split", "seed_tag", "profile")})
        with self._connect() as db:
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
        with self._connect() as db:
            return [_row(r) for r in db.execute(sql + " ORDER BY key", args)]

    def count(self) -> int:
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM cells").fetchone()[0]

    # ---------------------------------------------------------------- claims
    def claim(self, key: str, lease_s: float = 3600) -> bool:
        """Take a cell to compute; False if it is done or another live scorer holds it."""
        now = time.time()
        with self._connect() as db:
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
        with self._connect() as db:
            db.execute("DELETE FROM claims WHERE key=? AND owner=?", (key, self.owner))

    def release_all(self) -> None:
        """Drop every claim this scorer holds (after a job it could not finish)."""
        with self._connect() as db:
            db.execute("DELETE FROM claims WHERE owner=?", (self.owner,))

    # ---------------------------------------------------------------- meta and artifacts
    def set_meta(self, name: str, value) -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, json.dumps(value)))

    def meta(self) -> dict:
        with self._connect() as db:
            return {k: json.loads(v) for k, v in db.execute("SELECT name, value FROM meta")}

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


def _row(row) -> dict:
    d = dict(zip(COLUMNS, row))
    d["metrics"] = json.loads(d["metrics"])
    return d
