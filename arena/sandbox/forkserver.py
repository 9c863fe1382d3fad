"""Runs inside the sandbox: one executor slot's fork server (`worker.py --slot SOCKET_FD`).

A sandboxed job used to start a Python and import torch (2-3 s here) before doing seconds
of work. A slot (harness side: slot.py) keeps one sandbox process, this server, which
imports torch and the harness's job code once and then forks every job the slot runs, as
the zygote forks defense rounds (zygote.py, whose isolation this reuses). The server is
harness code only: it never reads a job's input, never loads a model and never imports
submission code. Per job, on a request from the harness (the job folder's name, the job's
limits, and its pipes passed as descriptors):
  - it forks a keeper, which tells the harness its pid (SCM_CREDENTIALS on the socket: the
    kernel names it in the harness's PID namespace); the harness moves the keeper into the
    job's own cgroups (memory, pids, CPU time: everything it forks is counted and limited
    there, and killed there) and says go;
  - the keeper makes a new PID namespace and forks its PID 1 (harness code, like bwrap's
    init), which enters new mount, IPC, network and UTS namespaces with a fresh, capped
    /tmp and /dev/shm and a /proc of its own, binds its own job's input read-only at
    /sandbox/input, covers the folder of all job folders (/slots) with an empty tmpfs,
    sets the job's rlimits, closes every descriptor but the job's pipes, and forks the
    job's process (PID 2), which runs the worker (worker.main): it drops to the
    unprivileged user in a user namespace of its own before any submission code;
  - the server reports the keeper's exit status and waits for the next request.
So a job sees what a job of its own bwrap sandbox sees (its input, nothing of another
job's), and leaves nothing behind for the next: its processes die with its PID namespace,
its files with its tmpfs, and the server holds nothing of it.
"""
from __future__ import annotations

import importlib
import json
import os
import random
import resource
import select
import signal
import socket
import sys
import time

import numpy

from arena.sandbox.bwrap import RLIMITS
from arena.sandbox.channel import close_fds_except
from arena.sandbox.zygote import (
    CLONE_NEWCGROUP,
    CLONE_NEWPID,
    MS_BIND,
    MS_NODEV,
    MS_NOSUID,
    MS_RDONLY,
    MS_REMOUNT,
    _check,
    _fresh_fds,
    _isolate,
    _libc,
    _mount,
)

SLOTS = "/slots"                  # where the slot's folder of job folders is bound
PRELOAD = ("torchaudio.functional", "foolbox")
MAX_MESSAGE = 64 * 1024
MAX_FDS = 253                     # the kernel's limit for one message (SCM_MAX_FD)
PR_SET_PDEATHSIG = 1


def _send(sock: socket.socket, msg: dict) -> None:
    sock.send(json.dumps(msg).encode())


def _enter_job(jobdir: str, cap_tmp: dict | None, rlimits: dict) -> None:
    """In the job's process (PID 1 of its namespace, root of the sandbox): its namespaces,
    its own input only, its limits."""
    # its cgroups (the harness moved its keeper there) become the root of its own view
    _check(_libc.unshare(CLONE_NEWCGROUP), "unshare(cgroup)")
    _isolate(cap_tmp)
    src = os.path.join(SLOTS, jobdir, "input")
    _mount(src, "/sandbox/input", None, MS_BIND, None)
    _mount("none", "/sandbox/input", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, None)
    _mount("tmpfs", SLOTS, "tmpfs", MS_NOSUID | MS_NODEV | MS_RDONLY, "size=4k,nr_inodes=4,mode=0755")
    os.chdir("/tmp")
    for name, value in rlimits.items():
        hard = resource.getrlimit(RLIMITS[name])[1]
        want = [int(v) for v in value]
        # only ever lower: a hard limit above the server's is kept at the server's
        cap = [min(w, hard) if hard != resource.RLIM_INFINITY else w for w in want]
        resource.setrlimit(RLIMITS[name], (min(cap[0], cap[1]), cap[1]))


