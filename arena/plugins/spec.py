"""What the sandbox needs to know about a plugin (no torch: the intake imports it).

The submission intake (arena.submissions) reads `submission.toml` and hands the sandbox a
`PluginSpec`; the sandbox worker loads the code with arena.plugins.loader.
`submission_files` is the one list of a submission's files: hashed by the intake, copied
into the sandbox by the job runner.
"""
from __future__ import annotations

import os
import shutil
import stat
import unicodedata
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path


class Track(str, Enum):
    ATTACK = "attack"
    TARGETED_ATTACK = "targeted-attack"
    DEFENSE = "defense"

    @property
    def is_attack(self) -> bool:
        return self is not Track.DEFENSE


@dataclass(frozen=True)
class PluginSpec:
    name: str
    track: Track
    module: str
    class_name: str
    folder: Path
    limits: dict = field(default_factory=dict)  # may only lower the harness limits

    @property
    def entry(self) -> str:
        return f"{self.module}:{self.class_name}"


# ---------------------------------------------------------------- a submission's files
# One list, used both for the content hash (arena.submissions) and for the copy into the
# sandbox (arena.sandbox.jobs): whatever can change a plugin's behaviour changes its hash.
RECORD = "SUBMISSION.json"      # written by `arena submit`: neither hashed nor copied
SKIP_DIRS = ("__pycache__",)    # bytecode could shadow the hashed source, so never copied
SKIP_SUFFIXES = (".pyc",)       # a sourceless module.pyc is importable: same reason
MAX_ENTRIES = 2000              # files and folders together
MAX_DEPTH = 16                  # folder levels below the submission folder
MAX_NAME_BYTES = 255
MAX_PATH_CHARS = 1024
# bidirectional-text controls reorder what a reviewer sees ("Trojan Source")
_BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# characters a reader takes for "/" or "\\": "a\u2215b.py" lists as a path it is not
_SLASH_LOOKALIKES = set("\\\u2044\u2215\u2216\u2571\u2572\u29f5\u29f8\u29f9\ufe68\uff0f\uff3c")


class SubmissionFilesError(ValueError):
    """A submission folder holding something that is never run: a symlink, a special file,
    an unreadable or odd name, too many entries or too deep a tree. The message names it."""


@dataclass(frozen=True)
class SubmissionFile:
    rel: str        # relative POSIX path, e.g. "pkg/model.py"
    path: Path      # where it is on the host
    is_dir: bool


def has_controls(text: str) -> bool:
    """Control characters, line separators or bidi overrides: text that can rewrite a
    terminal line or reorder what a reader sees."""
    return any(unicodedata.category(c) in ("Cc", "Zl", "Zp") or c in _BIDI for c in text)


def bad_name(name: str) -> str | None:
    """Why a single file name is refused (None when it is fine)."""
    try:
        encoded = name.encode("utf-8")   # undecodable bytes arrive as lone surrogates
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if len(encoded) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    if has_controls(name):
        return "contains control characters"
    if any(unicodedata.category(c) == "Cf" for c in name):
        # zero-width and other invisible characters: "plugin\u200b.py" lists as plugin.py
        return "contains invisible formatting characters"
    if any(c in _SLASH_LOOKALIKES for c in name):
        return "contains a character that looks like a path separator"
    return None


def name_key(name: str) -> str:
    """What a reader takes a name for: two names in one folder with the same key (compatibility
    forms, case) look like one file, e.g. "plugin.py" and "Plugin.py" or "\uff50lugin.py"."""
    return unicodedata.normalize("NFKC", name).casefold()


