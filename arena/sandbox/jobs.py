"""One sandbox job = one submission x one model file x a list of batches.

The harness writes the job folder, starts the worker under bubblewrap inside the job's
own cgroups (control.py), enforces the wall-clock limit, receives the worker's output
over a pipe (channel.py) into output/, which the sandbox never sees, then re-validates
all of it. Submission code is never imported in this process. The job folder is always
removed (a folder a killed harness left is swept by the next one: `sweep_stale_jobdirs`).
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from arena.core.budget import Budget
from arena.plugins.spec import PluginSpec, copy_submission, submission_files
from arena.sandbox import bwrap, slot
from arena.sandbox.channel import PipeReader, Receiver
from arena.sandbox.control import TASK_SLACK, JobControl, proc_stat
from arena.sandbox.zygote import ROUND_LOG_BYTES

MAX_STATUS_BYTES = 16 * 1024 * 1024
MAX_JSON_DEPTH = 32
MAX_NUMBER_CHARS = 40       # digits of an int, characters of a float, in untrusted JSON
LOG_TAIL_BYTES = 64 * 1024  # what is kept of the job's stdout/stderr (never on disk)
RESULT_SLACK = 1_000_000    # a result file may exceed its float32 tensor by this much


@dataclass
class SandboxLimits:
    wall_s: float = 600
    cpu_s: float = 1200          # CPU time of the whole job (and of each process)
    memory_mb: int = 6144        # resident memory of the whole job (address space per process)
    max_procs: int = 64          # processes and threads of the whole job
    max_file_mb: int = 512       # one file
    max_open_files: int = 256
    tmp_mb: int = 512            # the private /tmp, the only writable place
    max_files: int = 10_000      # files and folders in /tmp


@dataclass
class BatchOutcome:
    ok: bool
    error: str | None
    adv: object | None = None           # torch.Tensor for attacks
    transcripts: list[str] | None = None  # defenses
    seconds: float = 0.0
    forward_calls: int = 0                # self-reported by the plugin's process
    backward_calls: int = 0


@dataclass
class JobResult:
    status: str                      # ok | error | timeout | sandbox-error
    error: str | None
    batches: list[BatchOutcome] = field(default_factory=list)
    forward_calls: int = 0
    backward_calls: int = 0
    wall_s: float = 0.0
    startup_s: float = 0.0           # process start -> model and plugin loaded
    log: str = ""                    # tail of the worker's stdout/stderr
    peak_memory_mb: float = 0.0      # of the whole job (cgroup, or the watchdog's PSS sum)
    cpu_s: float = 0.0               # of the whole job
    limits_via: str = ""             # how the whole-job limits were enforced


def effective_limits(limits: SandboxLimits, requested: dict | None) -> SandboxLimits:
    """A submission's [limits] may only lower the harness limits (ValueError for a value
    that is not a finite positive number)."""
    if not requested:
        return limits
    changes = {}
    for f in fields(limits):
        if f.name not in requested:
            continue
        v = requested[f.name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"[limits] {f.name} must be a finite positive number, got {v!r}")
        current = getattr(limits, f.name)
        changes[f.name] = min(current, type(current)(v))
    return replace(limits, **changes)


def trusted_warning() -> None:
    msg = "running plugin code WITHOUT the sandbox (--trusted): only do this with your own code"
    warnings.warn(msg, stacklevel=3)
    print(f"WARNING: {msg}", file=sys.stderr)


def _copy_submission(src: Path, dst: Path) -> None:
    # exactly the entries the content hash covers (one list: submission_files; it refuses
    # symlinks and special files); bytes only, so no host mtimes or modes travel
    os.mkdir(dst, 0o755)
    copy_submission(submission_files(src), dst)
    os.chmod(dst, 0o755)


def _signal_name(rc: int) -> str:
    try:
        name = signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"
    hints = {"SIGXFSZ": " (file size limit)", "SIGXCPU": " (CPU time limit)",
             "SIGKILL": " (killed)", "SIGSEGV": " (crash)"}
    return name + hints.get(name, "")


def batch_tensors(batches) -> dict:
    """The batches as the worker reads them: wave_<i> (float32), lengths_<i> (int64)."""
    tensors = {}
    for i, b in enumerate(batches):
        tensors[f"wave_{i}"] = b.wave.detach().to("cpu").float().clone()
        tensors[f"lengths_{i}"] = b.lengths.detach().to("cpu").long().clone()
    return tensors


def _prepare(jobdir: Path, submission_dir: Path, model_path: Path, batches, per_batch: list[dict],
             job: dict) -> None:
    inp, out = jobdir / "input", jobdir / "output"
    inp.mkdir(parents=True)
    out.mkdir(mode=0o700)     # filled by the harness's Receiver only; never in the sandbox
    _copy_submission(submission_dir, inp / "submission")
    try:
        os.link(model_path, inp / "model.safetensors")
    except OSError:
        shutil.copyfile(model_path, inp / "model.safetensors")
    save_file(batch_tensors(batches), str(inp / "batches.safetensors"))
    job = dict(job, batches=per_batch)
    (inp / "job.json").write_text(json.dumps(job))
    for p in (jobdir, inp, inp / "job.json", inp / "batches.safetensors"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)


# ---- untrusted JSON (status.json comes from a process that runs plugin code)

class UntrustedJSONError(ValueError):
    pass


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r'[^\[\]{}]+')
_SURROGATE = re.compile("[\ud800-\udfff]")


def _json_int(s: str) -> int:
    if len(s) > MAX_NUMBER_CHARS:
        raise UntrustedJSONError(f"a number has {len(s)} digits (at most {MAX_NUMBER_CHARS})")
    return int(s)


def _json_float(s: str) -> float:
    v = float(s) if len(s) <= MAX_NUMBER_CHARS else math.inf
    if not math.isfinite(v):
        raise UntrustedJSONError(f"the number {s[:20]}{'...' if len(s) > 20 else ''} is out of range")
    return v


def _json_constant(s: str):
    raise UntrustedJSONError(f"{s} is not a number")


def parse_untrusted_json(data: bytes):
    """json.loads for bytes written by untrusted code: nesting depth, number sizes and
    NaN/Infinity bounded or refused with UntrustedJSONError (never RecursionError or a
    hang on a 100,000-digit number)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UntrustedJSONError(f"not UTF-8 ({e.reason} at byte {e.start})") from None
    skeleton = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)).encode()
    if skeleton:
        a = np.frombuffer(skeleton, np.uint8)
        depth = int(np.cumsum(np.where((a == ord("[")) | (a == ord("{")), 1, -1)).max())
        if depth > MAX_JSON_DEPTH:
            raise UntrustedJSONError(f"nested {depth} levels deep (at most {MAX_JSON_DEPTH})")
    try:
        value = json.loads(text, parse_int=_json_int, parse_float=_json_float,
                           parse_constant=_json_constant)
    except UntrustedJSONError:
        raise
    except (ValueError, RecursionError) as e:
        raise UntrustedJSONError(f"not valid JSON ({e})") from None
    return _no_lone_surrogates(value) if "\\u" in text else value


