"""Whole-job limits, a minimal environment and a minimal file system view, against hostile
submissions (each a real submission folder run through the real bubblewrap sandbox).

Each test asserts what the hostile code achieved: memory held, bytes on the host's disk,
variables seen, files left behind, files read. Some run the harness as an ordinary user
(a subprocess switched to an unprivileged uid), as a competition host without root would.
"""
import ctypes
import functools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

from arena.core import paths
from arena.core.audio import AudioBatch
from arena.sandbox import SandboxLimits, bwrap, jobs, run_attack_job, run_defense_job
from arena.submissions.manifest import plugin_spec

TOML = 'name = "{name}"\ntrack = "{track}"\nentry = "plugin:P"\nauthors = ["t"]\nversion = "1"\n'
USER_UID = 65501          # the ordinary user the harness runs as in the non-root tests
HOG_UID = 55000 + os.getpid() % 5000   # a sandbox uid of its own: other jobs on this machine don't count


def make_sub(root: Path, name: str, code: str, track: str = "attack") -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "submission.toml").write_text(TOML.format(name=name, track=track))
    (d / "plugin.py").write_text(code)
    return d


def limits(**kw) -> SandboxLimits:
    # only the fields this version has (so the same test can run against older code)
    known = {f for f in SandboxLimits.__dataclass_fields__}
    return SandboxLimits(**{k: v for k, v in kw.items() if k in known})


def batch(uid: str, T: int = 8000) -> AudioBatch:
    g = torch.Generator().manual_seed(0)
    return AudioBatch([uid], (torch.rand(1, T, generator=g) - 0.5) * 0.5, torch.tensor([T]),
                      transcripts=["hello world"])


def needs_root():
    if not bwrap.as_root():
        pytest.skip("needs root: the harness runs as root here and maps an unprivileged uid")


def _smaps(pid: str) -> dict:
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                k, _, v = line.partition(":")
                if v.strip().endswith("kB"):
                    out[k] = int(v.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return out


class UidMemory(threading.Thread):
    """Samples the memory held by every process of one host uid (the sandbox's)."""

    def __init__(self, uid: int):
        super().__init__(daemon=True)
        self.uid, self.peak_anon, self.peak_pss, self.done = uid, 0, 0, threading.Event()

    def run(self):
        while not self.done.is_set():
            anon = pss = 0
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        if os.stat(f"/proc/{pid}").st_uid != self.uid:
                            continue
                    except OSError:
                        continue
                    s = _smaps(pid)
                    anon += s.get("Pss_Anon", 0) + s.get("Pss_Shmem", 0)
                    pss += s.get("Pss", 0)
            self.peak_anon, self.peak_pss = max(self.peak_anon, anon), max(self.peak_pss, pss)
            time.sleep(0.03)


# ---------------------------------------------------------------- memory of the whole job

HOG = '''
import subprocess, sys, time
from arena import Attack

CHILD = """
import time
held = []
for _ in range({steps}):
    held.append(b"x" * ({step_mb} << 20))      # written, so resident
    time.sleep({pause})
time.sleep(60)
"""

class P(Attack):
    def run(self, batch, model, budget):
        kids = [subprocess.Popen([sys.executable, "-S", "-c", CHILD]) for _ in range({n})]
        time.sleep(15)
        return batch.wave
'''


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["cgroup", "watchdog"])
def test_multi_process_memory_hog_is_killed_and_reported(tmp_path, model_file, monkeypatch, mode):
    """Six processes of 700 MB each under a 3.5 GB limit (each alone is far below it):
    the job is stopped with a memory error and never held more than the limit (cgroup),
    or more than the limit plus one watchdog period of allocation (watchdog)."""
    needs_root()
    monkeypatch.setenv("ARENA_SANDBOX_UID", str(HOG_UID))
    limit_mb = 3584
    if mode == "watchdog":
        from arena.sandbox import control

        monkeypatch.setattr(jobs, "JobControl", functools.partial(control.JobControl, use_cgroups=False),
                            raising=False)
        code = HOG.format(steps=35, step_mb=20, pause=0.1, n=6)    # 1.2 GB/s in all
    else:
        code = HOG.format(steps=7, step_mb=100, pause=0.0, n=6)    # as fast as it goes
    sub = make_sub(tmp_path, "hog", code)
    sampler = UidMemory(HOG_UID)
    sampler.start()
    try:
        r = run_attack_job(plugin_spec(sub), model_file, [batch("a")], "snr30",
                           limits=limits(wall_s=60, memory_mb=limit_mb))
    finally:
        sampler.done.set()
        sampler.join()
    held_mb = sampler.peak_anon / 2**20
    print(f"{mode}: held {held_mb:.0f} MB anonymous (PSS {sampler.peak_pss / 2**20:.0f} MB), "
          f"limit {limit_mb} MB; {r.status}: {r.error}; {getattr(r, 'limits_via', '')}")
    assert r.status == "error" and "memory limit of 3584 MB for the whole job" in r.error, r.error
    assert not r.batches[0].ok
    if mode == "cgroup":
        if "memory: cgroup" not in r.limits_via:
            pytest.skip(f"no writable memory cgroup here ({r.limits_via}); the watchdog case covers it")
        # the cgroup's own peak is exact; the sampler sums anonymous memory over processes,
        # which counts copy-on-write pages the forked hogs still share more than once (3590
        # MB was seen once under this 3584 MB limit); the old per-process limits let 4,501 MB
        assert 0 < r.peak_memory_mb <= limit_mb
        assert held_mb <= limit_mb + 64, f"the job held {held_mb:.0f} MB under a {limit_mb} MB limit"
    else:
        assert sampler.peak_pss / 2**20 <= limit_mb + 512, f"the job held {held_mb:.0f} MB"
        assert r.peak_memory_mb > limit_mb        # what the watchdog saw when it killed the job


