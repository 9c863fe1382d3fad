"""Runs inside the sandbox: `python -m arena.sandbox.worker JOBDIR FD [REQUEST_FD|- [ROUND_FDS]]`.

JOBDIR/input (read-only): job.json, batches.safetensors, model.safetensors, submission/.
Output goes as frames over the pipe FD (channel.py): status.json (sent again after every
batch) and result-<i>.safetensors (attacks: {"adv": tensor}) for each finished batch.
The "purify" role (the adaptive evaluation) instead answers requests read from REQUEST_FD:
request-<k> {"wave", "lengths"} -> purified-<k>.safetensors {"wave": defense.purify(...)},
after a ready.json saying which of purify/transcribe the defense overrides.
The "rounds" role is a zygote (zygote.py): one child per defense round, each answering on
its own pipe (ROUND_FDS, comma-separated). `worker.py --slot SOCKET_FD` is a slot's fork
server (forkserver.py), whose jobs run `main` in a forked process with the same arguments.
The harness trusts none of it: it caps and re-validates everything it receives.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import sys
import time
import traceback

from arena.sandbox.channel import close_fds_except, recv, send
from arena.sandbox.control import FILES_SLACK

T0 = time.time()
MS_NOSUID, MS_NODEV, MS_REMOUNT = 2, 4, 32
KEYCTL_JOIN_SESSION_KEYRING = 1
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3   # glibc mallopt parameters (malloc.h)
MMAP_THRESHOLD_MAX = 32 << 20   # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit
SYS_KEYCTL = {"x86_64": 250, "aarch64": 219}.get(platform.machine())
WRITABLE = ("/tmp", "/dev/shm")   # the sandbox's only writable places (bwrap.build_command)


def _tail(exc: BaseException, lines: int = 8) -> str:
    text = "".join(traceback.format_exception(exc)).strip().splitlines()
    head = f"{type(exc).__name__}: {exc}"[:500]
    return head + "\n" + "\n".join(text[-lines:])


def _cap_writable(size_bytes: int, max_files: int) -> bool:
    """Remount the sandbox's writable tmpfs (/tmp, /dev/shm) with a file-count cap
    (nr_inodes; bwrap can only set their size). Possible while this process is root in the
    sandbox's namespaces (the harness runs as root); otherwise the harness's watchdog
    counts the files."""
    if os.geteuid() != 0:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    ok = True
    for path in WRITABLE:
        opts = f"size={int(size_bytes)},nr_inodes={int(max_files) + FILES_SLACK}"
        ok &= libc.mount(b"tmpfs", path.encode(), b"tmpfs", MS_REMOUNT | MS_NOSUID | MS_NODEV,
                         opts.encode()) == 0
    return ok


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory in the process: a fixed mmap threshold at its
    ceiling and no trimming of the heap. With the defaults, the buffers of every forward
    and backward (megabytes each, a new set per attack step) are handed back to the
    kernel when freed and page-faulted in again on the next step: in a fresh process 40
    forward+backward steps at 4 shapes took 3x the page faults and 10-19% more CPU time
    (medians of 6). The lever of the caching allocators PyTorch's CPU tuning guide
    recommends (tcmalloc did as well here; jemalloc, returning memory on a timer, worse);
    the peak memory is unchanged. False where the C library is not glibc."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
                and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def new_session_keyring() -> None:
    """An anonymous session keyring of its own: whatever keyring the harness was started
    with (a container's, a login's) is out of reach. Called while still root, so that a
    full key quota of the user every job runs as cannot make it fail; OSError if it does
    fail (where keyctl is refused, by a seccomp filter, it is refused to the submission
    too: nothing to leave)."""
    if SYS_KEYCTL is None:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(SYS_KEYCTL, KEYCTL_JOIN_SESSION_KEYRING, None) < 0:
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EPERM):
            raise OSError(err, f"could not leave the harness's session keyring: {os.strerror(err)}")


def _drop_privileges(uid: int) -> None:
    """Become an unprivileged user (all capabilities dropped) before any submission code."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise RuntimeError("could not drop privileges")


