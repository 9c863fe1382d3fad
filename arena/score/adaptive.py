"""The adaptive evaluation of a defense: the reference attack (the `apgd` baseline's loop)
run through the defense, the way Athalye et al. ("Obfuscated gradients give a false sense of
security", 2018) evaluate defenses: the defense's `purify` is queried on the current audio
(in its sandbox, PurifyServer) and treated as the identity on the way back (BPDA); where it
is random, the gradient is averaged over `eot` draws (EOT, one batched request per step).

Trust: the defense influences the attack only through the audio its purify returns. The
loss, the gradient and the greedy decode are computed here, in the harness, on our own copy
of the model, so a defense that patches torch, hooks autograd or fakes gradients in its own
process changes nothing. A defense whose purify does not model what its transcribe does is
attacked less well (the attack is as good as the model of the defense): each cell records
which methods the defense overrides (self-reported) and the model's transcript of the
purified final audio, so the board can show where the two disagree.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch

from arena.core import paths
from arena.core.audio import AudioBatch
from arena.core.budget import Budget, ThreatModel
from arena.plugins.loader import load_reference
from arena.sandbox.serve import PurifyServer
from arena.score.keys import ADAPTIVE_ATTACK
from arena.submissions.manifest import content_hash

REFERENCE = "apgd"          # the baseline whose loop and objective the adaptive attack runs
LSB = 1.0 / 32768           # one step of 16-bit audio
# a purify is random when one sample nudged by an LSB moves its output by more than this
# (per utterance, L2): a deterministic filter passes the nudge on at about its size
NUDGE_TOLERANCE = 16 * LSB


__all__ = ["ADAPTIVE_ATTACK", "REFERENCE", "Randomness", "Reference", "attack_batch", "eot_rows",
           "oracle_transcripts", "purify_randomness"]


@dataclass(frozen=True)
class Reference:
    module: Any          # the apgd baseline's module: ascend, blank_margin, word_errors, ...
    content_hash: str

    @classmethod
    def load(cls) -> Reference:
        folder = paths.PACKAGE / "baselines" / REFERENCE   # the arena's own, whatever ARENA_BASELINES says
        return cls(load_reference(folder, REFERENCE), content_hash(folder))

    def steps(self, effort: str) -> int:
        table = self.module.STEPS
        return int(table.get(effort, table["quick"]))


class Randomness(str, Enum):
    DETERMINISTIC = "deterministic"
    RANDOM = "random"
    KEYED = "keyed"     # a deterministic function of its input that draws anew on any change


def purify_randomness(server: PurifyServer, batch: AudioBatch) -> Randomness:
    """RANDOM when two purifies of the same audio differ; KEYED when they agree but one
    sample per utterance nudged by an LSB moves the output by more than NUDGE_TOLERANCE (a
    purify that seeds its randomness from a hash of the audio: the same audio, the same
    draw); else DETERMINISTIC. The attack averages over draws (EOT) unless DETERMINISTIC."""
    a = server.purify(batch.wave, batch.lengths)
    b = server.purify(batch.wave, batch.lengths)
    if not torch.equal(a, b):
        return Randomness.RANDOM
    nudged = batch.wave.clone()
    rows = torch.arange(len(nudged))
    middle = (batch.lengths // 2).clamp(max=nudged.shape[1] - 1)
    value = nudged[rows, middle]
    nudged[rows, middle] = torch.where(value + LSB <= 1.0, value + LSB, value - LSB)
    c = server.purify(nudged, batch.lengths)
    return Randomness.KEYED if bool(((c - a).norm(dim=1) > NUDGE_TOLERANCE).any()) \
        else Randomness.DETERMINISTIC


def eot_rows(x: torch.Tensor, mask: torch.Tensor, eot: int, dither: bool) -> torch.Tensor:
    """`eot` copies of the batch for one EOT request. With `dither` (a KEYED purify) every
    copy after the first carries its own +-1 LSB dither on the real samples (fixed seed: the
    attack stays reproducible), so that the purify draws anew for each copy instead of
    answering all alike; a RANDOM purify draws anew anyway and gets identical copies."""
    if eot == 1 or not dither:
        return x.repeat(eot, 1)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randint(-1, 2, (eot - 1, *x.shape), generator=gen).to(x.dtype) * LSB
    return torch.cat([x, (x.unsqueeze(0) + noise * mask).clamp(-1.0, 1.0).flatten(0, 1)])


def attack_batch(reference: Reference, net, server: PurifyServer, batch: AudioBatch,
                 budget: Budget, steps: int, eot: int, dither: bool = False) -> torch.Tensor:
    """BPDA + EOT APGD on one batch: the adversarial audio (before the harness's projection)."""
    ref = reference.module
    x, mask, lengths = batch.wave, batch.mask, batch.lengths
    transcripts = list(batch.transcripts or [])
    copies = lengths.repeat(eot)

    def evaluate(delta):
        purified = server.purify(eot_rows(x + delta, mask, eot, dither), copies)
        p = purified.requires_grad_(True)
        log_probs, out_lengths = net(p, copies)
        loss = ref.blank_margin(log_probs, out_lengths)
        (grad,) = torch.autograd.grad(loss.sum(), p)
        hyps = net.tokenizer.greedy_decode(log_probs.detach(), out_lengths)
        errors = torch.tensor([float(ref.word_errors(r, h))
                               for r, h in zip(transcripts * eot, hyps)])
        # straight through the defense (BPDA), averaged over its draws (EOT)
        return (loss.detach().view(eot, -1).mean(0), errors.view(eot, -1).mean(0),
                grad.view(eot, *x.shape).mean(0))

    l2 = budget.threat == ThreatModel.SNR
    with torch.enable_grad():
        delta = ref.ascend(x, mask, ref.radius_of(budget, x, lengths), l2, steps, evaluate,
                           enough=ref.word_counts(transcripts))
    return x + delta


def oracle_transcripts(net, server: PurifyServer, wave: torch.Tensor, lengths: torch.Tensor) -> list[str]:
    """What the attack's model of the defense says about `wave`: our model on its purify."""
    with torch.no_grad():
        return net.transcribe(server.purify(wave, lengths), lengths)
