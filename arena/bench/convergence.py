"""`arena bench convergence`: ΔWER of a reference attack against its step count on one model.

An attack's number on the board means something only if the attack has converged at the
effort used: this runs the baseline (our own code, in-process) at each step count on the
same utterances and reports ΔWER with a 95% bootstrap interval over utterances, and whether
ΔWER at s steps is within `tolerance` of ΔWER at 4 x s steps.
"""
from __future__ import annotations

import time
import tomllib

import numpy as np
import torch

from arena.asr.metrics import edit_counts
from arena.core import paths
from arena.core.audio import AudioBatch, pad_waves
from arena.core.budget import Budget
from arena.data.batching import AudioSet, length_batches
from arena.data.corpus import ensure_split
from arena.leaderboard.formulas import Resampler, interval
from arena.plugins.api import TargetModel
from arena.plugins.loader import load_reference
from arena.zoo.registry import load_model

TOLERANCE = 0.03


def load_baseline(name: str):
    """The module and entry class of a baseline folder (trusted: the arena's own code)."""
    folder = paths.baselines_dir() / name
    entry = tomllib.loads((folder / "submission.toml").read_text())["entry"]
    module = load_reference(folder, name)
    return module, getattr(module, entry.split(":")[1])


def delta_ci(ids: list[str], delta: np.ndarray, words: np.ndarray) -> tuple[float | None, float | None]:
    """95% interval of sum(delta) / sum(words), utterances resampled as the board does."""
    rs = Resampler(ids)
    where = [rs.pos[u] for u in ids]
    num, den = np.zeros(len(rs.ids)), np.zeros(len(rs.ids))
    num[where], den[where] = delta, words
    return interval(rs.rates(num[:, None], den[:, None])[:, 0])


def word_errors(net, data: AudioSet, waves) -> tuple[np.ndarray, np.ndarray]:
    """Per-utterance word edits (capped at the reference length) and reference lengths."""
    errs, words = [], []
    for i, w in enumerate(waves):
        hyp = net.transcribe(torch.as_tensor(w)[None], torch.tensor([len(w)]))[0]
        e, n = edit_counts(data.texts[i], hyp, "word")
        errs.append(min(e, n))
        words.append(n)
    return np.array(errs, float), np.array(words, float)


def run_attack(cls, steps: int, net, data: AudioSet, budget: Budget, batch_seconds: float, seed: int):
    waves = [None] * len(data)
    for idx in length_batches(data.durations, batch_seconds):
        wave, lengths = pad_waves([data.wave(i) for i in idx])
        batch = AudioBatch([data.ids[i] for i in idx], wave, lengths,
                           transcripts=[data.texts[i] for i in idx])
        attack = cls()
        attack.effort, attack.seed, attack.steps = "full", seed, steps
        torch.manual_seed(seed)
        projected = budget.project(wave, attack.run(batch, TargetModel(net), budget), lengths)
        for row, i in enumerate(idx):
            waves[i] = projected[row, : int(lengths[row])].numpy()
    return waves


def convergence(attack: str = "apgd", steps=(25, 50, 100, 200), n: int = 32, budget: str = "snr30",
                model: str = "dense", split: str = "dev", batch_seconds: float = 40.0,
                seed: int = 0) -> dict:
    (module, cls), net = load_baseline(attack), load_model(model)
    data = AudioSet.from_manifest(ensure_split(split, progress=False), limit=n)
    b = Budget.parse(budget)
    clean_errs, words = word_errors(net, data, [data.wave(i) for i in range(len(data))])
    points = []
    for s in steps:
        t0 = time.time()
        errs, _ = word_errors(net, data, run_attack(cls, s, net, data, b, batch_seconds, seed))
        lo, hi = delta_ci(list(data.ids), errs - clean_errs, words)
        points.append(dict(steps=s, delta_wer=float((errs - clean_errs).sum() / words.sum()),
                           ci_low=lo, ci_high=hi, seconds=round(time.time() - t0, 1)))
    by_steps = {p["steps"]: p["delta_wer"] for p in points}
    converged = [s for s in steps if 4 * s in by_steps and abs(by_steps[4 * s] - by_steps[s]) <= TOLERANCE]
    return dict(attack=attack, model=model, budget=budget, split=split, n_utterances=len(data),
                clean_wer=float(clean_errs.sum() / words.sum()), points=points,
                tolerance=TOLERANCE, converged_at=min(converged) if converged else None,
                effort_steps=dict(getattr(module, "STEPS", {})))
