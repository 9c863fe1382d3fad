"""The rounds of one defense run as children of one zygote (arena/sandbox/zygote.py), in the
real sandbox: the same answers as one sandbox job per round, start-up paid once, and
nothing a round leaves behind (files, processes, sockets, kernel keys, the other rounds'
input) reaches a later round.
"""
from __future__ import annotations

import pytest
import torch

from arena.core.audio import AudioBatch
from arena.sandbox import bwrap
from arena.sandbox.jobs import SandboxLimits, run_defense_job, run_defense_rounds
from arena.submissions.manifest import plugin_spec
from arena.zoo import registry
from tests.test_score_run import _sub

pytestmark = pytest.mark.skipif(bwrap.probe() is not None or not bwrap.as_root(),
                                reason="the zygote runs where the sandbox maps a user (as root)")

ECHO = '''
from arena import Defense

class P(Defense):
    def transcribe(self, batch, model):
        return [f"{float(batch.wave[i, : int(batch.lengths[i])].sum()):.4f}"
                for i in range(len(batch.ids))]
'''

# looks for what an earlier round may have left, then leaves all of it itself
COVERT = '''
import ctypes, fcntl, glob, os, socket, time
from arena import Defense

libc = ctypes.CDLL(None, use_errno=True)
KEY = b"arena-covert"

def found():
    out = []
    for path in ("/tmp/arena-covert", "/dev/shm/arena-covert"):
        if os.path.exists(path):
            out.append(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect("\\0arena-covert")
        out.append("socket")
    except OSError:
        pass
    s.close()
    if libc.syscall(250, 10, ctypes.c_int(-4), b"user", KEY, 0) > 0:   # keyctl search @u
        out.append("key")
    for name in glob.glob("/sandbox/input/round-*"):
        try:
            open(name, "rb").read(1)
            out.append("input:" + os.path.basename(name))
        except OSError:
            pass
    with open("/proc/net/dev") as f:   # loopback traffic of an earlier round
        lo = [line.split() for line in f if line.strip().startswith("lo:")]
    if lo and int(lo[0][1]) > 0:
        out.append("loopback")
    if fcntl.fcntl(0, fcntl.F_GETFL) & os.O_APPEND:   # flags of a shared open file
        out.append("stdin-flags")
    if libc.unshare(0x10000000) == 0:   # a user namespace (with capabilities) of its own
        out.append("userns")
    return out

def plant():
    out = []
    for path in ("/tmp/arena-covert", "/dev/shm/arena-covert"):
        with open(path, "w") as f:
            f.write("round")
        out.append(path)
    if libc.syscall(248, b"user", KEY, b"x", 1, ctypes.c_int(-4)) > 0:   # add_key to @u
        out.append("key")
    r, w = os.pipe()
    if os.fork() == 0:   # a daemon holding an abstract socket
        os.setsid()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind("\\0arena-covert")
        s.listen(1)
        os.write(w, b"1")
        time.sleep(600)
        os._exit(0)
    if os.read(r, 1) == b"1":
        out.append("socket")
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"x" * 1000, ("127.0.0.1", 40000))
    u.close()
    fcntl.fcntl(0, fcntl.F_SETFL, fcntl.fcntl(0, fcntl.F_GETFL) | os.O_APPEND)
    return out

class P(Defense):
    def transcribe(self, batch, model):
        text = "found=" + ",".join(found()) + " planted=" + ",".join(plant())
        return [text] * len(batch.ids)
'''

HANGS_ON_PAIRS = '''
import time
from arena import Defense

class P(Defense):
    def transcribe(self, batch, model):
        if len(batch.ids) == 2:
            time.sleep(600)
        return ["x"] * len(batch.ids)
'''


