"""The sandbox against hostile plugins: each fails alone, with a clear error, and a good
submission run right after it still works. Real bubblewrap, real tiny torch models."""
import os
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from arena.core import paths
from arena.core.audio import AudioBatch
from arena.sandbox import SandboxLimits, bwrap, run_attack_job, run_defense_job
from arena.sandbox.control import TASK_SLACK
from arena.submissions.manifest import plugin_spec

TOML = 'name = "{name}"\ntrack = "{track}"\nentry = "plugin:P"\nauthors = ["t"]\nversion = "1"\n'

GOOD = """
from arena import Attack
class P(Attack):
    def run(self, batch, model, budget):
        g = model.gradient(batch.wave, batch.lengths, batch.transcripts)
        return batch.wave + 1e-4 * g.sign()
"""

HOSTILE = r'''
import os, socket, torch
from arena import Attack

def _read_all(paths):
    found = []
    for p in paths:
        try:
            found.append(open(p).read())
        except Exception as e:
            found.append(f"{type(e).__name__}")
    return found

class P(Attack):
    def run(self, batch, model, budget):
        what, _, arg = batch.ids[0].partition("=")
        if what == "socket":
            s = socket.create_connection(("127.0.0.1", int(arg)), timeout=2)
            s.sendall(b"leak")
            return batch.wave
        if what == "write":
            for p in arg.split("|"):
                try:
                    open(p, "w").write("pwned")
                except OSError:
                    pass
            raise RuntimeError("could not write anywhere")
        if what == "read":
            raise RuntimeError("read: " + " / ".join(_read_all(arg.split("|"))))
        if what == "env":
            raise RuntimeError("env: " + repr(os.environ.get("ARENA_SECRET")) + " " + repr(dict(os.environ)))
        if what == "nan":
            return batch.wave * float("nan")
        if what == "shape":
            return batch.wave[:, :-7]
        if what == "dtype":
            return batch.wave.double()
        if what == "memory":
            chunks = []
            while True:
                chunks.append(bytearray(256 << 20))   # address space runs out: MemoryError
        if what == "loop":
            while True:
                pass
        return batch.wave + 1e-3
'''


def make_sub(root: Path, name: str, code: str, track: str = "attack") -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "submission.toml").write_text(TOML.format(name=name, track=track))
    (d / "plugin.py").write_text(code)
    return d


def batch(uid: str, T: int = 8000, seed: int = 0) -> AudioBatch:
    g = torch.Generator().manual_seed(seed)
    return AudioBatch([uid], (torch.rand(1, T, generator=g) - 0.5) * 0.5,
                      torch.tensor([T]), transcripts=["hello world"])


def assert_good_still_runs(root: Path, model_file) -> None:
    good = make_sub(root, f"good-{time.time_ns() % 10**8}", GOOD)
    r = run_attack_job(plugin_spec(good), model_file, [batch("g1"), batch("g2", 6000)], "snr30",
                       limits=SandboxLimits(wall_s=60))
    assert r.status == "ok", r.error
    assert all(o.ok and o.adv.shape == (1, o.adv.shape[1]) for o in r.batches)
    assert r.forward_calls == 2 and r.backward_calls == 2


def sandbox_uid_threads() -> int:
    return bwrap.count_threads(bwrap.host_uid()) if bwrap.as_root() else 0


@pytest.fixture(autouse=True)
def _no_sandbox_leftovers(monkeypatch):
    # a sandbox uid of this test run's own: sandbox jobs of other runs on the same machine
    # (uid 65500 by default) must not count as this run's leftovers
    monkeypatch.setenv("ARENA_SANDBOX_UID", str(60000 + os.getpid() % 5000))
    yield
    if bwrap.as_root():
        deadline = time.time() + 5
        while sandbox_uid_threads() and time.time() < deadline:
            time.sleep(0.1)
        assert sandbox_uid_threads() == 0, "sandbox processes outlived their job"


