"""Running one job (one submission x one target model x a list of batches).

The harness writes the job folder, starts the worker under bubblewrap with resource
limits and a wall-clock timeout that kills the whole process tree, then reads and checks
what came back. It never imports the submission's code.
"""
from __future__ import annotations

import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from arena.sandbox.bwrap import (JOB_INPUT, JOB_OUTPUT, SUBMISSION, bwrap_command,
                                 require_sandbox)

MAX_STATUS_BYTES = 64 << 20


@dataclass
class SandboxLimits:
    wall_s: float = 600.0
    cpu_s: float = 1200.0
    memory_mb: int = 8192       # address space; torch maps large libraries
    max_procs: int = 256        # per sandbox user namespace
    max_file_mb: int = 512      # largest file the job may write
    max_open_files: int = 256
    threads: int = 2


@dataclass
class BatchOutcome:
    ok: bool
    error: str | None = None
    adv: torch.Tensor | None = None
    transcripts: list[str] | None = None
    seconds: float = 0.0


@dataclass
class JobResult:
    status: str                        # ok | error | timeout | sandbox-error
    error: str | None
    batches: list[BatchOutcome] = field(default_factory=list)
    forward_calls: int = 0
    backward_calls: int = 0
    wall_s: float = 0.0
    startup_s: float = 0.0             # process start -> model and plugin loaded
    stderr_tail: str = ""