# ---------------------------------------------------------------- disk

FILLER = r'''
import os, stat, sys
from arena import Attack

class P(Attack):
    def run(self, batch, model, budget):
        chunk = b"x" * (1 << 20)
        if batch.ids[0] == "fill":
            wrote = {}
            for d in ("/sandbox/output", "/tmp", "/dev/shm", os.getcwd(), "/sandbox", "/"):
                n = 0
                try:
                    for k in range(64):                   # 64 files x 8 MB = 512 MB a place
                        with open(os.path.join(d, f"fill-{k}.bin"), "wb") as f:
                            for _ in range(8):
                                f.write(chunk)
                                n += len(chunk)
                except OSError:
                    pass
                wrote[d] = n
            raise RuntimeError("wrote " + " ".join(f"{d}={n}" for d, n in wrote.items()))
        # every pipe it holds may lead to the host: stdout, and the worker's result pipe
        for _ in range(256):
            sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
        for name in os.listdir("/proc/self/fd"):
            try:
                fd = int(name)
                if fd > 2 and stat.S_ISFIFO(os.fstat(fd).st_mode):
                    os.set_blocking(fd, False)       # never wait on a pipe nobody reads
                    os.write(fd, b"result-0.safetensors 999999999\n")
                    for _ in range(256):
                        os.write(fd, chunk)
            except OSError:
                pass
        return batch.wave
'''


class DirBytes(threading.Thread):
    """Peak bytes of the files under a folder (the job folders on the host), `input/` aside."""

    def __init__(self, root: Path):
        super().__init__(daemon=True)
        self.root, self.peak, self.done = root, 0, threading.Event()

    def run(self):
        while not self.done.is_set():
            total = 0
            for dirpath, dirs, files in os.walk(self.root):
                if "input" in dirs:
                    dirs.remove("input")
                for f in files:
                    try:
                        total += os.lstat(os.path.join(dirpath, f)).st_size
                    except OSError:
                        pass
            self.peak = max(self.peak, total)
            time.sleep(0.02)


