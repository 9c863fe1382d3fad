"""`arena submit`: unpack safely, validate in the sandbox, install into submissions/<name>/."""
from __future__ import annotations

import bz2
import datetime
import gzip
import json
import os
import shutil
import stat
import struct
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from arena.core import paths
from arena.plugins.spec import (
    MAX_DEPTH,
    MAX_ENTRIES,
    MAX_PATH_CHARS,
    SubmissionFilesError,
    bad_name,
    copy_submission,
    submission_files,
)
from arena.submissions.manifest import MANIFEST, RECORD, SubmissionError, content_hash, load_manifest
from arena.submissions.validate import validate

MAX_FILES = MAX_ENTRIES          # files and folders together
DEFAULT_MAX_MB = 50
MAX_HEADER_BYTES = 64 * 1024     # largest single read from a tar stream (headers included)
MAX_ZIP_DIRECTORY = 2 << 20      # central directory of a zip: ~46 bytes + name per entry
MAX_TAR_MEMBERS = MAX_FILES + 2  # + the archive's own "./" and a single top-level folder
MAX_TAR_PADDING = 1 << 20        # zeros after a tar's end-of-archive marker (record padding)


def _safe_member(name: str) -> PurePosixPath:
    if "\\" in name:
        name = name.replace("\\", "/")
    p = PurePosixPath(name)
    if p.is_absolute() or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise SubmissionError(f"archive member {name!r} has an absolute path; refused")
    if any(part == ".." for part in p.parts):
        raise SubmissionError(f"archive member {name!r} contains '..'; refused (path traversal)")
    parts = [x for x in p.parts if x not in ("", ".")]
    if not parts:
        raise SubmissionError(f"archive member {name!r} has an empty path")
    if len(name) > MAX_PATH_CHARS:
        raise SubmissionError(f"archive member {name[:80]!r}...: path longer than "
                              f"{MAX_PATH_CHARS} characters; refused")
    if len(parts) > MAX_DEPTH + 2:   # + a top-level folder and the file itself
        raise SubmissionError(f"archive member {name[:80]!r}: nested deeper than {MAX_DEPTH} "
                              "folders; refused")
    for part in parts:
        why = bad_name(part)
        if why:
            raise SubmissionError(f"archive member {name!r}: the name {part!r} {why}; refused")
    return PurePosixPath(*parts)


def _is_top(name: str) -> bool:
    """'.' or './': the archive's own top folder, as `tar -C folder -czf x.tgz .` writes it."""
    return not [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")] \
        and not name.startswith("/")


class _Counter:
    """Bytes written and entries made; folders count, including those a member's path
    implies ("a/b/c.py" makes a/ and a/b/)."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.total, self.files = max_bytes, 0, 0
        self.dirs: set[PurePosixPath] = set()
        self.file_paths: set[PurePosixPath] = set()

    def _check(self):
        # +1: a single top-level folder is stripped after unpacking
        if self.files + len(self.dirs) > MAX_FILES + 1:
            raise SubmissionError(f"archive has more than {MAX_FILES} files and folders "
                                  "(folders count); refused")

    def add_dir(self, rel: PurePosixPath):
        implied = [rel, *list(rel.parents)[:-1]]
        clash = next((d for d in implied if d in self.file_paths), None)
        if clash is not None:
            raise SubmissionError(f"archive member {str(clash)!r} is both a file and a folder; refused")
        self.dirs.update(implied)
        self._check()

    def add_file(self, rel: PurePosixPath | None = None):
        self.files += 1
        if rel is not None:
            # a name listed twice: the later copy would silently replace the one a reviewer
            # reads first in the archive's listing
            if rel in self.file_paths or rel in self.dirs:
                raise SubmissionError(f"archive lists {str(rel)!r} more than once; refused")
            self.file_paths.add(rel)
            if rel.parent != PurePosixPath("."):
                self.add_dir(rel.parent)
        self._check()

    def copy(self, src, dst_path: Path, name: str):
        with open(dst_path, "wb") as dst:
            while True:
                chunk = src.read(1 << 15)
                if not chunk:
                    break
                self.total += len(chunk)
                if self.total > self.max_bytes:
                    raise SubmissionError(
                        f"archive unpacks to more than {self.max_bytes // (1024 * 1024)} MB "
                        f"(stopped while extracting {name!r}); refused (use --max-unpacked-mb)")
                dst.write(chunk)


def _target(dest: Path, rel: PurePosixPath) -> Path:
    out = dest.joinpath(*rel.parts)
    if not str(out.resolve()).startswith(str(dest.resolve()) + os.sep):
        raise SubmissionError(f"archive member {str(rel)!r} escapes the folder; refused")
    return out


def _check_zip_directory(path: Path) -> None:
    """Refuse before zipfile parses it a central directory larger than MAX_ZIP_DIRECTORY or
    listing more entries than allowed: zipfile reads it whole and makes an object per entry."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - (22 + 0xFFFF + 20)))
        tail = f.read()
    # where zipfile looks: a comment-less record at the very end, else the last signature
    at = len(tail) - 22 if tail[-22:-18] == b"PK\x05\x06" and tail[-2:] == b"\0\0" \
        else tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) < at + 22:
        raise SubmissionError(f"{path.name}: not a readable archive (no zip end record)")
    if at >= 20 and tail[at - 20:at - 16] == b"PK\x06\x07":
        raise SubmissionError(f"{path.name}: zip64 archives are not accepted (a submission is "
                              "small); use a plain .zip or a .tar.gz")
    entries, directory = struct.unpack("<HI", tail[at + 10:at + 16])
    if entries > MAX_FILES + 1:
        raise SubmissionError(f"{path.name}: archive lists {entries} entries, more than "
                              f"{MAX_FILES}; refused")
    if directory > MAX_ZIP_DIRECTORY:
        raise SubmissionError(f"{path.name}: archive directory is {directory} bytes, more than "
                              f"{MAX_ZIP_DIRECTORY >> 20} MB; refused")


