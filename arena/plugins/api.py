"""The plugin API: what a submission subclasses and what it is given.

A submission's entry class subclasses `Attack`, `TargetedAttack` or `Defense`; the sandbox
worker instantiates it with no arguments (the harness sets `self.effort`, "quick",
"standard" or "full", and `self.seed` before the first call: the scoring run's seed, or on
the secret split one derived from the secret and the plugin's own content hash) and calls it
once per batch with a `TargetModel`.
"""
from __future__ import annotations

import torch

from arena.asr.ctc import ctc_loss, greedy_matches
from arena.core.audio import SAMPLE_RATE, AudioBatch, length_mask
from arena.core.budget import Budget, ThreatModel

__all__ = ["AudioBatch", "Budget", "ThreatModel", "TargetModel", "Attack", "TargetedAttack",
           "Defense", "BASES", "ctc_loss", "greedy_matches", "length_mask"]


class TargetModel:
    """The model as a plugin sees it: an ASRModel in eval mode with frozen weights.

    Counters (one per batched call, whatever the batch size):
      forward_calls  +1 per `log_probs` call (`loss`, `gradient` and `transcribe` go
                     through it, so each counts one forward);
      backward_calls +1 each time a gradient flows back through an output of
                     `log_probs` (a tensor hook), so a plugin that backpropagates
                     through `log_probs` or `loss` itself is counted like `gradient`.
    Reaching into private attributes to bypass the counters is against the rules.
    """

    sample_rate = SAMPLE_RATE

    def __init__(self, model, device="cpu"):
        self.device = torch.device(device)
        self._model = model.to(self.device).eval()
        for p in self._model.parameters():
            p.requires_grad_(False)
        self.tokenizer = self._model.tokenizer
        self.forward_calls = 0
        self.backward_calls = 0

    def _count_backward(self, grad):
        self.backward_calls += 1
        return grad

    def _inputs(self, wave, lengths):
        if wave.dim() != 2:
            raise ValueError(f"wave must be (B, T), got {tuple(wave.shape)}")
        return wave.to(self.device, torch.float32), lengths.to(self.device, torch.long)

    def log_probs(self, wave: torch.Tensor, lengths: torch.Tensor):
        """CTC log-probabilities (B, T', V) and output lengths (B,); differentiable in wave."""
        wave, lengths = self._inputs(wave, lengths)
        self.forward_calls += 1
        log_probs, out_lengths = self._model(wave, lengths)
        if log_probs.requires_grad:
            log_probs.register_hook(self._count_backward)
        return log_probs, out_lengths

    def loss(self, wave, lengths, transcripts: list[str]) -> torch.Tensor:
        """CTC loss per utterance (B,), differentiable in wave."""
        log_probs, out_lengths = self.log_probs(wave, lengths)
        targets, target_lengths = self.tokenizer.encode_batch(list(transcripts))
        return ctc_loss(log_probs, out_lengths, targets, target_lengths)

    def gradient(self, wave, lengths, transcripts: list[str]) -> torch.Tensor:
        """d sum(loss) / d wave, shaped like wave (one forward + one backward)."""
        with torch.enable_grad():
            x = wave.detach().to(self.device, torch.float32).requires_grad_(True)
            total = self.loss(x, lengths, transcripts).sum()
            (grad,) = torch.autograd.grad(total, x)
        return grad

    @torch.no_grad()
    def transcribe(self, wave, lengths) -> list[str]:
        """Greedy CTC transcripts (one forward, no gradient)."""
        log_probs, out_lengths = self.log_probs(wave, lengths)
        return self.tokenizer.greedy_decode(log_probs, out_lengths)


class Attack:
    """Untargeted attack: return perturbed waves shaped like batch.wave (float32).

    The harness projects the result into `budget` afterwards (Budget.project), but a
    submission should respect it itself: `arena validate` flags overshoot.
    """

    track = "attack"
    effort = "full"   # set by the harness: "quick", "standard" or "full"; scale iterations by it
    seed = 0          # set by the harness, for the plugin's own RNGs (see the module docstring)

    def run(self, batch: AudioBatch, model: TargetModel, budget: Budget) -> torch.Tensor:
        raise NotImplementedError


class TargetedAttack(Attack):
    """Targeted attack: batch.targets holds the transcript each utterance should become."""

    track = "targeted-attack"


class Defense:
    """Defense: `transcribe` the batch; the default purifies then transcribes."""

    track = "defense"
    effort = "full"
    seed = 0

    def purify(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return wave

    def transcribe(self, batch: AudioBatch, model: TargetModel) -> list[str]:
        return model.transcribe(self.purify(batch.wave, batch.lengths), batch.lengths)


BASES = {"attack": Attack, "targeted-attack": TargetedAttack, "defense": Defense}