def _no_lone_surrogates(value):
    """The parsed value with every lone surrogate (a "\\ud800" escape: valid JSON, but no
    character) replaced by "?": SQLite, files and terminals refuse to encode them, so one in
    an error text or a transcript would make the store refuse the job's cells."""
    if isinstance(value, str):
        return _SURROGATE.sub("?", value)
    if isinstance(value, list):
        return [_no_lone_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_no_lone_surrogates(k): _no_lone_surrogates(v) for k, v in value.items()}
    return value


def _type_name(v) -> str:
    return "null" if v is None else type(v).__name__


def _check_status(st, n_batches: int) -> str | None:
    """Why the worker's status.json is malformed (naming the field), or None."""
    if not isinstance(st, dict):
        return f"the top level must be an object, got {_type_name(st)}"

    def number(where, v, *, optional=True):
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            return f"{where} must be a non-negative number, got {_type_name(v)} {str(v)[:40]}"
        return None

    def kind(where, v, types, label):
        return None if isinstance(v, types) else f"{where} must be {label}, got {_type_name(v)}"

    checks = [number("started_at", st.get("started_at")), number("loaded_at", st.get("loaded_at")),
              number("load_s", st.get("load_s")),
              kind("load_error", st.get("load_error"), (str, type(None)), "a string or null"),
              kind("done", st.get("done", False), bool, "true or false"),
              kind("tmp_capped", st.get("tmp_capped", False), bool, "true or false"),
              kind("batches", st.get("batches", []), list, "a list")]
    def count(where, v):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 10**12:
            return f"{where} must be a whole number from 0 to 10^12, got {_type_name(v)}"
        return None

    checks += [count(key, st.get(key, 0)) for key in ("forward_calls", "backward_calls")]
    if isinstance(st.get("batches"), list):
        recs = st["batches"]
        if len(recs) > n_batches:
            checks.append(f"batches has {len(recs)} entries for {n_batches} batches")
        for i, rec in enumerate(recs[:n_batches]):
            where = f"batches[{i}]"
            if not isinstance(rec, dict):
                checks.append(f"{where} must be an object, got {_type_name(rec)}")
                continue
            checks += [kind(f"{where}.ok", rec.get("ok"), bool, "true or false"),
                       kind(f"{where}.error", rec.get("error"), (str, type(None)), "a string or null"),
                       number(f"{where}.seconds", rec.get("seconds")),
                       count(f"{where}.forward_calls", rec.get("forward_calls", 0)),
                       count(f"{where}.backward_calls", rec.get("backward_calls", 0))]
            hyps = rec.get("transcripts")
            if hyps is not None and not (isinstance(hyps, list)
                                         and all(isinstance(h, (str, type(None))) for h in hyps)):
                checks.append(f"{where}.transcripts must be a list of strings")
    bad = [c for c in checks if c]
    return bad[0] if bad else None


def _read_status(out: Path, n_batches: int) -> tuple[dict, str | None]:
    """(status, None), ({}, None) when the worker sent none, or ({}, why it is invalid)."""
    path = out / "status.json"
    try:
        if path.is_symlink() or not path.is_file():
            return {}, None
        if path.stat().st_size > MAX_STATUS_BYTES:
            return {}, f"status.json is over {MAX_STATUS_BYTES} bytes"
        data = path.read_bytes()
    except OSError as e:
        return {}, f"status.json could not be read: {e}"
    try:
        status = parse_untrusted_json(data)
    except UntrustedJSONError as e:
        return {}, f"status.json is {e}" if str(e).startswith(("not", "nested")) else f"status.json: {e}"
    why = _check_status(status, n_batches)
    if why:
        return {}, f"status.json: {why}"
    return status, None


