"""The reference untargeted attack: APGD-style ascent on the CTC loss (after Croce & Hein,
"Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
attacks", 2020), for the arena's per-utterance L2 (SNR) and Linf budgets.

Why not plain PGD: with a fixed step, PGD's ΔWER was still rising from 100 to 200 steps
(0.68 -> 0.75 on 32 dev utterances at snr30). APGD starts with a large step (2 x the radius),
halves it at checkpoints where progress stalled (restarting from the best point), uses
momentum (0.75), and returns, per utterance, the iterate with the most word errors seen
(ties: the higher loss) rather than the last one: the scored metric, not the surrogate.

Cost per batch: one forward and one backward per step; the greedy decode of each step's
own log-probs is free (no extra forward).
"""
import math

import torch

from arena import Attack, ThreatModel, ctc_loss

STEPS = {"quick": 30, "standard": 100, "full": 200}
MOMENTUM = 0.75
RHO = 0.75   # a checkpoint halves the step when fewer than this share of steps improved


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


class APGD(Attack):
    steps = None  # a fixed step count instead of the effort's (convergence curves set it)

    def run(self, batch, model, budget):
        steps = self.steps or STEPS.get(self.effort, STEPS["quick"])
        x, mask = batch.wave, batch.mask
        l2 = budget.threat == ThreatModel.SNR
        radius = budget.max_l2(x, batch.lengths) if l2 else torch.full((len(batch),), budget.value)
        targets, target_lengths = model.tokenizer.encode_batch(batch.transcripts)

        def project(delta):
            if l2:
                norm = delta.norm(dim=-1).clamp_min(1e-12)
                delta = delta * torch.clamp(radius / norm, max=1.0)[:, None]
            else:
                delta = delta.clamp(-budget.value, budget.value)
            return ((x + delta).clamp(-1, 1) - x) * mask

        def step_direction(grad):
            if l2:
                return grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            return grad.sign()

        def evaluate(delta):
            d = delta.detach().requires_grad_(True)
            log_probs, out_lengths = model.log_probs(x + d, batch.lengths)
            loss = ctc_loss(log_probs, out_lengths, targets, target_lengths)
            (grad,) = torch.autograd.grad(loss.sum(), d)
            hyps = model.tokenizer.greedy_decode(log_probs.detach(), out_lengths)
            errors = torch.tensor([word_errors(r, h) for r, h in zip(batch.transcripts, hyps)])
            return loss.detach(), errors, grad * mask

        eta = 2.0 * radius[:, None]                      # per-utterance step size
        delta = torch.zeros_like(x)
        loss, errors, grad = evaluate(delta)
        best = dict(delta=delta.clone(), loss=loss.clone(), errors=errors.clone())
        marks, last_mark, improved = set(checkpoints(steps)), 0, torch.zeros(len(batch))
        eta_at_mark, best_loss_at_mark = eta.clone(), loss.clone()
        prev = delta
        for k in range(1, steps + 1):
            z = project(delta + eta * step_direction(grad))
            alpha = 1.0 if k == 1 else MOMENTUM
            new = project(delta + alpha * (z - delta) + (1 - alpha) * (delta - prev))
            prev, delta = delta, new
            new_loss, errors, grad = evaluate(delta)
            improved += (new_loss > loss).float()
            loss = new_loss
            better = (errors > best["errors"]) | ((errors == best["errors"]) & (loss > best["loss"]))
            for key, value in (("delta", delta), ("loss", loss), ("errors", errors)):
                best[key] = torch.where(better[:, None] if value.dim() == 2 else better, value, best[key])
            if k in marks:
                stalled = (improved < RHO * (k - last_mark)) | (
                    (eta.squeeze(1) == eta_at_mark.squeeze(1)) & (best["loss"] <= best_loss_at_mark))
                eta = torch.where(stalled[:, None], eta / 2, eta)
                delta = torch.where(stalled[:, None], best["delta"], delta)
                prev = delta
                last_mark, improved = k, torch.zeros(len(batch))
                eta_at_mark, best_loss_at_mark = eta.clone(), best["loss"].clone()
        return x + best["delta"]