def test_hostile_batches_fail_alone_and_leak_nothing(tmp_path, model_file, monkeypatch):
    secret = f"s3cr3t-{os.getpid()}-{time.time_ns()}"
    monkeypatch.setenv("ARENA_SECRET", secret)
    data, subs = tmp_path / "data", tmp_path / "submissions"
    monkeypatch.setenv("ARENA_DATA", str(data))
    monkeypatch.setenv("ARENA_SUBMISSIONS", str(subs))
    (data / "dev").mkdir(parents=True)
    (data / "dev" / "secret.txt").write_text(secret)
    other = make_sub(subs, "other", GOOD)
    (other / "secret.txt").write_text(secret)
    repo_secret = paths.ROOT / f".test-secret-{os.getpid()}"
    repo_secret.write_text(secret)
    outside = [str(tmp_path / "pwned.txt"), str(paths.ROOT / f".pwned-{os.getpid()}"),
               "/tmp/pwned-by-plugin", "/sandbox/input/pwned", str(paths.PACKAGE / "pwned.py")]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    try:
        hostile = make_sub(tmp_path / "subs2", "hostile", HOSTILE)
        names = [f"socket={port}", "write=" + "|".join(outside),
                 "read=" + "|".join([str(repo_secret), str(other / "secret.txt"),
                                     str(data / "dev" / "secret.txt")]),
                 "env", "nan", "shape", "dtype", "fine"]
        batches = [batch(n, seed=i) for i, n in enumerate(names)]
        r = run_attack_job(plugin_spec(hostile), model_file, batches, "snr30",
                           limits=SandboxLimits(wall_s=60))
    finally:
        repo_secret.unlink()
    try:
        conn, _ = listener.accept()
        conn.close()
        got_connection = True
    except (TimeoutError, BlockingIOError):
        got_connection = False
    listener.close()
    assert not got_connection, "the plugin reached a listener on the host"
    out = dict(zip(names, r.batches))
    assert r.status == "error" and "7 of 8 batches failed" in r.error
    # its own network namespace: only its own loopback, where nobody listens
    assert not out[names[0]].ok
    assert any(w in out[names[0]].error for w in ("Connection refused", "unreachable", "timed out"))
    assert not out[names[1]].ok
    for p in outside:
        assert not Path(p).exists(), p
    assert "FileNotFoundError" in out[names[2]].error and secret not in out[names[2]].error
    first_line = out["env"].error.splitlines()[0]
    assert first_line.startswith("RuntimeError: env: None {") and "ARENA" not in first_line
    assert out["nan"].error == "output contains NaN or Inf"
    assert "shape (1, 7993)" in out["shape"].error
    assert "torch.float64" in out["dtype"].error
    assert out["fine"].ok and out["fine"].adv.dtype == torch.float32
    blob = " ".join(str(o.error) for o in r.batches) + r.log + str(r.error)
    assert secret not in blob
    assert r.startup_s > 0 and r.wall_s >= r.startup_s
    assert_good_still_runs(tmp_path, model_file)


def test_fork_bomb_is_capped_and_killed(tmp_path, model_file):
    code = GOOD.replace("g = model", "import os, time\n        while True:\n"
                        "            try:\n                os.fork()\n"
                        "            except OSError:\n                time.sleep(0.01)\n        g = model")
    bomb = make_sub(tmp_path, "bomb", code)
    peak = [0]
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], sandbox_uid_threads())
            time.sleep(0.05)

    t = threading.Thread(target=watch)
    t.start()
    try:
        r = run_attack_job(plugin_spec(bomb), model_file, [batch("a")], "snr30",
                           limits=SandboxLimits(wall_s=10, max_procs=24))  # start-up under load
    finally:
        done.set()
        t.join()
    assert r.status == "timeout" and "wall-clock" in r.error
    assert not r.batches[0].ok
    if bwrap.as_root():
        # bounded by the job's pids cgroup (which also holds the sandbox's own processes),
        # or where there is none by RLIMIT_NPROC
        bound = 24 + (TASK_SLACK if "pids: cgroup" in r.limits_via else 2)
        assert 0 < peak[0] <= bound, f"{peak[0]} sandbox processes: the process limit did not hold"
    assert_good_still_runs(tmp_path, model_file)


def test_memory_bomb_fails_its_batch_only(tmp_path, model_file):
    sub = make_sub(tmp_path, "mem", HOSTILE)
    r = run_attack_job(plugin_spec(sub), model_file, [batch("memory"), batch("fine")], "snr30",
                       limits=SandboxLimits(wall_s=60, memory_mb=4096))
    assert not r.batches[0].ok and "MemoryError" in r.batches[0].error
    assert r.batches[1].ok