def _seconds(rec: dict) -> float:
    return float(rec.get("seconds") or 0.0)


def _validate_attack(out: Path, i: int, batch, rec: dict) -> BatchOutcome:
    seconds = _seconds(rec)
    if not rec.get("ok"):
        return BatchOutcome(False, (rec.get("error") or "failed")[:4000], seconds=seconds)
    path = out / f"result-{i}.safetensors"
    if path.is_symlink() or not path.is_file():
        return BatchOutcome(False, "no output written for this batch", seconds=seconds)
    try:
        adv = load_file(str(path))["adv"]
    except Exception as e:  # noqa: BLE001
        return BatchOutcome(False, f"unreadable output: {type(e).__name__}: {str(e)[:300]}", seconds=seconds)
    if tuple(adv.shape) != tuple(batch.wave.shape):
        return BatchOutcome(False, f"output has shape {tuple(adv.shape)}, expected "
                                   f"{tuple(batch.wave.shape)} (same as batch.wave)", seconds=seconds)
    if adv.dtype != torch.float32:
        return BatchOutcome(False, f"output has dtype {adv.dtype}, expected torch.float32", seconds=seconds)
    if not bool(torch.isfinite(adv).all()):
        return BatchOutcome(False, "output contains NaN or Inf", seconds=seconds)
    return BatchOutcome(True, None, adv=adv, seconds=seconds)


def _validate_defense(batch, rec: dict) -> BatchOutcome:
    seconds = _seconds(rec)
    if not rec.get("ok"):
        return BatchOutcome(False, (rec.get("error") or "failed")[:4000], seconds=seconds)
    hyps = rec.get("transcripts")
    if not isinstance(hyps, list) or not all(isinstance(h, str) for h in hyps):
        return BatchOutcome(False, "transcribe() must return a list of str", seconds=seconds)
    if len(hyps) != len(batch.ids):
        return BatchOutcome(False, f"transcribe() returned {len(hyps)} transcripts for "
                                   f"{len(batch.ids)} utterances", seconds=seconds)
    return BatchOutcome(True, None, transcripts=[h[:10_000] for h in hyps], seconds=seconds)


# ---- the job folder

FS_IOC_GETFLAGS, FS_IOC_SETFLAGS = 0x80086601, 0x40086602
FS_IMMUTABLE_FL, FS_APPEND_FL = 0x10, 0x20


def _unlock(path: str) -> None:
    """Clear immutable/append-only flags (root only) and make a folder ours to empty."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        fd = None
    if fd is not None:
        try:
            buf = bytearray(fcntl.ioctl(fd, FS_IOC_GETFLAGS, b"\0" * 8))
            flags = int.from_bytes(buf[:4], sys.byteorder)
            if flags & (FS_IMMUTABLE_FL | FS_APPEND_FL):
                flags &= ~(FS_IMMUTABLE_FL | FS_APPEND_FL)
                fcntl.ioctl(fd, FS_IOC_SETFLAGS, flags.to_bytes(4, sys.byteorder) + b"\0" * 4)
        except OSError:
            pass
        finally:
            os.close(fd)
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            os.chmod(path, 0o700)
    except OSError:
        pass


def remove_tree(path) -> bool:
    """Remove `path` whatever permissions or flags were set inside it; True when gone."""
    path = str(path)
    shutil.rmtree(path, ignore_errors=True)
    if not os.path.lexists(path):
        return True
    # something resisted: unlock every folder top-down (one we cannot list yet is
    # unlocked first, then listed), then remove again
    todo = [path]
    while todo:
        p = todo.pop()
        _unlock(p)
        try:
            if stat.S_ISDIR(os.lstat(p).st_mode):
                with os.scandir(p) as it:
                    for e in it:
                        if e.is_dir(follow_symlinks=False):
                            todo.append(e.path)
                        else:
                            _unlock(e.path)
        except OSError:
            pass
    shutil.rmtree(path, ignore_errors=True)
    return not os.path.lexists(path)


# ---- running

class _Setup:
    """What every job checks and decides before its folder is written."""

    def __init__(self, role: str, plugin: PluginSpec, limits: SandboxLimits, trusted: bool, device):
        self.error: str | None = None
        if (role in ("defense", "purify")) == plugin.track.is_attack:
            self.error = f"{plugin.name} is a {plugin.track.value} submission, not a {role}"
            return
        try:
            self.limits = effective_limits(limits, plugin.limits)
        except ValueError as e:
            self.error = f"{plugin.name}: submission.toml {e}"
            return
        if not trusted:
            bwrap.require_sandbox()
        else:
            trusted_warning()
        self.trusted = trusted
        self.map_uid = not trusted and bwrap.as_root()
        self.gpu = str(device).startswith("cuda")

    def job(self, role: str, plugin: PluginSpec, device, seed: int, effort: str, n_batches: int) -> dict:
        return {"role": role, "module": plugin.module, "class_name": plugin.class_name,
                "track": plugin.track.value, "device": str(device),
                "seed": seed, "effort": effort, "n_batches": n_batches, "threads": 1,
                "drop_uid": bwrap.INNER_UID if self.map_uid else None,
                "isolate": not self.trusted,   # a zygote's rounds: namespaces of their own
                "cap_tmp": None if self.trusted else {"bytes": int(self.limits.tmp_mb) << 20,
                                                      "files": int(self.limits.max_files)}}


JOBDIR_NAME = re.compile(r"arena-job-(\d+)-(\d+)-")   # the owner's pid and start time


def _process_start(pid: int) -> int | None:
    """When the process started (clock ticks since boot): with the pid, names one process."""
    try:
        return int(proc_stat(pid)[19])
    except (OSError, ValueError, IndexError):
        return None


def sweep_stale_jobdirs(base: str | None = None) -> list[str]:
    """Remove the job folders whose harness process is gone (killed: SIGKILL leaves no
    chance to clean up); never one of a live process, never a link. The removed paths."""
    base = base or tempfile.gettempdir()
    removed: list[str] = []
    if _process_start(os.getpid()) is None:   # no /proc: no way to tell a live owner
        return removed
    try:
        entries = list(os.scandir(base))
    except OSError:
        return removed
    for e in entries:
        m = JOBDIR_NAME.match(e.name)
        try:
            mine = e.is_dir(follow_symlinks=False) and e.stat(follow_symlinks=False).st_uid == os.geteuid()
        except OSError:
            continue
        if not m or not mine:
            continue
        if _process_start(int(m.group(1))) != int(m.group(2)) and remove_tree(e.path):
            removed.append(e.path)
    return removed


_swept: set[int] = set()   # the processes that have swept (once each)


def new_jobdir(workdir) -> Path:
    """A new job folder: in this process's folder of job folders (slot.job_root, which the
    slots' fork servers see), or in `workdir`."""
    if workdir is None:
        pid, start = os.getpid(), _process_start(os.getpid())
        if start is None:
            return Path(tempfile.mkdtemp(prefix="arena-job-"))
        if pid not in _swept:
            _swept.add(pid)
            sweep_stale_jobdirs()
        root = slot.job_root(lambda: f"arena-job-{pid}-{start}-")
        return Path(tempfile.mkdtemp(prefix="job-", dir=root))
    Path(workdir).mkdir(parents=True, exist_ok=True)
    return Path(workdir) / f"job-{os.getpid()}-{time.time_ns()}"