def submission_files(folder, *, max_entries: int = MAX_ENTRIES) -> list[SubmissionFile]:
    """Every folder and regular file of a submission, sorted by relative path: exactly what
    the sandbox receives and the content hash covers. Skips __pycache__/, *.pyc and the
    top-level SUBMISSION.json; refuses symlinks (never followed), special files, odd names,
    more than `max_entries` entries (folders count) and trees deeper than MAX_DEPTH."""
    root = Path(folder)
    out: list[SubmissionFile] = []
    stack = [("", root, 0)]   # iterative: a deep tree cannot exhaust the Python stack
    while stack:
        prefix, d, depth = stack.pop()
        items = []
        try:
            with os.scandir(d) as it:
                for x in it:   # counted while read: a huge folder is refused, not loaded
                    items.append(x)
                    if len(items) > 2 * max_entries:
                        raise SubmissionFilesError(f"{prefix or './'}: more than {2 * max_entries} "
                                                   "entries in one folder; refused")
        except OSError as err:
            raise SubmissionFilesError(f"{prefix or '.'}: cannot be listed ({err.strerror})") from None
        items.sort(key=lambda x: x.name)
        seen: dict[str, str] = {}
        for entry in items:
            rel = prefix + entry.name
            why = bad_name(entry.name)
            if why:
                raise SubmissionFilesError(f"{rel!r}: the file name {why}; refused")
            twin = seen.setdefault(name_key(entry.name), entry.name)
            if twin != entry.name:
                raise SubmissionFilesError(f"{rel!r} and {prefix + twin!r} read as the same name; "
                                           "refused (rename one)")
            if len(rel) > MAX_PATH_CHARS:
                raise SubmissionFilesError(f"{rel[:80]!r}...: path longer than {MAX_PATH_CHARS} "
                                           "characters; refused")
            if entry.is_symlink():
                raise SubmissionFilesError(f"{rel}: is a symlink; refused (a submission holds "
                                           "regular files and folders only)")
            if entry.is_dir(follow_symlinks=False):
                if entry.name in SKIP_DIRS:
                    continue
                if depth + 1 > MAX_DEPTH:
                    raise SubmissionFilesError(f"{rel}: folders nested deeper than {MAX_DEPTH} "
                                               "levels; refused")
                out.append(SubmissionFile(rel, Path(entry.path), True))
                stack.append((rel + "/", Path(entry.path), depth + 1))
            elif entry.is_file(follow_symlinks=False):
                if entry.name.endswith(SKIP_SUFFIXES) or rel == RECORD:
                    continue
                out.append(SubmissionFile(rel, Path(entry.path), False))
            else:
                raise SubmissionFilesError(f"{rel}: is a device, fifo, socket or other special "
                                           "file; refused")
            if len(out) > max_entries:
                raise SubmissionFilesError(f"more than {max_entries} files and folders "
                                           "(folders count); refused")
    out.sort(key=lambda f: f.rel)
    return out


def copy_submission(files: list[SubmissionFile], dst) -> None:
    """Copy exactly `files` (a `submission_files` list: sorted, so a folder comes before what
    it holds) into the existing folder `dst`: bytes only (folders 0755, files 0644, no host
    mtimes), nothing followed. A file swapped since it was listed (for a link, a fifo, a
    folder) or gone is a SubmissionFilesError naming it. Each source is opened component by
    component from the submission folder with O_NOFOLLOW (a folder swapped for a link to
    /root cannot smuggle a host file into the copy) and each target is created anew."""
    if not files:
        return
    dst = Path(dst)
    root = Path(files[0].path)
    for _ in files[0].rel.split("/"):
        root = root.parent
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for f in files:
            target = dst.joinpath(*f.rel.split("/"))
            try:
                if f.is_dir:
                    os.close(_open_below(root_fd, f.rel, os.O_DIRECTORY))   # still a folder
                    os.mkdir(target, 0o755)
                else:
                    with os.fdopen(_open_below(root_fd, f.rel, os.O_NONBLOCK), "rb") as src:
                        if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
                            raise SubmissionFilesError(f"{f.rel}: is no longer a regular file; refused")
                        with open(target, "xb") as out:
                            shutil.copyfileobj(src, out, 1 << 20)
                os.chmod(target, 0o755 if f.is_dir else 0o644)
            except OSError as e:
                raise SubmissionFilesError(f"{f.rel}: cannot be copied ({e.strerror or e}); was "
                                           "the folder changed while it was read?") from None
    finally:
        os.close(root_fd)


def _open_below(root_fd: int, rel: str, flags: int) -> int:
    """`rel` opened read-only below the folder `root_fd`, no component followed if a link."""
    *folders, name = rel.split("/")
    fd = root_fd
    try:
        for part in folders:
            below = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            if fd != root_fd:
                os.close(fd)
            fd = below
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | flags, dir_fd=fd)
    finally:
        if fd != root_fd:
            os.close(fd)
