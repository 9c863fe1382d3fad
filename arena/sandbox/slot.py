"""An executor slot's fork server, harness side (the sandbox side: forkserver.py).

Each thread that runs sandbox jobs (a LocalExecutor worker, a Ray worker's task) gets one
slot: a bwrap sandbox whose process imported torch once and forks each of the thread's
jobs into namespaces of its own. Jobs of a slot run one at a time. Used where the harness
is root (the sandbox maps an unprivileged user), the job runs on the CPU (CUDA does not
survive a fork) and each job gets cgroups of its own for memory, processes and CPU time
(the job's keeper is moved into them before the job starts: all it forks is limited,
counted and killed there, never the server). Elsewhere, or with ARENA_FORK_SERVER=0, every
job is its own bwrap sandbox as before.

Job folders of a process live in one folder (`job_root()`), bound read-only into every
slot's sandbox at /slots; a job's process sees only its own input (forkserver.py).
A slot dies with its thread (the sandbox's parent-death signal) and at exit.
"""
from __future__ import annotations

import atexit
import json
import os
import resource
import select
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time

from arena.sandbox import bwrap
from arena.sandbox.channel import PipeReader
from arena.sandbox.control import JobControl, proc_stat

READY_S = 120          # the server's start (importing torch) may take this long at most
REPLY_S = 30           # a keeper's hello, an exit status after a kill
LOG_BYTES = 16 * 1024
MAX_FDS = 250          # descriptors one job may be handed (one message: the kernel's limit is 253)
_CREDS = struct.calcsize("3i")


class SlotError(RuntimeError):
    """The slot's server failed; the job falls back to a sandbox of its own."""


def enabled() -> bool:
    return os.environ.get("ARENA_FORK_SERVER", "1") != "0"


_root_lock = threading.Lock()
_root: list[str] = []
_root_pid = [0]   # the process that made it (a forked copy of the harness must not remove it)


def job_root(make_name) -> str:
    """The folder of this process's job folders (made once; `make_name()` gives the
    prefix that names its owner, see jobs.new_jobdir)."""
    with _root_lock:
        if not _root or not os.path.isdir(_root[0]):
            _root[:] = [tempfile.mkdtemp(prefix=make_name())]
            _root_pid[0] = os.getpid()
            os.chmod(_root[0], 0o700)
        return _root[0]


def in_root(jobdir) -> bool:
    """Is `jobdir` a folder of this process's job root (which slots can see)?"""
    with _root_lock:
        return bool(_root) and os.path.dirname(os.path.abspath(jobdir)) == _root[0]


class _Log(PipeReader):
    def __init__(self, fd: int):
        super().__init__(fd, "arena-slot-log")
        self.data = bytearray()

    def run(self) -> None:
        try:
            for chunk in self.chunks():
                self.data += chunk
                del self.data[:-LOG_BYTES]
        except OSError:
            pass
        finally:
            os.close(self.fd)