@pytest.mark.slow
def test_disk_filler_cannot_write_more_than_the_cap_to_the_host(tmp_path, model_file):
    """512 MB to every writable place, 256 MB to stdout and to every pipe: the host's disk
    gets at most what the job's two results legitimately need, the sandbox's tmpfs at most
    its cap, and the refused pipe write stops the job."""
    sub = make_sub(tmp_path, "filler", FILLER)
    work = tmp_path / "work"
    work.mkdir()
    meter = DirBytes(work)
    meter.start()
    try:
        r = run_attack_job(plugin_spec(sub), model_file, [batch("fill"), batch("pipe")], "snr30",
                           workdir=work, limits=limits(wall_s=90, max_file_mb=16, tmp_mb=32))
    finally:
        meter.done.set()
        meter.join()
    # status.json and two results at their caps (0 for the old code, which had no caps)
    allowed = 0
    if hasattr(jobs, "RESULT_SLACK"):
        allowed = jobs.MAX_STATUS_BYTES + 2 * (8000 * 4 + jobs.RESULT_SLACK)
    print(f"host peak {meter.peak} bytes (allowed {allowed}); {r.status}: {r.error[:300]}")
    assert meter.peak <= allowed, f"{meter.peak} bytes reached the host's disk"
    # what it managed inside: each tmpfs stops at its 32 MB cap; nothing else is writable
    wrote = dict(kv.split("=") for kv in r.batches[0].error.splitlines()[0].split("wrote ")[1].split())
    assert int(wrote["/tmp"]) <= 32 << 20 and int(wrote["/dev/shm"]) <= 32 << 20, wrote
    assert all(int(wrote[d]) == 0 for d in ("/sandbox/output", "/sandbox", "/")), wrote
    assert r.status == "error" and "output was refused" in r.error and "over its cap" in r.error
    assert len(r.log) <= 4000
    assert not list(work.iterdir()), "the job folder was left behind"


def test_file_count_is_capped(tmp_path, model_file):
    needs_root()
    code = r'''
import os
from arena import Attack
class P(Attack):
    def run(self, batch, model, budget):
        n = 0
        try:
            for i in range(20000):
                open(f"/tmp/f{i}", "w").close()
                n += 1
        except OSError as e:
            raise RuntimeError(f"made {n} files: {e}")
        raise RuntimeError(f"made {n} files")
'''
    sub = make_sub(tmp_path, "files", code)
    r = run_attack_job(plugin_spec(sub), model_file, [batch("a")], "snr30",
                       limits=limits(wall_s=60, max_files=500))
    made = int(r.batches[0].error.split("made ")[1].split()[0])
    assert made <= 500 + 64 and "No space left" in r.batches[0].error, r.batches[0].error


# ---------------------------------------------------------------- the harness as an ordinary user

ENV_READER = r'''
import os
from arena import Attack
class P(Attack):
    def run(self, batch, model, budget):
        marker = batch.ids[0].encode()            # the value of a variable of the harness
        hits, readable = [], []
        for pid in ["self"] + sorted(p for p in os.listdir("/proc") if p.isdigit()):
            for what in ("environ", "cmdline"):
                try:
                    data = open(f"/proc/{pid}/{what}", "rb").read()
                except OSError:
                    continue
                readable.append(f"{pid}/{what}")
                if marker in data:
                    hits.append(f"{pid}/{what}")
        if any(marker.decode() in v for v in os.environ.values()):
            hits.append("os.environ")
        raise RuntimeError(f"hits={','.join(hits)} readable={','.join(readable)}")
'''

LEFTOVER = r'''
import os, time
from arena import Attack
PLACES = ["/sandbox/output", "/tmp", "/dev/shm", os.getcwd(), os.environ.get("TMPDIR", "/tmp")]
class P(Attack):
    def run(self, batch, model, budget):
        for d in PLACES:
            try:
                top = os.path.join(d, "leftover")
                os.makedirs(top + "/a/b", exist_ok=True)
                with open(top + "/a/b/blob", "wb") as f:
                    f.write(b"x" * (64 << 20))
                os.chmod(top + "/a/b", 0)
                os.chmod(top + "/a", 0)
                os.chmod(top, 0o500)
            except OSError:
                pass
        if os.fork() == 0:                       # keeps writing after the worker returned
            os.setsid()
            for i in range(200):
                for d in PLACES:
                    try:
                        open(os.path.join(d, f"late-{i}"), "w").close()
                    except OSError:
                        pass
                time.sleep(0.05)
            os._exit(0)
        return batch.wave
'''