def serve_purify(plugin, fd: int, request_fd: int, seed: int, status: dict, report) -> int:
    """Answer purify requests until the harness closes the request pipe. The first failing
    request ends the server (its error in status.json): the harness scores it."""
    import torch
    from safetensors.torch import load, save

    from arena.plugins.api import Defense

    cls = type(plugin)
    send(fd, "ready.json", json.dumps({"purify": cls.purify is not Defense.purify,
                                       "transcribe": cls.transcribe is not Defense.transcribe}).encode())
    k = 0
    while (frame := recv(request_fd)) is not None:
        t = time.time()
        try:
            request = load(frame[1])
            torch.manual_seed(seed * 1_000_003 + k)
            with torch.no_grad():
                out = plugin.purify(request["wave"], request["lengths"])
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"purify() returned {type(out).__name__}, not a torch.Tensor")
            send(fd, f"purified-{k}.safetensors", save({"wave": out.detach().to("cpu").contiguous()}))
        except BaseException as e:  # noqa: BLE001 - reported; the harness scores the failure
            status["batches"] = [{"ok": False, "error": f"request {k}: {_tail(e)}",
                                  "seconds": time.time() - t}]
            report()
            return 4
        k += 1
    status["done"] = True
    report()
    return 0


def main(jobdir: str, fd: int, request_fd: int | None = None,
         round_fds: list[int] | None = None, *, started_at: float = T0,
         own_userns: bool = False) -> int:
    """One job. `started_at`: when its process started; `own_userns` (a job forked by a
    slot's server, forkserver.py): after the user change, a user namespace of its own, as
    a defense round's process has."""
    inp = os.path.join(jobdir, "input")
    with open(os.path.join(inp, "job.json")) as f:
        job = json.load(f)
    if round_fds is not None:   # the zygote: round k's results go to round_fds[k]
        job["rounds"] = [{"fd": n} for n in round_fds]
    close_fds_except({fd, *([request_fd] if request_fd is not None else []), *(round_fds or [])})
    status = fresh_status(started_at)

    def report() -> None:
        send(fd, "status.json", json.dumps(status).encode())

    if job.get("cap_tmp"):   # only ever in the sandbox: never remount the host's /tmp
        try:
            status["tmp_capped"] = _cap_writable(job["cap_tmp"]["bytes"], job["cap_tmp"]["files"])
        except OSError:
            pass
    report()

    threads = int(job.get("threads", 1))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    keep_freed_memory()
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(threads)
    device = job.get("device", "cpu")
    try:
        from arena.plugins.api import TargetModel
        from arena.zoo.registry import load_model

        model = TargetModel(load_model(os.path.join(inp, "model.safetensors"), device=device), device)
        if job["role"] == "rounds":   # a zygote: never imports submission code itself
            from arena.sandbox.zygote import serve_rounds

            return serve_rounds(job, inp, model, fd, status, report)
        tensors = load_file(os.path.join(inp, "batches.safetensors"))
        new_session_keyring()
        if job.get("drop_uid") is not None:
            uid = int(job["drop_uid"])
            _drop_privileges(uid)
            if own_userns:
                from arena.sandbox.zygote import _own_user_namespace

                _own_user_namespace(uid, uid)
    except BaseException as e:  # noqa: BLE001 - reported, never raised
        status["load_error"] = _tail(e)
        report()
        return 3
    # -------- from here on, submission code runs (unprivileged)
    plugin = load_reported(inp, job, status, report)
    if plugin is None:
        return 3
    role, seed = job["role"], int(job.get("seed", 0))
    if role == "purify":
        return serve_purify(plugin, fd, request_fd, seed, status, report)
    run_batches(plugin, model, role, job["batches"], tensors, seed, device, fd, status, report)
    return 0


