"""A small PGD-style attack: the template to copy for a new attack.

The harness imports this module INSIDE the sandbox (no network, read-only files, an
empty environment), makes one instance of the entry class and calls `run` once per batch.
"""
import torch

from arena import Attack, AudioBatch, Budget, TargetModel, ThreatModel


class NoisePGD(Attack):
    # self.effort is set by the harness: "quick" (CPU profile) or "full"
    steps = {"quick": 3, "full": 20}

    def run(self, batch: AudioBatch, model: TargetModel, budget: Budget) -> torch.Tensor:
        # batch.wave: (B, T) float32, zero padded; batch.lengths: (B,) samples;
        # batch.transcripts: the reference texts (untargeted: push the model away from them)
        clean, lengths = batch.wave, batch.lengths
        mask = (torch.arange(clean.shape[1])[None, :] < lengths[:, None]).float()
        steps = self.steps.get(self.effort, 3)

        def project(delta):
            # keep the perturbation inside the budget; the harness projects again anyway,
            # but `arena validate` flags attacks that hand back more than they are allowed
            delta = delta * mask
            if budget.threat is ThreatModel.LINF:
                return delta.clamp(-budget.value, budget.value)
            allowed = budget.max_l2(clean, lengths)            # (B,) max ||delta||_2
            norm = delta.norm(dim=1).clamp_min(1e-12)
            return delta * (allowed / norm).clamp(max=1.0)[:, None]

        # random start, then signed-gradient ascent on the CTC loss of the reference
        delta = project(torch.randn_like(clean) * 1e-3)
        step = (budget.max_l2(clean, lengths) / lengths.float().sqrt())[:, None] \
            if budget.threat is ThreatModel.SNR else torch.full((clean.shape[0], 1), budget.value)
        for _ in range(steps):
            # one forward + one backward on the target model (counted by the harness)
            grad = model.gradient(clean + delta, lengths, batch.transcripts)
            delta = project(delta + 0.5 * step * grad.sign())
        # return the perturbed waves, same shape and dtype as batch.wave
        return (clean + delta).clamp(-1, 1).float()
