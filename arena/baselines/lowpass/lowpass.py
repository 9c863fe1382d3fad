"""Low-pass defense: zero-phase low-pass at CUTOFF Hz, as an FFT mask over each batch row
with a raised-cosine transition band (TRANSITION Hz wide) instead of a brick wall, so it does
not ring. The speech band that matters for recognition is below 4 kHz; adversarial
perturbations spread over the whole band lose their upper half. Padding is re-zeroed.
Cost: two FFTs, one transcribe forward per batch."""
import math

import torch

from arena import Defense

CUTOFF = 4000.0
TRANSITION = 500.0
RATE = 16000


class LowPass(Defense):
    track = "defense"

    def purify(self, wave, lengths):
        T = wave.shape[1]
        mask = torch.arange(T, device=wave.device)[None, :] < lengths.to(wave.device)[:, None]
        spec = torch.fft.rfft(wave * mask, dim=1)
        freqs = torch.fft.rfftfreq(T, d=1.0 / RATE).to(wave.device)
        lo, hi = CUTOFF - TRANSITION / 2, CUTOFF + TRANSITION / 2
        ramp = 0.5 * (1 + torch.cos(math.pi * ((freqs - lo) / (hi - lo)).clamp(0.0, 1.0)))
        out = torch.fft.irfft(spec * ramp, n=T, dim=1)
        return (out.clamp(-1.0, 1.0) * mask).to(wave.dtype)