FILE_SPAM = r'''
import os, time
from arena import Attack
class P(Attack):
    def run(self, batch, model, budget):
        for i in range(5000):
            try:
                open(f"/tmp/f{i}", "w").close()
            except OSError:
                break
        time.sleep(5)
        return batch.wave
'''

DRIVER = r'''
import json, os, sys
from arena.sandbox import SandboxLimits, run_attack_job
from arena.submissions.manifest import plugin_spec
from tests_batch import batch

base, model, marker = sys.argv[1], sys.argv[2], sys.argv[3]
known = set(SandboxLimits.__dataclass_fields__)
def limits(**kw):
    return SandboxLimits(**{k: v for k, v in kw.items() if k in known})
out = {"uid": os.getuid()}
for name, ident, lim in (("env", marker, {}), ("leftover", "a", {}), ("files", "a", {"max_files": 500})):
    r = run_attack_job(plugin_spec(os.path.join(base, name)), model, [batch(ident)], "snr30",
                       limits=limits(wall_s=60, **lim))
    out[name] = {"status": r.status, "error": r.error, "batch": r.batches[0].error,
                 "via": getattr(r, "limits_via", "")}
print("RESULT " + json.dumps(out))
'''

BATCH_MODULE = '''
import torch
from arena.core.audio import AudioBatch
def batch(uid, T=8000):
    g = torch.Generator().manual_seed(0)
    return AudioBatch([uid], (torch.rand(1, T, generator=g) - 0.5) * 0.5, torch.tensor([T]),
                      transcripts=["hello world"])
'''

CLONE_NEWNS, MS_BIND, MS_REC, MS_PRIVATE = 0x20000, 4096, 0x4000, 1 << 18


def _blocked_folders(needed: list[str]) -> dict[str, list[str]]:
    """{folder an ordinary user cannot enter: the needed trees under it} (e.g. /root, which
    holds a pyenv interpreter)."""
    plan: dict[str, list[str]] = {}
    for n in needed:
        for parent in reversed(Path(n).parents):
            p = str(parent)
            if p != "/" and not os.stat(p).st_mode & 0o001:
                plan.setdefault(p, []).append(n)
                break
    return plan


def _as_user(uid: int, plan: dict[str, list[str]]):
    """preexec: a private mount namespace in which each blocked folder is an open tmpfs
    holding only the needed trees (the host's folders are untouched), then become `uid`."""
    libc = ctypes.CDLL(None, use_errno=True)

    def check(rc, what):
        if rc != 0:
            raise OSError(ctypes.get_errno(), what)

    def pre():
        check(libc.unshare(CLONE_NEWNS), "unshare")
        check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
        for blocked, trees in plan.items():
            fds = [os.open(t, os.O_PATH) for t in trees]
            check(libc.mount(b"tmpfs", blocked.encode(), b"tmpfs", 0, b"mode=0755"), "tmpfs")
            for t, fd in zip(trees, fds):
                os.makedirs(t, exist_ok=True)
                check(libc.mount(f"/proc/self/fd/{fd}".encode(), t.encode(), None, MS_BIND | MS_REC, None),
                      "bind")
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)

    return pre


