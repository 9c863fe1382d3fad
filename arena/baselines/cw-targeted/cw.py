"""Targeted CTC attack in the style of Carlini & Wagner (2018, "Audio adversarial examples").

Optimises a perturbation delta with Adam to minimise, per utterance,

    CTC(clamp(x + delta, -1, 1), target) + c * ||delta||^2 / radius^2

and projects delta back onto the budget after every step (L2 ball of the utterance's SNR
radius, or the Linf box), zero on padding. Parameterisation: delta = w * s * mask, with
s = radius / sqrt(length) under SNR budgets (so ||w|| = sqrt(length) is the ball's surface)
and s = eps under Linf (so w lives in [-1, 1]); this makes one Adam learning rate fit every
utterance and budget. The waveform bounds are enforced by the clamp (the harness clips the
same way).

Per utterance it keeps the best perturbation seen: one whose greedy decode equals the target
beats one that does not, and between two of the same kind the lower target CTC loss wins (a
more confident success survives the harness's int16 rounding better). Success is checked on
the device every step; the loop stops early, checked every CHECK_EVERY steps (the only host
sync), once every utterance decodes to its target.

Cost per batch (forward + backward passes): at most 100 (quick) / 500 (full), plus one
final forward.
"""
import torch

from arena import TargetedAttack, ThreatModel, ctc_loss, greedy_matches

STEPS = {"quick": 100, "standard": 100, "full": 500}
LR = {"quick": 0.5, "standard": 0.5, "full": 0.05}
C = 0.05
CHECK_EVERY = 5


class CWTargeted(TargetedAttack):
    track = "targeted-attack"

    def run(self, batch, model, budget):
        effort = getattr(self, "effort", "full")
        steps = getattr(self, "steps", None) or STEPS.get(effort, STEPS["full"])  # curves set steps
        dev = torch.device(model.device)
        wave = batch.wave.to(dev, torch.float32)
        lengths = batch.lengths.to(dev)
        B, T = wave.shape
        mask = batch.mask.to(dev)
        ids, id_lengths = model.tokenizer.encode_batch(list(batch.targets))
        ids, id_lengths = ids.to(dev), id_lengths.to(dev)
        l2 = budget.threat == ThreatModel.SNR
        if l2:
            radius = budget.max_l2(wave, lengths).to(dev).clamp_min(1e-12)
            scale = (radius / lengths.clamp_min(1).to(wave.dtype).sqrt())[:, None]
            pen_norm = radius ** 2
        else:
            eps = float(budget.value)
            scale = torch.full((B, 1), eps, device=dev, dtype=wave.dtype)
            pen_norm = eps ** 2 * lengths.clamp_min(1).to(wave.dtype)

        def project_(w):
            if l2:
                norms = (w * scale * mask).norm(dim=1).clamp_min(1e-20)
                w.mul_(torch.clamp(radius / norms, max=1.0)[:, None])
            else:
                w.clamp_(-1.0, 1.0)

        def evaluate(w):
            delta = w * scale * mask
            lp, out_len = model.log_probs((wave + delta).clamp(-1.0, 1.0), lengths)
            ctc = ctc_loss(lp, out_len, ids, id_lengths)
            return delta, lp, out_len, ctc

        w = torch.zeros(B, T, device=dev, dtype=wave.dtype, requires_grad=True)
        opt = torch.optim.Adam([w], lr=LR.get(effort, LR["full"]))
        best_delta = torch.zeros_like(wave)
        best_ok = torch.zeros(B, dtype=torch.bool, device=dev)
        best_loss = torch.full((B,), float("inf"), device=dev)

        def keep_best(delta, lp, out_len, ctc):
            ok = greedy_matches(lp.detach(), out_len, ids, id_lengths)
            ctc = ctc.detach()
            better = (ok & ~best_ok) | ((ok == best_ok) & (ctc < best_loss))
            best_delta.copy_(torch.where(better[:, None], delta.detach(), best_delta))
            best_ok.copy_(best_ok | ok)
            best_loss.copy_(torch.where(better, ctc, best_loss))

        for step in range(steps):
            with torch.enable_grad():
                delta, lp, out_len, ctc = evaluate(w)
                total = (ctc + C * (delta ** 2).sum(1) / pen_norm).sum()
                opt.zero_grad(set_to_none=True)
                total.backward()
            keep_best(delta, lp, out_len, ctc)
            opt.step()
            with torch.no_grad():
                project_(w)
            if (step + 1) % CHECK_EVERY == 0 and bool(best_ok.all()):
                break
        else:
            with torch.no_grad():
                keep_best(*evaluate(w))

        with torch.no_grad():
            delta = best_delta * mask
            if l2:  # guard against float rounding at the ball's surface
                delta = delta * torch.clamp(radius / delta.norm(dim=1).clamp_min(1e-20), max=1.0)[:, None]
            else:
                delta = delta.clamp(-eps, eps)
            adv = (wave + delta).clamp(-1.0, 1.0) * mask
        return adv.to(batch.wave.device)
