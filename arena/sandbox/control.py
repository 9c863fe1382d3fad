"""Limits for a job's whole process tree: memory, process count and CPU time.

rlimits (bwrap.make_preexec) bound each process, so a job that spreads over many processes
could hold many times its memory limit. JobControl bounds the tree. Per controller it uses
  cgroup v2, where the controller is enabled for the harness's own cgroup,
  else cgroup v1, where that hierarchy is writable (as root),
  else a watchdog that sums the tree's proportional resident memory (PSS) and CPU time
  from /proc and kills the tree (checked every POLL_S: a fast allocator can overshoot
  by what it allocates in that time).
The job's cgroups are children of the harness's own cgroups, so any limit the harness
lives under still holds for its jobs. A watchdog thread runs in every case: it turns a
cgroup OOM kill, the CPU-time budget or too many files in the sandbox's /tmp into a stop
of the whole job with a reason the harness reports.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

POLL_S = 0.1            # watchdog period with cgroups (a few small file reads)
POLL_FALLBACK_S = 0.2   # without: a scan of /proc
TASK_SLACK = 8          # bwrap's two processes and the worker's own threads
FILES_SLACK = 64        # mount points bwrap makes in /tmp (an environment under the host's /tmp)
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Usage:
    peak_memory_bytes: int = 0
    cpu_s: float = 0.0
    peak_tasks: int = 0
    peak_files: int = 0
    via: str = ""            # e.g. "memory: cgroup v1, pids: cgroup v1, cpu: cgroup v2"


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def _cgroup_dirs() -> tuple[str | None, dict[str, str]]:
    """The harness's own cgroup folders: (v2 folder or None, {v1 controller: folder})."""
    mounts_v1: dict[str, tuple[str, str]] = {}
    mount_v2 = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                lf, rf = left.split(), right.split()
                if len(lf) < 5 or len(rf) < 3:
                    continue
                root, point = _unescape(lf[3]), _unescape(lf[4])
                if rf[0] == "cgroup2" and mount_v2 is None:
                    mount_v2 = (point, root)
                elif rf[0] == "cgroup":
                    for c in rf[2].split(","):
                        mounts_v1.setdefault(c, (point, root))
        own_v1: dict[str, str] = {}
        own_v2: str | None = None
        with open("/proc/self/cgroup") as f:
            for line in f:
                hid, ctrls, path = line.rstrip("\n").split(":", 2)
                if hid == "0" and not ctrls:
                    own_v2 = path
                for c in ctrls.split(","):
                    if c:
                        own_v1[c] = path
    except (OSError, ValueError):
        return None, {}

    def place(mount, path):
        point, root = mount
        if root != "/" and (path == root or path.startswith(root + "/")):
            path = path[len(root):]
        return os.path.join(point, path.lstrip("/"))

    v2 = place(mount_v2, own_v2) if mount_v2 and own_v2 is not None else None
    v1 = {c: place(mounts_v1[c], p) for c, p in own_v1.items() if c in mounts_v1}
    return v2, v1


class _Group:
    """One cgroup folder made for the job (v1 or v2)."""

    def __init__(self, version: int, path: str):
        self.version, self.path = version, path

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def procs(self) -> list[int]:
        try:
            return [int(x) for x in _read(self.file("cgroup.procs")).split()]
        except (OSError, ValueError):
            return []

    def remove(self) -> None:
        try:
            os.rmdir(self.path)
        except OSError:
            pass


def _sweep(parent: str) -> None:
    """Remove empty job cgroups left by harnesses that were killed before finish() (the
    name holds the harness's pid; a minute's grace covers one being set up elsewhere)."""
    try:
        entries = os.listdir(parent)
    except OSError:
        return
    for e in entries:
        if not e.startswith("arena-job-"):
            continue
        pid = e.split("-")[2]
        path = os.path.join(parent, e)
        try:
            if (pid.isdigit() and not os.path.exists(f"/proc/{pid}")
                    and time.time() - os.stat(path).st_mtime > 60):
                os.rmdir(path)     # fails (harmlessly) while it holds processes
        except OSError:
            pass


