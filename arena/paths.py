"""Where things live. Every location can be moved with an environment variable."""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parent


def data_dir() -> Path:
    """Generated corpora (not in git). ARENA_DATA moves it."""
    return Path(os.environ.get("ARENA_DATA", ROOT / "data"))


def zoo_dir() -> Path:
    """Shipped model files: the dense checkpoint and the packed compressed variants."""
    return Path(os.environ.get("ARENA_ZOO", PACKAGE / "zoo"))


def runs_dir() -> Path:
    """Training checkpoints and logs (not in git)."""
    return Path(os.environ.get("ARENA_RUNS", ROOT / "runs"))


def leaderboard_dir() -> Path:
    return Path(os.environ.get("ARENA_LEADERBOARD", ROOT / "leaderboard"))


def submissions_dir() -> Path:
    return Path(os.environ.get("ARENA_SUBMISSIONS", ROOT / "submissions"))


def baselines_dir() -> Path:
    return Path(os.environ.get("ARENA_BASELINES", ROOT / "baselines"))