def _place(dest: Path, rel: PurePosixPath, is_dir: bool, counter: _Counter) -> Path | None:
    """Count an archive member and make its place: a folder is made (None is returned), a
    file's parent folder is made and its path returned."""
    out = _target(dest, rel)
    if is_dir:
        counter.add_dir(rel)
        out.mkdir(parents=True, exist_ok=True)
        return None
    counter.add_file(rel)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _unzip(path: Path, dest: Path, counter: _Counter) -> None:
    _check_zip_directory(path)
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        if len(infos) > MAX_FILES + 1:
            raise SubmissionError(f"archive has {len(infos)} entries, more than {MAX_FILES}; refused")
        declared = sum(i.file_size for i in infos)
        if declared > counter.max_bytes:
            raise SubmissionError(f"archive declares {declared} unpacked bytes, more than "
                                  f"{counter.max_bytes // (1024 * 1024)} MB; refused")
        for info in infos:
            if info.is_dir() and _is_top(info.filename):
                continue
            rel = _safe_member(info.filename)
            if info.flag_bits & 0x41:   # bit 0: encrypted; bit 6: strong encryption
                raise SubmissionError(f"{path.name}: archive member {info.filename!r} is "
                                      "encrypted; refused (submit an unencrypted archive)")
            mode = (info.external_attr >> 16) & 0xFFFF
            if mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                kind = "symlink" if stat.S_ISLNK(mode) else "special file"
                raise SubmissionError(f"archive member {info.filename!r} is a {kind}; refused")
            out = _place(dest, rel, info.is_dir(), counter)
            if out is None:
                continue
            with z.open(info) as src:
                counter.copy(src, out, info.filename)


class _CappedReads:
    """The decompressed tar stream with bounded header reads. tarfile reads a GNU long name,
    a pax header or a sparse map whole, with the size the archive states: without a cap a
    1 MB .tar.gz stating 1 GB made `arena submit` allocate 1 GB. Any single read, and all
    reads between one member's data and the next member, are capped at MAX_HEADER_BYTES."""

    def __init__(self, f, name: str):
        self._f, self._name = f, name
        self.in_data = False      # True while a member's own bytes are being copied
        self.header_bytes = 0     # read since the last member came out
        self.last = b""           # what the latest read returned (at the end: the last header)

    def read(self, n=-1):
        if n is None or n < 0 or n > MAX_HEADER_BYTES:
            raise SubmissionError(f"{self._name}: an archive header asks for "
                                  f"{'all remaining' if n is None or n < 0 else n} bytes, more "
                                  f"than {MAX_HEADER_BYTES // 1024} KiB; refused")
        if not self.in_data:
            self.header_bytes += n
            if self.header_bytes > MAX_HEADER_BYTES:
                raise SubmissionError(f"{self._name}: the headers of one archive member take "
                                      f"more than {MAX_HEADER_BYTES // 1024} KiB; refused")
        self.last = self._f.read(n)
        return self.last

    def read_rest(self) -> bytes:
        """Everything after the end-of-archive marker, refused beyond MAX_TAR_PADDING; reading
        to the end also makes gzip / bz2 check their trailers."""
        rest = self._f.read(MAX_TAR_PADDING + 1)
        if len(rest) > MAX_TAR_PADDING:
            raise SubmissionError(f"{self._name}: more than {MAX_TAR_PADDING >> 20} MB after the "
                                  "end-of-archive marker; refused")
        return rest

    def seek(self, *args):
        return self._f.seek(*args)

    def tell(self):
        return self._f.tell()


