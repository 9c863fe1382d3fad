"""The published board and local runs.

The published board is the results store committed with the project (leaderboard/:
results.sqlite and the site in leaderboard/site/). Only a publishing step writes it, and
only for the whole grid; every other run works in a local store (leaderboard/local/, not
versioned) that reads the published cells through, so a fresh clone reuses them without
changing a tracked byte. Publishing writes nothing that has not changed: a publish that
computes nothing leaves every file as it was.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arena.core import paths
from arena.leaderboard import build as lb_build
from arena.score.profiles import PROFILES
from arena.score.store import COLUMNS, ResultsStore

LOCAL = "local"          # the local store's folder inside the published board's
SITE = "site"            # the site's folder inside a store
HISTORY = "published"    # meta: one entry per publish that changed the board


# ---------------------------------------------------------------- stores
class ReadOnlyStore(ResultsStore):
    """A results store opened for reading only: no folder, table or journal change."""

    def __init__(self, root):
        self.root = Path(root)
        self.artifacts = self.root / "artifacts"
        self.path = self.root / "results.sqlite"
        self.owner = "read-only"
        if not self.path.is_file():
            raise FileNotFoundError(f"no results store at {self.path}")

    @contextmanager
    def _connect(self, write: bool = False):   # read-only whatever the caller asks
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=60)
        try:
            yield db
        finally:
            db.close()

    def claim(self, key: str, lease_s: float = 3600) -> bool:
        raise PermissionError(f"{self.root} is open read-only")

    def put(self, *args, **kwargs) -> bool:
        raise PermissionError(f"{self.root} is open read-only")

    def set_meta(self, name: str, value) -> None:
        raise PermissionError(f"{self.root} is open read-only")


class LayeredStore(ResultsStore):
    """A writable store over a read-only one: a cell (or audio file) found below counts as
    there. Writes go to the top. With `promote`, a cell read from below is first copied to
    the top (publishing: the published store takes the local cells its grid uses, keys
    being content hashes). With `defer_meta`, set_meta only records (a run's meta reaches
    the published store only when publishing decides it changed)."""

    def __init__(self, root, base: ResultsStore | None, *, promote: bool = False,
                 defer_meta: bool = False):
        super().__init__(root)
        self.base, self.promote, self.defer_meta = base, promote, defer_meta
        self.pending_meta: dict = {}
        self.promoted = 0

    def _below(self, key: str) -> dict | None:
        if self.base is None:
            return None
        cell = self.base.get(key)
        if cell is not None and self.promote:
            self._insert_raw(cell)
        return cell

    def _insert_raw(self, cell: dict) -> None:
        values = {**cell, "metrics": json.dumps(cell["metrics"], sort_keys=True)}
        with self._connect() as db:
            cur = db.execute(f"INSERT OR IGNORE INTO cells ({', '.join(COLUMNS)}) VALUES "
                             f"({', '.join('?' for _ in COLUMNS)})", [values[c] for c in COLUMNS])
            self.promoted += cur.rowcount

    def get(self, key: str) -> dict | None:
        return super().get(key) or self._below(key)

    def has(self, key: str) -> bool:
        return super().has(key) or self._below(key) is not None

    def claim(self, key: str, lease_s: float = 3600) -> bool:
        if not super().has(key) and self._below(key) is not None:
            return False
        return super().claim(key, lease_s)

    def cells(self, kind: str | None = None, **where) -> list[dict]:
        mine = super().cells(kind, **where)
        if self.base is None:
            return mine
        keys = {c["key"] for c in mine}
        below = [c for c in self.base.cells(kind, **where) if c["key"] not in keys]
        return sorted(mine + below, key=lambda c: c["key"])

    def count(self) -> int:
        return len(self.cells())

    def set_meta(self, name: str, value) -> None:
        if self.defer_meta:
            self.pending_meta[name] = value
        else:
            super().set_meta(name, value)

    def _artifact_root(self, name: str) -> Path:
        if (self.artifacts / name).is_file() or self.base is None:
            return self.artifacts
        return self.base.artifacts if (self.base.artifacts / name).is_file() else self.artifacts

    def has_artifact(self, name: str) -> bool:
        return (self._artifact_root(name) / name).is_file()

    def read_artifact(self, name: str) -> dict:
        from safetensors.torch import load_file

        return load_file(str(self._artifact_root(name) / name))


def published_root() -> Path:
    return paths.leaderboard_dir()


def local_root(published: Path | None = None) -> Path:
    return (published or published_root()) / LOCAL


def open_published(root: Path | None = None) -> ResultsStore | None:
    """The published store for reading, or None when there is none."""
    root = Path(root or published_root())
    return ReadOnlyStore(root) if (root / "results.sqlite").is_file() else None


def record_convergence(curve: dict, root: Path | None = None) -> str:
    """Keep a convergence curve (`arena bench convergence --record`) in the published
    store's meta, where the board shows it; the key is attack/model/budget."""
    store = ResultsStore(Path(root or published_root()))
    curves = dict(store.meta().get("convergence") or {})
    key = f"{curve['attack']}/{curve['model']}/{curve['budget']}"
    curves[key] = curve
    store.set_meta("convergence", curves)
    return key


