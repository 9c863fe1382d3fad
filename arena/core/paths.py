"""Where things live. Every location can be moved with an environment variable.

Shipped with the package (read-only in a wheel): the model zoo and the baselines. Made by
the arena (corpus, training runs, submissions, the results store): in the checkout when the
package runs from one (an editable install), else in the user's data directory (XDG /
platformdirs), never inside site-packages. ARENA_HOME moves all of those at once.
"""
from __future__ import annotations

import os
from pathlib import Path

import platformdirs

PACKAGE = Path(__file__).resolve().parent.parent   # the `arena` package folder
ROOT = PACKAGE.parent                              # the checkout, when running from one
APP = "asr-arena"


def checkout_root() -> Path | None:
    """The source checkout this package runs from, or None (an installed wheel)."""
    pyproject = ROOT / "pyproject.toml"
    try:
        if pyproject.is_file() and f'name = "{APP}"' in pyproject.read_text():
            return ROOT
    except OSError:
        pass
    return None


def home() -> Path:
    """The folder for everything the arena makes (see the module docstring)."""
    if os.environ.get("ARENA_HOME"):
        return Path(os.environ["ARENA_HOME"])
    return checkout_root() or platformdirs.user_data_path(APP)


def data_dir() -> Path:
    """Generated corpora (not in git). ARENA_DATA moves it."""
    return Path(os.environ.get("ARENA_DATA") or home() / "data")


def runs_dir() -> Path:
    """Training checkpoints and logs (not in git). ARENA_RUNS moves it."""
    return Path(os.environ.get("ARENA_RUNS") or home() / "runs")


def leaderboard_dir() -> Path:
    """The results store and the published board. ARENA_LEADERBOARD moves it."""
    return Path(os.environ.get("ARENA_LEADERBOARD") or home() / "leaderboard")


def submissions_dir() -> Path:
    """Installed submissions (`arena submit`). ARENA_SUBMISSIONS moves it."""
    return Path(os.environ.get("ARENA_SUBMISSIONS") or home() / "submissions")


def zoo_dir() -> Path:
    """Shipped model files: the dense checkpoint and the packed compressed variants."""
    return Path(os.environ.get("ARENA_ZOO") or PACKAGE / "zoo")


def baselines_dir() -> Path:
    """The reference attacks and defenses, shipped with the package."""
    return Path(os.environ.get("ARENA_BASELINES") or PACKAGE / "baselines")
