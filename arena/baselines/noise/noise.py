"""Random-noise attack: seeded uniform noise scaled to exactly the budget.

SNR (L2) budget: uniform noise in [-1, 1] on each utterance's real samples, rescaled so its
L2 norm is that utterance's radius ||x||2 * 10^(-snr/20). Linf budget: uniform in [-eps, eps].
Padding stays zero. No model calls. Cost: zero forward/backward passes.
"""
import torch

from arena import Attack, ThreatModel


def _is_l2(budget) -> bool:
    return budget.threat == ThreatModel.SNR


class UniformNoise(Attack):
    track = "attack"
    seed = 0

    def run(self, batch, model, budget):
        wave = batch.wave.to(model.device, torch.float32)
        lengths = batch.lengths.to(model.device)
        B, T = wave.shape
        mask = (torch.arange(T, device=wave.device)[None, :] < lengths[:, None]).to(wave.dtype)
        gen = torch.Generator(device=wave.device)
        gen.manual_seed(int(getattr(self, "seed", 0)) + 1234)
        noise = (torch.rand(B, T, generator=gen, device=wave.device, dtype=wave.dtype) * 2 - 1) * mask
        if _is_l2(budget):
            radius = torch.as_tensor(budget.max_l2(wave, lengths), device=wave.device, dtype=wave.dtype)
            norms = noise.norm(dim=1).clamp_min(1e-12)
            delta = noise * (radius / norms)[:, None]
        else:
            delta = noise * float(budget.value)
        return ((wave + delta).clamp(-1.0, 1.0) * mask).to(batch.wave.device)
