"""The plugin API: what a submission subclasses and what it is given.

foolbox style: an attack is a class with one `run` method; the criterion (how the harness
scores the result) is not the attack's business. The harness, never the plugin, projects
the returned audio into the budget afterwards.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F

SAMPLE_RATE = 16_000
INT16_STEP = 1.0 / 32767.0


@dataclass
class AudioBatch:
    """A padded batch: wave (B, T) float32 in [-1, 1], zero beyond each length."""

    ids: list[str]
    wave: torch.Tensor
    lengths: torch.Tensor
    transcripts: list[str] | None = None  # attacks only
    targets: list[str] | None = None      # targeted attacks only

    def __post_init__(self):
        if not isinstance(self.wave, torch.Tensor) or self.wave.ndim != 2:
            raise ValueError(f"AudioBatch.wave must be a (B, T) tensor, got "
                             f"{getattr(self.wave, 'shape', type(self.wave))}")
        if self.wave.dtype != torch.float32:
            raise ValueError(f"AudioBatch.wave must be float32, got {self.wave.dtype}")
        b = self.wave.shape[0]
        if self.lengths.shape != (b,):
            raise ValueError(f"AudioBatch.lengths must have shape ({b},), got {tuple(self.lengths.shape)}")
        if len(self.ids) != b:
            raise ValueError(f"AudioBatch has {len(self.ids)} ids for {b} waveforms")
        for name in ("transcripts", "targets"):
            v = getattr(self, name)
            if v is not None and len(v) != b:
                raise ValueError(f"AudioBatch has {len(v)} {name} for {b} waveforms")

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device) -> "AudioBatch":
        return AudioBatch(self.ids, self.wave.to(device), self.lengths.to(device),
                          self.transcripts, self.targets)

    def mask(self) -> torch.Tensor:
        """(B, T) float mask: 1 on real samples, 0 on padding."""
        t = torch.arange(self.wave.shape[1], device=self.wave.device)
        return (t[None, :] < self.lengths.to(self.wave.device)[:, None]).to(self.wave.dtype)


class ThreatModel(str, Enum):
    SNR = "snr"    # utterance-level L2: ||delta||_2 <= ||x||_2 * 10^(-SNR/20)
    LINF = "linf"  # sample-level: |delta| <= eps


def _length_mask(wave, lengths):
    t = torch.arange(wave.shape[-1], device=wave.device)
    return (t[None, :] < lengths.to(wave.device)[:, None]).to(wave.dtype)


@dataclass(frozen=True)
class Budget:
    threat: ThreatModel
    value: float

    def __post_init__(self):
        object.__setattr__(self, "threat", ThreatModel(self.threat))
        if not math.isfinite(self.value) or self.value <= 0 and self.threat == ThreatModel.LINF:
            raise ValueError(f"invalid budget value {self.value} for {self.threat.value}")

    @property
    def id(self) -> str:
        return f"{self.threat.value}{self.value:g}"

    def __str__(self) -> str:
        return self.id

    @classmethod
    def parse(cls, text: str) -> "Budget":
        """'snr30' -> SNR 30 dB; 'linf0.003' -> L-inf 0.003."""
        for threat in ThreatModel:
            if text.startswith(threat.value):
                try:
                    return cls(threat, float(text[len(threat.value):]))
                except ValueError:
                    break
        raise ValueError(f"cannot parse budget {text!r}; expected e.g. snr30 or linf0.003")

    def max_l2(self, clean: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Per-utterance L2 radius (SNR budgets)."""
        x = clean * _length_mask(clean, lengths)
        return x.norm(dim=-1) * 10 ** (-self.value / 20)

    def project(self, clean: torch.Tensor, adv: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Harness-side enforcement: delta into the ball, zero on padding, clip to [-1, 1],
        round to the int16 grid. Rounding can move a sample by half a step; the radius is
        shrunk by that much so the result stays inside."""
        clean, adv = clean.float(), adv.float().to(clean.device)
        mask = _length_mask(clean, lengths)
        delta = torch.nan_to_num(adv - clean, nan=0.0, posinf=0.0, neginf=0.0) * mask
        if self.threat == ThreatModel.SNR:
            slack = 0.5 * INT16_STEP * torch.sqrt(lengths.to(clean.device).float())
            radius = (self.max_l2(clean, lengths) - slack).clamp_min(0.0)
            norm = delta.norm(dim=-1)
            delta = delta * torch.where(norm > radius, radius / norm.clamp_min(1e-12),
                                        torch.ones_like(norm))[:, None]
        else:
            eps = max(self.value - 0.5 * INT16_STEP, 0.0)
            delta = delta.clamp(-eps, eps)
        out = (clean + delta).clamp(-1.0, 1.0)
        out = torch.round(out * 32767.0) / 32767.0
        # rounding may not push a padded sample or an over-budget sample: re-impose
        out = clean + (out - clean) * mask
        return out

    def achieved_snr(self, clean, adv, lengths) -> torch.Tensor:
        """SNR in dB per utterance (inf when nothing changed)."""
        mask = _length_mask(clean, lengths)
        signal = (clean * mask).norm(dim=-1)
        noise = ((adv - clean) * mask).norm(dim=-1)
        return 20 * torch.log10(signal / noise.clamp_min(1e-12)).masked_fill(noise == 0, float("inf"))

    def overshoot(self, clean, adv, lengths) -> torch.Tensor:
        """Ratio of the perturbation to what the budget allows (> 1 = over budget)."""
        mask = _length_mask(clean, lengths)
        delta = (adv - clean) * mask
        if self.threat == ThreatModel.SNR:
            return delta.norm(dim=-1) / self.max_l2(clean, lengths).clamp_min(1e-12)
        return delta.abs().amax(dim=-1) / self.value


class TargetModel:
    """The model a plugin attacks or defends, wrapping the deployed ASR model.

    Counts calls: `forward_calls` per batch forward (log_probs, loss, transcribe,
    gradient), `backward_calls` per backward pass through the model (gradient, or a
    plugin's own backward from log_probs/loss outputs, counted by a tensor hook).
    """

    sample_rate = SAMPLE_RATE

    def __init__(self, model, device="cpu"):
        self.device = torch.device(device)
        self._model = model.to(self.device).eval()
        for p in self._model.parameters():
            p.requires_grad_(False)
        self.tokenizer = model.tokenizer
        self.forward_calls = 0
        self.backward_calls = 0

    def _count_backward(self, t: torch.Tensor) -> torch.Tensor:
        if t.requires_grad:
            def hook(grad):
                self.backward_calls += 1
                return grad
            t.register_hook(hook)
        return t

    def log_probs(self, wave: torch.Tensor, lengths: torch.Tensor):
        """(log_probs (B, T', V), out_lengths); differentiable w.r.t. wave."""
        self.forward_calls += 1
        lp, out_len = self._model(wave.to(self.device), lengths.to(self.device))
        return self._count_backward(lp), out_len

    def _ctc(self, lp, out_len, transcripts):
        targets, target_lengths = self.tokenizer.encode_batch(transcripts)
        return F.ctc_loss(lp.transpose(0, 1), targets.to(self.device), out_len,
                          target_lengths.to(self.device), blank=0, reduction="none",
                          zero_infinity=True)

    def loss(self, wave, lengths, transcripts) -> torch.Tensor:
        """CTC loss per utterance (B,), differentiable w.r.t. wave."""
        self.forward_calls += 1
        lp, out_len = self._model(wave.to(self.device), lengths.to(self.device))
        return self._count_backward(self._ctc(lp, out_len, transcripts))

    def gradient(self, wave, lengths, transcripts) -> torch.Tensor:
        """d sum(loss) / d wave, same shape as wave."""
        x = wave.detach().to(self.device).requires_grad_(True)
        with torch.enable_grad():
            self.forward_calls += 1
            lp, out_len = self._model(x, lengths.to(self.device))
            total = self._ctc(lp, out_len, transcripts).sum()
            (grad,) = torch.autograd.grad(total, x)
        self.backward_calls += 1
        return grad

    @torch.no_grad()
    def transcribe(self, wave, lengths) -> list[str]:
        self.forward_calls += 1
        return self._model.transcribe(wave.to(self.device), lengths.to(self.device))


class Attack:
    """Untargeted attack: return perturbed waveforms shaped like batch.wave.

    `self.effort` ("quick" or "full") is set by the harness before `run`; use it to
    choose iteration counts. Random draws should use `self.seed`.
    """

    track = "attack"
    effort = "full"
    seed = 0

    def run(self, batch: AudioBatch, model: TargetModel, budget: Budget) -> torch.Tensor:
        raise NotImplementedError


class TargetedAttack(Attack):
    """Targeted attack: batch.targets holds the transcript to make the model output."""

    track = "targeted-attack"


class Defense:
    """A defense transcribes audio it knows nothing about (ids are anonymous)."""

    track = "defense"
    effort = "full"
    seed = 0

    def purify(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return wave

    def transcribe(self, batch: AudioBatch, model: TargetModel) -> list[str]:
        return model.transcribe(self.purify(batch.wave, batch.lengths), batch.lengths)