@pytest.fixture(scope="module")
def as_user(model_file):
    """Runs three hostile jobs with the harness as an ordinary user (uid USER_UID, its own
    TMPDIR, a secret marker variable in its environment); yields what came back."""
    if not bwrap.as_root():
        pytest.skip("needs root to start the harness as another, unprivileged user")
    if shutil.which("setpriv") is None and not hasattr(os, "setresuid"):
        pytest.skip("cannot switch users here")
    base = Path(tempfile.mkdtemp(prefix="arena-user-test-"))
    try:
        tmpdir = base / "tmp"
        tmpdir.mkdir()
        for name, code in (("env", ENV_READER), ("leftover", LEFTOVER), ("files", FILE_SPAM)):
            make_sub(base, name, code)
        shutil.copy(model_file, base / "model.safetensors")
        (base / "driver.py").write_text(DRIVER)
        (base / "tests_batch.py").write_text(BATCH_MODULE)
        for p in [base, *base.rglob("*")]:
            os.chown(p, USER_UID, USER_UID)
        os.chmod(base, 0o755)
        marker = f"harness-secret-{os.getpid()}-{time.time_ns()}"
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(base), "TMPDIR": str(tmpdir),
               "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "ARENA_TEST_MARKER": marker,
               "PYTHONPATH": os.pathsep.join([str(base), *filter(None, [os.environ.get("PYTHONPATH")])])}
        needed = sorted({*bwrap.python_roots(), bwrap.arena_package_dir(), str(paths.ROOT)})
        proc = subprocess.run([bwrap.python_executable(), str(base / "driver.py"), str(base),
                               str(base / "model.safetensors"), marker],
                              env=env, cwd=str(base), capture_output=True, text=True, timeout=600,
                              preexec_fn=_as_user(USER_UID, _blocked_folders(needed)))
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if not line and "cannot start" in proc.stdout + proc.stderr:
            pytest.skip(f"bubblewrap cannot start as an ordinary user here: {proc.stderr[-500:]}")
        assert line, f"the harness failed as uid {USER_UID}: {proc.stdout[-2000:]} {proc.stderr[-3000:]}"
        result = json.loads(line[0][len("RESULT "):])
        result["marker"] = marker
        result["tmp_left"] = sorted(str(p.relative_to(tmpdir)) for p in tmpdir.iterdir())
        yield result
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def _env_report(err: str) -> tuple[list[str], list[str]]:
    import re

    m = re.search(r"hits=(\S*) readable=(\S*)", err)
    assert m, err
    return [h for h in m.group(1).split(",") if h], m.group(2).split(",")


def test_environment_is_invisible_as_an_ordinary_user(as_user):
    """Not in its own environment, nor in /proc/<pid>/environ of any process it can see
    (the sandbox's first process, a copy of bwrap, kept the environment bwrap got)."""
    assert as_user["uid"] == USER_UID
    hits, readable = _env_report(as_user["env"]["batch"])
    assert "1/environ" in readable, readable        # the check could see the first process
    assert hits == [], f"the harness's variable was visible in: {hits}"


def test_environment_is_invisible_as_root(tmp_path, model_file, monkeypatch):
    needs_root()
    marker = f"harness-secret-{os.getpid()}-{time.time_ns()}"
    monkeypatch.setenv("ARENA_TEST_MARKER", marker)
    sub = make_sub(tmp_path, "env", ENV_READER)
    r = run_attack_job(plugin_spec(sub), model_file, [batch(marker)], "snr30", limits=limits(wall_s=60))
    hits, readable = _env_report(r.batches[0].error)
    # (as root its own environ is unreadable too: setresuid made the worker non-dumpable)
    assert "self/cmdline" in readable and hits == [], (hits, readable)


def test_leftover_folder_plugin_leaves_nothing_in_the_host_temp_dir(as_user):
    """chmod-000 folders holding 64 MB, and a detached child still writing after the
    worker returned: the ordinary-user harness's temp folder is empty afterwards."""
    assert as_user["leftover"]["status"] == "ok", as_user["leftover"]
    assert as_user["tmp_left"] == [], f"left in the host's temp folder: {as_user['tmp_left']}"


def test_leftover_folder_plugin_as_root(tmp_path, model_file, monkeypatch):
    needs_root()
    tmp = tmp_path / "host-tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    sub = make_sub(tmp_path, "leftover", LEFTOVER)
    r = run_attack_job(plugin_spec(sub), model_file, [batch("a")], "snr30", limits=limits(wall_s=60))
    assert r.status == "ok", r.error
    time.sleep(1)
    assert list(tmp.iterdir()) == []


