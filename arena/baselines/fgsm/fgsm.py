"""FGSM: one gradient step on the CTC loss of the true transcript.

SNR (L2) budget: the gradient, normalised per utterance and scaled to that utterance's L2
radius (the "fast gradient method"). Linf budget: eps * sign(gradient). Padding stays zero.
Cost: one forward + one backward pass per batch (both efforts).
"""
import torch

from arena import Attack, ThreatModel


def _is_l2(budget) -> bool:
    return budget.threat == ThreatModel.SNR


class FGSM(Attack):
    track = "attack"

    def run(self, batch, model, budget):
        wave = batch.wave.to(model.device, torch.float32)
        lengths = batch.lengths.to(model.device)
        B, T = wave.shape
        mask = (torch.arange(T, device=wave.device)[None, :] < lengths[:, None]).to(wave.dtype)
        grad = model.gradient(wave, lengths, batch.transcripts).to(wave.dtype) * mask
        if _is_l2(budget):
            radius = torch.as_tensor(budget.max_l2(wave, lengths), device=wave.device, dtype=wave.dtype)
            delta = grad * (radius / grad.norm(dim=1).clamp_min(1e-20))[:, None]
        else:
            delta = float(budget.value) * grad.sign()
        return ((wave + delta).clamp(-1.0, 1.0) * mask).to(batch.wave.device)