def local_store(published: Path | None = None) -> LayeredStore:
    """Where local runs compute: leaderboard/local/ over the published store."""
    published = Path(published or published_root())
    return LayeredStore(local_root(published), open_published(published))


def publishing_store(published: Path | None = None) -> LayeredStore:
    """The published store for a publishing run: cells the grid needs come from the local
    store when it has them; the run's meta waits for `publish`."""
    published = Path(published or published_root())
    local = local_root(published)
    base = ReadOnlyStore(local) if (local / "results.sqlite").is_file() else None
    return LayeredStore(published, base, promote=True, defer_meta=True)


def same_place(a, b) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


# ---------------------------------------------------------------- what a run covers
def committed_scope(store: ResultsStore | None) -> dict:
    """The published board's last run (profile, split, utterances...), {} when none."""
    return dict(store.meta().get("last_run", {})) if store is not None else {}


def filters_of(*, profile: str, split: str, n_utterances: int, manifest, attacks, defenses,
               models, committed: dict, switch_profile: bool = False) -> list[str]:
    """Why a run is not the whole published grid (empty: it is).

    switch_profile: the user named a profile other than the board's; the run is then the
    whole grid of that profile when it keeps the profile's own split and size (publishing it
    makes the board that profile's; a bare `--publish` never switches it)."""
    out = []
    for flag, value in (("--attacks", attacks), ("--defenses", defenses), ("--models", models),
                        ("--manifest", manifest)):
        if value:
            out.append(f"{flag} {Path(value).name if flag == '--manifest' else value}")
    if committed and profile != committed.get("profile") and switch_profile and profile in PROFILES:
        own = PROFILES[profile]
        committed = {"profile": profile, "split": own.split, "n_utterances": own.n_utterances}
    if committed:
        if profile != committed.get("profile"):
            out.append(f"profile {profile} (the published board is {committed.get('profile')})")
        if split != committed.get("split"):
            out.append(f"split {split} (the published board is {committed.get('split')})")
        if committed.get("n_utterances") and n_utterances != committed["n_utterances"]:
            out.append(f"--limit {n_utterances} (the published board has "
                       f"{committed['n_utterances']} utterances)")
    return out


# ---------------------------------------------------------------- provenance
def git_commit(root: Path | None = None) -> str:
    """The checkout's commit (short), '+changes' when its code differs from it; 'unknown'
    without git or outside a checkout."""
    root = root or paths.checkout_root()
    if root is None:
        return "unknown"
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, text=True,
                              capture_output=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "arena"], cwd=root,
                               capture_output=True, timeout=30).returncode
        return head.stdout.strip() + ("+changes" if dirty == 1 else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def utc_date(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t if t is not None else time.time()))


