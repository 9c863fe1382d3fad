"""`submission.toml`: the one schema of a submission, used by validate, submit and score.

```toml
name = "my-pgd"              # [a-z0-9-], 2-40 characters, starts with a letter or digit
track = "attack"             # attack | targeted-attack | defense
entry = "attack:MyPGD"       # module:Class, the module is a .py file inside the folder
authors = ["Ada"]            # non-empty list of strings
version = "1.0"
description = "..."          # optional
[limits]                     # optional; may only LOWER the harness limits
wall_s = 300
memory_mb = 4096
```
"""
from __future__ import annotations

import hashlib
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from arena.plugins.spec import PluginSpec, Track

MANIFEST = "submission.toml"
RECORD = "SUBMISSION.json"   # written by `arena submit`; not part of the content hash
TRACKS = ("attack", "targeted-attack", "defense")
LIMIT_KEYS = ("wall_s", "cpu_s", "memory_mb", "max_procs", "max_file_mb", "max_open_files")

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{1,39}$")
_ENTRY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*):([A-Za-z_][A-Za-z0-9_]*)$")


class SubmissionError(ValueError):
    """A submission that cannot be accepted; the message names the problem."""


def _is_str(v):
    return isinstance(v, str)


def _check_name(v):
    if not _is_str(v) or not _NAME.match(v):
        return "must be 2-40 characters of a-z, 0-9 and '-', starting with a letter or digit"


def _check_track(v):
    if v not in TRACKS:
        return f"must be one of {', '.join(TRACKS)}"


def _check_entry(v):
    if not _is_str(v) or not _ENTRY.match(v):
        return "must look like 'module:Class' (a .py module inside the folder and a class name)"


def _check_authors(v):
    if not isinstance(v, list) or not v or not all(_is_str(a) and a.strip() for a in v):
        return "must be a non-empty list of strings"


def _check_str(v):
    if not _is_str(v) or not v.strip():
        return "must be a non-empty string"


def _check_opt_str(v):
    if not _is_str(v):
        return "must be a string"


def _check_limits(v):
    if not isinstance(v, dict):
        return "must be a table ([limits])"
    for k, x in v.items():
        if k not in LIMIT_KEYS:
            return f"has unknown key {k!r} (known: {', '.join(LIMIT_KEYS)})"
        if isinstance(x, bool) or not isinstance(x, (int, float)) or x <= 0:
            return f"key {k!r} must be a positive number"


# name -> (required, check, description): the table validate, submit and the docs read
FIELDS: dict[str, tuple[bool, object, str]] = {
    "name": (True, _check_name, "unique name, [a-z0-9-], 2-40 characters"),
    "track": (True, _check_track, "attack | targeted-attack | defense"),
    "entry": (True, _check_entry, "module:Class inside the folder"),
    "authors": (True, _check_authors, "non-empty list of author names"),
    "version": (True, _check_str, "version string"),
    "description": (False, _check_opt_str, "one line about the method"),
    "limits": (False, _check_limits, "optional lower sandbox limits: " + ", ".join(LIMIT_KEYS)),
}


@dataclass(frozen=True)
class SubmissionManifest:
    name: str
    track: str
    entry: str
    authors: list[str]
    version: str
    description: str = ""
    limits: dict = field(default_factory=dict)
    folder: Path | None = None

    @property
    def module(self) -> str:
        return self.entry.split(":")[0]

    @property
    def class_name(self) -> str:
        return self.entry.split(":")[1]

    @property
    def is_attack(self) -> bool:
        return self.track in ("attack", "targeted-attack")

    def spec(self) -> PluginSpec:
        """What the sandbox needs to run this submission."""
        if self.folder is None:
            raise SubmissionError(f"{self.name}: manifest has no folder")
        return PluginSpec(self.name, Track(self.track), self.module, self.class_name,
                          Path(self.folder).resolve(), dict(self.limits))


def plugin_spec(folder) -> PluginSpec:
    """The sandbox spec of the submission in `folder` (SubmissionError when it is invalid)."""
    return load_manifest(folder).spec()


def parse_manifest(data: dict, folder: Path | None = None) -> SubmissionManifest:
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise SubmissionError(f"{MANIFEST}: unknown field {unknown[0]!r} "
                              f"(known: {', '.join(FIELDS)})")
    for key, (required, check, _) in FIELDS.items():
        if key not in data:
            if required:
                raise SubmissionError(f"{MANIFEST}: field {key!r} is missing")
            continue
        problem = check(data[key])
        if problem:
            raise SubmissionError(f"{MANIFEST}: field {key!r} {problem}")
    m = SubmissionManifest(name=data["name"], track=data["track"], entry=data["entry"],
                           authors=list(data["authors"]), version=data["version"],
                           description=data.get("description", ""),
                           limits=dict(data.get("limits", {})), folder=folder)
    if folder is not None:
        parts = m.module.split(".")
        candidates = [Path(folder, *parts[:-1], parts[-1] + ".py"),
                      Path(folder, *parts, "__init__.py")]
        if not any(c.is_file() and not c.is_symlink() for c in candidates):
            raise SubmissionError(f"{MANIFEST}: field 'entry' names module {m.module!r} but "
                                  f"{'/'.join(parts)}.py is not in the submission folder")
    return m


def load_manifest(folder) -> SubmissionManifest:
    """The parsed, checked manifest of a submission folder (SubmissionError otherwise)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise SubmissionError(f"{folder}: no {MANIFEST} in the folder")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SubmissionError(f"{MANIFEST}: not valid TOML: {e}") from None
    return parse_manifest(data, folder)


def _files(folder: Path):
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for f in sorted(files):
            if f.endswith((".pyc", ".pyo")):
                continue
            p = Path(root, f)
            rel = p.relative_to(folder).as_posix()
            if rel == RECORD:
                continue
            yield rel, p


def content_hash(folder) -> str:
    """sha256 over the sorted relative paths and bytes of the folder (no __pycache__,
    no SUBMISSION.json); a symlink contributes its target text, never what it points to."""
    folder = Path(folder)
    h = hashlib.sha256()
    for rel, p in sorted(_files(folder)):
        h.update(rel.encode() + b"\0")
        if p.is_symlink():
            h.update(b"symlink:" + os.readlink(p).encode())
        else:
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()