def test_file_count_watchdog_as_an_ordinary_user(as_user):
    """Without root the worker cannot remount /tmp with nr_inodes: the watchdog counts."""
    res = as_user["files"]
    assert res["status"] == "error" and "file-count limit of 500" in (res["error"] or ""), res


# ---------------------------------------------------------------- what is mounted

READER = r'''
import json, os
from arena import Defense
class P(Defense):
    def transcribe(self, batch, model):
        probes = json.load(open(os.path.join(os.path.dirname(__file__), "probes.json")))
        found = []
        for p in probes:
            try:
                if os.path.isdir(p):
                    if os.listdir(p):
                        found.append(p)
                else:
                    with open(p, "rb") as f:
                        f.read(16)
                    found.append(p)
            except OSError:
                pass
        return [" ".join(found)] + [""] * (len(batch.ids) - 1)
'''


def _data_files(folder: Path, limit: int = 40) -> list[str]:
    out = []
    if folder.is_dir():
        for p in sorted(folder.rglob("*")):
            if p.is_file() and p.suffix not in (".py", ".pyc"):
                out.append(str(p.resolve()))
                if len(out) >= limit:
                    break
    return out


def test_defense_finds_no_zoo_model_corpus_or_store(tmp_path, model_file):
    """Every zoo model and card, every baseline, the corpus manifests, the results store,
    installed submissions, the checkout and ~/.cache: none can be opened from inside; the
    package's code and the job's own model can."""
    probes = []
    for folder in (paths.zoo_dir(), paths.baselines_dir(), paths.data_dir(), paths.leaderboard_dir(),
                   paths.submissions_dir(), paths.runs_dir()):
        probes += _data_files(Path(folder))
    probes += [str(p.resolve()) for p in Path(paths.data_dir()).glob("*/*.jsonl")]
    probes += [str(paths.ROOT / "pyproject.toml"), str(paths.ROOT / "README.md"),
               str(paths.ROOT / ".git" / "HEAD"), os.path.expanduser("~/.cache")]
    zoo_models = [p for p in probes if p.endswith(".safetensors")]
    assert zoo_models, "no zoo model files to try"
    controls = [str(Path(paths.PACKAGE, "zoo", "registry.py")), "/sandbox/input/model.safetensors"]
    sub = make_sub(tmp_path, "reader", READER, "defense")
    (sub / "probes.json").write_text(json.dumps(probes + controls))
    b = AudioBatch(["x"], torch.rand(1, 8000) - 0.5, torch.tensor([8000]))
    r = run_defense_job(plugin_spec(sub), model_file, [b], limits=limits(wall_s=60))
    assert r.status == "ok", r.error
    found = r.batches[0].transcripts[0].split()
    assert set(found) == set(controls), f"readable from inside: {sorted(set(found) - set(controls))}"


