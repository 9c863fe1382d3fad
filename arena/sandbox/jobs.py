"""One sandbox job = one submission x one model file x a list of batches.

The harness writes the job folder, starts the worker under bubblewrap, enforces the
wall-clock limit, then reads and re-validates what the worker left in output/.
Submission code is never imported in this process.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from arena.core.budget import Budget
from arena.plugins.spec import PluginSpec, submission_files
from arena.sandbox import bwrap

MAX_STATUS_BYTES = 64 * 1024 * 1024


@dataclass
class SandboxLimits:
    wall_s: float = 600
    cpu_s: float = 1200
    memory_mb: int = 6144
    max_procs: int = 64
    max_file_mb: int = 512
    max_open_files: int = 256


@dataclass
class BatchOutcome:
    ok: bool
    error: str | None
    adv: "object | None" = None           # torch.Tensor for attacks
    transcripts: list[str] | None = None  # defenses
    seconds: float = 0.0


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


def effective_limits(limits: SandboxLimits, requested: dict | None) -> SandboxLimits:
    """A submission's [limits] may only lower the harness limits."""
    if not requested:
        return limits
    changes = {f.name: min(getattr(limits, f.name), type(getattr(limits, f.name))(requested[f.name]))
               for f in fields(limits) if f.name in requested}
    return replace(limits, **changes)


def trusted_warning() -> None:
    msg = "running plugin code WITHOUT the sandbox (--trusted): only do this with your own code"
    warnings.warn(msg, stacklevel=3)
    print(f"WARNING: {msg}", file=sys.stderr)


def _copy_submission(src: Path, dst: Path) -> None:
    # exactly the entries the content hash covers (one list: submission_files; it refuses
    # symlinks and special files); bytes only, so no host mtimes or modes travel
    os.mkdir(dst, 0o755)
    for f in submission_files(src):
        target = dst.joinpath(*f.rel.split("/"))
        if f.is_dir:
            os.mkdir(target, 0o755)
        else:
            shutil.copyfile(f.path, target, follow_symlinks=False)
        os.chmod(target, 0o755 if f.is_dir else 0o644)
    os.chmod(dst, 0o755)


def _tail(path: Path, n: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - n))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _signal_name(rc: int) -> str:
    try:
        name = signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"
    hints = {"SIGXFSZ": " (file size limit)", "SIGXCPU": " (CPU time limit)",
             "SIGKILL": " (killed)", "SIGSEGV": " (crash)"}
    return name + hints.get(name, "")