def _run_job(role: str, plugin: PluginSpec, model_path, batches, per_batch: list[dict], *,
             device: str, limits: SandboxLimits, trusted: bool, seed: int, effort: str,
             workdir) -> JobResult:
    setup = _Setup(role, plugin, limits, trusted, device)
    if setup.error:
        return JobResult("error", setup.error)
    jobdir = new_jobdir(workdir)
    try:
        job = setup.job(role, plugin, device, seed, effort, len(batches))
        _prepare(jobdir, Path(plugin.folder).resolve(), Path(model_path).resolve(), batches,
                 per_batch, job)
        return _execute(jobdir, role, batches, setup)
    finally:
        if not remove_tree(jobdir):
            warnings.warn(f"could not remove the job folder {jobdir}", stacklevel=2)


class _LogTail(PipeReader):
    """Keeps the first and the last bytes of the job's stdout/stderr in memory (a plugin
    printing gigabytes costs the host no disk)."""

    def __init__(self, fd: int):
        super().__init__(fd, "arena-job-log")
        self.head, self.tail = bytearray(), bytearray()

    def run(self) -> None:
        try:
            for chunk in self.chunks():
                if len(self.head) < 4096:
                    self.head += chunk[:4096 - len(self.head)]
                self.tail += chunk
                if len(self.tail) > 2 * LOG_TAIL_BYTES:
                    del self.tail[:-LOG_TAIL_BYTES]
        except OSError:
            pass
        finally:
            os.close(self.fd)

    def text(self, n: int = 4000) -> str:
        return bytes(self.tail[-n:]).decode(errors="replace")


