"""An executor slot's fork server, harness side (the sandbox side: forkserver.py).

Each harness process (the scorer, a Ray worker) has one slot: a bwrap sandbox whose
process imported torch once and forks each job of every thread into namespaces of its own;
jobs of several threads run side by side. Used where the harness
is root (the sandbox maps an unprivileged user), the job runs on the CPU (CUDA does not
survive a fork) and each job gets cgroups of its own for memory, processes and CPU time
(the job's keeper is moved into them before the job starts: all it forks is limited,
counted and killed there, never the server). Elsewhere, or with ARENA_FORK_SERVER=0, every
job is its own bwrap sandbox as before.

Job folders of a process live in one folder (`job_root()`), bound read-only into every
slot's sandbox at /slots; a job's process sees only its own input (forkserver.py).
A slot dies with its process (the sandbox's parent-death signal, the server's socket) and
at exit.
"""
from __future__ import annotations

import atexit
import itertools
import json
import os
import queue
import resource
import select
import shutil
import socket
import struct
import subprocess
import tempfile
import threading

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
    """The process's fork server. `start_job` forks a job, `wait_job` waits for its exit
    status; jobs of several threads run side by side. The server is started by a thread of
    its own that lives as long as the slot (the sandbox's parent-death signal is per thread:
    an executor's worker thread that ends must not take the slot with it)."""

    refused: str | None = None     # a kernel that refused a probe: no slot for the process

    def __init__(self, root: str, env: dict[str, str], tmp_mb: int, limits):
        self.root, self.owner = root, os.getpid()
        # what the sandbox was made with: a job that would be made otherwise needs another
        self.key = _key(root, env, tmp_mb)
        self.dead = False
        self.proc = None
        self._ids = itertools.count(1)
        self._lock = threading.Lock()                  # one sender at a time
        self._waiting: dict[int, queue.SimpleQueue] = {}
        self._stop = threading.Event()
        started: queue.SimpleQueue = queue.SimpleQueue()
        self._holder = threading.Thread(target=self._hold, args=(env, tmp_mb, limits, started),
                                        name="arena-slot", daemon=True)
        self._holder.start()
        error = started.get()
        if error is not None:
            raise error
        self._reader = threading.Thread(target=self._read, name="arena-slot-reader", daemon=True)
        self._reader.start()

    def _hold(self, env: dict[str, str], tmp_mb: int, limits, started: queue.SimpleQueue) -> None:
        try:
            self._start(env, tmp_mb, limits)
        except BaseException as e:  # noqa: BLE001 - handed to the thread that asked
            started.put(e if isinstance(e, SlotError) else SlotError(f"{type(e).__name__}: {e}"))
            return
        started.put(None)
        self._stop.wait()
        self._close()

    def _start(self, env: dict[str, str], tmp_mb: int, limits) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock = ours
        empty = os.path.join(self.root, ".empty")
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
        values = bwrap.rlimit_values(limits, False, tasks_bounded=self.control.pids is not None)
        rlimits = bwrap.make_preexec({**values, **{n: resource.getrlimit(bwrap.RLIMITS[n]) for n in own}})

        def preexec():
            self.control.preexec()
            rlimits()

        log_r, log_w = os.pipe()
        self.log = _Log(log_r)
        fd = theirs.fileno()
        cmd = bwrap.build_command(empty, bwrap.worker_argv() + ["--slot", str(fd)], env=env,
                                  tmp_mb=tmp_mb, map_uid=True, slots=self.root)
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
            if not select.select([self.sock], [], [], READY_S)[0]:
                raise SlotError(f"the slot's server did not start in {READY_S} s")
            data = self.sock.recv(4096)
            if not data:
                raise SlotError("the slot's server did not start: " + self.log_text())
            ready = json.loads(data)
        except (SlotError, OSError, ValueError) as e:
            self._close()
            raise SlotError(str(e)) from None
        if ready.get("refused"):
            Slot.refused = str(ready["refused"])
            self._close()
            raise SlotError(Slot.refused)

    def _read(self) -> None:
        """Hand each message of the server to the job it names (a keeper's hello comes with
        the keeper's pid, as the kernel gives it in this PID namespace)."""
        while True:
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(_CREDS))
            except OSError:
                data = b""
            if not data:
                break
            try:
                msg = json.loads(data)
                job = int(msg["id"])
            except (ValueError, KeyError, TypeError):
                continue
            pid = next((struct.unpack("3i", d[:_CREDS])[0] for level, kind, d in anc
                        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), None)
            waiter = self._waiting.get(job)
            if waiter is not None:
                waiter.put(("hello", pid) if msg.get("hello") else ("rc", msg.get("rc")))
        self.dead = True
        for waiter in list(self._waiting.values()):
            waiter.put(("gone", None))

    def _kill(self) -> None:
        """The server broke its own limits (the watchdog's thread): stop it; its jobs end
        (their keepers' parent-death signal) and the next job starts another slot."""
        self.control.kill_members()
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, 9)
            except OSError:
                pass

    def log_text(self) -> str:
        return bytes(self.log.data[-2000:]).decode(errors="replace")

    def _send(self, msg: dict, fds: list[int] = ()) -> None:
        with self._lock:
            socket.send_fds(self.sock, [json.dumps(msg).encode()], list(fds))

    def _next(self, job: int, timeout: float | None) -> tuple[str, object]:
        try:
            return self._waiting[job].get(timeout=timeout)
        except queue.Empty:
            raise subprocess.TimeoutExpired("slot job", timeout or 0) from None

    def start_job(self, jobdir: str, fds: list[int], request: dict, adopt) -> tuple[int, int]:
        """Fork the job in `jobdir` (a folder in the job root) with its pipes `fds`; `adopt(pid)`
        puts the keeper (host pid) in the job's cgroups before the job may start (False:
        it is not started). (job id, the keeper's host pid)."""
        job = next(self._ids)
        self._waiting[job] = queue.SimpleQueue()
        try:
            self._send({**request, "id": job, "jobdir": os.path.basename(jobdir), "n_fds": len(fds)}, fds)
            what, pid = self._next(job, REPLY_S)
            if what != "hello" or not isinstance(pid, int):
                raise SlotError(f"the slot's server forked no keeper ({what}: {pid}): "
                                + self.log_text()[-500:])
            # the keeper is a child of the server (PID 2 of the slot's sandbox, under bwrap's
            # init): checked, so that a reused pid never moves another process
            ok = self._is_keeper(pid) and bool(adopt(pid))
            self._send({"id": job, "go": ok})
            if not ok:
                self.wait_job(job, REPLY_S)
                raise SlotError("the job's keeper could not be moved into its cgroups")
            return job, pid
        except (SlotError, OSError, subprocess.TimeoutExpired) as e:
            self._waiting.pop(job, None)
            raise SlotError(str(e)) from None

    def busy(self) -> bool:
        """Has it jobs in flight?"""
        return bool(self._waiting)

    def _is_keeper(self, pid: int) -> bool:
        try:
            server = int(proc_stat(pid)[1])
            return self.proc is not None and int(proc_stat(server)[1]) == self.proc.child_pid
        except (OSError, ValueError, IndexError):
            return False

    def wait_job(self, job: int, timeout: float | None) -> int | None:
        """The job's exit status (None when the server is gone); TimeoutExpired."""
        what, rc = self._next(job, timeout)
        self._waiting.pop(job, None)
        return rc if what == "rc" and isinstance(rc, int) else None

    def close(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self._holder:
            self._holder.join(timeout=30)

    def _close(self) -> None:
        self.dead = True
        try:
            self.sock.close()
        except OSError:
            pass
        if getattr(self, "control", None) is None:
            return
        self._kill()
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.wait()
        self.control.finish()
        self.log.stop()


def _key(root: str, env: dict[str, str], tmp_mb: int) -> tuple:
    return root, bwrap.host_uid(), tuple(sorted(env.items())), int(tmp_mb)


_slots: dict[tuple, Slot] = {}    # by what their sandbox was made with (Slot.key)
_slot_lock = threading.Lock()


def current(env: dict[str, str], tmp_mb: int, limits) -> Slot | None:
    """This process's slot for a job made with `env` and `tmp_mb` (in practice one per
    process), started on first use; None where there is none to use (refused here, or
    failed to start)."""
    with _root_lock:
        root = _root[0] if _root else None
    if Slot.refused is not None or root is None:
        return None
    key = _key(root, env, tmp_mb)
    with _slot_lock:
        for k, s in list(_slots.items()):
            if s.owner != os.getpid():
                del _slots[k]      # a forked copy of the harness leaves its parent's slots alone
        found = _slots.get(key)
        if found is not None and not found.dead:
            return found
        if found is not None:
            del _slots[key]
            found.close()          # dead already: its jobs have ended
        for k, s in list(_slots.items()):
            if not s.busy():       # made otherwise (e.g. another sandbox uid) and idle
                del _slots[k]
                s.close()
        try:
            _slots[key] = Slot(root, env, tmp_mb, limits)
        except (SlotError, OSError, subprocess.SubprocessError):
            return None
        return _slots[key]


def stop() -> None:
    """Stop this process's slots (the next job starts a new one)."""
    with _slot_lock:
        for s in _slots.values():
            if s.owner == os.getpid():
                s.close()
        _slots.clear()


def close_all() -> None:
    """Stop the slot and remove the job root (its jobs removed their own folders)."""
    stop()
    with _root_lock:
        if _root and _root[0] and os.getpid() == _root_pid[0]:
            shutil.rmtree(_root[0], ignore_errors=True)
            _root.clear()


atexit.register(close_all)