def test_infinite_loop_times_out_and_keeps_finished_batches(tmp_path, model_file):
    sub = make_sub(tmp_path, "loop", HOSTILE)
    t = time.time()
    r = run_attack_job(plugin_spec(sub), model_file, [batch("fine"), batch("loop"), batch("fine")], "snr30",
                       limits=SandboxLimits(wall_s=6))
    assert time.time() - t < 20
    assert r.status == "timeout"
    assert r.batches[0].ok and r.batches[0].adv is not None
    assert not r.batches[1].ok and "wall-clock" in r.batches[1].error
    assert not r.batches[2].ok
    assert_good_still_runs(tmp_path, model_file)


def test_detached_children_do_not_outlive_the_job(tmp_path, model_file):
    marker = f"98{os.getpid() % 1000}.{time.time_ns() % 1000}"
    code = GOOD.replace("g = model", f"""import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv("/usr/bin/sleep", ["sleep", "{marker}"])
            os._exit(0)
        time.sleep(1.0)
        g = model""")
    sub = make_sub(tmp_path, "detach", code)
    r = run_attack_job(plugin_spec(sub), model_file, [batch("a")], "snr30", limits=SandboxLimits(wall_s=60))
    assert r.status == "ok", r.error
    time.sleep(0.3)
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read()
            except OSError:
                continue
            assert marker.encode() not in cmd, f"detached child {pid} survived: {cmd!r}"


def test_file_bomb_is_stopped_by_the_file_size_limit(tmp_path, model_file):
    code = GOOD.replace("g = model", """chunk = b"x" * (1 << 20)
        with open("/tmp/big.bin", "wb") as f:
            for _ in range(10 * 1024):   # 10 GB
                f.write(chunk)
        g = model""")
    sub = make_sub(tmp_path, "fbomb", code)
    work = tmp_path / "work"
    r = run_attack_job(plugin_spec(sub), model_file, [batch("a")], "snr30", workdir=work,
                       limits=SandboxLimits(wall_s=60, max_file_mb=16))
    assert r.status == "error" and not r.batches[0].ok
    assert "SIGXFSZ" in r.error or "File too large" in r.batches[0].error
    assert not list(work.rglob("*")), "the job left files in its work folder"


def test_defense_job_and_wrong_transcripts(tmp_path, model_file):
    good = make_sub(tmp_path, "lp", "from arena import Defense\nclass P(Defense):\n    pass\n", "defense")
    bad = make_sub(tmp_path, "bad", "from arena import Defense\nclass P(Defense):\n"
                   "    def transcribe(self, batch, model):\n"
                   "        return ['a'] * (len(batch.ids) + 1) if batch.ids[0] == 'x0' else [1]\n",
                   "defense")
    b = [AudioBatch(["x0", "x1"], torch.rand(2, 8000) - 0.5, torch.tensor([8000, 4000])),
         AudioBatch(["x2"], torch.rand(1, 4000) - 0.5, torch.tensor([4000]))]
    r = run_defense_job(plugin_spec(bad), model_file, b, limits=SandboxLimits(wall_s=60))
    assert "3 transcripts for 2 utterances" in r.batches[0].error
    assert "str" in r.batches[1].error
    r = run_defense_job(plugin_spec(good), model_file, b, limits=SandboxLimits(wall_s=60))
    assert r.status == "ok" and [len(o.transcripts) for o in r.batches] == [2, 1]
    assert r.forward_calls == 2


def test_attack_submission_cannot_run_as_defense(tmp_path, model_file):
    sub = make_sub(tmp_path, "atk", GOOD)
    r = run_defense_job(plugin_spec(sub), model_file, [batch("a")])
    assert r.status == "error" and "not a defense" in r.error


