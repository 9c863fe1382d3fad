"""Down-up resampling defense: 16 kHz -> 8 kHz -> 16 kHz (torchaudio's windowed-sinc
resampler), which removes everything above 4 kHz plus some fine temporal detail.
Padding is re-zeroed afterwards. Cost: two resamplings, one transcribe forward per batch."""
import torch
import torchaudio.functional as AF

from arena import Defense

LOW_RATE = 8000


class Resample(Defense):
    track = "defense"

    def purify(self, wave, lengths):
        rate = 16000
        T = wave.shape[1]
        low = AF.resample(wave, rate, LOW_RATE)
        back = AF.resample(low, LOW_RATE, rate)
        if back.shape[1] < T:
            back = torch.nn.functional.pad(back, (0, T - back.shape[1]))
        back = back[:, :T]
        mask = torch.arange(T, device=wave.device)[None, :] < lengths.to(wave.device)[:, None]
        return (back.clamp(-1.0, 1.0) * mask).to(wave.dtype)
