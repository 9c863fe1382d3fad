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
import math
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from arena.plugins.spec import RECORD as RECORD  # re-exported: submit names it from here
from arena.plugins.spec import PluginSpec, SubmissionFilesError, Track, has_controls, submission_files

MANIFEST = "submission.toml"
TRACKS = ("attack", "targeted-attack", "defense")
# [limits] keys and their types (those of arena.sandbox.SandboxLimits)
LIMIT_TYPES = {"wall_s": float, "cpu_s": float, "memory_mb": int, "max_procs": int,
               "max_file_mb": int, "max_open_files": int}
LIMIT_KEYS = tuple(LIMIT_TYPES)
LIMIT_MAX = 10**9               # any value above the harness limit is clipped to it anyway
MAX_MANIFEST_BYTES = 64 * 1024  # a manifest is a few hundred bytes
MAX_TOML_DEPTH = 4              # the schema needs 2 ([limits], authors = [...])
MAX_TEXT = {"version": 40, "description": 500, "author": 100, "entry": 200}
MAX_AUTHORS = 32

# fullmatch, never match + "$": "$" also matches before a trailing newline
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{1,39}")
_ENTRY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*):([A-Za-z_][A-Za-z0-9_]*)")


class SubmissionError(ValueError):
    """A submission that cannot be accepted; the message names the problem."""


def _is_str(v):
    return isinstance(v, str)


def _text_problem(v, limit: int, *, blank_ok: bool = False) -> str | None:
    if not _is_str(v):
        return "must be a string"
    if not blank_ok and not v.strip():
        return "must be a non-empty string"
    if len(v) > limit:
        return f"must be at most {limit} characters"
    if has_controls(v):
        return "must not contain control characters (escape codes, newlines, bidi overrides)"
    return None


def _check_name(v):
    if not _is_str(v) or not _NAME.fullmatch(v):
        return "must be 2-40 characters of a-z, 0-9 and '-', starting with a letter or digit"


def _check_track(v):
    if not _is_str(v) or v not in TRACKS:
        return f"must be one of {', '.join(TRACKS)}"


def _check_entry(v):
    if not _is_str(v) or len(v) > MAX_TEXT["entry"] or not _ENTRY.fullmatch(v):
        return "must look like 'module:Class' (a .py module inside the folder and a class name)"


def _check_authors(v):
    if not isinstance(v, list) or not v:
        return "must be a non-empty list of strings"
    if len(v) > MAX_AUTHORS:
        return f"must list at most {MAX_AUTHORS} authors"
    for i, a in enumerate(v):
        problem = _text_problem(a, MAX_TEXT["author"])
        if problem:
            return f"entry {i} {problem}"


def _check_version(v):
    return _text_problem(v, MAX_TEXT["version"])


def _check_description(v):
    return _text_problem(v, MAX_TEXT["description"], blank_ok=True)


def _short(x) -> str:
    r = repr(x)
    return r if len(r) <= 40 else r[:37] + "..."


def _check_limits(v):
    if not isinstance(v, dict):
        return "must be a table ([limits])"
    for k, x in v.items():
        if k not in LIMIT_TYPES:
            return f"has unknown key {k!r} (known: {', '.join(LIMIT_KEYS)})"
        want = LIMIT_TYPES[k]
        ok_type = (isinstance(x, int) if want is int else isinstance(x, (int, float)))
        if isinstance(x, bool) or not ok_type:
            kind = "an integer" if want is int else "a number"
            return f"key {k!r} must be {kind} (got {_short(x)})"
        # nan passes every "x <= 0" test and int(nan) raises later: refuse it here
        if not math.isfinite(x) or not 0 < x <= LIMIT_MAX:
            return f"key {k!r} must be a finite number above 0 and at most {LIMIT_MAX} (got {_short(x)})"