class Launch:
    """A started sandbox job: the worker under bwrap in its cgroups, its output Receiver and
    log reader. `requests` (purify server): the write end of a pipe the worker reads
    requests from (fd 3 + ... passed by number in argv)."""

    def __init__(self, jobdir: Path, caps: dict[str, int], setup: _Setup, *, requests: bool = False,
                 rounds: int = 0):
        self.jobdir, self.setup, limits = jobdir, setup, setup.limits
        self.out = jobdir / "output"
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8",
               "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
               "PYTHONUNBUFFERED": "1", "PYTHONHASHSEED": "0"}
        for k in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
            if setup.gpu and k in os.environ:
                env[k] = os.environ[k]
        data_r, data_w = os.pipe()
        log_r, log_w = os.pipe()
        req_r, self.requests = os.pipe() if requests else (None, None)
        # a zygote's rounds: one result pipe each (zygote.py), read into output/round-<k>/
        round_pipes = [os.pipe() for _ in range(rounds)]
        fds = (data_w,) + ((req_r,) if req_r is not None else ()) + tuple(w for _, w in round_pipes)
        args = [str(data_w)] + ([str(req_r)] if req_r is not None else [])
        if rounds:
            args = [str(data_w), "-", ",".join(str(w) for _, w in round_pipes)]
        argv = bwrap.worker_argv()
        # CPU time: per process by rlimit; for the whole job, every round's share
        self.control = JobControl(memory_bytes=int(limits.memory_mb) << 20,
                                  max_tasks=int(limits.max_procs) + TASK_SLACK + 2 * rounds,
                                  cpu_s=limits.cpu_s * max(1, rounds),
                                  max_files=int(limits.max_files), tmp_bytes=int(limits.tmp_mb) << 20)
        rlimit_values = bwrap.rlimit_values(limits, setup.gpu, tasks_bounded=self.control.pids is not None)
        rlimits = bwrap.make_preexec(rlimit_values)

        def preexec():
            self.control.preexec()
            rlimits()

        self.proc = None
        self.receiver = Receiver(data_r, str(self.out), caps, on_error=self.kill)
        self.round_receivers = []
        for k, (r, _) in enumerate(round_pipes):
            (self.out / f"round-{k}").mkdir(mode=0o700)
            self.round_receivers.append(Receiver(r, str(self.out / f"round-{k}"),
                                                 {"status.json": MAX_STATUS_BYTES}, on_error=self.kill))
        self.logger = _LogTail(log_r)
        self.t0 = time.time()
        self.start_error: str | None = None
        try:
            served = self._served(jobdir, env, [data_w, log_w, *fds[1:]], req_r is not None,
                                  bool(rounds), rlimit_values)
            if served is not None:   # forked by the process's fork server (slot.py)
                self.proc = served
            elif setup.trusted:
                self.proc = subprocess.Popen(argv + [str(jobdir)] + args, stdin=subprocess.DEVNULL,
                                             stdout=log_w, stderr=subprocess.STDOUT,
                                             start_new_session=True, preexec_fn=preexec,
                                             env={**os.environ, **env}, cwd=str(jobdir), pass_fds=fds)
                self.proc.child_pid = None
            else:
                cmd = bwrap.build_command(str(jobdir / "input"), argv + [bwrap.SANDBOX_ROOT] + args,
                                          env=env, gpu=setup.gpu, tmp_mb=limits.tmp_mb,
                                          map_uid=setup.map_uid)
                self.proc = bwrap.spawn(cmd, preexec=preexec, stdout=log_w, map_uid=setup.map_uid,
                                        pass_fds=fds)
        except (OSError, subprocess.SubprocessError) as e:
            os.close(data_r)
            os.close(log_r)
            for r, _ in round_pipes:
                os.close(r)
            self.close_requests()
            self.control.finish()
            self.start_error = f"could not start the sandbox: {e}"
            return
        finally:
            os.close(data_w)   # the job holds the only write ends now: EOF when it is gone
            os.close(log_w)
            for _, w in round_pipes:
                os.close(w)
            if req_r is not None:
                os.close(req_r)
        self.receiver.start()
        for t in self.round_receivers:
            t.start()
        self.logger.start()
        self.control.watch(self.proc.pid, self.kill, inside_pid=self.proc.child_pid)

    def _served(self, jobdir: Path, env: dict[str, str], fds: list[int], requests: bool,
                rounds: bool, rlimit_values: dict) -> _Served | None:
        """The job forked by the process's slot, or None where no slot serves it (then it is
        a sandbox of its own)."""
        setup, c = self.setup, self.control
        if (setup.trusted or not setup.map_uid or setup.gpu or not slot.enabled() or len(fds) > slot.MAX_FDS
                or not (c.memory and c.pids and c.cpu) or not slot.in_root(jobdir)):
            return None
        server = slot.current(env, setup.limits.tmp_mb, SandboxLimits())
        if server is None:
            return None
        limits = setup.limits
        request = {"requests": requests, "rounds": rounds, "rlimits": rlimit_values,
                   "cap_tmp": {"bytes": int(limits.tmp_mb) << 20, "files": int(limits.max_files)}}
        try:
            return _Served(server, jobdir, fds, request, c)
        except slot.SlotError:
            c.inherit(0)   # a sandbox of its own, with the whole limit
            return None

    def kill(self) -> None:
        self.control.kill_members()   # a served job: its keeper and all below it, not the server
        if self.proc is not None and not isinstance(self.proc, _Served):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def close_requests(self) -> None:
        if self.requests is not None:
            os.close(self.requests)
            self.requests = None

    def wait(self, timeout: float):
        """(exit status, timed out); everything is killed and the readers drained."""
        timed_out = False
        try:
            try:
                rc = self.proc.wait(timeout=max(timeout, 0.0))
            except subprocess.TimeoutExpired:
                timed_out, rc = True, None
            finally:
                # the whole tree: the cgroups, bwrap's process group; --die-with-parent and
                # the PID namespace take everything inside with it (setsid/double-forked too)
                self.kill()
                if rc is None:
                    rc = self.proc.wait()
        finally:
            self.close_requests()
            self.usage = self.control.finish()
            for t in (self.receiver, *self.round_receivers, self.logger):
                if t.is_alive():
                    t.stop()
                    t.join()
        self.wall = time.time() - self.t0
        return rc, timed_out