def _die_with_parent() -> None:
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(pdeathsig)")
    if os.getppid() == 1:    # the parent went before the signal was asked for
        os._exit(4)


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _init(req: dict, fds: list[int], t0: float) -> int:
    """PID 1 of the job's PID namespace (harness code, as bwrap's own init): the job's
    namespaces and view, then the job as PID 2 (so it can signal itself, as a job of its
    own sandbox can); reaps what the job orphans and exits with the job's status (the
    kernel then kills whatever is left in the namespace)."""
    from arena.sandbox import worker

    _die_with_parent()   # the keeper: when it goes (killed with the job), so does the job
    data_fd, log_fd = fds[0], fds[1]
    request_fd = fds[2] if req.get("requests") else None
    round_fds = fds[2:] if req.get("rounds") else None
    keep = {data_fd, *([request_fd] if request_fd is not None else []), *(round_fds or [])}
    _fresh_fds(keep, log_fd)
    try:
        _enter_job(req["jobdir"], req.get("cap_tmp"), req.get("rlimits", {}))
    except OSError as e:
        os.write(2, f"the job's namespaces were refused: {e}\n".encode())
        return 5
    job = os.fork()
    if job == 0:
        code = 4
        try:
            # its own random state, as a process of its own has (not the server's copy)
            random.seed()
            numpy.random.seed()
            # the command line a job of its own sandbox has (worker.py's)
            sys.argv = ["-c", "/sandbox", str(data_fd)]
            if request_fd is not None:
                sys.argv.append(str(request_fd))
            elif round_fds:
                sys.argv += ["-", ",".join(str(fd) for fd in round_fds)]
            code = worker.main("/sandbox", data_fd, request_fd, round_fds, started_at=t0,
                               own_userns=True)
        finally:
            os._exit(code)
    null = os.open("/dev/null", os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(null, fd)
    close_fds_except(set())
    while True:
        pid, status = os.wait()
        if pid == job:
            return _exit_code(status)


def _keeper(sock: socket.socket, go_r: int, req: dict, fds: list[int]) -> int:
    """Tell the harness who it is, wait for go (it is in the job's cgroups by then), then
    run the job in a new PID namespace and exit with its status."""
    t0 = time.time()
    _die_with_parent()
    sock.send(json.dumps({"id": req["id"], "hello": True}).encode())   # with SCM_CREDENTIALS
    sock.close()
    close_fds_except({go_r, *fds})
    if os.read(go_r, 1) != b"1":
        return 0
    os.close(go_r)
    _check(_libc.unshare(CLONE_NEWPID), "unshare(pid)")
    pid = os.fork()
    if pid == 0:
        code = 4
        try:
            code = _init(req, fds, t0)
        finally:
            os._exit(code)
    for fd in fds:
        os.close(fd)
    return _exit_code(os.waitpid(pid, 0)[1])


def _probe() -> str | None:
    """Can this kernel give a job its namespaces? (None: yes; else why not.)"""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _check(_libc.unshare(CLONE_NEWPID), "unshare(pid)")
            _check(_libc.unshare(CLONE_NEWCGROUP), "unshare(cgroup)")
            inner = os.fork()
            if inner == 0:
                c = 1
                try:
                    _isolate({"bytes": 1 << 20, "files": 16})
                    _mount("tmpfs", SLOTS, "tmpfs", MS_NOSUID | MS_NODEV | MS_RDONLY, "size=4k")
                    c = 0
                finally:
                    os._exit(c)
            code = os.waitstatus_to_exitcode(os.waitpid(inner, 0)[1])
        except BaseException:  # noqa: BLE001
            code = 2
        finally:
            os._exit(code)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return None if code == 0 else f"a job's namespaces could not be made (probe exit {code})"


def serve(sock_fd: int) -> int:
    """The server loop: jobs of every thread of the harness, side by side, until the
    harness closes the socket. Messages: a job {"id", "jobdir", ...} with its descriptors
    -> the keeper's {"id", "hello"} (with its credentials); {"id", "go"} -> the keeper goes
    or leaves; when the keeper ends, {"id", "rc"}."""
    import safetensors.torch  # noqa: F401  (what every job imports, imported once)
    import torch

    import arena.core.audio  # noqa: F401
    import arena.core.budget  # noqa: F401
    import arena.plugins.api  # noqa: F401
    import arena.plugins.loader  # noqa: F401
    import arena.zoo.registry  # noqa: F401
    from arena.sandbox import worker, zygote  # noqa: F401

    # libraries the baselines import (installed with arena): one import for all jobs
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - absent or broken: the job that needs it will say
            pass
    torch.set_num_threads(1)
    close_fds_except({sock_fd})
    sock = socket.socket(fileno=sock_fd)
    _send(sock, {"ready": True, "refused": _probe()})
    pending: dict[int, int] = {}     # job id -> the write end of its keeper's go pipe
    keepers: dict[int, int] = {}     # keeper pid -> job id
    while True:
        ready = select.select([sock], [], [], 0.05)[0]
        _reap(sock, keepers)
        if not ready:
            continue
        try:
            data, fds, flags, _ = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
        except OSError:
            data = b""
        if not data:   # the harness is gone: so are the jobs (their keepers' death signal)
            return 0
        msg = json.loads(data)
        if "go" in msg:
            go_w = pending.pop(int(msg["id"]), None)
            if go_w is not None:
                try:
                    os.write(go_w, b"1" if msg["go"] is True else b"0")
                except OSError:   # its keeper is gone already (killed): reaped and reported
                    pass
                os.close(go_w)
            for fd in fds:
                os.close(fd)
            continue
        if (flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC) or not isinstance(msg.get("jobdir"), str)
                or "/" in msg["jobdir"] or len(fds) < 2 or len(fds) != msg.get("n_fds")):
            for fd in fds:
                os.close(fd)
            _send(sock, {"id": msg.get("id"), "rc": None, "error": "malformed request"})
            continue
        go_r, go_w = os.pipe()
        keeper = os.fork()
        if keeper == 0:
            code = 4
            try:
                os.close(go_w)
                code = _keeper(sock, go_r, msg, fds)
            finally:
                os._exit(code)
        os.close(go_r)
        for fd in fds:
            os.close(fd)
        pending[int(msg["id"])] = go_w
        keepers[keeper] = int(msg["id"])


def _reap(sock: socket.socket, keepers: dict[int, int]) -> None:
    """Report every keeper that has ended (its job's exit status)."""
    while keepers:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        job = keepers.pop(pid, None)
        if job is not None:
            _send(sock, {"id": job, "rc": _exit_code(status)})
