"""Runs inside the sandbox: the rounds of one defense on one model, one forked child each.

Python and torch take most of a sandbox job's start-up, and a defense is run in many short
anonymous rounds (arena/score/anonymise.py). So one sandbox process (this zygote: harness
code only, running as the sandbox's root) imports torch and loads the model once, and
forks a keeper per round, all before the first round runs; keeper k, when told, forks
round k's child. The zygote never imports submission code, never reads a round's input,
and no keeper holds anything of an earlier round (keepers report on the zygote's pipe and
exit 0, or non-zero after a round was killed). The child, before it runs any submission
code,
  - is PID 1 of a new PID namespace (when it exits, everything it started dies with it),
  - enters new mount, IPC, network (loopback only) and UTS namespaces, with a fresh,
    capped tmpfs on /tmp and /dev/shm and a /proc that shows only its own namespace,
  - reads its own round's input (files only root can read: no round sees another's audio),
  - gets a fresh stdin (/dev/null), stdout/stderr on a pipe of its own (the keeper sends
    its head to the harness), an anonymous session keyring, and closes every other file
    descriptor (other rounds' pipes, the zygote's),
  - becomes the unprivileged user, then enters a user namespace of its own (its user
    keyring and key names start empty) where it may create no further user namespace,
    with every capability dropped.
So nothing a round leaves (files, processes, sockets, shared memory, keys, open-file
flags) reaches a later round, as with one sandbox per round. The keeper kills the round at
its wall-clock limit or when the CPU time of the round's processes passes the per-job
limit; the harness holds the round to that CPU time through the job's cgroup as well
(`round-<k>.start` opens the round's budget), which no process trick evades. After a round
is killed, the rest are not run (the defense fails as a whole, as the harness scores it).
The harness still enforces the whole job's limits from outside.

With --trusted (the organiser's own code, no sandbox) the zygote runs the same way without
the namespaces and the user change (`job["isolate"]` false, set by the harness): the
rounds keep their own inputs, pipes, limits and failure policy, and torch is imported once.
"""
from __future__ import annotations

import ctypes
import fcntl
import json
import os
import re
import select
import signal
import socket
import struct
import tempfile
import time

from arena.sandbox.channel import close_fds_except, send
from arena.sandbox.control import _cpu_ticks, _tree
from arena.sandbox.worker import (
    _drop_privileges,
    _tail,
    fresh_status,
    load_reported,
    mark_loaded,
    new_session_keyring,
    run_batches,
)

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x4000000, 0x8000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
CLONE_NEWCGROUP = 0x02000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 0x1000, 0x2000, 0x4000, 0x40000
PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 4, 38
SIOCSIFFLAGS, IFF_UP, IFF_LOOPBACK, IFF_RUNNING = 0x8914, 0x1, 0x8, 0x40
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
ROUND_LOG_BYTES = 64 * 1024   # of a round's stdout/stderr kept for its error message
TIMED_OUT, OVER_CPU = 1, 2    # the keeper's exit status

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


def _submounts(top: str) -> list[str]:
    """Mount points directly on the mount at `top` (what bwrap bound into the sandbox's
    /tmp: an environment or a checkout under the host's /tmp), from /proc/self/mountinfo."""
    rows = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            rows.append((fields[0], fields[1], point))
    ids = [mount_id for mount_id, _, point in rows if point == top]
    if not ids:
        return []
    return [point for _, parent, point in rows if parent == ids[-1] and point.startswith(top + "/")]


def _fresh_tmpfs(path: str, opts: str, hold: str | None) -> None:
    """A new tmpfs on `path`; what was mounted on the old one is moved onto the new one (via
    `hold`, a folder on another fresh tmpfs), so bound code stays where it was."""
    moved = []
    for i, point in enumerate(_submounts(path) if hold else []):
        spot = os.path.join(hold, str(i))
        if os.path.isdir(point):
            os.mkdir(spot)
        else:
            open(spot, "w").close()
        _mount(point, spot, None, MS_MOVE, None)
        moved.append((point, spot))
    _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, opts)
    for point, spot in moved:
        if os.path.isdir(spot):
            os.makedirs(point, mode=0o755, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(point), mode=0o755, exist_ok=True)
            open(point, "w").close()
        _mount(spot, point, None, MS_MOVE, None)
        (os.rmdir if os.path.isdir(spot) else os.unlink)(spot)


