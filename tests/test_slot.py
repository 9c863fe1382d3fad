"""Jobs forked by a slot's fork server (arena/sandbox/slot.py, forkserver.py), in the real
sandbox: start-up paid once per slot, the same answers as a sandbox of their own, and
nothing of one job (its files, processes, sockets, keys, its input, other jobs' folders)
reaching the next, whichever submission it belongs to.
"""
from __future__ import annotations

import json
import os
import time

import pytest

from arena.sandbox import bwrap, slot
from arena.sandbox.jobs import SandboxLimits, run_defense_job
from tests.test_zygote import COVERT, ECHO, HANGS_ON_PAIRS, _rounds, _spec

pytestmark = pytest.mark.skipif(bwrap.probe() is not None or not bwrap.as_root(),
                                reason="slots run where the sandbox maps a user (as root)")

SEES = '''
import ctypes, json, os
import numpy
from arena import Defense

class P(Defense):
    def transcribe(self, batch, model):
        libc = ctypes.CDLL(None, use_errno=True)
        seen = {"slots": sorted(os.listdir("/slots")) if os.path.isdir("/slots") else None,
                "input": sorted(os.listdir("/sandbox/input")),
                "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
                "uid": os.getuid(), "tmp": sorted(os.listdir("/tmp")),
                "mount_ns": libc.unshare(0x20000) == 0,       # could it remount its own /tmp?
                "cgroup": open("/proc/self/cgroup").read(),
                "numpy": int(numpy.random.randint(1 << 30))}
        return [json.dumps(seen)] * len(batch.ids)
'''


def _served() -> slot.Slot:
    live = [s for s in slot._slots.values() if not s.dead]
    assert live, "no slot is up in this process"
    return live[-1]


def test_served_jobs_answer_as_their_own_sandbox_and_start_once(tmp_path, monkeypatch):
    spec, model = _spec(tmp_path, ECHO), "dense"
    from arena.zoo import registry

    path = registry.resolve(model)
    batches = _rounds([2])[0]
    served = [run_defense_job(spec, path, batches) for _ in range(3)]
    server = _served()
    monkeypatch.setenv("ARENA_FORK_SERVER", "0")
    alone = run_defense_job(spec, path, batches)
    assert [r.status for r in served] + [alone.status] == ["ok"] * 4, [r.error for r in served]
    assert all(r.batches[0].transcripts == alone.batches[0].transcripts for r in served)
    # a job of its own sandbox imports torch (seconds); a served job forks (tenths)
    assert all(r.startup_s < 0.5 for r in served[1:]), [r.startup_s for r in served]
    assert alone.startup_s > 3 * max(r.startup_s for r in served[1:])
    # the job's memory counts what it shares with the server, as if it had loaded it
    assert abs(served[-1].peak_memory_mb - alone.peak_memory_mb) < 0.5 * alone.peak_memory_mb
    assert _served() is server


def test_nothing_a_served_job_leaves_reaches_the_next(tmp_path):
    from arena.zoo import registry

    spec, path = _spec(tmp_path, COVERT), registry.resolve("dense")
    texts = []
    for _ in range(2):
        r = run_defense_job(spec, path, _rounds([1])[0])
        assert r.status == "ok", r.error
        texts.append(r.batches[0].transcripts[0])
    _served()
    assert texts[0].startswith("found= planted=/tmp/arena-covert,/dev/shm/arena-covert"), texts[0]
    assert "socket" in texts[0]
    # what the first left (files, a daemon on an abstract socket, a key, loopback traffic,
    # open-file flags) the second does not find
    assert texts[1].startswith("found= "), texts[1]


def test_a_served_job_sees_its_own_input_only(tmp_path):
    """Another job's folder in the job root (as a job of another thread would be) stays
    out of sight; the job runs unprivileged, alone in its PID namespace."""
    from arena.zoo import registry

    spec, path = _spec(tmp_path, SEES), registry.resolve("dense")
    run_defense_job(spec, path, _rounds([1])[0])       # makes the job root and the slot
    root = slot._root[0]
    decoy = os.path.join(root, "job-decoy")
    os.makedirs(os.path.join(decoy, "input", "submission"))
    with open(os.path.join(decoy, "input", "submission", "secret.py"), "w") as f:
        f.write("SECRET = 1\n")
    try:
        r = run_defense_job(spec, path, _rounds([1])[0])
    finally:
        import shutil

        shutil.rmtree(decoy)
    again = run_defense_job(spec, path, _rounds([1])[0])
    assert r.status == "ok" and again.status == "ok", (r.error, again.error)
    _served()
    seen = json.loads(r.batches[0].transcripts[0])
    assert not seen["mount_ns"], "a job could make a mount namespace (and remount its /tmp)"
    # its own cgroup namespace: no harness pid or cgroup name in sight
    assert all(line.endswith(":/") for line in seen["cgroup"].split()), seen["cgroup"]
    # its own random state (the server's copy would give every job the same draws)
    assert seen["numpy"] != json.loads(again.batches[0].transcripts[0])["numpy"]
    assert seen["slots"] == [], seen
    assert seen["input"] == ["batches.safetensors", "job.json", "model.safetensors", "submission"], seen
    assert seen["pids"] == [1, 2], seen   # its init and itself
    # an empty /tmp of its own, but for the code bound there (a checkout or an environment
    # under the host's /tmp stays where it was)
    bound = {p.split("/")[2] for p in [bwrap.arena_package_dir(), *bwrap.python_roots()]
             if p.startswith("/tmp/")}
    assert seen["uid"] == bwrap.INNER_UID and set(seen["tmp"]) <= bound, seen


