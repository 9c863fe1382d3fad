"""The wheel: built from the project's files with the installed setuptools (no network), it
carries the model zoo, its cards, the reference plugins and py.typed, and nothing that the
arena generates in a project folder (corpus, training runs, results store)."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from arena.core import paths


def _project_copy(root: Path, dest: Path) -> Path:
    """The sources a clone has (no .git, no stale build/ or egg-info, whose leftovers setuptools
    would reuse), plus generated files planted where a checkout keeps them."""
    dest.mkdir()
    shutil.copy2(root / "pyproject.toml", dest)
    shutil.copy2(root / "README.md", dest)
    shutil.copytree(root / "arena", dest / "arena",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    for planted in ("data/dev/manifest.jsonl", "data/dev/audio/u1.flac", "runs/dense/last.pt",
                    "leaderboard/results.sqlite", "submissions/mine/submission.toml"):
        (dest / planted).parent.mkdir(parents=True, exist_ok=True)
        (dest / planted).write_text("generated\n")
    return dest


@pytest.mark.slow
def test_wheel_ships_zoo_cards_baselines_and_no_generated_data(tmp_path):
    root = paths.checkout_root()
    if root is None:
        pytest.skip("needs the source checkout")
    src = _project_copy(root, tmp_path / "src")
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                          "--no-index", "-q", "-w", str(tmp_path / "dist"), str(src)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("asr_arena-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    zoo = root / "arena" / "zoo"
    expected = {f"arena/zoo/{p.name}" for p in zoo.glob("*.safetensors")}
    expected |= {f"arena/zoo/cards/{p.name}" for p in (zoo / "cards").glob("*.json")}
    baselines = root / "arena" / "baselines"
    expected |= {f"arena/baselines/{p.relative_to(baselines).as_posix()}"
                 for p in baselines.rglob("*") if p.suffix in (".py", ".toml")}
    expected |= {"arena/py.typed", "arena/cli.py", "arena/core/paths.py"}
    assert len(expected) > 30  # 7 models + 7 cards + 11 plugins x 2 files + the above
    assert expected <= names, sorted(expected - names)

    generated = [n for n in names
                 if n.split("/")[0] in ("data", "runs", "leaderboard", "submissions")
                 or ".data/" in n or "__pycache__" in n or n.endswith(".pyc")
                 or (n.startswith("arena/data/") and not n.endswith(".py"))]
    assert not generated, generated
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "Requires-Dist: platformdirs" in requires  # arena.core.paths imports it
