"""`arena validate`: check a submission folder and dry-run it in the sandbox.

The manifest is parsed here; the plugin code only ever runs inside the sandbox, on three
short synthetic utterances against a tiny random model, with a short wall-clock limit.
Contract violations come back as plain sentences.
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from arena.asr.models import TINY_CONFIG, build_model, save_checkpoint
from arena.core.audio import SAMPLE_RATE, AudioBatch
from arena.core.budget import Budget
from arena.sandbox import SandboxLimits, run_attack_job, run_defense_job
from arena.submissions.manifest import SubmissionError, SubmissionManifest, load_manifest

VALIDATION_BUDGET = "snr30"
OVERSHOOT_TOLERANCE = 1.01
TRANSCRIPTS = ["open the door", "play some music", "call mom"]
TARGETS = ["turn off the lights", "stop", "what time is it"]


@dataclass
class ValidationReport:
    ok: bool
    errors: list[str] = field(default_factory=list)
    manifest: SubmissionManifest | None = None
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"ok": self.ok, "errors": list(self.errors)}


def synthetic_batches(with_targets: bool = False, seed: int = 0):
    """Three 0.5-1.5 s sine/noise mixtures in two padded batches (2 + 1 utterances)."""
    g = torch.Generator().manual_seed(seed)
    waves = []
    for i, seconds in enumerate((1.5, 0.5, 1.0)):
        n = int(SAMPLE_RATE * seconds)
        t = torch.arange(n) / SAMPLE_RATE
        w = sum(torch.sin(2 * math.pi * f * t + float(torch.rand(1, generator=g)) * 6.28)
                for f in (180.0 * (i + 1), 440.0, 1200.0 + 300 * i))
        w = w / 3 * 0.3 + 0.05 * torch.randn(n, generator=g)
        waves.append(w.clamp(-1, 1).float())
    batches = []
    for idx in ([0, 1], [2]):
        T = max(len(waves[i]) for i in idx)
        wave = torch.zeros(len(idx), T)
        for row, i in enumerate(idx):
            wave[row, : len(waves[i])] = waves[i]
        lengths = torch.tensor([len(waves[i]) for i in idx], dtype=torch.long)
        batches.append(AudioBatch([f"utt{i}" for i in idx], wave, lengths,
                                  transcripts=[TRANSCRIPTS[i] for i in idx],
                                  targets=[TARGETS[i] for i in idx] if with_targets else None))
    return batches


def tiny_model_file(folder) -> Path:
    torch.manual_seed(0)
    path = Path(folder) / "tiny-model.safetensors"
    save_checkpoint(build_model("conformer-ctc", **TINY_CONFIG), path)
    return path


def _first_lines(text: str, n: int = 12) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return "\n".join(lines[:1] + (["  ..."] if len(lines) > n else []) + lines[1:][-(n - 1):])


def validate(path, *, wall_s: float = 120, trusted: bool = False, device: str = "cpu") -> ValidationReport:
    """Check the manifest, then dry-run the plugin in the sandbox and report violations."""
    t0 = time.time()
    folder = Path(path)
    try:
        manifest = load_manifest(folder)
    except SubmissionError as e:
        return ValidationReport(False, [str(e)], None, time.time() - t0)
    errors: list[str] = []
    limits = SandboxLimits(wall_s=wall_s, cpu_s=max(wall_s * 2, 60))
    budget = Budget.parse(VALIDATION_BUDGET)
    with tempfile.TemporaryDirectory(prefix="arena-validate-") as tmp:
        model_path = tiny_model_file(tmp)
        batches = synthetic_batches(with_targets=manifest.track == "targeted-attack")
        if manifest.is_attack:
            result = run_attack_job(manifest.spec(), model_path, batches, budget, device=device,
                                    limits=limits, trusted=trusted, effort="quick")
        else:
            result = run_defense_job(manifest.spec(), model_path, batches, device=device, limits=limits,
                                     trusted=trusted, effort="quick")
    if result.status == "timeout":
        errors.append(f"timeout: the plugin did not finish 3 short utterances within {wall_s:g} s "
                      "(wall-clock limit); it was killed")
    elif result.status == "sandbox-error":
        errors.append(f"the sandbox could not run the plugin: {result.error}")
    elif result.status == "error" and not any(o.ok or o.error for o in result.batches):
        errors.append(_first_lines(result.error))
    load_failed = result.error is not None and result.error.startswith("plugin failed to load")
    if load_failed:
        errors = [_first_lines(result.error)]
    else:
        seen = set()
        for i, (batch, outcome) in enumerate(zip(batches, result.batches)):
            if not outcome.ok:
                msg = _first_lines(outcome.error or "no output")
                if msg not in seen:
                    seen.add(msg)
                    verb = "run()" if manifest.is_attack else "transcribe()"
                    errors.append(f"batch {i} ({len(batch.ids)} utterances): {verb} failed: {msg}")
                continue
            if manifest.is_attack:
                over = budget.overshoot(batch.wave, outcome.adv, batch.lengths)
                for uid, o in zip(batch.ids, over.tolist()):
                    if not o <= OVERSHOOT_TOLERANCE:
                        errors.append(f"batch {i}, utterance {uid}: the perturbation is {o:.2f}x the "
                                      f"{budget.id} budget before projection (allowed up to "
                                      f"{OVERSHOOT_TOLERANCE}x); respect the budget you are given")
    return ValidationReport(not errors, errors, manifest, time.time() - t0)