class _Served:
    """A job forked by the slot's server, waited on like a Popen."""

    def __init__(self, server: slot.Slot, jobdir: Path, fds: list[int], request: dict,
                 control: JobControl):
        self.server, self.child_pid = server, None
        if not control.inherit(server.control.anon_bytes()):
            raise slot.SlotError("the job's memory cgroup could not be set")
        self.job, self.pid = server.start_job(str(jobdir), fds, request, control.adopt)

    def wait(self, timeout: float | None = None) -> int | None:
        if timeout is not None:
            return self.server.wait_job(self.job, timeout)
        try:   # after a kill: the server reports at once, or is itself stopped
            return self.server.wait_job(self.job, slot.REPLY_S)
        except subprocess.TimeoutExpired:
            self.server.close()
            return None


def _execute(jobdir: Path, role, batches, setup: _Setup) -> JobResult:
    # what may come back: status.json and, for attacks, one result per batch, each capped
    caps = {"status.json": MAX_STATUS_BYTES}
    if role == "attack":
        caps.update({f"result-{i}.safetensors": b.wave.numel() * 4 + RESULT_SLACK
                     for i, b in enumerate(batches)})
    launch = Launch(jobdir, caps, setup)
    if launch.start_error:
        return JobResult("sandbox-error", launch.start_error)
    rc, timed_out = launch.wait(setup.limits.wall_s)
    status, recs, result = job_result(launch, len(batches), rc, timed_out)
    _fill_batches(result, launch.out, role, batches, recs, rc)
    return result


def _fill_batches(result: JobResult, out: Path, role: str, batches, recs: list, rc) -> None:
    """The batch outcomes from the job's records (re-validated); a job that stopped early
    or lost a batch is an error."""
    outcomes = []
    for i, batch in enumerate(batches):
        rec = recs[i] if i < len(recs) else None
        if rec is None:
            outcomes.append(BatchOutcome(False, None))
            continue
        outcome = (_validate_attack(out, i, batch, rec) if role == "attack"
                   else _validate_defense(batch, rec))
        outcome.forward_calls = rec.get("forward_calls", 0)
        outcome.backward_calls = rec.get("backward_calls", 0)
        outcomes.append(outcome)
    result.batches = outcomes
    if result.status == "ok" and len(recs) < len(batches):
        result.status = "error"
        result.error = (f"worker stopped after {len(recs)} of {len(batches)} batches "
                        f"({_exit_text(rc)}); {result.log.strip()[-500:]}")
    for o in outcomes:
        if not o.ok and o.error is None:
            o.error = result.error or "no output"
    if result.status == "ok":
        bad = [(i, o) for i, o in enumerate(outcomes) if not o.ok]
        if bad:
            result.status = "error"
            result.error = (f"{len(bad)} of {len(outcomes)} batches failed; "
                            f"batch {bad[0][0]}: {bad[0][1].error}")[:4000]


def job_result(launch: Launch, n_batches: int, rc, timed_out: bool) -> tuple[dict, list, JobResult]:
    """The finished job's status (validated), its batch records, and a JobResult saying why
    the job as a whole failed, if it did (batches not filled in)."""
    log_tail = launch.logger.text()
    status, status_error = _read_status(launch.out, n_batches)
    if launch.receiver.error:
        status_error = None     # the stream was cut: what came before it is still valid
    recs = status.get("batches", [])
    loaded_at, wall = status.get("loaded_at"), launch.wall
    startup = loaded_at - launch.t0 if loaded_at is not None else 0.0
    startup = startup if 0 <= startup <= wall + 1 else 0.0
    usage = launch.usage
    result = JobResult("ok", None, [], status.get("forward_calls", 0),
                       status.get("backward_calls", 0), wall, startup, log_tail,
                       peak_memory_mb=usage.peak_memory_bytes / 2**20, cpu_s=usage.cpu_s,
                       limits_via=usage.via)
    failure = None
    if timed_out:
        failure = ("timeout", f"wall-clock limit of {launch.setup.limits.wall_s:g} s reached; "
                              "the job was killed")
    elif launch.control.violation:
        failure = ("error", launch.control.violation)
    elif launch.receiver.error:
        failure = ("error", f"the job's output was refused: {launch.receiver.error}; the job was killed")
    elif status_error:
        failure = ("error", f"the job's {status_error}")
    elif not status:
        if "bwrap:" in log_tail:
            failure = ("sandbox-error", "sandbox failed to start: " + log_tail.strip()[-800:])
        else:
            failure = ("error", f"worker died before reporting ({_exit_text(rc)}): {log_tail.strip()[-800:]}")
    elif status.get("load_error"):
        failure = ("error", f"plugin failed to load: {status['load_error']}"[:4000])
    if failure:
        result.status, result.error = failure
    return status, recs, result


def _exit_text(rc) -> str:
    if rc is None:
        return "no exit status"
    if rc < 0:
        return f"killed by {_signal_name(rc)}"
    if rc > 128 and rc - 128 < 65:
        return f"exit status {rc}: killed by {_signal_name(-(rc - 128))}"
    return f"exit status {rc}"


def _budgets_for(budget, n: int):
    if isinstance(budget, (list, tuple)):
        if len(budget) != n:
            raise ValueError(f"{len(budget)} budgets for {n} batches")
        return [Budget.parse(b) for b in budget]
    return [Budget.parse(budget)] * n


