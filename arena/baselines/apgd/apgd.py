"""The reference untargeted attack: APGD (after Croce & Hein, "Reliable evaluation of
adversarial robustness with an ensemble of diverse parameter-free attacks", 2020) on a
blank-margin objective, for the arena's per-utterance L2 (SNR) and Linf budgets.

Objective: per frame, how far the CTC blank leads the best other token, capped at KAPPA;
summed over the utterance's frames. Maximising it empties the greedy transcript, i.e. every
reference word deleted: WER 1.0, the most a (capped) utterance can score. A CTC model emits
blank on most frames already, so only the few frames carrying characters have to move: on 16
dev utterances at snr30 it reaches ΔWER 0.943 (every word) in 25 steps, where ascent on the
CTC loss had 0.42 at 25 steps and 0.62 at 100.

Schedule: a large first step (2 x the radius), halved at checkpoints where progress stalled
(restarting from the best point), momentum 0.75; per utterance the iterate with the most
word errors (ties: the higher objective) is returned, not the last one.

`ascend` is the loop alone, with the gradient oracle passed in: the harness's adaptive
evaluation runs this same loop through a defense (BPDA + EOT; arena/score/adaptive.py).
"""
import math

import torch

from arena import Attack, ThreatModel

STEPS = {"quick": 25, "standard": 50, "full": 200}
MOMENTUM = 0.75
RHO = 0.75    # a checkpoint halves the step when fewer than this share of steps improved
KAPPA = 2.0   # log-prob lead of the blank beyond which a frame adds nothing


def checkpoints(steps: int) -> list[int]:
    """APGD's checkpoints w_j = ceil(p_j * steps): p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(q * steps) for q in p if q <= 1.0} - {0})


def word_errors(ref: str, hyp: str) -> int:
    r, h = ref.split(), hyp.split()
    row = list(range(len(h) + 1))
    for i, rw in enumerate(r, 1):
        prev, row[0] = row[0], i
        for j, hw in enumerate(h, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (rw != hw))
    return row[-1]


def blank_margin(log_probs: torch.Tensor, out_lengths: torch.Tensor) -> torch.Tensor:
    """(B,): sum over each utterance's frames of min(log p(blank) - max other, KAPPA)."""
    valid = torch.arange(log_probs.shape[1], device=log_probs.device)[None] < out_lengths[:, None]
    margin = log_probs[..., 0] - log_probs[..., 1:].max(-1).values
    return (margin.clamp(max=KAPPA) * valid).sum(1)


def ascend(x, mask, radius, l2: bool, steps: int, evaluate, enough=None):
    """APGD from zero perturbation. `radius` (B,) is the L2 radius (l2) or the Linf bound;
    `evaluate(delta)` returns (objective (B,), word errors (B,), d objective / d delta).
    Returns the best perturbation per utterance (inside the ball, zero on padding). Stops
    early once every utterance has `enough` errors (its word count: a capped WER of 1.0
    cannot be beaten, so the result is the same as after all steps)."""
    def project(delta):
        if l2:
            norm = delta.norm(dim=-1).clamp_min(1e-12)
            delta = delta * torch.clamp(radius / norm, max=1.0)[:, None]
        else:
            delta = torch.maximum(torch.minimum(delta, radius[:, None]), -radius[:, None])
        return ((x + delta).clamp(-1, 1) - x) * mask

    def step_direction(grad):
        if l2:
            return grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return grad.sign()

    eta = 2.0 * radius[:, None]                      # per-utterance step size
    delta = torch.zeros_like(x)
    loss, errors, grad = evaluate(delta)
    best = dict(delta=delta.clone(), loss=loss.clone(), errors=errors.clone())
    marks, last_mark, improved = set(checkpoints(steps)), 0, torch.zeros(len(x))
    eta_at_mark, best_loss_at_mark = eta.clone(), loss.clone()
    prev = delta
    for k in range(1, steps + 1):
        z = project(delta + eta * step_direction(grad * mask))
        alpha = 1.0 if k == 1 else MOMENTUM
        new = project(delta + alpha * (z - delta) + (1 - alpha) * (delta - prev))
        prev, delta = delta, new
        new_loss, errors, grad = evaluate(delta)
        improved += (new_loss > loss).float()
        loss = new_loss
        better = (errors > best["errors"]) | ((errors == best["errors"]) & (loss > best["loss"]))
        for key, value in (("delta", delta), ("loss", loss), ("errors", errors)):
            best[key] = torch.where(better[:, None] if value.dim() == 2 else better, value, best[key])
        if enough is not None and bool((best["errors"] >= enough).all()):
            break
        if k in marks:
            stalled = (improved < RHO * (k - last_mark)) | (
                (eta.squeeze(1) == eta_at_mark.squeeze(1)) & (best["loss"] <= best_loss_at_mark))
            eta = torch.where(stalled[:, None], eta / 2, eta)
            delta = torch.where(stalled[:, None], best["delta"], delta)
            prev = delta
            last_mark, improved = k, torch.zeros(len(x))
            eta_at_mark, best_loss_at_mark = eta.clone(), best["loss"].clone()
    return best["delta"]


def radius_of(budget, x, lengths) -> torch.Tensor:
    if budget.threat == ThreatModel.SNR:
        return budget.max_l2(x, lengths)
    return torch.full((len(x),), float(budget.value))


class APGD(Attack):
    steps = None  # a fixed step count instead of the effort's (convergence curves set it)

    def run(self, batch, model, budget):
        steps = self.steps or STEPS.get(self.effort, STEPS["quick"])
        x, mask = batch.wave, batch.mask

        def evaluate(delta):
            d = delta.detach().requires_grad_(True)
            log_probs, out_lengths = model.log_probs(x + d, batch.lengths)
            loss = blank_margin(log_probs, out_lengths)
            (grad,) = torch.autograd.grad(loss.sum(), d)
            hyps = model.tokenizer.greedy_decode(log_probs.detach(), out_lengths)
            errors = torch.tensor([word_errors(r, h) for r, h in zip(batch.transcripts, hyps)])
            return loss.detach(), errors, grad

        l2 = budget.threat == ThreatModel.SNR
        return x + ascend(x, mask, radius_of(budget, x, batch.lengths), l2, steps, evaluate,
                          enough=word_counts(batch.transcripts))


def word_counts(transcripts) -> torch.Tensor:
    return torch.tensor([float(max(len(t.split()), 1)) for t in transcripts])