def _open_tar_stream(path: Path):
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(path, "rb")
    if magic[:3] == b"BZh":
        return bz2.open(path, "rb")
    if magic == b"\xfd7zXZ\0":  # its decoder sizes its window from the header: unbounded memory
        raise SubmissionError(f"{path.name}: .tar.xz is not accepted; use a .tar.gz or a .zip")
    return open(path, "rb")


def _untar(path: Path, dest: Path, counter: _Counter) -> None:
    with _open_tar_stream(path) as stream:
        capped = _CappedReads(stream, path.name)
        with tarfile.open(fileobj=capped, mode="r:") as t:
            _untar_members(t, capped, dest, counter, path.name)
            _check_tar_end(t, capped, path.name)


def _check_tar_end(t: tarfile.TarFile, capped: _CappedReads, name: str) -> None:
    """tarfile ends the member list quietly at a missing, short or unreadable header, so a
    truncated archive or one with a corrupt later header would unpack with members missing.
    A whole archive ends with a zero block (tar's end-of-archive marker) at the offset where
    tarfile stopped, then zero padding only, up to the end of the (checked) stream."""
    block = capped.last   # the header read that ended the list
    if len(block) < tarfile.BLOCKSIZE:
        raise SubmissionError(f"{name}: archive is truncated: it ends at byte {t.offset} without "
                              "tar's end-of-archive marker; refused")
    if block.count(0) != len(block):
        raise SubmissionError(f"{name}: archive is corrupt: unreadable member header at byte "
                              f"{t.offset}; refused")
    rest = capped.read_rest()
    if rest.count(0) != len(rest):
        raise SubmissionError(f"{name}: archive has data after the end-of-archive marker at byte "
                              f"{t.offset} (a second archive joined on?); refused")


def _untar_members(t: tarfile.TarFile, capped: _CappedReads, dest: Path, counter: _Counter,
                   name: str) -> None:
    declared = seen = 0
    while True:  # members come one at a time; their header reads are capped
        member = t.next()
        t.members.clear()   # tarfile keeps every header it reads: none is needed again
        if member is None:
            break
        capped.header_bytes = 0
        seen += 1   # every member counts, skipped and repeated ones included
        if seen > MAX_TAR_MEMBERS:
            raise SubmissionError(f"{name}: archive has more than {MAX_TAR_MEMBERS} members (the "
                                  f"limit is {MAX_FILES} files and folders; repeated and './' "
                                  "entries count); refused")
        if member.isdir() and _is_top(member.name):
            continue
        rel = _safe_member(member.name)
        if member.issym() or member.islnk():
            raise SubmissionError(f"archive member {member.name!r} is a link; refused")
        if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE):
            raise SubmissionError(f"archive member {member.name!r} is a device, fifo, sparse "
                                  "or other special file; refused")
        out = _place(dest, rel, member.isdir(), counter)
        if out is None:
            continue
        declared += member.size
        if declared > counter.max_bytes:
            raise SubmissionError(f"archive declares more than "
                                  f"{counter.max_bytes // (1024 * 1024)} MB unpacked; refused")
        src = t.extractfile(member)
        capped.in_data = True
        try:
            counter.copy(src, out, member.name)
        finally:
            capped.in_data = False


def unpack(path, dest, *, max_unpacked_mb: int = DEFAULT_MAX_MB) -> Path:
    """Extract a .zip / .tar.gz safely into `dest`; the submission folder inside (a single
    top-level folder is stripped)."""
    path, dest = Path(path), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    counter = _Counter(int(max_unpacked_mb * 1024 * 1024))
    name = path.name.lower()
    try:
        if name.endswith(".zip"):
            _unzip(path, dest, counter)
        elif name.endswith((".tar.gz", ".tgz", ".tar", ".tar.bz2")):
            _untar(path, dest, counter)
        else:
            raise SubmissionError(f"{path.name}: expected a folder, a .zip or a .tar.gz")
    except SubmissionError as e:   # every archive error names the archive
        message = str(e)
        if message.startswith(f"{path.name}: "):
            raise
        raise SubmissionError(f"{path.name}: {message}") from None
    except RecursionError:  # tarfile follows chained pax / long-name headers recursively
        raise SubmissionError(f"{path.name}: archive headers chained too deeply; refused") from None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError,
            NotImplementedError, UnicodeError) as e:
        raise SubmissionError(f"{path.name}: not a readable archive: "
                              f"{_without_folder(str(e), dest)[:200]}") from None
    entries = [p for p in dest.iterdir()]
    if not (dest / MANIFEST).is_file() and len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return dest