def run_attack_job(plugin: PluginSpec, model_path, batches, budget, *, device="cpu",
                   limits: SandboxLimits | None = None, trusted=False, seed=0, workdir=None,
                   effort="full") -> JobResult:
    """Run an (un)targeted attack on every batch; `budget` is one Budget (or id) or one per
    batch. Batch outcomes carry the raw adversarial waves: the caller projects them."""
    budgets = _budgets_for(budget, len(batches))
    for b in batches:
        if not b.transcripts:
            raise ValueError("attack batches need transcripts")
    per_batch = [{"ids": list(b.ids), "transcripts": b.transcripts, "targets": b.targets,
                  "budget": bud.id} for b, bud in zip(batches, budgets)]
    return _run_job("attack", plugin, model_path, batches, per_batch, device=device,
                    limits=limits or SandboxLimits(), trusted=trusted, seed=seed, effort=effort,
                    workdir=workdir)


def run_defense_job(plugin: PluginSpec, model_path, batches, *, device="cpu",
                    limits: SandboxLimits | None = None, trusted=False, seed=0, workdir=None,
                    effort="full") -> JobResult:
    """Transcribe every batch with a defense (no references, targets or budgets given)."""
    per_batch = [{"ids": list(b.ids)} for b in batches]
    return _run_job("defense", plugin, model_path, batches, per_batch, device=device,
                    limits=limits or SandboxLimits(), trusted=trusted, seed=seed, effort=effort,
                    workdir=workdir)


# ---- the rounds of one defense on one model

def failed_as_a_whole(result: JobResult) -> bool:
    """No batch answered: the plugin did not load, hung or crashed before its first batch
    (its later rounds would fail the same way)."""
    return result.status != "ok" and not any(b.ok for b in result.batches)


def run_defense_rounds(plugin: PluginSpec, model_path, rounds: list[list], *, device="cpu",
                       limits: SandboxLimits | None = None, trusted=False, seed=0, workdir=None,
                       effort="full") -> list[JobResult]:
    """Transcribe every round's batches, each round in a process of its own that sees only
    its own audio; one JobResult per round. After a round fails as a whole the later ones
    are not run and carry its failure. On the CPU where the sandbox maps an unprivileged
    user (the harness is root), and with --trusted, one zygote process forks the rounds
    (zygote.py: torch imported and the model loaded once); otherwise each round is a
    sandbox job of its own (CUDA does not survive a fork)."""
    limits = limits or SandboxLimits()
    setup = _Setup("defense", plugin, limits, trusted, device)
    if setup.error:
        return [JobResult("error", setup.error) for _ in rounds]
    apart = dict(device=device, limits=limits, trusted=trusted, seed=seed, workdir=workdir,
                 effort=effort)
    # the zygote: in the sandbox where it maps an unprivileged user, or with no sandbox at
    # all (--trusted: no namespaces; torch still imported once)
    if (not setup.trusted and not setup.map_uid) or setup.gpu or not rounds or not _zygote_works[0]:
        return _rounds_apart(plugin, model_path, rounds, apart)
    jobdir = new_jobdir(workdir)
    try:
        job = {**setup.job("rounds", plugin, device, seed, effort, 0), "n_rounds": len(rounds),
               "round_wall_s": float(setup.limits.wall_s), "round_cpu_s": float(setup.limits.cpu_s)}
        _prepare_rounds(jobdir, Path(plugin.folder).resolve(), Path(model_path).resolve(), rounds, job)
        results = _execute_rounds(jobdir, rounds, setup)
    finally:
        if not remove_tree(jobdir):
            warnings.warn(f"could not remove the job folder {jobdir}", stacklevel=2)
    refused = next((r.error for r in results if r.status == "isolation"), None)
    if refused is not None:   # the kernel refused a round's namespaces: never the defense's fault
        _zygote_works[0] = False
        warnings.warn(f"defense rounds run as separate sandbox jobs: {refused}", stacklevel=2)
        return _rounds_apart(plugin, model_path, rounds, apart)
    return results


_zygote_works = [True]   # until a kernel refuses a round's namespaces (then for the process)


def _rounds_apart(plugin: PluginSpec, model_path, rounds: list[list], options: dict) -> list[JobResult]:
    results: list[JobResult] = []
    for batches in rounds:
        results.append(_carried(results) or run_defense_job(plugin, model_path, batches, **options))
    return results


def _carried(results: list[JobResult]) -> JobResult | None:
    """The failure the next round carries unrun: the last round's, if it failed as a whole."""
    if results and failed_as_a_whole(results[-1]):
        return replace(results[-1], batches=[], wall_s=0.0, startup_s=0.0)
    return None