def test_sandbox_keeps_a_virtual_environment_under_tmp(tmp_path):
    """A venv's python is a symlink to the base interpreter: the sandbox must start it by
    its own path (or the venv is lost), and a venv under the host's /tmp must stay visible
    through the sandbox's private /tmp."""
    import site
    import subprocess
    import venv

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(symlinks=True, with_pip=False).create(env_dir)
    # the new environment sees this one's packages (arena, torch), wherever they live; the
    # import line makes site read their .pth files too (an editable install's finder)
    site_dir = next((env_dir / "lib").glob("python3*/site-packages"))
    (site_dir / "outer.pth").write_text(
        "".join(f"import site; site.addsitedir({d!r})\n" for d in site.getsitepackages()))
    (tmp_path / "in").mkdir()
    probe = ("import subprocess; from arena.sandbox import bwrap; "
             f"cmd = bwrap.build_command({str(tmp_path / 'in')!r}, "
             "[bwrap.python_executable(), '-c', 'import sys, arena; print(sys.prefix)'], env={}); "
             "r = subprocess.run(cmd, capture_output=True, text=True); print(r.stdout + r.stderr)")
    # run from elsewhere, so arena is not found through the working directory
    out = subprocess.run([str(env_dir / "bin" / "python"), "-c", probe], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == str(env_dir), out.stdout


MARKED = """
from arena import Attack
import arena.sandbox.marker   # only in the copy the harness imported
class P(Attack):
    def run(self, batch, model, budget):
        return batch.wave
"""


def test_the_worker_runs_the_arena_the_harness_imported(tmp_path, model_file):
    """A copy of the package on PYTHONPATH (a worktree, a checkout that is not installed):
    the sandboxed worker must import that copy, not what site-packages points at (the
    worker runs with -I, which drops PYTHONPATH)."""
    import shutil
    import subprocess
    import sys

    copy = tmp_path / "tree" / "arena"
    shutil.copytree(paths.PACKAGE, copy, ignore=shutil.ignore_patterns("*.safetensors", "__pycache__"))
    (copy / "sandbox" / "marker.py").write_text("")
    sub = tmp_path / "marked"
    sub.mkdir()
    (sub / "submission.toml").write_text(TOML.format(name="marked", track="attack"))
    (sub / "plugin.py").write_text(MARKED)
    script = (
        "import sys, torch, arena\n"
        "from arena.core.audio import AudioBatch\n"
        "from arena.sandbox import run_attack_job\n"
        "from arena.submissions.manifest import plugin_spec\n"
        f"assert arena.__file__.startswith({str(copy)!r}), arena.__file__\n"
        "b = AudioBatch(['u'], torch.zeros(1, 1600), torch.tensor([1600]), transcripts=['a'])\n"
        f"r = run_attack_job(plugin_spec({str(sub)!r}), {str(model_file)!r}, [b], 'snr30')\n"
        "print(r.status, r.error)\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "tree")}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.stdout.strip() == "ok None", out.stdout + out.stderr


def test_a_killed_harness_leaves_no_job_folder_behind(tmp_path, model_file):
    """SIGKILL gives the harness no chance to clean up: the next harness's first job sweeps
    the folders whose owner is gone, and never a live harness's folder or a link."""
    import signal
    import subprocess
    import sys

    from arena.sandbox.jobs import sweep_stale_jobdirs

    sub = make_sub(tmp_path / "subs", "sleeper", "import time\nfrom arena import Attack\n"
                   "class P(Attack):\n    def run(self, batch, model, budget):\n"
                   "        time.sleep(600)\n", track="attack")
    base = tmp_path / "tmp"
    base.mkdir()
    code = ("import sys, torch\nfrom arena.core.audio import AudioBatch\n"
            "from arena.sandbox import run_attack_job\nfrom arena.submissions.manifest import plugin_spec\n"
            f"b = AudioBatch(['a'], torch.zeros(1, 8000), torch.tensor([8000]), transcripts=['hi'])\n"
            f"run_attack_job(plugin_spec({str(sub)!r}), {str(model_file)!r}, [b], 'snr30')\n")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "TMPDIR": str(base)})
    deadline = time.time() + 60
    while not list(base.glob("arena-job-*/*/input/job.json")) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = list(base.glob("arena-job-*"))
    assert len(killed) == 1 and killed[0].name.startswith(f"arena-job-{proc.pid}-")
    live = base / f"arena-job-{os.getpid()}-{_start_of(os.getpid())}-live"
    live.mkdir()
    target = tmp_path / "not-ours"
    target.mkdir()
    link = base / f"arena-job-{proc.pid}-1-link"
    link.symlink_to(target)
    assert sweep_stale_jobdirs(str(base)) == [str(killed[0])]
    assert not killed[0].exists() and live.is_dir() and link.is_symlink() and target.is_dir()


def _start_of(pid: int) -> int:
    from arena.sandbox.jobs import _process_start

    start = _process_start(pid)
    assert start is not None
    return start