def _without_folder(text: str, dest: Path) -> str:
    """An error's text with the host folder it was unpacking into left out (an OSError
    names the full path): paths read relative to the archive."""
    for prefix in sorted({str(dest.resolve()), str(dest)}, key=len, reverse=True):
        text = text.replace(prefix + os.sep, "").replace(prefix, ".")
    return text


def _check_folder(folder: Path, max_unpacked_mb: int) -> list:
    """The folder's entries (submission_files), refused beyond the entry and size limits."""
    try:
        files = submission_files(folder, max_entries=MAX_FILES)
    except SubmissionFilesError as e:
        raise SubmissionError(str(e)) from None
    total = sum(f.path.stat().st_size for f in files if not f.is_dir)
    if total > max_unpacked_mb * 1024 * 1024:
        raise SubmissionError(f"folder holds more than {max_unpacked_mb} MB; refused")
    return files


def _baseline_names() -> set[str]:
    names = set()
    root = paths.baselines_dir()
    if root.is_dir():
        for d in root.iterdir():
            names.add(d.name)
            try:
                names.add(load_manifest(d).name)
            except SubmissionError:
                pass
    return names


def submit(path, *, replace: bool = False, max_unpacked_mb: int = DEFAULT_MAX_MB,
           trusted: bool = False, wall_s: float = 120) -> dict:
    """Install a submission; returns its SUBMISSION.json record. Raises SubmissionError."""
    path = Path(path)
    if not path.exists():
        raise SubmissionError(f"{path}: no such file or folder")
    with tempfile.TemporaryDirectory(prefix="arena-submit-") as tmp:
        if path.is_dir():
            # a private snapshot first: the manifest, the dry run, the hash and the install all
            # read it, so a folder rewritten while this runs (a rival's name, unvalidated code)
            # cannot get installed (checked again below: a file swapped for a link mid-copy)
            folder = Path(tmp) / "snapshot"
            folder.mkdir()
            _install_copy(_check_folder(path, max_unpacked_mb), folder)
        else:
            folder = unpack(path, Path(tmp) / "unpacked", max_unpacked_mb=max_unpacked_mb)
        files = _check_folder(folder, max_unpacked_mb)
        manifest = load_manifest(folder)
        if manifest.name in _baseline_names():
            raise SubmissionError(f"name {manifest.name!r} is taken by a baseline; choose another "
                                  "name in submission.toml")
        target = paths.submissions_dir() / manifest.name
        if target.exists() and not replace:
            raise SubmissionError(f"a submission named {manifest.name!r} exists already "
                                  f"({target}); use --replace to overwrite it")
        report = validate(folder, wall_s=wall_s, trusted=trusted)
        if not report.ok:
            raise SubmissionError("validation failed:\n" + "\n".join(f"- {e}" for e in report.errors))
        staging = Path(tempfile.mkdtemp(prefix=f".{manifest.name}-", dir=_ensure(paths.submissions_dir())))
        try:
            _install_copy(files, staging)
            record = {"name": manifest.name, "track": manifest.track, "version": manifest.version,
                      "authors": manifest.authors, "content_hash": content_hash(staging),
                      "submitted_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                      "source": str(path.resolve()), "validated_s": round(report.seconds, 2)}
            (staging / RECORD).write_text(json.dumps(record, indent=2))
            os.chmod(staging, 0o755)
            if target.exists():
                old = target.with_name(f".{manifest.name}.old-{os.getpid()}")
                target.rename(old)
                staging.rename(target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return record


def _install_copy(files: list, staging: Path) -> None:
    """Copy exactly the entries submission_files listed (what was checked and what the
    content hash covers): __pycache__/, *.pyc and only the top-level SUBMISSION.json stay out,
    so a nested pkg/SUBMISSION.json is installed as it was validated."""
    try:
        copy_submission(files, staging)
    except SubmissionFilesError as e:
        raise SubmissionError(str(e)) from None


def _ensure(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p