def fresh_status(started_at: float) -> dict:
    """What status.json holds before anything ran."""
    return {"started_at": started_at, "loaded_at": None, "load_s": None, "load_error": None,
            "batches": [], "forward_calls": 0, "backward_calls": 0, "done": False,
            "tmp_capped": False}


def mark_loaded(status: dict, report) -> None:
    status["loaded_at"] = time.time()
    status["load_s"] = status["loaded_at"] - status["started_at"]
    report()


def load_reported(inp: str, job: dict, status: dict, report):
    """The submission's plugin (status says loaded), or None (status says why not)."""
    from arena.plugins.loader import load_plugin

    try:
        plugin = load_plugin(os.path.join(inp, "submission"), job["module"], job["class_name"],
                             job["track"], job.get("effort", "full"), int(job.get("seed", 0)))
    except BaseException as e:  # noqa: BLE001 - reported, never raised
        status["load_error"] = _tail(e)
        report()
        return None
    mark_loaded(status, report)
    return plugin


def run_batches(plugin, model, role: str, metas: list[dict], tensors: dict, seed: int, device: str,
                fd: int, status: dict, report) -> None:
    """Run the plugin on every batch: attacks send result-<i>.safetensors, defenses put
    their transcripts in status.json (sent after every batch), which ends with done."""
    import torch
    from safetensors.torch import save

    from arena.core.audio import AudioBatch
    from arena.core.budget import Budget

    for i, meta in enumerate(metas):
        t = time.time()
        rec = {"ok": False, "error": None, "seconds": None}
        calls_before = model.forward_calls, model.backward_calls
        try:
            torch.manual_seed(seed * 1_000_003 + i)
            batch = AudioBatch(ids=meta["ids"], wave=tensors[f"wave_{i}"], lengths=tensors[f"lengths_{i}"],
                               transcripts=meta.get("transcripts"), targets=meta.get("targets")).to(device)
            if role == "attack":
                adv = plugin.run(batch, model, Budget.parse(meta["budget"]))
                if not isinstance(adv, torch.Tensor):
                    raise TypeError(f"run() returned {type(adv).__name__}, not a torch.Tensor")
                send(fd, f"result-{i}.safetensors", save({"adv": adv.detach().to("cpu").contiguous()}))
            else:
                hyps = plugin.transcribe(batch, model)
                if not isinstance(hyps, (list, tuple)):
                    raise TypeError(f"transcribe() returned {type(hyps).__name__}, not a list of str")
                rec["transcripts"] = [h if isinstance(h, str) else None for h in hyps]
                if any(not isinstance(h, str) for h in hyps):
                    raise TypeError("transcribe() must return str items, got "
                                    + ", ".join(sorted({type(h).__name__ for h in hyps})))
            rec["ok"] = True
        except BaseException as e:  # noqa: BLE001 - one failed batch does not lose the others
            rec["error"] = _tail(e)
        rec["seconds"] = time.time() - t
        # per batch, so a cell's counts do not depend on which other batches shared its job
        rec["forward_calls"] = model.forward_calls - calls_before[0]
        rec["backward_calls"] = model.backward_calls - calls_before[1]
        status["batches"].append(rec)
        status["forward_calls"], status["backward_calls"] = model.forward_calls, model.backward_calls
        report()
    status["done"] = True
    report()


if __name__ == "__main__":
    args = sys.argv[1:] + ["-", ""][len(sys.argv) - 3:]
    if args[0] == "--slot":   # a slot's fork server (forkserver.py)
        from arena.sandbox.forkserver import serve

        code = serve(int(args[1]))
    else:
        code = main(args[0], int(args[1]), None if args[2] == "-" else int(args[2]),
                    [int(n) for n in args[3].split(",")] if args[3] else None)
    # everything is reported: skip interpreter teardown (torch's takes 0.4-1 s per job)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
