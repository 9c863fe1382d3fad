"""Kenansville (Abdullah et al., "Hear 'No Evil', See 'Kenansville'", IEEE S&P 2021), as a
budgeted black-box baseline.

The DFT attack of the paper: take the spectrum of the utterance and remove (zero) its
lowest-power frequency components, in increasing order of power, until the transcription
breaks. Under the arena's budgets the stopping point is fixed by the budget instead of by
model queries, so this version makes NO model calls at all (no gradients, no transcribe):

* the DFT is taken over the whole (zero-padded) utterance with torch.fft.rfft;
* by Parseval, zeroing a set of bins removes exactly the energy sum(w_k |X_k|^2) / T
  (w_k = 2 for bins that stand for a conjugate pair, 1 for DC and Nyquist), and that removed
  signal *is* the perturbation; so under an SNR budget the components are removed, lowest
  power first, while the cumulative removed energy stays <= radius^2 (sort + cumsum, one
  pass, batched);
* under an Linf budget the time-domain peak of the removed signal is what counts; the number
  of removed components is found per utterance by a batched bisection on "peak <= eps"
  (about log2(T) inverse FFTs).

The perturbation is cut to each utterance's length (this only lowers its norm and peak),
and the result is clipped to [-1, 1]. Cost: zero forward/backward passes; a few FFTs.
"""
import math

import torch

from arena import Attack, ThreatModel


class Kenansville(Attack):
    track = "attack"

    def run(self, batch, model, budget):
        dev = torch.device(model.device)
        wave = batch.wave.to(dev, torch.float32)
        lengths = batch.lengths.to(dev)
        B, T = wave.shape
        mask = (torch.arange(T, device=dev)[None, :] < lengths[:, None]).to(wave.dtype)
        x = wave * mask
        spec = torch.fft.rfft(x.double(), dim=1)  # float64: exact energy bookkeeping
        F_ = spec.shape[1]
        weight = torch.full((F_,), 2.0, device=dev, dtype=torch.float64)
        weight[0] = 1.0
        if T % 2 == 0:
            weight[-1] = 1.0
        energy = weight * spec.abs() ** 2 / T  # sums to ||x||^2 per row
        order = energy.argsort(dim=1)  # lowest power first
        ranks = torch.arange(F_, device=dev)

        def perturbation(k):  # remove the k[b] lowest-power bins of row b
            chosen = torch.zeros(B, F_, device=dev, dtype=torch.bool)
            chosen.scatter_(1, order, ranks[None, :] < k[:, None])
            return -torch.fft.irfft(spec * chosen, n=T, dim=1) * mask

        if budget.threat == ThreatModel.SNR:
            radius = budget.max_l2(wave, lengths).to(dev).double()
            cum = energy.gather(1, order).cumsum(1)
            k = (cum <= radius[:, None] ** 2 * (1 - 1e-9)).sum(1)
            delta = perturbation(k)
        else:
            eps = float(budget.value)
            lo = torch.zeros(B, dtype=torch.long, device=dev)   # always feasible
            hi = torch.full((B,), F_, dtype=torch.long, device=dev)
            for _ in range(math.ceil(math.log2(F_ + 1)) + 1):
                mid = (lo + hi + 1) // 2
                ok = perturbation(mid).abs().amax(dim=1) <= eps * (1 - 1e-6)
                lo = torch.where(ok, mid, lo)
                hi = torch.where(ok, hi, mid - 1)
            delta = perturbation(lo)
        adv = (x + delta.to(wave.dtype)).clamp(-1.0, 1.0) * mask
        return adv.to(batch.wave.device)
