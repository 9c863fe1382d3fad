"""submission.toml schema, `arena validate` and `arena submit` (safe unpacking, install)."""
import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from arena.cli import main
from arena.core import paths
from arena.submissions.manifest import SubmissionError, content_hash, load_manifest, parse_manifest
from arena.submissions.submit import submit, unpack
from arena.submissions.validate import validate

EXAMPLES = paths.ROOT / "examples"
GOOD = {"name": "my-pgd", "track": "attack", "entry": "attack:MyPGD", "authors": ["Ada"],
        "version": "1.0"}


def write_sub(folder: Path, code: str, track="attack", name="sub-x", module="plugin") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "submission.toml").write_text(
        f'name = "{name}"\ntrack = "{track}"\nentry = "{module}:P"\nauthors = ["t"]\nversion = "1"\n')
    (folder / f"{module}.py").write_text(code)
    return folder


OK_ATTACK = ("from arena import Attack\nclass P(Attack):\n    def run(self, batch, model, budget):\n"
             "        return batch.wave\n")


@pytest.fixture
def arena_dirs(tmp_path, monkeypatch):
    subs, base = tmp_path / "submissions", tmp_path / "baselines"
    monkeypatch.setenv("ARENA_SUBMISSIONS", str(subs))
    monkeypatch.setenv("ARENA_BASELINES", str(base))
    base.mkdir()
    return subs, base


# ------------------------------------------------------------------ manifest
@pytest.mark.parametrize("field,value,words", [
    ("name", "My PGD", "field 'name'"), ("name", "x", "field 'name'"),
    ("track", "attacks", "field 'track' must be one of attack, targeted-attack, defense"),
    ("entry", "attack.MyPGD", "field 'entry'"), ("authors", [], "field 'authors'"),
    ("authors", "Ada", "field 'authors'"), ("version", 1, "field 'version'"),
    ("limits", {"gpus": 2}, "field 'limits'"), ("colour", "red", "unknown field 'colour'"),
    # hostile values (issue 14): a trailing newline passed ^...$ and showed as a second
    # leaderboard row; nan passed "x <= 0" and crashed the sandbox in int(nan)
    ("name", "my-pgd\n", "field 'name'"), ("entry", "attack:MyPGD\n", "field 'entry'"),
    ("limits", {"wall_s": float("nan")}, "field 'limits' key 'wall_s' must be a finite number"),
    ("limits", {"memory_mb": float("inf")}, "field 'limits' key 'memory_mb' must be an integer"),
    ("limits", {"max_procs": True}, "field 'limits' key 'max_procs' must be an integer"),
    ("authors", ["Ada\x1b[2J"], "field 'authors' entry 0 must not contain control characters"),
    ("version", "1" * 41, "field 'version' must be at most 40 characters"),
    ("track", ["attack"], "field 'track' must be one of")])
def test_manifest_errors_name_the_field(field, value, words):
    with pytest.raises(SubmissionError, match="submission.toml: .*" + words.replace("(", r"\(")):
        parse_manifest({**GOOD, field: value})


def test_manifest_missing_field_and_module(tmp_path):
    with pytest.raises(SubmissionError, match="field 'version' is missing"):
        parse_manifest({k: v for k, v in GOOD.items() if k != "version"})
    (tmp_path / "submission.toml").write_text(
        'name = "my-pgd"\ntrack = "attack"\nentry = "nothere:X"\nauthors = ["a"]\nversion = "1"\n')
    with pytest.raises(SubmissionError, match="field 'entry'.*nothere.py"):
        load_manifest(tmp_path)
    (tmp_path / "submission.toml").write_text("name = ")
    with pytest.raises(SubmissionError, match="not valid TOML"):
        load_manifest(tmp_path)


def test_content_hash_ignores_pycache_and_record(tmp_path):
    d = write_sub(tmp_path / "s", OK_ATTACK)
    h = content_hash(d)
    (d / "__pycache__").mkdir()
    (d / "__pycache__" / "plugin.cpython-311.pyc").write_bytes(b"junk")
    (d / "SUBMISSION.json").write_text("{}")
    assert content_hash(d) == h
    (d / "plugin.py").write_text(OK_ATTACK + "# changed\n")
    assert content_hash(d) != h
    # every file the sandbox receives is hashed, whatever its suffix (before: *.pyo was
    # copied into the sandbox but not hashed, so editing it reused stale cells)
    h = content_hash(d)
    (d / "table.pyo").write_bytes(b"a")
    h_pyo = content_hash(d)
    (d / "table.pyo").write_bytes(b"b")
    assert len({h, h_pyo, content_hash(d)}) == 3
    # no two trees hash alike: file bytes cannot pose as a path (each file is its own digest)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "x").write_bytes(b"1\0y\0" + b"2")
    (b / "x").write_bytes(b"1")
    (b / "y").write_bytes(b"2")
    assert content_hash(a) != content_hash(b)