class Slot:
    """One fork server. `start_job` forks a job, `wait_job` waits for its exit status."""

    refused: str | None = None     # a kernel that refused a probe: no slot for the process

    def __init__(self, root: str, env: dict[str, str], tmp_mb: int, limits):
        self.root, self.thread, self.owner = root, threading.current_thread(), os.getpid()
        self.busy = False
        self.dead = False
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock = ours
        empty = os.path.join(root, ".empty")
        os.makedirs(empty, mode=0o755, exist_ok=True)
        # the server is harness code: its cgroups hold it to the default job's memory and
        # processes, with no CPU-time cap on its life (a job's keeper leaves them before the
        # job starts); its rlimits are the harness's own, so that each job can set its own
        # below them (a job may only lower them)
        self.control = JobControl(memory_bytes=int(limits.memory_mb) << 20,
                                  max_tasks=int(limits.max_procs) + 16, cpu_s=1e12,
                                  max_files=int(limits.max_files), tmp_bytes=int(tmp_mb) << 20)
        if not self.control.memory:   # a job's share of the server's memory is read there
            self.control.finish()
            ours.close()
            theirs.close()
            raise SlotError("no memory cgroup for the slot")
        own = ("as", "fsize", "cpu", "nofile", "nproc")
        rlimits = bwrap.make_preexec(limits, False, {n: resource.getrlimit(bwrap.RLIMITS[n]) for n in own})

        def preexec():
            self.control.preexec()
            rlimits()

        log_r, log_w = os.pipe()
        self.log = _Log(log_r)
        fd = theirs.fileno()
        cmd = bwrap.build_command(empty, bwrap.worker_argv() + ["--slot", str(fd)], env=env,
                                  tmp_mb=tmp_mb, map_uid=True, slots=root)
        t0 = time.time()
        try:
            self.proc = bwrap.spawn(cmd, preexec=preexec, stdout=log_w, map_uid=True, pass_fds=(fd,))
        except BaseException:
            os.close(log_r)
            self.control.finish()
            ours.close()
            raise
        finally:
            os.close(log_w)
            theirs.close()
        self.log.start()
        self.control.watch(self.proc.pid, self._kill)
        try:
            ready = self._reply(READY_S)
        except SlotError:
            self.close()
            raise
        self.start_s = time.time() - t0
        if ready.get("refused"):
            Slot.refused = str(ready["refused"])
            self.close()
            raise SlotError(Slot.refused)

    def _kill(self) -> None:
        """The server broke its own limits (the watchdog's thread): stop it; the next job
        finds the slot dead (its socket at EOF) and starts another."""
        self.control.kill_members()
        try:
            os.killpg(self.proc.pid, 9)
        except OSError:
            pass

    def _reply(self, timeout: float) -> dict:
        if not select.select([self.sock], [], [], timeout)[0]:
            raise SlotError(f"the slot's server did not answer in {timeout:g} s")
        data = self.sock.recv(4096)
        if not data:
            self.dead = True
            raise SlotError("the slot's server is gone: " + self.log_text())
        return json.loads(data)

    def log_text(self) -> str:
        return bytes(self.log.data[-2000:]).decode(errors="replace")

    def start_job(self, jobdir: str, fds: list[int], request: dict, adopt) -> int:
        """Fork the job in `jobdir` (a folder in the job root) with its pipes `fds`; `adopt(pid)`
        puts the keeper (host pid) in the job's cgroups before the job may start (False:
        it is not started). The keeper's host pid."""
        self.busy = True
        try:
            msg = json.dumps({**request, "jobdir": os.path.basename(jobdir), "n_fds": len(fds)}).encode()
            socket.send_fds(self.sock, [msg], fds)
            if not select.select([self.sock], [], [], REPLY_S)[0]:
                raise SlotError("the slot's server did not fork the job")
            data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(_CREDS))
            pid = next((struct.unpack("3i", d[:_CREDS])[0] for level, kind, d in anc
                        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), None)
            if not data or pid is None or data != b"{}":
                raise SlotError("the slot's server answered no keeper: "
                                + data[:200].decode(errors="replace"))
            # the keeper is a child of the server (PID 2 of the slot's sandbox, under bwrap's
            # init): checked, so that a reused pid never moves another process
            ok = self._is_keeper(pid) and bool(adopt(pid))
            self.sock.send(json.dumps({"go": ok}).encode())
            if not ok:
                self.wait_job(REPLY_S)
                raise SlotError("the job's keeper could not be moved into its cgroups")
            return pid
        except (SlotError, OSError, subprocess.TimeoutExpired) as e:
            self.close()
            raise SlotError(str(e)) from None

    def _is_keeper(self, pid: int) -> bool:
        try:
            server = int(proc_stat(pid)[1])
            return self.proc is not None and int(proc_stat(server)[1]) == self.proc.child_pid
        except (OSError, ValueError, IndexError):
            return False

    def wait_job(self, timeout: float | None) -> int | None:
        """The job's exit status (None when the server is gone); TimeoutExpired."""
        try:
            if not select.select([self.sock], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired("slot job", timeout or 0)
            data = self.sock.recv(4096)
        except OSError:
            data = b""
        if not data:
            self.close()
            return None
        self.busy = False
        rc = json.loads(data).get("rc")
        return rc if isinstance(rc, int) else None

    def close(self) -> None:
        if self.dead and self.proc is None:
            return
        self.dead = True
        try:
            self.sock.close()
        except OSError:
            pass
        self.control.kill_members()
        proc, self.proc = getattr(self, "proc", None), None
        if proc is not None:
            try:
                os.killpg(proc.pid, 9)
            except OSError:
                pass
            proc.wait()
        self.control.finish()
        self.log.stop()


_local = threading.local()
_all: list[Slot] = []
_all_lock = threading.Lock()


def current(env: dict[str, str], tmp_mb: int, limits) -> Slot | None:
    """This thread's slot, started on first use; None where there is none to use (refused
    here, busy with another job of this thread, or failed to start)."""
    with _root_lock:
        root = _root[0] if _root else None
    if Slot.refused is not None or root is None:
        return None
    slot = getattr(_local, "slot", None)
    if slot is not None and not slot.dead and slot.root == root and slot.owner == os.getpid():
        return None if slot.busy else slot
    with _all_lock:
        for s in [s for s in _all if s.owner != os.getpid()]:
            _all.remove(s)        # a forked copy of the harness leaves its parent's slots alone
        for s in [s for s in _all if s.dead or not s.thread.is_alive()]:
            s.close()
            _all.remove(s)
    try:
        slot = Slot(root, env, tmp_mb, limits)
    except (SlotError, OSError, subprocess.SubprocessError):
        return None
    _local.slot = slot
    with _all_lock:
        _all.append(slot)
    return slot


def close_all() -> None:
    """Stop every slot and remove the job root (its jobs removed their own folders)."""
    with _all_lock:
        for s in _all:
            if s.owner == os.getpid():
                s.close()
        _all.clear()
    with _root_lock:
        if _root and _root[0] and os.getpid() == _root_pid[0]:
            shutil.rmtree(_root[0], ignore_errors=True)
            _root.clear()


atexit.register(close_all)
