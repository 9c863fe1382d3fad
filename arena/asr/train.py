"""Training loop for CTC models, with checkpointing and resume, on CPU or CUDA.

The loop is shared with compression-aware fine-tuning: `hooks` are called before and after
each optimiser step so a compression algorithm can update masks or schedules.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchaudio
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from arena.asr.ctc import ctc_loss as ctc_from_log_probs
from arena.asr.evaluate import evaluate
from arena.asr.models import ASRModel
from arena.core.audio import length_mask, pad_waves
from arena.data.batching import AudioSet, length_batches


@dataclass
class TrainConfig:
    steps: int = 3000
    batch_seconds: float = 60.0  # padded audio per batch
    lr: float = 1.5e-3
    warmup: int = 300
    final_lr_fraction: float = 0.05
    weight_decay: float = 1e-2
    grad_clip: float = 5.0
    noise_prob: float = 0.5  # additive white noise at 15-40 dB SNR
    # speed perturbation (Ko et al. 2015): resampling a batch by one of these factors shifts
    # tempo and formants together, a cheap stand-in for unseen voices; 1.0 = unchanged
    speed_factors: tuple = (0.9, 0.95, 1.0, 1.05, 1.1)
    # weight of the frame-level distillation term when train() is given a teacher
    distill_weight: float = 1.0
    seed: int = 0
    checkpoint_every: int = 200
    eval_every: int = 500
    device: str = "cpu"
    amp: bool = False  # bf16 autocast on CUDA


@dataclass
class TrainState:
    step: int = 0
    history: list = field(default_factory=list)


def lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    floor = cfg.final_lr_fraction
    return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def ctc_loss(model: ASRModel, wave, lengths, texts, reduction="mean"):
    log_probs, out_lengths = model(wave, lengths)
    return _ctc(model, log_probs, out_lengths, texts, reduction)


def _ctc(model, log_probs, out_lengths, texts, reduction="mean"):
    targets, target_lengths = model.tokenizer.encode_batch(texts)
    return ctc_from_log_probs(log_probs, out_lengths, targets, target_lengths, reduction)


def distill_loss(student_log_probs, teacher_log_probs, out_lengths):
    """KL(teacher || student) per output frame, averaged over the real frames: the teacher's
    whole posterior (blank included) is a denser target than the transcript alone, which
    helps a compressed student recover its dense teacher's accuracy (Hinton et al. 2015)."""
    kl = (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(-1)  # (B, T)
    mask = length_mask(out_lengths.to(kl.device), kl.shape[1])
    return (kl * mask).sum() / mask.sum().clamp_min(1)


def training_loss(model, wave, lengths, texts, teacher=None, distill_weight=1.0):
    log_probs, out_lengths = model(wave, lengths)
    loss = _ctc(model, log_probs, out_lengths, texts)
    if teacher is not None and distill_weight > 0:
        with torch.no_grad():
            teacher_log_probs, _ = teacher(wave, lengths)
        loss = loss + distill_weight * distill_loss(log_probs, teacher_log_probs.float(), out_lengths)
    return loss


def _speed_perturb(wave, lengths, factor: float):
    """Play `wave` `factor` times faster: resample by the integer ratio round(100 f) : 100."""
    if factor == 1.0:
        return wave, lengths
    orig = int(round(100 * factor))
    wave = torchaudio.functional.resample(wave, orig_freq=orig, new_freq=100)
    lengths = torch.clamp((lengths * 100 + orig - 1) // orig, max=wave.shape[1])
    return wave, lengths


def _augment(wave, lengths, rng: np.random.Generator, cfg: TrainConfig):
    if cfg.speed_factors:
        wave, lengths = _speed_perturb(wave, lengths, float(rng.choice(cfg.speed_factors)))
    gain = torch.from_numpy(rng.uniform(0.25, 1.0, size=(wave.shape[0], 1)).astype(np.float32))
    wave = wave * gain.to(wave.device)
    if cfg.noise_prob > 0:
        snr = rng.uniform(15, 40, size=(wave.shape[0], 1)).astype(np.float32)
        use = rng.random(size=(wave.shape[0], 1)) < cfg.noise_prob
        power = wave.pow(2).sum(1, keepdim=True) / lengths[:, None].clamp_min(1)
        scale = torch.sqrt(power / torch.from_numpy(10 ** (snr / 10)).to(wave.device))
        noise = torch.randn(wave.shape, generator=None, device=wave.device) * scale
        mask = length_mask(lengths.to(wave.device), wave.shape[1])
        wave = wave + noise * torch.from_numpy(use).to(wave.device) * mask
    return wave, lengths


def batch_stream(durations, cfg: TrainConfig):
    """Length-bucketed batches forever, reshuffled per epoch from the seed."""
    epoch = 0
    while True:
        yield from length_batches(durations, cfg.batch_seconds, shuffle=True,
                                  seed=cfg.seed * 1000 + epoch)
        epoch += 1


def _save_state(path: Path, model, opt, state: TrainState, cfg: TrainConfig):
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": state.step,
                "history": state.history, "config": asdict(cfg)}, tmp)
    tmp.replace(path)  # atomic: a kill mid-save leaves the previous checkpoint