def test_site_packages_install_hides_corpus_and_zoo(tmp_path, monkeypatch):
    """A non-editable install: the package in site-packages with data/, runs/ and the results
    store next to it, the zoo inside it. Only code and other packages are visible."""
    site = tmp_path / "env" / "site-packages"
    pkg = site / "arena"
    for d in ("zoo/cards", "core", "zoo/__pycache__"):
        (pkg / d).mkdir(parents=True)
    for f in ("__init__.py", "core/__init__.py", "core/paths.py", "zoo/__init__.py", "zoo/registry.py",
              "zoo/__pycache__/registry.cpython-311.pyc"):
        (pkg / f).write_text("# code\n")
    (pkg / "zoo" / "dense.safetensors").write_bytes(b"weights")
    (pkg / "zoo" / "cards" / "dense.json").write_text("{}")
    secret = {"data/voice/dev.jsonl": "answers", "runs/ckpt.pt": "w", "leaderboard/results.sqlite": "s",
              "submissions/other/attack.py": "x", "baselines/pgd/attack.py": "x"}
    for rel, text in secret.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    (site / "otherpkg").mkdir()
    (site / "otherpkg" / "__init__.py").write_text("x = 1\n")
    real_roots = bwrap.python_roots()
    monkeypatch.setattr(bwrap, "python_roots", lambda: [*real_roots, str(site)])
    monkeypatch.setattr(bwrap, "arena_package_dir", lambda: str(pkg))
    visible = ["arena/__init__.py", "arena/core/paths.py", "arena/zoo/registry.py",
               "arena/zoo/__pycache__/registry.cpython-311.pyc", "otherpkg/__init__.py"]
    hidden = ["arena/zoo/dense.safetensors", "arena/zoo/cards/dense.json", *secret]
    probe = ("import os, sys\nfor p in sys.argv[1:]:\n    print(p, os.path.exists(p))\n")
    (tmp_path / "in").mkdir()
    args = [str(site / p) for p in visible + hidden]
    try:
        cmd = bwrap.build_command(str(tmp_path / "in"), [bwrap.python_executable(), "-S", "-c", probe, *args],
                                  env={})
    except TypeError:   # the old signature (input, output, argv)
        (tmp_path / "out").mkdir()
        cmd = bwrap.build_command(str(tmp_path / "in"), str(tmp_path / "out"),
                                  [bwrap.python_executable(), "-S", "-c", probe, *args], env={})
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    seen = dict(line.rsplit(" ", 1) for line in out.stdout.splitlines())
    assert len(seen) == len(args), out.stderr
    for p in visible:
        assert seen[str(site / p)] == "True", p
    leaked = [p for p in hidden if seen[str(site / p)] != "False"]
    assert not leaked, f"visible in the sandbox: {leaked}"


# ---------------------------------------------------------------- status.json from the job

def test_hostile_status_json_gives_a_clear_error(tmp_path):
    """Each payload is refused with an error naming the file and what is wrong, quickly,
    with no exception escaping."""
    payloads = {
        "deep": (b"[" * 200_000 + b"]" * 200_000, "nested 200000 levels deep"),
        "deep-object": (b'{"a":' * 50 + b"1" + b"}" * 50, "nested 50 levels deep"),
        "huge-int": (b'{"forward_calls": 1' + b"0" * 100_000 + b"}", "digits"),
        "huge-float": (b'{"started_at": 1e999999}', "out of range"),
        "nan": (b'{"started_at": NaN}', "NaN is not a number"),
        "infinity": (b'{"loaded_at": -Infinity}', "Infinity is not a number"),
        "not-json": (b'{"batches": [', "not valid JSON"),
        "not-utf8": (b'{"load_error": "\xff"}', "not UTF-8"),
        "list": (b"[1, 2]", "top level must be an object"),
        "batches-type": (b'{"batches": "all ok"}', "batches must be a list"),
        "ok-type": (b'{"batches": [{"ok": "yes"}]}', "batches[0].ok must be true or false"),
        "seconds-type": (b'{"batches": [{"ok": true, "seconds": "1"}]}', "batches[0].seconds"),
        "negative-calls": (b'{"forward_calls": -1}', "forward_calls must be a whole number"),
        "error-type": (b'{"batches": [{"ok": false, "error": 12}]}', "batches[0].error must be"),
        "transcripts": (b'{"batches": [{"ok": true, "transcripts": [1]}]}', "transcripts must be a list"),
        "too-many": (b'{"batches": [{"ok": true}, {"ok": true}]}', "2 entries for 1 batches"),
    }
    for name, (data, expect) in payloads.items():
        out = tmp_path / name
        out.mkdir()
        (out / "status.json").write_bytes(data)
        t = time.time()
        status, why = jobs._read_status(out, 1)
        assert time.time() - t < 2, f"{name}: took {time.time() - t:.1f} s"
        assert status == {} and why and why.startswith("status.json") and expect in why, (name, why)



def test_lone_surrogates_in_job_json_become_question_marks():
    """A "\\ud800" escape is valid JSON but no character: SQLite (and any UTF-8 file or
    terminal) refuses it, so it must not reach the store in an error text or a transcript."""
    value = jobs.parse_untrusted_json(
        b'{"load_error": "a\\ud800b", "\\udfff": ["\\ud83d\\ude00 ok", {"t": "\\udc00"}]}')
    assert value == {"load_error": "a?b", "?": ["\U0001F600 ok", {"t": "?"}]}   # a pair stays
    for text in (value["load_error"], value["?"][0]):
        text.encode("utf-8")