def _limits_fn(limits: SandboxLimits):
    def apply():
        mb = 1 << 20
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * mb,) * 2)
        resource.setrlimit(resource.RLIMIT_CPU, (int(limits.cpu_s),) * 2)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.max_file_mb * mb,) * 2)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.max_open_files,) * 2)
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_procs,) * 2)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def _env(limits: SandboxLimits) -> dict[str, str]:
    threads = str(limits.threads)
    return {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0", "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def _write_inputs(input_dir: Path, role: str, entry: str, batches, budgets, *, device, seed,
                  effort, threads, submission_view, model_view, output_view):
    from safetensors.torch import save_file

    tensors, specs = {}, []
    for i, b in enumerate(batches):
        tensors[f"wave_{i}"] = b.wave.detach().float().cpu().clone()
        tensors[f"lengths_{i}"] = b.lengths.detach().long().cpu().clone()
        spec = {"ids": list(b.ids)}
        if role == "attack":
            spec["transcripts"] = b.transcripts
            spec["targets"] = b.targets
            spec["budget"] = budgets[i].id
        specs.append(spec)
    save_file(tensors, str(input_dir / "batches.safetensors"))
    job = {"role": role, "entry": entry, "device": device, "seed": seed, "effort": effort,
           "threads": threads, "submission": submission_view, "model": model_view,
           "output": output_view, "batches": specs}
    (input_dir / "job.json").write_text(json.dumps(job))


def _kill_tree(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _run(role, submission_dir, model_path, batches, budgets, *, device, limits, trusted, seed,
         effort, workdir) -> JobResult:
    from arena.plugins.manifest import SubmissionError, load_manifest

    t0 = time.time()
    try:
        manifest = load_manifest(submission_dir)
    except SubmissionError as e:
        return JobResult("error", str(e))
    if not trusted:
        require_sandbox()
    else:
        msg = f"running {manifest.name} WITHOUT the sandbox (--trusted)"
        warnings.warn(msg)
        print(f"WARNING: {msg}", file=sys.stderr)
    root = Path(tempfile.mkdtemp(prefix="arena-job-", dir=workdir))
    input_dir, output_dir = root / "input", root / "output"
    input_dir.mkdir()
    output_dir.mkdir()
    try:
        model_path = Path(model_path).resolve()
        shutil.copyfile(model_path, input_dir / "model.safetensors")
        submission_dir = Path(submission_dir).resolve()
        if trusted:
            views = dict(submission_view=str(submission_dir),
                         model_view=str(input_dir / "model.safetensors"), output_view=str(output_dir))
        else:
            views = dict(submission_view=SUBMISSION, model_view=f"{JOB_INPUT}/model.safetensors",
                         output_view=JOB_OUTPUT)
        _write_inputs(input_dir, role, manifest.entry, batches, budgets, device=device, seed=seed,
                      effort=effort, threads=limits.threads, **views)
        os.chmod(output_dir, 0o777)
        if trusted:
            cmd = [sys.executable, "-m", "arena.sandbox.worker", str(input_dir)]
            env = {**os.environ, **_env(limits)}
        else:
            inner = [sys.executable, "-m", "arena.sandbox.worker", JOB_INPUT]
            cmd = bwrap_command(submission_dir, input_dir, output_dir, inner, _env(limits))
            env = {}
        t_spawn = time.time()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=env, start_new_session=True,
                                preexec_fn=_limits_fn(limits), cwd=str(root))
        timed_out = False
        try:
            _, stderr = proc.communicate(timeout=limits.wall_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_tree(proc)
            _, stderr = proc.communicate()
        _kill_tree(proc)  # anything the job left behind in its session
        stderr_tail = (stderr or b"")[-4000:].decode(errors="replace")
        result = _collect(role, output_dir, batches, t_spawn)
        result.stderr_tail = stderr_tail
        result.wall_s = time.time() - t0
        if timed_out:
            result.status = "timeout"
            result.error = f"timed out after {limits.wall_s:.0f} s (finished {sum(b.ok for b in result.batches)} of {len(batches)} batches)"
        elif result.error is None and proc.returncode != 0:
            result.status = "error"
            result.error = _exit_reason(proc.returncode, stderr_tail)
        elif result.error is not None:
            result.status = "error"
        for i in range(len(result.batches), len(batches)):
            result.batches.append(BatchOutcome(False, result.error or "no output"))
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _exit_reason(code: int, stderr: str) -> str:
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        why = {"SIGXCPU": "CPU time limit", "SIGXFSZ": "file size limit", "SIGKILL": "killed",
               "SIGSEGV": "crashed (segmentation fault)"}.get(name, name)
        return f"worker ended by {name} ({why})"
    last = [line for line in stderr.strip().splitlines() if line.strip()][-3:]
    return f"worker exited with code {code}" + (f": {' / '.join(last)[-800:]}" if last else "")


def _collect(role: str, output_dir: Path, batches, t_spawn: float) -> JobResult:
    """Read the worker's output without trusting it: size, types, shapes, values."""
    from safetensors.torch import load_file

    status_path = output_dir / "status.json"
    try:
        if status_path.stat().st_size > MAX_STATUS_BYTES:
            return JobResult("error", "status.json is too large")
        status = json.loads(status_path.read_text())
        assert isinstance(status, dict) and isinstance(status.get("batches", []), list)
    except (OSError, ValueError, AssertionError):
        return JobResult("error", "the worker wrote no readable status (it crashed early or was killed)")
    ready = status.get("ready_at")
    result = JobResult("ok", status.get("error") if isinstance(status.get("error"), str) else None,
                       forward_calls=_int(status.get("forward_calls")),
                       backward_calls=_int(status.get("backward_calls")),
                       startup_s=(ready - t_spawn) if isinstance(ready, (int, float)) else 0.0)
    for i, rec in enumerate(status.get("batches", [])[: len(batches)]):
        if not isinstance(rec, dict):
            result.batches.append(BatchOutcome(False, "malformed batch record"))
            continue
        seconds = float(rec.get("seconds", 0.0)) if isinstance(rec.get("seconds"), (int, float)) else 0.0
        if not rec.get("ok"):
            result.batches.append(BatchOutcome(False, str(rec.get("error"))[:2000], seconds=seconds))
            continue
        batch = batches[i]
        if role == "attack":
            outcome = _check_attack_output(output_dir / f"batch_{i}.safetensors", batch, load_file)
        else:
            outcome = _check_transcripts(rec.get("transcripts"), batch)
        outcome.seconds = seconds
        result.batches.append(outcome)
    return result


def _int(v) -> int:
    return int(v) if isinstance(v, (int, float)) and math.isfinite(v) else 0


def _check_attack_output(path: Path, batch, load_file) -> BatchOutcome:
    try:
        if path.stat().st_size > 16 * batch.wave.numel() + (1 << 20):
            return BatchOutcome(False, "output file is far larger than the batch")
        adv = load_file(str(path))["adv"]
    except (OSError, KeyError, Exception) as e:
        return BatchOutcome(False, f"missing or unreadable output ({type(e).__name__})")
    if tuple(adv.shape) != tuple(batch.wave.shape):
        return BatchOutcome(False, f"output has shape {tuple(adv.shape)}, expected {tuple(batch.wave.shape)}")
    if adv.dtype != torch.float32:
        return BatchOutcome(False, f"output has dtype {adv.dtype}, expected torch.float32")
    if not torch.isfinite(adv).all():
        return BatchOutcome(False, "output contains NaN or Inf")
    return BatchOutcome(True, adv=adv)


def _check_transcripts(hyps, batch) -> BatchOutcome:
    if not isinstance(hyps, list) or len(hyps) != len(batch.ids):
        n = len(hyps) if isinstance(hyps, list) else type(hyps).__name__
        return BatchOutcome(False, f"defense returned {n} transcripts for {len(batch.ids)} utterances")
    if not all(isinstance(h, str) for h in hyps):
        return BatchOutcome(False, "defense returned a transcript that is not a string")
    return BatchOutcome(True, transcripts=[h[:2000] for h in hyps])


def run_attack_job(submission_dir, model_path, batches, budget, *, device="cpu",
                   limits: SandboxLimits | None = None, trusted=False, seed=0, effort="full",
                   workdir=None) -> JobResult:
    """Run an attack over batches; `budget` is one Budget or one per batch."""
    budgets = list(budget) if isinstance(budget, (list, tuple)) else [budget] * len(batches)
    if len(budgets) != len(batches):
        raise ValueError(f"{len(budgets)} budgets for {len(batches)} batches")
    return _run("attack", submission_dir, model_path, batches, budgets, device=device,
                limits=limits or SandboxLimits(), trusted=trusted, seed=seed, effort=effort,
                workdir=workdir)


def run_defense_job(submission_dir, model_path, batches, *, device="cpu",
                    limits: SandboxLimits | None = None, trusted=False, seed=0, effort="full",
                    workdir=None) -> JobResult:
    return _run("defense", submission_dir, model_path, batches, None, device=device,
                limits=limits or SandboxLimits(), trusted=trusted, seed=seed, effort=effort,
                workdir=workdir)