def _isolate(cap_tmp: dict | None) -> None:
    """New mount, IPC, network and UTS namespaces; fresh /tmp, /dev/shm and /proc."""
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWUTS),
           "unshare(mount, ipc, net, uts)")
    _mount("none", "/", None, MS_REC | MS_PRIVATE, None)
    opts = "mode=1777"
    if cap_tmp:
        opts += f",size={int(cap_tmp['bytes'])},nr_inodes={int(cap_tmp['files']) + 64}"
    _fresh_tmpfs("/dev/shm", opts, None)
    hold = tempfile.mkdtemp(dir="/dev/shm")
    _fresh_tmpfs("/tmp", opts, hold)
    os.rmdir(hold)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:   # loopback up, as bwrap does
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", IFF_UP | IFF_LOOPBACK | IFF_RUNNING))


def _fresh_fds(keep: set[int], log_fd: int) -> None:
    """stdin from a new /dev/null, stdout and stderr to the round's own log pipe, every
    other descriptor except `keep` closed (none is shared with another round)."""
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    close_fds_except(keep)


def _own_user_namespace(uid: int, gid: int) -> None:
    """As the unprivileged user: a user namespace of its own, mapping only itself, in which
    no further user namespace can be made, with no capability left in it (a new
    namespace's creator holds them all)."""
    _check(_libc.unshare(CLONE_NEWUSER), "unshare(user)")
    # a credential change made the process non-dumpable, which gives its /proc files to
    # root: dumpable again just to write its own maps
    _check(_libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "prctl(dumpable)")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                       ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
    _check(_libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(dumpable)")
    with open("/proc/sys/user/max_user_namespaces", "w") as f:   # as bwrap's --disable-userns
        f.write("0")
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(no_new_privs)")


def _child(k: int, job: dict, inp: str, model, log_fd: int, isolated_fd: int) -> int:
    """One round, in the forked child. Returns the exit status (never raises). A byte on
    `isolated_fd` (closed before any submission code) tells the keeper the namespaces held."""
    fd = int(job["rounds"][k]["fd"])
    t0 = time.time()
    status = {**fresh_status(t0), "tmp_capped": bool(job.get("cap_tmp"))}

    def report() -> None:
        send(fd, "status.json", json.dumps(status).encode())

    try:
        from safetensors.torch import load_file

        _fresh_fds({fd, isolated_fd}, log_fd)
        with open(os.path.join(inp, f"round-{k}.json")) as f:
            metas = json.load(f)
        tensors = load_file(os.path.join(inp, f"round-{k}.safetensors"))
        if job.get("isolate", True):
            try:
                _isolate(job.get("cap_tmp"))
                os.chdir("/tmp")
            except OSError as e:   # this kernel does not allow it: the harness runs rounds apart
                status["isolation_error"] = str(e)[:500]
                report()
                return 5
        new_session_keyring()    # as root: its quota is not the one all jobs' user shares
        if job.get("isolate", True):
            try:
                uid = int(job["drop_uid"])
                _drop_privileges(uid)
                _own_user_namespace(uid, uid)
            except OSError as e:
                status["isolation_error"] = str(e)[:500]
                report()
                return 5
        os.write(isolated_fd, b"1")   # what was asked for holds
        os.close(isolated_fd)
    except BaseException as e:  # noqa: BLE001 - reported, never raised
        status["load_error"] = _tail(e)
        report()
        return 3
    # -------- from here on, submission code runs (unprivileged, in its own namespaces)
    plugin = load_reported(inp, job, status, report)
    if plugin is None:
        return 3
    model.forward_calls = model.backward_calls = 0
    run_batches(plugin, model, "defense", metas, tensors, int(job.get("seed", 0)),
                job.get("device", "cpu"), fd, status, report)
    return 0


def _cpu_s(pid: int) -> float:
    return sum(_cpu_ticks(p) for p in _tree(pid)) / os.sysconf("SC_CLK_TCK")


def _watch(pid: int, log_r: int, log: bytearray, wall_s: float, cpu_s: float) -> tuple[int | None, int]:
    """Wait for the round's child, keeping the head of its log; (exit status, 0 | TIMED_OUT |
    OVER_CPU). The child is killed at a limit (as PID 1 of its namespace, all it started
    goes too). The harness also holds each round to its CPU time through the job's cgroup."""
    deadline, next_cpu = time.monotonic() + wall_s, time.monotonic() + 0.2
    while True:
        if log_r >= 0 and select.select([log_r], [], [], 0.05)[0]:
            chunk = os.read(log_r, 1 << 16)
            if not chunk:
                os.close(log_r)
                log_r = -1
            else:
                log += chunk[:max(0, ROUND_LOG_BYTES - len(log))]
        elif log_r < 0:
            time.sleep(0.05)
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), 0
        now = time.monotonic()
        why = TIMED_OUT if now >= deadline else 0
        if not why and now >= next_cpu:
            next_cpu = now + 0.2
            why = OVER_CPU if _cpu_s(pid) > cpu_s else 0
        if why:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None, why