# ------------------------------------------------------------------ validate
def test_examples_pass_validate():
    runner = CliRunner()
    for name in ("attack-noise-pgd", "defense-lowpass"):
        res = runner.invoke(main, ["validate", str(EXAMPLES / name), "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.output) == {"ok": True, "errors": []}


def test_validate_reports_violations_in_plain_words(tmp_path):
    over = write_sub(tmp_path / "over", OK_ATTACK.replace("return batch.wave", "return batch.wave * 1.5"))
    rep = validate(over, wall_s=60)
    assert not rep.ok and any("x the snr30 budget before projection" in e for e in rep.errors)
    crash = write_sub(tmp_path / "crash", "from arena import Defense\nimport missing_dependency_xyz\n"
                      "class P(Defense):\n    pass\n", track="defense")
    res = CliRunner().invoke(main, ["validate", str(crash), "--json"])
    assert res.exit_code == 1
    out = json.loads(res.output)
    assert not out["ok"] and "ModuleNotFoundError" in out["errors"][0]
    assert "plugin.py" in out["errors"][0]          # the traceback points at the line
    bad = write_sub(tmp_path / "bad", OK_ATTACK + "class Q:\n    pass\n")
    (bad / "submission.toml").write_text((bad / "submission.toml").read_text().replace(":P", ":Q"))
    rep = validate(bad, wall_s=60)
    assert not rep.ok and "subclass of arena.Attack" in rep.errors[0]


def test_import_side_effects_stay_in_the_sandbox(tmp_path, arena_dirs):
    markers = [tmp_path / "marker", paths.ROOT / f".import-marker-{os.getpid()}"]
    code = ("for p in %r:\n    try:\n        open(p, 'w').write('x')\n    except OSError:\n        pass\n"
            % [str(m) for m in markers]) + OK_ATTACK
    sub = write_sub(tmp_path / "side", code, name="side-effects")
    runner = CliRunner()
    assert runner.invoke(main, ["validate", str(sub)]).exit_code == 0
    res = runner.invoke(main, ["submit", str(sub)])
    assert res.exit_code == 0, res.output
    for m in markers:
        assert not m.exists(), f"{m} was written on the host"


# ------------------------------------------------------------------ submit
def test_submit_folder_replace_and_name_clashes(tmp_path, arena_dirs):
    subs, base = arena_dirs
    src = write_sub(tmp_path / "src", OK_ATTACK, name="my-attack")
    rec = submit(src)
    installed = subs / "my-attack"
    assert (installed / "plugin.py").is_file()
    meta = json.loads((installed / "SUBMISSION.json").read_text())
    assert meta["content_hash"] == content_hash(installed) == content_hash(src) == rec["content_hash"]
    assert meta["source"] == str(src.resolve()) and meta["submitted_at"]
    res = CliRunner().invoke(main, ["submit", str(src)])
    assert res.exit_code != 0 and "exists already" in res.output and "--replace" in res.output
    (src / "plugin.py").write_text(OK_ATTACK + "# v2\n")
    res = CliRunner().invoke(main, ["submit", str(src), "--replace"])
    assert res.exit_code == 0, res.output
    assert "# v2" in (installed / "plugin.py").read_text()
    write_sub(base / "noise", OK_ATTACK, name="noise")
    clash = write_sub(tmp_path / "clash", OK_ATTACK, name="noise")
    with pytest.raises(SubmissionError, match="taken by a baseline"):
        submit(clash)



def test_a_manifest_renamed_during_submit_cannot_take_another_entrys_place(tmp_path, arena_dirs,
                                                                          monkeypatch):
    """`arena submit FOLDER` reads the manifest, validates for seconds, then copies the
    folder: a submitter who rewrote its name to a rival's meanwhile was installed as
    submissions/aaa-x/ naming itself "victim", sorted first, and the real victim was
    skipped as a duplicate (its code scored under the victim's name)."""
    from arena.submissions import submit as submit_mod
    from arena.submissions.entries import discover
    from arena.submissions.validate import ValidationReport

    subs, _ = arena_dirs
    write_sub(subs / "victim", OK_ATTACK, name="victim")
    src = write_sub(tmp_path / "src", OK_ATTACK + "# hostile\n", name="aaa-x")

    def validate_while_renamed(folder, **kw):   # the rewrite lands during the dry run
        toml = Path(folder) / "submission.toml"
        toml.write_text(toml.read_text().replace('"aaa-x"', '"victim"'))
        return ValidationReport(ok=True)

    monkeypatch.setattr(submit_mod, "validate", validate_while_renamed)
    submit(src)
    entries, problems = discover()
    victim = next(e for e in entries if e.name == "victim")
    assert victim.path == subs / "victim"                       # before: subs / "aaa-x"
    assert any("aaa-x" in p and "names 'victim'" in p for p in problems), problems


def test_submit_installs_the_folder_as_it_was_validated(tmp_path, arena_dirs, monkeypatch):
    """The source folder rewritten during the dry run (name, code): what is installed is the
    snapshot that was validated and hashed (main at 21a4363 copied the folder after the dry
    run: the new name and the unvalidated code were installed)."""
    from arena.submissions import submit as submit_mod
    from arena.submissions.validate import ValidationReport

    subs, _ = arena_dirs
    src = write_sub(tmp_path / "src", OK_ATTACK, name="aaa-x")
    seen = []

    def validate_while_rewritten(folder, **kw):
        seen.append((Path(folder) / "plugin.py").read_text())
        toml = src / "submission.toml"
        toml.write_text(toml.read_text().replace('"aaa-x"', '"victim"'))
        (src / "plugin.py").write_text(OK_ATTACK + "import os  # unvalidated\n")
        (src / "later.py").write_text("x = 1\n")
        return ValidationReport(ok=True)

    monkeypatch.setattr(submit_mod, "validate", validate_while_rewritten)
    record = submit(src)
    assert record["name"] == "aaa-x" and not (subs / "victim").exists()
    assert (subs / "aaa-x" / "plugin.py").read_text() == OK_ATTACK == seen[0]
    assert not (subs / "aaa-x" / "later.py").exists()


def test_submit_zip_with_top_level_folder(tmp_path, arena_dirs):
    subs, _ = arena_dirs
    src = write_sub(tmp_path / "pkg" / "my-zip", OK_ATTACK, name="zipped")
    archive = tmp_path / "sub.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in src.iterdir():
            z.write(f, f"my-zip/{f.name}")
    submit(archive)
    assert (subs / "zipped" / "submission.toml").is_file()


def _tar(path: Path, members):
    with tarfile.open(path, "w:gz") as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _info(name, data=b"", kind=tarfile.REGTYPE, link=""):
    i = tarfile.TarInfo(name)
    i.type, i.size, i.linkname = kind, len(data) if kind == tarfile.REGTYPE else 0, link
    return i, (data if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize("members,words", [
    ([_info("../evil.py", b"x")], "'..'"),
    ([_info("/etc/evil.py", b"x")], "absolute path"),
    ([_info("sub/link", kind=tarfile.SYMTYPE, link="/etc/passwd")], "is a link"),
    ([_info("sub/hard", kind=tarfile.LNKTYPE, link="sub/x")], "is a link"),
    ([_info("sub/fifo", kind=tarfile.FIFOTYPE)], "special file"),
])
def test_unsafe_tar_archives_are_refused(tmp_path, members, words):
    archive = _tar(tmp_path / "bad.tar.gz", members)
    with pytest.raises(SubmissionError, match=words):
        unpack(archive, tmp_path / "out")
    assert not (tmp_path / "evil.py").exists() and not Path("/etc/evil.py").exists()


def test_unsafe_zip_archives_are_refused(tmp_path, arena_dirs):
    trav = tmp_path / "trav.zip"
    with zipfile.ZipFile(trav, "w") as z:
        z.writestr("../../evil.py", "x")
    with pytest.raises(SubmissionError, match="'..'"):
        unpack(trav, tmp_path / "o1")
    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as z:
        info = zipfile.ZipInfo("sub/secret")
        info.external_attr = (0o120777 << 16)
        z.writestr(info, "/etc/passwd")
    with pytest.raises(SubmissionError, match="symlink"):
        unpack(link, tmp_path / "o2")
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("submission.toml", 'name = "bomb"\n')
        z.writestr("zeros.bin", b"\0" * (30 << 20))            # 30 MB, ~30 kB compressed
    assert bomb.stat().st_size < 1 << 20
    res = CliRunner().invoke(main, ["submit", str(bomb), "--max-unpacked-mb", "10"])
    assert res.exit_code != 0 and "more than 10 MB" in res.output
    assert not (tmp_path / "evil.py").exists() and not list(arena_dirs[0].glob("*"))


def test_zip_folders_count_and_directory_is_capped(tmp_path):
    # 1,500 files, each in its own folder: 3,000 entries (before: counted as 1,500, accepted)
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as z:
        for i in range(1500):
            z.writestr(f"d{i}/x.py", "")
    with pytest.raises(SubmissionError, match=r"more than 2000 files and folders \(folders count\)"):
        unpack(many, tmp_path / "o1")
    # a central directory stating more entries than allowed is refused before zipfile reads it
    listed = tmp_path / "listed.zip"
    with zipfile.ZipFile(listed, "w") as z:
        for i in range(2100):
            z.writestr(f"f{i}", "")
    with pytest.raises(SubmissionError, match=r"listed\.zip: archive lists 2100 entries"):
        unpack(listed, tmp_path / "o2")


def test_zip_bomb_with_lying_sizes_is_counted_while_extracting(tmp_path):
    from arena.submissions import submit as submit_mod

    bomb = tmp_path / "liar.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.bin", b"\0" * (12 << 20))
    # the declared check passes (limit above the declared size) but extraction is counted:
    # with a tighter streaming budget it stops mid-file
    counter = submit_mod._Counter(4 << 20)
    with zipfile.ZipFile(bomb) as z, z.open("a.bin") as src:
        with pytest.raises(SubmissionError, match="more than 4 MB"):
            counter.copy(src, tmp_path / "a.bin", "a.bin")
    assert (tmp_path / "a.bin").stat().st_size <= (4 << 20) + (1 << 16)
