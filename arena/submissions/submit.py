"""`arena submit`: unpack safely, validate in the sandbox, install into submissions/<name>/."""
from __future__ import annotations

import datetime
import json
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from arena.core import paths
from arena.submissions.manifest import MANIFEST, RECORD, SubmissionError, content_hash, load_manifest
from arena.submissions.validate import validate

MAX_FILES = 2000
DEFAULT_MAX_MB = 50


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
    return PurePosixPath(*parts)


class _Counter:
    def __init__(self, max_bytes: int):
        self.max_bytes, self.total, self.files = max_bytes, 0, 0

    def add_file(self):
        self.files += 1
        if self.files > MAX_FILES:
            raise SubmissionError(f"archive has more than {MAX_FILES} files; refused")

    def copy(self, src, dst_path: Path, name: str):
        with open(dst_path, "wb") as dst:
            while True:
                chunk = src.read(1 << 16)
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


def _unzip(path: Path, dest: Path, counter: _Counter) -> None:
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        if len(infos) > MAX_FILES:
            raise SubmissionError(f"archive has {len(infos)} entries, more than {MAX_FILES}; refused")
        declared = sum(i.file_size for i in infos)
        if declared > counter.max_bytes:
            raise SubmissionError(f"archive declares {declared} unpacked bytes, more than "
                                  f"{counter.max_bytes // (1024 * 1024)} MB; refused")
        for info in infos:
            rel = _safe_member(info.filename)
            mode = (info.external_attr >> 16) & 0xFFFF
            if mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                kind = "symlink" if stat.S_ISLNK(mode) else "special file"
                raise SubmissionError(f"archive member {info.filename!r} is a {kind}; refused")
            out = _target(dest, rel)
            if info.is_dir():
                out.mkdir(parents=True, exist_ok=True)
                continue
            counter.add_file()
            out.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src:
                counter.copy(src, out, info.filename)


def _untar(path: Path, dest: Path, counter: _Counter) -> None:
    with tarfile.open(path, "r:*") as t:
        declared = 0
        for member in t:  # streams; headers of a huge archive are counted as they come
            rel = _safe_member(member.name)
            if member.issym() or member.islnk():
                raise SubmissionError(f"archive member {member.name!r} is a link; refused")
            if not (member.isfile() or member.isdir()):
                raise SubmissionError(f"archive member {member.name!r} is a device, fifo or other "
                                      "special file; refused")
            out = _target(dest, rel)
            if member.isdir():
                out.mkdir(parents=True, exist_ok=True)
                continue
            counter.add_file()
            declared += member.size
            if declared > counter.max_bytes:
                raise SubmissionError(f"archive declares more than "
                                      f"{counter.max_bytes // (1024 * 1024)} MB unpacked; refused")
            out.parent.mkdir(parents=True, exist_ok=True)
            src = t.extractfile(member)
            counter.copy(src, out, member.name)


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
        elif name.endswith((".tar.gz", ".tgz", ".tar")):
            _untar(path, dest, counter)
        else:
            raise SubmissionError(f"{path.name}: expected a folder, a .zip or a .tar.gz")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        if isinstance(e, SubmissionError):
            raise
        raise SubmissionError(f"{path.name}: not a readable archive: {e}") from None
    entries = [p for p in dest.iterdir()]
    if not (dest / MANIFEST).is_file() and len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return dest


def _check_folder(folder: Path, max_unpacked_mb: int) -> None:
    total, files = 0, 0
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for n in names + dirs:
            p = Path(root, n)
            if p.is_symlink():
                raise SubmissionError(f"{p.relative_to(folder)} is a symlink; refused")
        for n in names:
            p = Path(root, n)
            if not p.is_file():
                raise SubmissionError(f"{p.relative_to(folder)} is not a regular file; refused")
            files += 1
            total += p.stat().st_size
    if files > MAX_FILES:
        raise SubmissionError(f"folder has more than {MAX_FILES} files; refused")
    if total > max_unpacked_mb * 1024 * 1024:
        raise SubmissionError(f"folder holds more than {max_unpacked_mb} MB; refused")


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
            _check_folder(path, max_unpacked_mb)
            folder = path
        else:
            folder = unpack(path, Path(tmp) / "unpacked", max_unpacked_mb=max_unpacked_mb)
            _check_folder(folder, max_unpacked_mb)
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
            shutil.copytree(folder, staging, dirs_exist_ok=True, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", RECORD))
            record = {"name": manifest.name, "track": manifest.track, "version": manifest.version,
                      "authors": manifest.authors, "content_hash": content_hash(staging),
                      "submitted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
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


def _ensure(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p