def _rounds(sizes: list[int]) -> list[list[AudioBatch]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for k, n in enumerate(sizes):
        wave = torch.randn(n, 8000, generator=g) * 0.05
        out.append([AudioBatch(ids=[f"r{k}-{i}" for i in range(n)], wave=wave,
                               lengths=torch.full((n,), 8000))])
    return out


def _spec(tmp_path, code: str):
    _sub(tmp_path, "rounds", "defense", code)
    return plugin_spec(tmp_path / "rounds")


def test_rounds_in_one_zygote_answer_as_separate_jobs_and_start_once(tmp_path):
    spec, model = _spec(tmp_path, ECHO), registry.resolve("dense")
    rounds = _rounds([2, 1, 2, 1])
    together = run_defense_rounds(spec, model, rounds)
    apart = [run_defense_job(spec, model, r) for r in rounds]
    assert [r.status for r in together] == ["ok"] * 4, [r.error for r in together]
    assert [[b.transcripts for b in r.batches] for r in together] == \
        [[b.transcripts for b in r.batches] for r in apart]
    # torch and the model are loaded once, by the zygote (or torch by the slot's fork
    # server before it, slot.py); each round only forks
    assert all(r.startup_s < 0.3 for r in together[1:]), [r.startup_s for r in together]


@pytest.mark.parametrize("zygote", [True, False])
def test_trusted_rounds_answer_alike_and_keep_the_failure_policy(tmp_path, monkeypatch, zygote):
    # --trusted (the organiser's own code, no sandbox) runs the same zygote without the
    # namespaces; rounds apart (each its own job) is what runs where no zygote can
    from arena.sandbox import jobs

    monkeypatch.setattr(jobs, "_zygote_works", [zygote])
    spec, model = _spec(tmp_path, ECHO), registry.resolve("dense")
    rounds = _rounds([2, 1, 2])
    results = run_defense_rounds(spec, model, rounds, trusted=True)
    alone = [run_defense_job(spec, model, r, trusted=True) for r in rounds[:1]]
    assert [r.status for r in results] == ["ok"] * 3, [r.error for r in results]
    assert [b.transcripts for b in results[0].batches] == [b.transcripts for b in alone[0].batches]
    assert [len(b.transcripts) for r in results for b in r.batches] == [2, 1, 2]
    # one start (torch, the model) for all rounds, or one per round
    assert all((r.startup_s < 0.3) == zygote for r in results[1:]), [r.startup_s for r in results]
    hangs = _spec(tmp_path / "hangs", HANGS_ON_PAIRS)
    results = run_defense_rounds(hangs, model, _rounds([1, 2, 1]), trusted=True,
                                 limits=SandboxLimits(wall_s=4))
    assert [r.status for r in results] == ["ok", "timeout", "timeout"], [r.error for r in results]
    assert results[2].wall_s == 0.0   # carried unrun


def test_nothing_a_round_leaves_reaches_a_later_round(tmp_path):
    spec, model = _spec(tmp_path, COVERT), registry.resolve("dense")
    results = run_defense_rounds(spec, model, _rounds([1, 1, 1]))
    texts = [r.batches[0].transcripts[0] if r.batches and r.batches[0].ok else r.error
             for r in results]
    for text in texts:
        # every round planted files, a key, a daemon's socket, loopback traffic and a flag on
        # its stdin, and found none of them (nor a way to a user namespace of its own)
        assert text == "found= planted=/tmp/arena-covert,/dev/shm/arena-covert,key,socket", texts


def test_a_hanging_round_is_killed_and_the_rest_are_not_run(tmp_path):
    import time

    spec, model = _spec(tmp_path, HANGS_ON_PAIRS), registry.resolve("dense")
    t0 = time.time()
    results = run_defense_rounds(spec, model, _rounds([1, 2, 1]), limits=SandboxLimits(wall_s=4))
    assert time.time() - t0 < 40
    assert results[0].status == "ok" and results[0].batches[0].transcripts == ["x"]
    assert results[1].status == "timeout" and "killed" in results[1].error
    # failed as a whole: the defense hangs, so its later rounds carry that failure unrun
    assert results[2].status == "timeout" and results[2].wall_s == 0.0


FORGES_ISOLATION = '''
import json, os
from arena import Defense

class P(Defense):
    def transcribe(self, batch, model):
        status = json.dumps({"isolation_error": "forged", "batches": []}).encode()
        for name in os.listdir("/proc/self/fd"):
            try:
                os.write(int(name), b"status.json %d\\n" % len(status) + status)
            except OSError:
                pass
        os._exit(5)
'''


def test_a_round_cannot_claim_its_namespaces_failed(tmp_path):
    """Only the zygote's keeper says whether a round's namespaces held (a refused kernel
    sends every round to a sandbox of its own): a plugin saying so is its own failure."""
    from arena.sandbox import jobs

    spec, model = _spec(tmp_path, FORGES_ISOLATION), registry.resolve("dense")
    results = run_defense_rounds(spec, model, _rounds([1, 1]))
    assert [r.status for r in results] == ["error", "error"], [r.error for r in results]
    assert results[1].wall_s == 0.0            # not run: failed as a whole in round 0
    assert jobs._zygote_works == [True]


SPINS_IN_THREE_PROCESSES = '''
import os, signal, time
from arena import Defense

def burn(seconds):
    t = time.process_time()
    while time.process_time() - t < seconds:
        pass

class P(Defense):
    def transcribe(self, batch, model):
        if os.fork() == 0:
            while True:
                pass
        # children reaped by the kernel never add their time to their parent's
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        t = time.time()
        while time.time() - t < 60:
            if os.fork() == 0:
                burn(0.15)
                os._exit(0)
            burn(0.1)
        return ["done"] * len(batch.ids)
'''


def test_a_rounds_cpu_limit_counts_all_its_processes(tmp_path):
    """The job's cgroup allows every round's share; each round is held to its own, however
    many processes it spreads over (rlimits count one process; short-lived children
    reaped by the kernel escape a count over /proc: the job's cgroup counts them)."""
    spec, model = _spec(tmp_path, SPINS_IN_THREE_PROCESSES), registry.resolve("dense")
    results = run_defense_rounds(spec, model, _rounds([1, 1]), limits=SandboxLimits(cpu_s=6, wall_s=40))
    assert results[0].status == "error" and "CPU-time limit of 6 s for one round" in results[0].error
    assert results[0].wall_s < 30          # 6 CPU seconds over several processes
    assert results[1].status == "error" and results[1].wall_s == 0.0


LOOKS_FOR_SESSION_KEY = '''
import ctypes
from arena import Defense

libc = ctypes.CDLL(None, use_errno=True)

class P(Defense):
    def transcribe(self, batch, model):
        found = libc.syscall(250, 10, ctypes.c_int(-3), b"user", b"harness-secret", 0) > 0
        return ["found" if found else "none"] * len(batch.ids)
'''


@pytest.mark.skipif(__import__("platform").machine() != "x86_64", reason="keyctl number of x86_64")
def test_a_job_never_holds_the_harness_session_keyring(tmp_path):
    """A harness started with a session keyring (a container's, a login's) keeps it: every
    job, a plain one or a zygote's round, joins an anonymous one before submission code."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(250, 1, b"arena-test-session") > 0          # join a named session keyring
    assert libc.syscall(248, b"user", b"harness-secret", b"x", 1, ctypes.c_int(-3)) > 0
    spec, model = _spec(tmp_path, LOOKS_FOR_SESSION_KEY), registry.resolve("dense")
    plain = run_defense_job(spec, model, _rounds([1])[0])
    rounds = run_defense_rounds(spec, model, _rounds([1, 1]))
    assert [r.batches[0].transcripts for r in [plain, *rounds]] == [["none"]] * 3


def test_rounds_run_when_the_harness_itself_lies_under_tmp(tmp_path):
    """bwrap binds a checkout or environment under the host's /tmp on top of the sandbox's
    /tmp; each round's fresh /tmp keeps those binds (else the round could not import arena)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import arena

    assert str(tmp_path).startswith("/tmp/")
    shutil.copytree(Path(arena.__file__).parent, tmp_path / "code" / "arena",
                    ignore=shutil.ignore_patterns("__pycache__"))
    _sub(tmp_path, "rounds", "defense", ECHO)
    script = f"""
import arena, torch
assert arena.__file__.startswith({str(tmp_path)!r}), arena.__file__
from arena.core.audio import AudioBatch
from arena.sandbox.jobs import run_defense_rounds
from arena.submissions.manifest import plugin_spec
batches = [[AudioBatch(ids=["a"], wave=torch.ones(1, 800) * 0.01, lengths=torch.tensor([800]))]] * 2
spec = plugin_spec({str(tmp_path / "rounds")!r})
out = run_defense_rounds(spec, {str(registry.resolve("dense"))!r}, batches)
print([(r.status, r.error, [b.transcripts for b in r.batches]) for r in out])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(tmp_path / "code")},
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[('ok', None, [['8.0000']]), ('ok', None, [['8.0000']])]", done.stdout