def _keeper(k: int, job: dict, inp: str, model, fd: int) -> int:
    """Round k: make a new PID namespace, fork the round's child into it as PID 1, watch
    it, report `round-<k>.start`, `round-<k>.log` and `round-<k>.json` on the zygote's pipe
    `fd` (unshare(CLONE_NEWPID) works once per process, hence a keeper per round)."""
    t = time.time()
    isolated_r, isolated_w = os.pipe()
    log_r, log_w = os.pipe()
    try:
        if job.get("isolate", True):
            _check(_libc.unshare(CLONE_NEWPID), "unshare(pid)")
    except OSError:   # this kernel does not allow it: the harness runs the rounds apart
        send(fd, f"round-{k}.json", json.dumps({"ran": True, "rc": None, "isolated": False,
                                                 "seconds": 0.0}).encode())
        return 3
    send(fd, f"round-{k}.start", b"")
    pid = os.fork()
    if pid == 0:
        code = 4
        try:
            code = _child(k, job, inp, model, log_w, isolated_w)
        finally:
            os._exit(code)
    os.close(isolated_w)
    os.close(log_w)
    log = bytearray()
    rc, why = _watch(pid, log_r, log, float(job["round_wall_s"]), float(job["round_cpu_s"]))
    os.set_blocking(isolated_r, False)
    try:
        isolated = os.read(isolated_r, 1) == b"1"
    except BlockingIOError:
        isolated = False
    send(fd, f"round-{k}.log", bytes(log))
    send(fd, f"round-{k}.json", json.dumps({
        "ran": True, "rc": rc, "timed_out": why == TIMED_OUT, "over_cpu": why == OVER_CPU,
        "isolated": isolated, "seconds": time.time() - t}).encode())
    return why


def serve_rounds(job: dict, inp: str, model, fd: int, status: dict, report) -> int:
    """The zygote. Every keeper is forked before the first round runs, so no keeper, and no
    round forked by one, holds anything of an earlier round (not even a process id, which
    counts what earlier rounds started); keeper k waits for its go, in order. After a round
    is killed at a limit the rest are reported as not run."""
    fds = [int(r["fd"]) for r in job["rounds"]]
    mark_loaded(status, report)
    gos, keepers = [], []
    for k in range(len(fds)):
        go_r, go_w = os.pipe()
        keeper = os.fork()
        if keeper == 0:
            code = 4
            try:
                for w in gos:
                    os.close(w)
                os.close(go_w)
                for other in fds:
                    if other != fds[k]:
                        os.close(other)
                code = _keeper(k, job, inp, model, fd) if os.read(go_r, 1) == b"1" else 0
            finally:
                os._exit(code)
        os.close(go_r)
        gos.append(go_w)
        keepers.append(keeper)
    stopped = None
    for k in range(len(fds)):
        if stopped is None:
            os.write(gos[k], b"1")
            os.close(gos[k])
            if os.waitstatus_to_exitcode(os.waitpid(keepers[k], 0)[1]) != 0:
                stopped = k
        else:
            os.close(gos[k])            # the keeper reads no go and leaves
            os.waitpid(keepers[k], 0)
            send(fd, f"round-{k}.json", json.dumps({"ran": False, "after": stopped}).encode())
        os.close(fds[k])    # the round's child held the only other write end: EOF now
    status["done"] = True
    report()
    return 0
