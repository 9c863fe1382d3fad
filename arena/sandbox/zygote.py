"""Runs inside the sandbox: the rounds of one defense on one model, one forked child each.

Python and torch take most of a sandbox job's start-up, and a defense is run in many short
anonymous rounds (arena/score/anonymise.py). So one sandbox process (this zygote: harness
code only, running as the sandbox's root) imports torch and loads the model once, and
forks a child per round. The zygote never imports submission code and never reads a
round's input: each child, before it runs any submission code,
  - is PID 1 of a new PID namespace (when it exits, everything it started dies with it),
  - enters new mount and IPC namespaces with a fresh, capped tmpfs on /tmp and /dev/shm
    and a /proc that shows only its own namespace,
  - reads its own round's input (files only root can read: no round sees another's audio),
  - closes every other round's result pipe and the zygote's,
  - becomes the unprivileged user, then enters a new user namespace of its own (its user
    keyring, key names and anything else the kernel keeps per user namespace start empty)
    with every capability dropped.
So nothing a round leaves (files, processes, shared memory, keys) reaches a later round,
as with one sandbox per round. The zygote waits for each child under the round's wall
limit and reports, on its own pipe, how each ended (`round-<k>.json`). After a round times
out, the rest are not run (the defense hangs: it fails as a whole, as the harness scores
it). The harness still enforces the whole job's limits from outside.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import time

from arena.sandbox.channel import send

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWUSER = 0x20000, 0x8000000, 0x20000000, 0x10000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 0x4000, 0x40000
PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 4, 38
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                       flags, data.encode() if data else None), f"mount {target}")


def _isolate(cap_tmp: dict | None) -> bool:
    """New mount and IPC namespaces, fresh /tmp and /dev/shm; True when /proc was
    remounted for the child's own PID namespace."""
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWIPC), "unshare(mount, ipc)")
    _mount("none", "/", None, MS_REC | MS_PRIVATE, None)
    opts = "mode=1777"
    if cap_tmp:
        opts += f",size={int(cap_tmp['bytes'])},nr_inodes={int(cap_tmp['files']) + 64}"
    for path in ("/tmp", "/dev/shm"):
        _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, opts)
    try:
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
        return True
    except OSError:
        return False   # the sandbox's /proc stays: it shows the zygote, owned by root


def _own_user_namespace(uid: int, gid: int) -> None:
    """As the unprivileged user: a user namespace of its own, mapping only itself, with no
    capability left in it (a new namespace's creator holds them all)."""
    _check(_libc.unshare(CLONE_NEWUSER), "unshare(user)")
    # a credential change made the process non-dumpable, which gives its /proc files to
    # root: dumpable again just to write its own maps
    _check(_libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "prctl(dumpable)")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                       ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
    _check(_libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(dumpable)")
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(no_new_privs)")


def _child(k: int, job: dict, inp: str, model, all_fds: list[int], isolated_fd: int) -> int:
    """One round, in the forked child. Returns the exit status (never raises). A byte on
    `isolated_fd` (closed before any submission code) tells the keeper the namespaces held."""
    from arena.sandbox.worker import _drop_privileges, _tail, load_submission, run_batches

    rnd = job["rounds"][k]
    fd = int(rnd["fd"])
    for other in all_fds:
        if other != fd:
            os.close(other)
    t0 = time.time()
    status = {"started_at": t0, "loaded_at": None, "load_s": None, "load_error": None,
              "batches": [], "forward_calls": 0, "backward_calls": 0, "done": False,
              "tmp_capped": False, "proc_private": False}

    def report() -> None:
        send(fd, "status.json", json.dumps(status).encode())

    try:
        from safetensors.torch import load_file

        with open(os.path.join(inp, f"round-{k}.json")) as f:
            metas = json.load(f)
        tensors = load_file(os.path.join(inp, f"round-{k}.safetensors"))
        try:
            status["proc_private"] = _isolate(job.get("cap_tmp"))
            status["tmp_capped"] = bool(job.get("cap_tmp"))
            os.chdir("/tmp")
            uid = int(job["drop_uid"])
            _drop_privileges(uid)
            _own_user_namespace(uid, uid)
        except OSError as e:   # this kernel does not allow it: the harness runs rounds apart
            status["isolation_error"] = str(e)[:500]
            report()
            return 5
        os.write(isolated_fd, b"1")
        os.close(isolated_fd)
        # -------- from here on, submission code runs (unprivileged, in its own namespaces)
        plugin = load_submission(inp, job)
    except BaseException as e:  # noqa: BLE001 - reported, never raised
        status["load_error"] = _tail(e)
        report()
        return 3
    status["loaded_at"] = time.time()
    status["load_s"] = status["loaded_at"] - t0
    report()
    model.forward_calls = model.backward_calls = 0
    run_batches(plugin, model, "defense", metas, tensors, int(job.get("seed", 0)),
                job.get("device", "cpu"), fd, status, report)
    return 0


def _wait(pid: int, wall_s: float) -> tuple[int | None, bool]:
    """(exit status, timed out); the child is killed at the deadline (as PID 1 of its
    namespace, everything it started goes with it)."""
    deadline = time.monotonic() + wall_s
    delay = 0.005
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), False
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None, True
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _run_round(k: int, job: dict, inp: str, model, all_fds: list[int]) -> dict:
    """Round k: a keeper process (harness code) makes a new PID namespace, forks the round's
    child into it as PID 1 and waits for it under the wall limit (unshare(CLONE_NEWPID)
    works once per process, hence a keeper per round)."""
    t = time.time()
    report_r, report_w = os.pipe()
    keeper = os.fork()
    if keeper == 0:
        code = 4
        try:
            os.close(report_r)
            isolated_r, isolated_w = os.pipe()
            _check(_libc.unshare(CLONE_NEWPID), "unshare(pid)")
            pid = os.fork()
            if pid == 0:
                os.close(report_w)
                os.close(isolated_r)
                try:
                    code = _child(k, job, inp, model, all_fds, isolated_w)
                finally:
                    os._exit(code)
            os.close(isolated_w)
            for n in all_fds:
                os.close(n)
            rc, timed_out = _wait(pid, float(job["round_wall_s"]))
            os.set_blocking(isolated_r, False)
            try:
                isolated = os.read(isolated_r, 1) == b"1"
            except BlockingIOError:
                isolated = False
            os.write(report_w, json.dumps({"rc": rc, "timed_out": timed_out,
                                           "isolated": isolated}).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(report_w)
    with os.fdopen(report_r, "rb") as f:
        data = f.read(4096)
    os.waitpid(keeper, 0)
    try:
        rec = json.loads(data)
    except ValueError:
        rec = {"rc": None, "timed_out": False, "keeper_error": True}
    return {"ran": True, **rec, "seconds": time.time() - t}


def serve_rounds(job: dict, inp: str, model, fd: int, status: dict, report) -> int:
    """The zygote: one child per round, in order; `round-<k>.json` on the zygote's own pipe
    says how each ended."""
    fds = [int(r["fd"]) for r in job["rounds"]]
    status["loaded_at"] = time.time()
    status["load_s"] = status["loaded_at"] - status["started_at"]
    report()
    stopped = None
    for k in range(len(job["rounds"])):
        if stopped is None:
            rec = _run_round(k, job, inp, model, [fd, *fds[k:]])   # the pipes still open
            if rec["timed_out"]:
                stopped = k
        else:
            rec = {"ran": False, "after": stopped}
        os.close(fds[k])    # the round's child held the only other write end: EOF now
        send(fd, f"round-{k}.json", json.dumps(rec).encode())
    status["done"] = True
    report()
    return 0