def board_signature(board: dict) -> str:
    """What a reader of the board sees (scores, ranks, tables, scope), not how long it took."""
    keep = {k: board.get(k) for k in ("scope", "attacks", "targeted_attacks", "defenses",
                                      "model_robustness", "transfer", "clean", "not_scored")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def ranks_of(board: dict) -> dict:
    return {track: {r["name"]: {"rank": r.get("rank"), "score": r.get("score")}
                    for r in board.get(track, [])}
            for track in ("attacks", "targeted_attacks", "defenses")}


@dataclass
class PublishResult:
    meta_changed: bool = False
    history_added: bool = False
    site: dict = field(default_factory=dict)


def publish(store: ResultsStore, pending_last_run: dict | None = None, *, site_builder=None,
            commit: str | None = None) -> PublishResult:
    """Record a publishing run in the published store, only what changed: its last_run
    (ignoring the start time), a history entry when the board changed; then the site.
    `site_builder(store, board, context)` writes the site (returns its summary)."""
    result = PublishResult()
    meta = store.meta()
    if pending_last_run is not None:
        old = {k: v for k, v in meta.get("last_run", {}).items() if k != "started"}
        new = {k: v for k, v in pending_last_run.items() if k != "started"}
        if old != new:
            ResultsStore.set_meta(store, "last_run", pending_last_run)
            result.meta_changed = True
    if "last_run_report" in meta:  # a run's timings are not the board (and changed every run)
        with store._connect() as db:
            db.execute("DELETE FROM meta WHERE name='last_run_report'")
        result.meta_changed = True
    meta = store.meta()
    board = lb_build.build(store.cells(), meta)
    history = list(meta.get(HISTORY, []))
    signature = board_signature(board)
    if not history or history[-1].get("signature") != signature:
        history.append(dict(date=utc_date(), commit=commit or git_commit(),
                            signature=signature, cells=len(board.get("cells", [])),
                            ranks=ranks_of(board)))
        ResultsStore.set_meta(store, HISTORY, history)
        result.history_added = True
    if site_builder is not None:
        last = history[-1]
        context = dict(published=True, filtered=[], date=last["date"], commit=last["commit"],
                       history=history)
        result.site = site_builder(store, board, context)
    return result


def local_context(store: ResultsStore, filtered: list[str] | None = None) -> dict:
    """Date, commit and filters of a local run's board, for the site's banner."""
    meta = store.meta()
    run = meta.get("last_run", {})
    if filtered is None:
        filtered = meta.get("local_run", {}).get("filtered", [])
    published = open_published()
    history = published.meta().get(HISTORY, []) if published is not None else []
    return dict(published=False, filtered=list(filtered), date=utc_date(run.get("started")),
                commit=git_commit(), history=history)


def published_context(store: ResultsStore) -> dict:
    """Date and commit of a published store's last publish (for a site made from it)."""
    meta = store.meta()
    history = meta.get(HISTORY, [])
    last = history[-1] if history else {}
    started = meta.get("last_run", {}).get("started")
    return dict(published=True, filtered=[],
                date=last.get("date") or (utc_date(started) if started else "unknown"),
                commit=last.get("commit", "unknown"), history=history)


def write_store_site(store: ResultsStore, board: dict, context: dict, *, out_dir=None,
                     clean=None, models: dict | None = None) -> dict:
    """The site of a store's board, in out_dir (default: the store's site/ folder). `clean`
    (id -> reference, clean wave of the listened utterances) is kept with the store's audio,
    so a later site from the same store (`arena leaderboard --publish`) has it too."""
    from arena.leaderboard.site import write_site

    cache = store.artifacts / f"{_clean_audio_key(board)}.npz"
    if clean and not isinstance(store, ReadOnlyStore) and not cache.is_file():
        save_clean_audio(cache, clean)
    elif not clean and cache.is_file():
        clean = load_clean_audio(cache)
    return write_site(Path(out_dir) if out_dir else store.root / SITE, board, store.cells(),
                      store.meta(), context, store=store, clean=clean, models=models)


def _clean_audio_key(board: dict) -> str:
    scope = board.get("scope", {})
    tag = hashlib.sha256(f"{scope.get('split')}:{scope.get('seed_tag')}".encode()).hexdigest()[:16]
    return f"listening-clean-{tag}"


def save_clean_audio(path: Path, clean: dict) -> None:
    """The listened utterances' references and clean audio, beside the attack audio (not
    versioned either; not a cell's artifact, so not a .safetensors file)."""
    import numpy as np

    ids = sorted(clean)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.npz")
    arrays: dict[str, Any] = {f"wave{i}": np.asarray(clean[u][1], dtype=np.float32)
                              for i, u in enumerate(ids)}
    np.savez(tmp, ids=np.array(ids), texts=np.array([clean[u][0] for u in ids]), **arrays)
    os.replace(tmp, path)


def load_clean_audio(path: Path) -> dict:
    import numpy as np

    with np.load(path, allow_pickle=False) as z:
        return {str(u): (str(t), z[f"wave{i}"]) for i, (u, t) in enumerate(zip(z["ids"], z["texts"]))}
