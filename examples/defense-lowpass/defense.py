"""A purification defense: the template to copy for a new defense.

`Defense.transcribe(batch, model)` by default calls `self.purify(wave, lengths)` and then
`model.transcribe`; most defenses only override `purify`. A defense never sees reference
transcripts, attack names or original utterance ids.
"""
import torch
import torchaudio

from arena import Defense


class LowPass(Defense):
    cutoff_hz = 4000.0

    def purify(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # biquad low-pass at 16 kHz; keep the padding at zero and the range in [-1, 1]
        out = torchaudio.functional.lowpass_biquad(wave, 16_000, self.cutoff_hz)
        mask = torch.arange(wave.shape[1], device=wave.device)[None, :] < lengths[:, None]
        return (out * mask).clamp(-1, 1)