def _make(parent: str, name: str, version: int) -> _Group | None:
    _sweep(parent)
    path = os.path.join(parent, name)
    try:
        os.mkdir(path, 0o755)
    except OSError:
        return None
    g = _Group(version, path)
    # the child writes its own pid there (preexec): check that it may
    if not os.access(g.file("cgroup.procs"), os.W_OK):
        g.remove()
        return None
    return g


def _counter(text: str, key: str) -> int:
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if k == key:
            return int(v)
    return 0


class JobControl:
    """Create before the job starts; `preexec()` in the child; `watch()` after the start;
    `finish()` always (kills what is left and removes the cgroups)."""

    def __init__(self, *, memory_bytes: int, max_tasks: int, cpu_s: float, max_files: int,
                 tmp_bytes: int = 0, name: str | None = None, use_cgroups: bool = True):
        self.memory_bytes, self.max_tasks = int(memory_bytes), int(max_tasks)
        self.cpu_s, self.max_files, self.tmp_bytes = float(cpu_s), int(max_files), int(tmp_bytes)
        self.memory: _Group | None = None
        self.pids: _Group | None = None
        self.cpu: _Group | None = None
        self.groups: list[_Group] = []
        self.violation: str | None = None
        self.usage = Usage()
        self._segment: tuple[float, float] | None = None   # (usage at its start, its budget)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._kill: Callable[[], None] = lambda: None
        self._root_pid = 0
        self._inside_pid: int | None = None
        self.inherited_bytes = 0   # a forked job's share of its fork server's memory
        if use_cgroups:
            self._setup(name or f"arena-job-{os.getpid()}-{time.time_ns()}")
        via = lambda g: f"cgroup v{g.version}" if g else "watchdog"  # noqa: E731
        self.usage.via = f"memory: {via(self.memory)}, pids: {via(self.pids)}, cpu: {via(self.cpu)}"

    # ---- set-up
    def _setup(self, name: str) -> None:
        v2_parent, v1_parents = _cgroup_dirs()
        if v2_parent and os.path.isdir(v2_parent):
            g = _make(v2_parent, name, 2)
            if g is not None:
                have = set(_read(g.file("cgroup.controllers")).split())
                want = {"memory", "pids", "cpu"} - have
                parent_has = set(_read(os.path.join(v2_parent, "cgroup.controllers")).split())
                if want & parent_has:
                    try:  # refused when the harness's cgroup holds processes (not the root)
                        _write(os.path.join(v2_parent, "cgroup.subtree_control"),
                               " ".join(f"+{c}" for c in sorted(want & parent_has)))
                        have = set(_read(g.file("cgroup.controllers")).split())
                    except OSError:
                        pass
                self.groups.append(g)
                if "memory" in have and self._limit(g, [("memory.max", self.memory_bytes)],
                                                    [("memory.swap.max", 0), ("memory.oom.group", 1)]):
                    self.memory = g
                if "pids" in have and self._limit(g, [("pids.max", self.max_tasks)], []):
                    self.pids = g
                if os.path.exists(g.file("cpu.stat")):   # usage_usec: in every v2 cgroup
                    self.cpu = g
        for ctrl, attr, limits, optional in (
                ("memory", "memory", [("memory.limit_in_bytes", self.memory_bytes)],
                 [("memory.memsw.limit_in_bytes", self.memory_bytes)]),
                ("pids", "pids", [("pids.max", self.max_tasks)], []),
                ("cpuacct", "cpu", [], [])):
            if getattr(self, attr) is not None or ctrl not in v1_parents:
                continue
            g = _make(v1_parents[ctrl], name, 1)
            if g is None:
                continue
            if self._limit(g, limits, optional):
                setattr(self, attr, g)
                self.groups.append(g)
            else:
                g.remove()
        if self.groups and not (self.memory or self.pids or self.cpu):
            for g in self.groups:
                g.remove()
            self.groups = []

    @staticmethod
    def _limit(g: _Group, required, optional) -> bool:
        try:
            for f, v in required:
                _write(g.file(f), str(v))
        except OSError:
            return False
        for f, v in optional:
            try:
                _write(g.file(f), str(v))
            except OSError:
                pass
        return True

    def preexec(self) -> None:
        """In the child before exec: join the job's cgroups (everything it starts inherits them)."""
        pid = str(os.getpid())
        for g in self.groups:
            _write(g.file("cgroup.procs"), pid)

    def anon_bytes(self) -> int:
        """Anonymous memory now held by the processes of the memory cgroup (0 without one)."""
        g = self.memory
        try:
            text = _read(g.file("memory.stat")) if g else ""
        except OSError:
            return 0
        return _counter(text, "anon" if g and g.version == 2 else "total_rss")

    def inherit(self, nbytes: int) -> bool:
        """The job starts as a fork of a process holding `nbytes` of anonymous memory, which
        stay charged to that process's cgroup: the job's own cgroup gets the rest of the
        limit, and its reported peak counts them, as if the job had allocated them itself
        (as a job of its own sandbox does when it imports torch). inherit(0) undoes it."""
        g = self.memory
        if g is None or nbytes >= self.memory_bytes:
            return False
        limit = str(self.memory_bytes - int(nbytes))
        files = ["memory.max"] if g.version == 2 else ["memory.limit_in_bytes",
                                                       "memory.memsw.limit_in_bytes"]
        # v1 wants memsw >= limit at every moment: lower the limit first, raise memsw first
        for name in files if nbytes >= self.inherited_bytes else files[::-1]:
            try:
                _write(g.file(name), limit)
            except OSError:
                if name != "memory.memsw.limit_in_bytes":   # (optional: no swap accounting)
                    return False
        self.inherited_bytes = int(nbytes)
        return True

    def adopt(self, pid: int) -> bool:
        """Move process `pid` (not yet running job code) into the job's cgroups; False when
        a controller is not a cgroup here or the move was refused."""
        if not (self.memory and self.pids and self.cpu):
            return False
        try:
            for g in self.groups:
                _write(g.file("cgroup.procs"), str(pid))
        except OSError:
            return False
        return True

    # ---- watching
    def limit_segment(self, cpu_s: float | None) -> None:
        """From now on (None: no longer) the job may use at most `cpu_s` more CPU seconds:
        one defense round of a zygote, measured like the whole job (cgroup, or /proc)."""
        self._segment = None if cpu_s is None else (self.usage.cpu_s, float(cpu_s))

    def watch(self, root_pid: int, kill: Callable[[], None], inside_pid: int | None = None) -> None:
        """Poll the job's usage until finish(); on a violation record why and call kill()."""
        self._root_pid, self._kill, self._inside_pid = root_pid, kill, inside_pid
        self._thread = threading.Thread(target=self._loop, name="arena-job-watchdog", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        period = POLL_S if (self.memory and self.cpu) else POLL_FALLBACK_S
        while not self._stop.wait(period):
            try:
                why = self._check()
            except Exception:  # noqa: BLE001 - a reading race (a process gone) is no violation
                continue
            if why:
                self.violation = why
                self._kill()
                return

    def _check(self) -> str | None:
        tree = None
        u = self.usage
        # memory
        if self.memory is not None:
            g = self.memory
            if g.version == 2:
                current = int(_read(g.file("memory.current")))
                ooms = _counter(_read(g.file("memory.events")), "oom_kill")
                try:
                    current = max(current, int(_read(g.file("memory.peak"))))
                except OSError:
                    pass
            else:
                current = int(_read(g.file("memory.max_usage_in_bytes")))
                ooms = _counter(_read(g.file("memory.oom_control")), "oom_kill")
            u.peak_memory_bytes = max(u.peak_memory_bytes, current + self.inherited_bytes)
            if ooms:
                return (f"memory limit of {self.memory_bytes >> 20} MB for the whole job reached "
                        f"(the kernel killed {ooms} of its processes); the job was stopped")
        else:
            tree = tree or _tree(self._root_pid)
            current = sum(_pss(p) for p in tree)
            u.peak_memory_bytes = max(u.peak_memory_bytes, current)
            if current > self.memory_bytes:
                return (f"memory limit of {self.memory_bytes >> 20} MB for the whole job reached "
                        f"({current >> 20} MB resident over {len(tree)} processes); the job was killed")
        # CPU time
        if self.cpu is not None:
            g = self.cpu
            if g.version == 2:
                u.cpu_s = _counter(_read(g.file("cpu.stat")), "usage_usec") / 1e6
            else:
                u.cpu_s = int(_read(g.file("cpuacct.usage"))) / 1e9
        else:
            tree = tree or _tree(self._root_pid)
            u.cpu_s = max(u.cpu_s, sum(_cpu_ticks(p) for p in tree) / _TICK)
        if u.cpu_s > self.cpu_s:
            return (f"CPU-time limit of {self.cpu_s:g} s for the whole job reached "
                    f"({u.cpu_s:.1f} s over all its processes); the job was killed")
        segment = self._segment
        if segment is not None and u.cpu_s - segment[0] > segment[1]:
            return (f"CPU-time limit of {segment[1]:g} s for one round reached "
                    f"({u.cpu_s - segment[0]:.1f} s over all its processes); the job was killed")
        # processes (the limit itself is pids.max or RLIMIT_NPROC; this only records the peak)
        if self.pids is not None:
            try:
                u.peak_tasks = max(u.peak_tasks, int(_read(self.pids.file("pids.current"))))
            except (OSError, ValueError):
                pass
        # files in the sandbox's writable tmpfs (the worker caps them with nr_inodes when it
        # can); only once they are mounted: before that /proc/PID/root/tmp is the host's
        if self._inside_pid is not None:
            for place in ("tmp", "dev/shm"):
                path = f"/proc/{self._inside_pid}/root/{place}"
                try:
                    st = os.statvfs(path)
                    if (st.f_blocks * st.f_frsize != self.tmp_bytes
                            or os.stat(path).st_dev == os.stat(f"/{place}").st_dev):
                        continue
                except OSError:
                    continue
                used = st.f_files - st.f_ffree
                u.peak_files = max(u.peak_files, used)
                if used > self.max_files + FILES_SLACK:
                    return (f"file-count limit of {self.max_files} files in /{place} reached; "
                            "the job was killed")
        return None

    # ---- ending
    def kill_members(self) -> None:
        """SIGKILL every process in the job's cgroups (a no-op without cgroups)."""
        for g in self.groups:
            if g.version == 2 and os.path.exists(g.file("cgroup.kill")):
                try:
                    _write(g.file("cgroup.kill"), "1")
                    continue
                except OSError:
                    pass
            for _ in range(50):   # a fork between reading and killing: read again
                pids = g.procs()
                if not pids:
                    break
                for p in pids:
                    try:
                        os.kill(p, signal.SIGKILL)
                    except OSError:
                        pass

    def finish(self) -> Usage:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            try:  # the last reading: the peak, the CPU time, and an OOM kill since the last poll
                why = self._check()
                if why and self.violation is None and self.memory is not None and why.startswith("memory"):
                    self.violation = why
            except Exception:  # noqa: BLE001
                pass
        self.kill_members()
        deadline = time.time() + 5
        for g in self.groups:
            while g.procs() and time.time() < deadline:
                time.sleep(0.01)
            g.remove()
        return self.usage


def proc_stat(pid: int | str) -> list[bytes]:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces and
    parentheses): [0] state, [1] ppid, ... (proc(5)'s numbering minus 3). OSError if gone."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return data[data.rindex(b")") + 2:].split()


def _tree(root: int) -> list[int]:
    """`root` and all its descendants (one scan of /proc)."""
    children: defaultdict[int, list[int]] = defaultdict(list)
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            ppid = int(proc_stat(name)[1])
        except (OSError, ValueError, IndexError):
            continue
        children[ppid].append(int(name))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def _pss(pid: int) -> int:
    """Proportional resident memory (shared pages split between their users), in bytes."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _cpu_ticks(pid: int) -> int:
    """utime + stime of the process and of its reaped children."""
    try:
        return sum(int(x) for x in proc_stat(pid)[11:15])
    except (OSError, ValueError, IndexError):
        return 0