def _prepare_rounds(jobdir: Path, submission_dir: Path, model_path: Path, rounds: list[list],
                    job: dict) -> None:
    """The shared input as for one job; each round's batches in files only the sandbox's
    root (the zygote's child, before it drops privileges) can read."""
    _prepare(jobdir, submission_dir, model_path, [], [], job)
    inp = jobdir / "input"
    (inp / "batches.safetensors").unlink()
    for k, batches in enumerate(rounds):
        for name in (f"round-{k}.safetensors", f"round-{k}.json"):
            fd = os.open(inp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
        save_file(batch_tensors(batches), str(inp / f"round-{k}.safetensors"))
        (inp / f"round-{k}.json").write_text(json.dumps([{"ids": list(b.ids)} for b in batches]))


def _execute_rounds(jobdir: Path, rounds: list[list], setup: _Setup) -> list[JobResult]:
    n = len(rounds)
    caps = {"status.json": MAX_STATUS_BYTES}
    for k in range(n):
        caps.update({f"round-{k}.start": 16, f"round-{k}.log": ROUND_LOG_BYTES + 1024,
                     f"round-{k}.json": 4096})
    launch = Launch(jobdir, caps, setup, rounds=n)
    if launch.start_error:
        return [JobResult("sandbox-error", launch.start_error) for _ in rounds]
    # each round has its wall limit inside (the zygote kills it); this bounds the whole
    wall = setup.limits.wall_s * n + 60
    guard = threading.Thread(target=_round_cpu_guard, args=(launch, n, time.monotonic() + wall),
                             name="arena-round-cpu", daemon=True)
    guard.start()
    rc, timed_out = launch.wait(wall)
    guard.join(timeout=5)
    _, _, whole = job_result(launch, 0, rc, timed_out)
    results = []
    for k, batches in enumerate(rounds):
        results.append(_carried(results) or _round_result(launch, k, batches, whole, rc))
    # the zygote's own start-up (torch, the model) is paid once: count it on the first round
    if results:
        results[0].startup_s += whole.startup_s
    return results


def _round_cpu_guard(launch: Launch, n: int, deadline: float) -> None:
    """Hold each round to the per-job CPU time through the job's own accounting (cgroup):
    its budget opens when the keeper says the round starts and closes with its record. A
    round over it stops the job (its later rounds would not run anyway)."""
    for k in range(n):
        if not launch.receiver.wait_for(f"round-{k}.start", deadline):
            break
        launch.control.limit_segment(launch.setup.limits.cpu_s)
        launch.receiver.wait_for(f"round-{k}.json", deadline)
        launch.control.limit_segment(None)


def _round_record(out: Path, k: int) -> dict | None:
    path = out / f"round-{k}.json"
    try:
        rec = parse_untrusted_json(path.read_bytes()) if path.is_file() else None
    except (UntrustedJSONError, OSError):
        return None
    return rec if isinstance(rec, dict) else None


def _round_result(launch: Launch, k: int, batches, whole: JobResult, rc) -> JobResult:
    rec = _round_record(launch.out, k)
    out = launch.out / f"round-{k}"
    status, status_error = _read_status(out, len(batches))
    receiver = launch.round_receivers[k]
    seconds = rec.get("seconds") if rec else None
    seconds = float(seconds) if isinstance(seconds, (int, float)) and 0 <= seconds <= launch.wall else 0.0
    loaded, started = status.get("loaded_at"), status.get("started_at")
    number = (int, float)
    startup = loaded - started if isinstance(loaded, number) and isinstance(started, number) else 0.0
    log_path = launch.out / f"round-{k}.log"
    log = log_path.read_bytes().decode(errors="replace")[-4000:] if log_path.is_file() else ""
    result = JobResult("ok", None, [], wall_s=seconds, startup_s=startup if 0 <= startup <= seconds else 0.0,
                       log=log, peak_memory_mb=whole.peak_memory_mb, limits_via=whole.limits_via)
    failure = None
    if rec is None or not rec.get("ran"):
        if whole.status != "ok":
            failure = (whole.status, whole.error)
        elif rec is not None:
            failure = ("timeout", f"not run: round {rec.get('after')} of this defense was killed "
                                  "at a limit")
        else:
            failure = ("error", f"the zygote stopped before round {k} ({_exit_text(rc)})")
    elif rec.get("timed_out"):
        failure = ("timeout", f"wall-clock limit of {launch.setup.limits.wall_s:g} s reached; "
                              "the round was killed")
    elif rec.get("over_cpu"):
        failure = ("error", f"CPU-time limit of {launch.setup.limits.cpu_s:g} s for one round "
                            "reached (all its processes); the round was killed")
    elif rec.get("isolated") is False:   # the zygote's word (a plugin cannot forge it)
        why = status.get("isolation_error")
        failure = ("isolation", "the round's namespaces were refused: "
                                + (why if isinstance(why, str) else "the round stopped before them"))
    elif receiver.error:
        failure = ("error", f"the round's output was refused: {receiver.error}; the job was killed")
    elif status_error:
        failure = ("error", f"the round's {status_error}")
    elif not status:
        failure = ("error", f"the round died before reporting (exit {rec.get('rc')}): "
                            f"{log.strip()[-800:]}")
    elif status.get("load_error"):
        failure = ("error", f"plugin failed to load: {status['load_error']}"[:4000])
    elif whole.status != "ok" and not status.get("done"):
        failure = (whole.status, whole.error)
    if failure:
        result.status, result.error = failure
    _fill_batches(result, out, "defense", batches, status.get("batches", []), rc)
    result.forward_calls = sum(b.forward_calls for b in result.batches)
    result.backward_calls = sum(b.backward_calls for b in result.batches)
    return result