STATUS_FORGER = r'''
import os, sys
from arena import Attack
class P(Attack):
    def run(self, batch, model, budget):
        payload = {"deep": b"[" * 100_000 + b"]" * 100_000,
                   "huge": b'{"done": true, "forward_calls": 1' + b"0" * 100_000 + b"}"}[batch.ids[0]]
        try:
            from arena.sandbox.channel import send
            send(int(sys.argv[-1]), "status.json", payload)   # the worker's own pipe
        except ImportError:                                   # (older versions: a file)
            open("/sandbox/output/status.json", "wb").write(payload)
        os._exit(0)
'''


@pytest.mark.parametrize("kind,expect", [("deep", "nested 100000 levels deep"), ("huge", "digits")])
def test_forged_status_from_inside_the_sandbox(tmp_path, model_file, kind, expect):
    sub = make_sub(tmp_path, "forger", STATUS_FORGER)
    r = run_attack_job(plugin_spec(sub), model_file, [batch(kind)], "snr30", limits=limits(wall_s=60))
    assert r.status == "error" and "status.json" in r.error and expect in r.error, r.error
    assert "Traceback" not in r.error
    assert not r.batches[0].ok and r.forward_calls == 0


# ---------------------------------------------------------------- jobs side by side

THREAD_HOG = r'''
import threading, time
from arena import Attack
class P(Attack):
    def run(self, batch, model, budget):
        n = 0
        try:
            while n < 1000:   # as many as it may start
                threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
                n += 1
        except RuntimeError:
            pass
        time.sleep(5)
        return batch.wave
'''
WANTS_THREADS = r'''
import threading, time
from arena import Defense
class P(Defense):
    def transcribe(self, batch, model):
        time.sleep(3)          # meanwhile the other job takes its whole allowance
        threads = [threading.Thread(target=time.sleep, args=(0.01,)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return ["eight threads"] * len(batch.ids)
'''


def test_a_jobs_threads_do_not_stop_a_rival_starting_its_own(tmp_path, model_file, monkeypatch):
    """Every job runs as the same host user, and RLIMIT_NPROC counts per user: a bound
    there is shared by the jobs in flight, so a job that took its whole allowance made a
    running rival's thread start fail (its cells stored as failures). A job with a pids
    cgroup of its own is bounded there instead."""
    needs_root()
    monkeypatch.setenv("ARENA_SANDBOX_UID", str(HOG_UID))
    rival_sub = make_sub(tmp_path, "rival", WANTS_THREADS, "defense")
    hog_sub = make_sub(tmp_path, "hog", THREAD_HOG)
    out: dict = {}
    rival = threading.Thread(target=lambda: out.setdefault("rival", run_defense_job(
        plugin_spec(rival_sub), model_file, [batch("r")], limits=limits(wall_s=60))))
    rival.start()
    deadline = time.time() + 30
    while bwrap.count_threads(HOG_UID) == 0 and time.time() < deadline:   # the rival runs
        time.sleep(0.02)
    started = time.time()
    hog = threading.Thread(target=lambda: out.setdefault("hog", run_attack_job(
        plugin_spec(hog_sub), model_file, [batch("h")], "snr30", limits=limits(wall_s=60))))
    hog.start()
    while bwrap.count_threads(HOG_UID) < 60 and time.time() < deadline:
        time.sleep(0.02)
    full_after = time.time() - started
    rival.join()
    hog.join()
    assert out["hog"].status == "ok", out["hog"].error
    r = out["rival"]
    if "pids: cgroup" not in r.limits_via:
        pytest.skip(f"no pids cgroup here ({r.limits_via}): RLIMIT_NPROC is the only bound")
    assert full_after < 2.5, f"the hog took {full_after:.1f} s to fill: the order was not tested"
    assert r.status == "ok" and r.batches[0].transcripts == ["eight threads"], r.error