# name -> (required, check, description): the table validate, submit and the docs read
FIELDS: dict[str, tuple[bool, object, str]] = {
    "name": (True, _check_name, "unique name, [a-z0-9-], 2-40 characters"),
    "track": (True, _check_track, "attack | targeted-attack | defense"),
    "entry": (True, _check_entry, "module:Class inside the folder"),
    "authors": (True, _check_authors, "non-empty list of author names"),
    "version": (True, _check_version, f"version string, at most {MAX_TEXT['version']} characters"),
    "description": (False, _check_description,
                    f"one line about the method, at most {MAX_TEXT['description']} characters"),
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
    if not isinstance(data, dict):
        raise SubmissionError(f"{MANIFEST}: must be a TOML table of fields")
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


def _too_deep(text: str, limit: int) -> int | None:
    """The line where arrays/tables nest deeper than `limit` (brackets outside strings and
    comments), or None. Checked before tomllib, which recurses once per level."""
    depth, line, i, n = 0, 1, 0, len(text)
    while i < n:
        c = text[i]
        if c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if c in "\"'":
            close = c * 3 if text.startswith(c * 3, i) else c
            i += len(close)
            while i < n and not text.startswith(close, i):
                if text[i] == "\\" and c == '"':   # basic strings have escapes
                    i += 1
                elif text[i] == "\n":
                    line += 1
                i += 1
            i += len(close)
            continue
        if c == "\n":
            line += 1
        elif c in "[{":
            depth += 1
            if depth > limit:
                return line
        elif c in "]}":
            depth = max(0, depth - 1)
        i += 1
    return None


def _read_manifest(folder: Path) -> str:
    path = folder / MANIFEST
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise SubmissionError(f"{folder}: no {MANIFEST} in the folder") from None
    except OSError as e:
        raise SubmissionError(f"{MANIFEST}: cannot be read ({e.strerror})") from None
    if stat.S_ISLNK(st.st_mode):
        raise SubmissionError(f"{MANIFEST}: is a symlink; refused (the manifest must be a regular "
                              "file inside the submission folder)")
    if not stat.S_ISREG(st.st_mode):
        raise SubmissionError(f"{MANIFEST}: is not a regular file; refused")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise SubmissionError(f"{MANIFEST}: is {st.st_size} bytes, more than "
                              f"{MAX_MANIFEST_BYTES // 1024} KiB; refused")
    try:  # O_NOFOLLOW: a symlink swapped in after the lstat is still not followed
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            raw = os.read(fd, MAX_MANIFEST_BYTES + 1)
        finally:
            os.close(fd)
    except OSError as e:
        raise SubmissionError(f"{MANIFEST}: cannot be read ({e.strerror})") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise SubmissionError(f"{MANIFEST}: more than {MAX_MANIFEST_BYTES // 1024} KiB; refused")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SubmissionError(f"{MANIFEST}: not UTF-8 text (bad byte at offset {e.start})") from None


def parse_toml(text: str) -> dict:
    """tomllib with bounded nesting; every failure is a SubmissionError naming the manifest."""
    line = _too_deep(text, MAX_TOML_DEPTH)
    if line is not None:
        raise SubmissionError(f"{MANIFEST}: line {line}: arrays or tables nested deeper than "
                              f"{MAX_TOML_DEPTH} levels; refused")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SubmissionError(f"{MANIFEST}: not valid TOML: {e}") from None
    except ValueError as e:   # e.g. an integer of more than 4300 digits
        raise SubmissionError(f"{MANIFEST}: not valid TOML: {str(e)[:120]}") from None
    except RecursionError:    # the depth scan above should make this unreachable
        raise SubmissionError(f"{MANIFEST}: nested too deeply; refused") from None


def check_files(folder) -> None:
    """SubmissionError unless every entry of the folder is a plain file or folder (no symlinks,
    special files or odd names) and there are at most MAX_ENTRIES of them."""
    try:
        submission_files(folder)
    except SubmissionFilesError as e:
        raise SubmissionError(str(e)) from None


def load_manifest(folder) -> SubmissionManifest:
    """The parsed, checked manifest of a submission folder (SubmissionError otherwise); the
    folder's files are checked too (see check_files)."""
    folder = Path(folder)
    data = parse_toml(_read_manifest(folder))
    check_files(folder)
    return parse_manifest(data, folder)


def content_hash(folder) -> str:
    """sha256 over exactly the entries the sandbox receives (arena.plugins.spec.
    submission_files): each folder's relative path and each file's path and sha256, so no
    two different trees share a byte stream."""
    h = hashlib.sha256(b"arena-submission-v2\0")
    try:
        files = submission_files(folder)
    except SubmissionFilesError as e:
        raise SubmissionError(str(e)) from None
    for f in files:
        if f.is_dir:
            h.update(b"d\0" + f.rel.encode() + b"\0")
            continue
        fh = hashlib.sha256()
        with os.fdopen(os.open(f.path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as src:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                fh.update(chunk)
        h.update(b"f\0" + f.rel.encode() + b"\0" + fh.digest())
    return h.hexdigest()