def train(model: ASRModel, data: AudioSet, cfg: TrainConfig, out_dir, *,
          dev: AudioSet | None = None, resume: bool = True, progress: bool = True,
          hooks: list[Callable] | None = None, log: Callable[[str], None] = print,
          teacher: ASRModel | None = None) -> TrainState:
    """Train `model` in place for cfg.steps optimiser steps; returns the final state.

    `out_dir/state.pt` holds the resumable state; `out_dir/log.jsonl` one line per
    logged step. A hook is called as hook(event, model, step) with event 'before_step'
    (after backward, before the optimiser) or 'after_step'. With a `teacher` (a frozen model
    with the same output frames) the loss adds cfg.distill_weight x distill_loss.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device)
    model.to(device).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    state = TrainState()
    state_path = out_dir / "state.pt"
    if resume and state_path.is_file():
        saved = torch.load(state_path, map_location=device, weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        state = TrainState(saved["step"], saved["history"])
        log(f"resumed from {state_path} at step {state.step}")
    hooks = hooks or []
    stream = batch_stream(data.durations, cfg)
    for _ in range(state.step):  # resume where the uninterrupted run would be
        next(stream)
    with open(out_dir / "log.jsonl", "a") as log_file:
        if teacher is not None:
            teacher.to(device).eval().requires_grad_(False)
        _run_steps(model, data, cfg, opt, state, stream, hooks, log_file, dev, device, state_path,
                   progress, log, teacher)
    model.eval()
    return state


def _run_steps(model, data, cfg, opt, state, stream, hooks, log_file, dev, device, state_path,
               progress, log, teacher=None):
    columns = [TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[info]}"), TimeRemainingColumn()]
    t0 = time.time()
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("train", total=cfg.steps, completed=state.step, info="")
        while state.step < cfg.steps:
            idx = next(stream)
            # every random draw of a step depends only on (seed, step): resume == no interruption
            torch.manual_seed(cfg.seed * 1_000_003 + state.step)
            rng = np.random.default_rng(cfg.seed * 1_000_003 + state.step)
            wave, lengths = pad_waves([data.wave(i) for i in idx])
            wave, lengths = wave.to(device), lengths.to(device)
            wave, lengths = _augment(wave, lengths, rng, cfg)
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, state.step)
            with torch.autocast(device.type, dtype=torch.bfloat16,
                                enabled=cfg.amp and device.type == "cuda"):
                loss = training_loss(model, wave, lengths, [data.texts[i] for i in idx],
                                     teacher, cfg.distill_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for h in hooks:
                h("before_step", model, state.step)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
            if math.isfinite(grad_norm):
                opt.step()
            for h in hooks:
                h("after_step", model, state.step)
            state.step += 1
            record = {"step": state.step, "loss": round(loss.item(), 4),
                      "lr": round(lr_at(cfg, state.step - 1), 6), "grad_norm": round(grad_norm, 3),
                      "elapsed_s": round(time.time() - t0, 1)}
            if dev is not None and cfg.eval_every and state.step % cfg.eval_every == 0:
                res = evaluate(model, dev, device=device)
                model.train()
                record.update(dev_wer=round(res.wer, 4), dev_cer=round(res.cer, 4))
                log(f"step {state.step}: dev WER {res.wer:.3f} CER {res.cer:.3f}")
            if state.step % 10 == 0 or "dev_wer" in record:
                state.history.append(record)
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
            bar.update(task, completed=state.step,
                       info=f"loss {record['loss']:.3f} lr {record['lr']:.2e}")
            if state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps:
                _save_state(state_path, model, opt, state, cfg)