FAULTS = '''
import json, resource
import torch
from arena import Defense

class P(Defense):
    def transcribe(self, batch, model):
        faults = []
        for _ in range(4):   # 36 MB in buffers of 1 to 8 MB, freed, four times
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            buffers = [torch.ones(n * 262144) for n in range(1, 9)]
            del buffers
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return [json.dumps(faults)] * len(batch.ids)
'''


def test_a_served_job_keeps_the_memory_it_frees(tmp_path):
    """worker.keep_freed_memory: buffers freed and made again are not page-faulted in again
    (glibc's defaults trim the heap and map big buffers afresh: thousands of faults a round)."""
    from arena.zoo import registry

    r = run_defense_job(_spec(tmp_path, FAULTS), registry.resolve("dense"), _rounds([1])[0])
    assert r.status == "ok", r.error
    _served()
    faults = json.loads(r.batches[0].transcripts[0])
    assert faults[0] > 4000, faults   # 36 MB touched the first time: 9,000 pages
    assert max(faults[2:]) < faults[0] / 20, faults


def test_a_killed_served_job_leaves_the_slot_working(tmp_path):
    """A job killed at its wall-clock limit takes its processes with it, not the server:
    the next job is forked by the same server."""
    from arena.zoo import registry

    spec, path = _spec(tmp_path, HANGS_ON_PAIRS), registry.resolve("dense")
    run_defense_job(spec, path, _rounds([1])[0])
    server = _served()
    before = bwrap.count_threads(bwrap.host_uid())
    t = time.time()
    hung = run_defense_job(spec, path, _rounds([2])[0], limits=SandboxLimits(wall_s=3))
    assert hung.status == "timeout" and time.time() - t < 15, hung.error
    assert bwrap.count_threads(bwrap.host_uid()) <= before
    after = run_defense_job(spec, path, _rounds([1])[0])
    assert after.status == "ok" and after.startup_s < 0.5, (after.error, after.startup_s)
    assert _served() is server


def test_a_defense_of_many_rounds_is_served_whole(tmp_path):
    """Every round's pipe reaches the server in one message (the kernel's limit is 253
    descriptors): 70 rounds, all answered, none lost."""
    from arena.sandbox.jobs import run_defense_rounds
    from arena.zoo import registry

    spec, path = _spec(tmp_path, ECHO), registry.resolve("dense")
    run_defense_job(spec, path, _rounds([1])[0])          # the slot is up
    results = run_defense_rounds(spec, path, _rounds([1] * 70))
    assert [r.status for r in results] == ["ok"] * 70, next(r.error for r in results if r.status != "ok")
    # served (a zygote of its own sandbox would import torch first: seconds)
    assert results[0].startup_s < 1.0, results[0].startup_s
    _served()


def test_jobs_of_two_threads_share_the_server_side_by_side(tmp_path):
    """Two threads' jobs at once through the process's one server: each gets its own
    answer (the messages of the two are told apart by job id)."""
    import threading

    from arena.zoo import registry

    spec, path = _spec(tmp_path, ECHO), registry.resolve("dense")
    run_defense_job(spec, path, _rounds([1])[0])
    server = _served()
    live = {id(s) for s in slot._slots.values() if not s.dead}
    sizes = [1, 2, 1, 2]
    results: dict[int, object] = {}

    def run(i: int) -> None:
        results[i] = run_defense_job(spec, path, _rounds([sizes[i]])[0])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(sizes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    alone = {n: run_defense_job(spec, path, _rounds([n])[0]).batches[0].transcripts for n in (1, 2)}
    for i, n in enumerate(sizes):
        r = results[i]
        assert r.status == "ok", r.error
        assert r.batches[0].transcripts == alone[n]
    assert _served() is server and {id(s) for s in slot._slots.values() if not s.dead} == live
