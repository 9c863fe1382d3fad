"""The submission.toml schema: one source of truth for the validator and the runner."""
from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

TRACKS = ("attack", "targeted-attack", "defense")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,39}$")
ENTRY_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*):([A-Za-z_][A-Za-z0-9_]*)$")
MANIFEST = "submission.toml"


class SubmissionError(ValueError):
    """A submission that breaks the contract; the message names the file and field."""


def _check_name(v):
    if not isinstance(v, str) or not NAME_RE.match(v):
        return "must be 2-40 characters of a-z, 0-9 and '-', starting with a letter or digit"


def _check_track(v):
    if v not in TRACKS:
        return f"must be one of {', '.join(TRACKS)}"


def _check_entry(v):
    if not isinstance(v, str) or not ENTRY_RE.match(v):
        return "must look like 'module:ClassName' (a .py module inside the folder)"


def _check_authors(v):
    if not isinstance(v, list) or not v or not all(isinstance(a, str) and a.strip() for a in v):
        return "must be a non-empty list of names"


def _check_str(v):
    if not isinstance(v, str) or not v.strip():
        return "must be a non-empty string"


def _check_optional_str(v):
    if not isinstance(v, str):
        return "must be a string"


# field -> (required, check)
FIELDS = {
    "name": (True, _check_name),
    "track": (True, _check_track),
    "entry": (True, _check_entry),
    "authors": (True, _check_authors),
    "version": (True, _check_str),
    "description": (False, _check_optional_str),
}


@dataclass(frozen=True)
class SubmissionManifest:
    name: str
    track: str
    entry: str
    authors: list[str]
    version: str
    description: str = ""
    folder: Path = field(default=Path("."), compare=False)

    @property
    def module(self) -> str:
        return self.entry.split(":")[0]

    @property
    def class_name(self) -> str:
        return self.entry.split(":")[1]

    @property
    def module_path(self) -> Path:
        return self.folder / (self.module.replace(".", "/") + ".py")


def parse_manifest(data: dict, where: str = MANIFEST) -> dict:
    if not isinstance(data, dict):
        raise SubmissionError(f"{where}: expected a table of fields")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise SubmissionError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; "
                              f"allowed: {', '.join(FIELDS)}")
    for key, (required, check) in FIELDS.items():
        if key not in data:
            if required:
                raise SubmissionError(f"{where}: missing required field {key!r}")
            continue
        problem = check(data[key])
        if problem:
            raise SubmissionError(f"{where}: field {key!r} {problem} (got {data[key]!r})")
    return data


def load_manifest(folder) -> SubmissionManifest:
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise SubmissionError(f"{folder}: no {MANIFEST}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SubmissionError(f"{path}: not valid TOML ({e})") from None
    data = parse_manifest(data, str(path))
    m = SubmissionManifest(folder=folder.resolve(), **data)
    if not m.module_path.is_file():
        raise SubmissionError(f"{path}: field 'entry' names module {m.module!r} but "
                              f"{m.module_path.name} is not in the folder")
    return m


def content_hash(folder) -> str:
    """sha256 over the sorted relative paths and bytes of the folder (caches ignored)."""
    folder = Path(folder)
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if any(part in ("__pycache__", ".git") or part.endswith(".pyc") for part in rel.parts):
            continue
        if p.is_file() and not p.is_symlink() and rel.name != "SUBMISSION.json":
            h.update(str(rel).encode() + b"\0")
            h.update(p.read_bytes())
            h.update(b"\0")
    return h.hexdigest()
