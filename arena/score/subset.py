"""The utterances a scoring run uses: a seeded sample of a public split, a split built from
the organiser's secret, or any manifest in the corpus format.

The secret split: `arena secret init` writes 32 random bytes (hex) to a file only the
organiser can read (ARENA_SECRET_FILE, default <home>/private/split.key). The corpus seed is
that 256-bit number, so sentences, voices, rates and pitches (and so lengths) all depend on
it; the published split id is `seed_tag(seed)`, a hash that reveals nothing about it. The
file and the corpus built from it never enter the sandbox (only the job's own audio does).
"""
from __future__ import annotations

import hashlib
import os
import random
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from arena.core import paths
from arena.core.audio import SAMPLE_RATE
from arena.core.hashing import sha256_file
from arena.data.batching import AudioSet
from arena.data.corpus import ensure_split, resolve_seed, seed_tag
from arena.data.manifest import read_manifest
from arena.score.profiles import Profile
from arena.score.targets import choose_target

SECRET_SPLIT = "secret"
SECRET_ENV = "ARENA_SECRET_FILE"


class SecretMissing(FileNotFoundError):
    """The secret split was asked for but no secret file exists."""


@dataclass
class DataSubset:
    split: str
    seed_tag: str
    manifest_sha256: str
    ids: list[str]
    texts: list[str]
    waves: list[np.ndarray]
    targets: list[str]

    @property
    def key(self) -> dict:
        return {"split": self.split, "manifest": self.manifest_sha256,
                "ids": hashlib.sha256("\n".join(self.ids).encode()).hexdigest()}

    def durations(self) -> np.ndarray:
        return np.array([len(w) / SAMPLE_RATE for w in self.waves])

    def text_of(self) -> dict[str, str]:
        return dict(zip(self.ids, self.texts))

    def target_of(self) -> dict[str, str]:
        return dict(zip(self.ids, self.targets))


def secret_path() -> Path:
    return Path(os.environ.get(SECRET_ENV) or paths.home() / "private" / "split.key")


def create_secret(path: Path | None = None, overwrite: bool = False) -> Path:
    """Write a new 256-bit secret (hex) readable by its owner only."""
    path = path or secret_path()
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite to replace the secret")
    if not path.parent.exists():
        # a folder we make is the owner's only; an existing one (ARENA_SECRET_FILE may point
        # into a shared folder such as /tmp) keeps its mode: the file itself is 0600
        path.parent.mkdir(parents=True)
        os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    return path


def secret_seed(path: Path | None = None) -> int:
    path = path or secret_path()
    try:
        text = path.read_text().strip()
        value = int(text, 16)
    except FileNotFoundError:
        raise SecretMissing(f"no secret at {path}: run `arena secret init` first") from None
    except ValueError:
        raise ValueError(f"{path}: not a hex secret") from None
    if len(text) < 32:
        raise ValueError(f"{path}: the secret must have at least 128 bits (32 hex digits)")
    return value


def plugin_seeds(run_seed: int, content_hashes) -> dict[str, int]:
    """The secret split's seed for each plugin (`self.seed`), by content hash: derived from the
    secret, so it is private, and from the plugin, so no plugin can reproduce another's
    randomness (a defense regenerating the `noise` baseline's noise, or an attack's random
    start, to recognise its audio). Public splits give every plugin the run's seed."""
    secret = secret_seed()
    return {h: int.from_bytes(hashlib.sha256(f"plugin-seed:{secret:x}:{run_seed}:{h}".encode())
                              .digest()[:4], "little") for h in content_hashes}


def secret_split(progress: bool = True, size: int | None = None) -> tuple[Path, str]:
    """The secret split's manifest (built on first use; `size` utterances, default the test
    split's) and its published id."""
    s = secret_seed()
    return ensure_split("test", s, size=size, progress=progress), seed_tag(s)


def _corpus_split(split: str, seed: int | None, progress: bool) -> tuple[Path, str, str]:
    """(manifest, split name, published tag) of a public or the secret split."""
    if split == SECRET_SPLIT:
        manifest, tag = secret_split(progress)
        return manifest, SECRET_SPLIT, tag
    corpus_seed = resolve_seed(split, seed)
    return ensure_split(split, corpus_seed, progress=progress), split, seed_tag(corpus_seed)


def load_subset(profile: Profile, seed: int | None = None, progress: bool = True,
                manifest=None) -> DataSubset:
    """A fixed, seeded sample of the profile's split (the whole split when it is smaller),
    or of any manifest in the corpus format when `manifest` is given."""
    if manifest is None:
        manifest, split, tag = _corpus_split(profile.split, seed, progress)
    else:
        manifest, tag = Path(manifest), "manifest"
        split = manifest.stem
    utts = read_manifest(manifest)
    if profile.n_utterances < len(utts):
        pick = sorted(random.Random(f"subset:{split}").sample(range(len(utts)), profile.n_utterances))
        utts = [utts[i] for i in pick]
    data = AudioSet.from_utterances(utts)
    checksum = manifest.with_suffix(".sha256")
    manifest_sha = checksum.read_text().split()[0] if checksum.is_file() else sha256_file(manifest)
    return DataSubset(split, tag, manifest_sha, data.ids, data.texts,
                      [data.wave(i) for i in range(len(data))],
                      [choose_target(t, i) for t, i in zip(data.texts, data.ids)])