def _prepare(jobdir: Path, submission_dir: Path, model_path: Path, batches, per_batch: list[dict],
             job: dict, map_uid: bool) -> None:

    inp, out = jobdir / "input", jobdir / "output"
    inp.mkdir(parents=True)
    out.mkdir()
    _copy_submission(submission_dir, inp / "submission")
    try:
        os.link(model_path, inp / "model.safetensors")
    except OSError:
        shutil.copyfile(model_path, inp / "model.safetensors")
    tensors = {}
    for i, b in enumerate(batches):
        tensors[f"wave_{i}"] = b.wave.detach().to("cpu").float().clone()
        tensors[f"lengths_{i}"] = b.lengths.detach().to("cpu").long().clone()
    save_file(tensors, str(inp / "batches.safetensors"))
    job = dict(job, batches=per_batch)
    (inp / "job.json").write_text(json.dumps(job))
    for p in (jobdir, inp, inp / "job.json", inp / "batches.safetensors"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    if map_uid:
        os.chown(out, bwrap.host_uid(), bwrap.host_uid())
    os.chmod(out, 0o700)


def _read_status(out: Path) -> dict | None:
    path = out / "status.json"
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_STATUS_BYTES:
            return None
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _int(x) -> int:
    return int(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else 0


def _validate_attack(out: Path, i: int, batch, rec: dict) -> BatchOutcome:

    seconds = float(rec.get("seconds") or 0.0) if isinstance(rec.get("seconds"), (int, float)) else 0.0
    if not rec.get("ok"):
        return BatchOutcome(False, str(rec.get("error") or "failed")[:4000], seconds=seconds)
    path = out / f"result-{i}.safetensors"
    if path.is_symlink() or not path.is_file():
        return BatchOutcome(False, "no output written for this batch", seconds=seconds)
    expected_bytes = batch.wave.numel() * 4
    if path.stat().st_size > expected_bytes + 1_000_000:
        return BatchOutcome(False, f"output file is {path.stat().st_size} bytes, far more than "
                                   f"the {expected_bytes} a float32 {tuple(batch.wave.shape)} needs",
                            seconds=seconds)
    try:
        adv = load_file(str(path))["adv"]
    except Exception as e:  # noqa: BLE001
        return BatchOutcome(False, f"unreadable output: {e}", seconds=seconds)
    if tuple(adv.shape) != tuple(batch.wave.shape):
        return BatchOutcome(False, f"output has shape {tuple(adv.shape)}, expected "
                                   f"{tuple(batch.wave.shape)} (same as batch.wave)", seconds=seconds)
    if adv.dtype != torch.float32:
        return BatchOutcome(False, f"output has dtype {adv.dtype}, expected torch.float32", seconds=seconds)
    if not bool(torch.isfinite(adv).all()):
        return BatchOutcome(False, "output contains NaN or Inf", seconds=seconds)
    return BatchOutcome(True, None, adv=adv, seconds=seconds)


def _validate_defense(batch, rec: dict) -> BatchOutcome:
    seconds = float(rec.get("seconds") or 0.0) if isinstance(rec.get("seconds"), (int, float)) else 0.0
    if not rec.get("ok"):
        return BatchOutcome(False, str(rec.get("error") or "failed")[:4000], seconds=seconds)
    hyps = rec.get("transcripts")
    if not isinstance(hyps, list) or not all(isinstance(h, str) for h in hyps):
        return BatchOutcome(False, "transcribe() must return a list of str", seconds=seconds)
    if len(hyps) != len(batch.ids):
        return BatchOutcome(False, f"transcribe() returned {len(hyps)} transcripts for "
                                   f"{len(batch.ids)} utterances", seconds=seconds)
    return BatchOutcome(True, None, transcripts=[h[:10_000] for h in hyps], seconds=seconds)


def _run_job(role: str, plugin: PluginSpec, model_path, batches, per_batch: list[dict], *,
             device: str, limits: SandboxLimits, trusted: bool, seed: int, effort: str,
             workdir) -> JobResult:
    submission_dir, model_path = Path(plugin.folder).resolve(), Path(model_path).resolve()
    if (role == "attack") != plugin.track.is_attack:
        return JobResult("error", f"{plugin.name} is a {plugin.track.value} submission, not a {role}")
    limits = effective_limits(limits, plugin.limits)
    if not trusted:
        bwrap.require_sandbox()
    else:
        trusted_warning()
    map_uid = not trusted and bwrap.as_root()
    gpu = str(device).startswith("cuda")
    own_dir = workdir is None
    jobdir = Path(tempfile.mkdtemp(prefix="arena-job-")) if own_dir else Path(workdir)
    if not own_dir:
        jobdir.mkdir(parents=True, exist_ok=True)
        jobdir = jobdir / f"job-{os.getpid()}-{time.time_ns()}"
    try:
        job = {"role": role, "module": plugin.module, "class_name": plugin.class_name,
               "track": plugin.track.value, "device": str(device),
               "seed": seed, "effort": effort, "n_batches": len(batches), "threads": 1,
               "drop_uid": bwrap.INNER_UID if map_uid else None}
        _prepare(jobdir, submission_dir, model_path, batches, per_batch, job, map_uid)
        return _execute(jobdir, role, batches, limits, trusted, gpu, map_uid)
    finally:
        if own_dir:
            shutil.rmtree(jobdir, ignore_errors=True)


def _execute(jobdir: Path, role, batches, limits: SandboxLimits, trusted, gpu, map_uid) -> JobResult:
    out = jobdir / "output"
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONUNBUFFERED": "1", "PYTHONHASHSEED": "0"}
    for k in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
        if gpu and k in os.environ:
            env[k] = os.environ[k]
    argv = [bwrap.python_executable(), "-I", "-m", "arena.sandbox.worker"]
    if trusted:
        cmd = argv + [str(jobdir)]
        preexec = bwrap.make_preexec(limits, gpu)
    else:
        cmd = bwrap.build_command(str(jobdir / "input"), str(out), argv + [bwrap.SANDBOX_ROOT],
                                  env=env, gpu=gpu, map_uid=map_uid)
        preexec = bwrap.make_preexec(limits, gpu)
    log_path = jobdir / "log.txt"
    t0 = time.time()
    timed_out = False
    with open(log_path, "wb") as log:
        try:
            if trusted:
                full_env = {**os.environ, **env}
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True, preexec_fn=preexec, env=full_env,
                                        cwd=str(jobdir))
            else:
                proc = bwrap.spawn(cmd, preexec=preexec, stdout=log, map_uid=map_uid)
        except OSError as e:
            return JobResult("sandbox-error", f"could not start the sandbox: {e}")
        try:
            rc = proc.wait(timeout=limits.wall_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            rc = None
        finally:
            # the whole tree: bwrap's process group; --die-with-parent and the PID namespace
            # take everything inside with it (setsid/double-forked children included)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if rc is None:
                rc = proc.wait()
    wall = time.time() - t0
    log_tail = _tail(log_path)
    status = _read_status(out) or {}
    recs = status.get("batches") if isinstance(status.get("batches"), list) else []
    outcomes = []
    for i, batch in enumerate(batches):
        rec = recs[i] if i < len(recs) and isinstance(recs[i], dict) else None
        if rec is None:
            outcomes.append(BatchOutcome(False, None))
            continue
        outcomes.append(_validate_attack(out, i, batch, rec) if role == "attack"
                        else _validate_defense(batch, rec))
    loaded_at = status.get("loaded_at")
    startup = (loaded_at - t0) if isinstance(loaded_at, (int, float)) and 0 <= loaded_at - t0 <= wall + 1 else 0.0
    result = JobResult("ok", None, outcomes, _int(status.get("forward_calls")),
                       _int(status.get("backward_calls")), wall, startup, log_tail)
    # why the missing batches are missing
    if timed_out:
        result.status = "timeout"
        result.error = f"wall-clock limit of {limits.wall_s:g} s reached; the job was killed"
    elif not status:
        if "bwrap:" in log_tail:
            result.status = "sandbox-error"
            result.error = "sandbox failed to start: " + log_tail.strip()[-800:]
        else:
            result.status = "error"
            result.error = f"worker died before reporting ({_exit_text(rc)}): {log_tail.strip()[-800:]}"
    elif status.get("load_error"):
        result.status = "error"
        result.error = f"plugin failed to load: {status['load_error']}"[:4000]
    elif len(recs) < len(batches):
        result.status = "error"
        result.error = (f"worker stopped after {len(recs)} of {len(batches)} batches "
                        f"({_exit_text(rc)}); {log_tail.strip()[-500:]}")
    for o in outcomes:
        if not o.ok and o.error is None:
            o.error = result.error or "no output"
    if result.status == "ok":
        bad = [(i, o) for i, o in enumerate(outcomes) if not o.ok]
        if bad:
            result.status = "error"
            result.error = f"{len(bad)} of {len(outcomes)} batches failed; batch {bad[0][0]}: {bad[0][1].error}"[:4000]
    return result


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
