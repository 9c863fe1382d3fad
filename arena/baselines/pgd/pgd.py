"""PGD on the CTC loss, built on foolbox 3's projected gradient descent.

How foolbox is used (foolbox 3.3.4, ``foolbox/attacks/gradient_descent_base.py``):

* ``_CTCL2PGD`` / ``_CTCLinfPGD`` subclass ``foolbox.attacks.L2PGD`` / ``LinfPGD``
  (= ``L2ProjectedGradientDescentAttack`` / ``LinfProjectedGradientDescentAttack``), so the
  loop itself -- random start, ``value_and_grad``, per-row gradient normalisation (L2 norm or
  sign), the step ``x + stepsize * g`` with ``stepsize = rel_stepsize * epsilon``, the
  projection onto the epsilon ball and the clip to the model bounds -- is foolbox's own
  ``BaseGradientDescent.run``.
* ``get_loss_fn(model, labels)`` is overridden. Foolbox's default is a softmax cross-entropy
  on class logits; ASR needs a sequence loss, so ours returns the CTC loss (summed over the
  batch, per utterance unnormalised) of the foolbox model's log-probs against the
  transcript token ids. The ids arrive as ``labels``: they are carried by ``CTCLabels``, a
  ``foolbox.criteria.Misclassification`` subclass whose ``labels`` is the padded (B, S) id
  tensor, which makes foolbox ascend the loss (untargeted). The waveform lengths, the
  log-prob lengths and the transcript lengths that CTC also needs are fixed for the batch
  and kept in the closure (attributes set on the attack before ``run``).
  ``CTCLabels.__call__`` says "adversarial" when the greedy CTC decode differs from the ids.
* ``get_random_start`` is overridden only to keep padding at zero (foolbox draws noise on
  every sample of the padded tensor) and to scale the L2 start into the ball's interior.
* We call ``attack.run(...)`` (the raw, fixed-epsilon attack) rather than ``attack(...)``:
  ``__call__`` would also evaluate the criterion and return per-epsilon lists we don't need.

Per-utterance L2 radius: DESIGN.md's SNR budget gives every utterance its own radius
r_b = ||x_b||2 * 10^(-snr/20), while foolbox takes one epsilon per call. We therefore run
foolbox in a scaled space z = x / r_b (row-wise), where every radius becomes epsilon = 1
and foolbox's row-wise L2 normalisation/projection is exactly right. The foolbox model
(``_Waveform``) maps z back with x = clamp(z * r_b, -1, 1) * mask before the ASR model, so the
true waveform bounds (-1, 1) and the zero padding are enforced inside the model (foolbox's
scalar bounds are set to a box that contains every reachable z, so its clip is a no-op),
and the gradient is zero on padded samples. Under Linf no scaling is needed: z = x,
bounds (-1, 1), epsilon = eps. A final projection in waveform space guards against
rounding.

Cost per batch: one forward + one backward pass per step (quick 10, full 100) and nothing
else; the CTC frame counts come from each step's own forward, and the random start is free.
"""
import foolbox
import torch
from foolbox.attacks import L2PGD, LinfPGD
from torch import nn

from arena import Attack, ThreatModel, ctc_loss, greedy_matches

STEPS = {"quick": 10, "standard": 25, "full": 100}
REL_STEPSIZE = {"quick": 0.25, "standard": 0.2, "full": 0.1}
L2_START_SCALE = 0.25  # random start inside a quarter of the L2 ball (foolbox: the whole ball)


def _is_l2(budget) -> bool:
    return budget.threat == ThreatModel.SNR


def _tokenizer(model):
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        from arena.asr.text import Tokenizer
        tok = Tokenizer()
    return tok


class CTCLabels(foolbox.criteria.Misclassification):
    """Misclassification criterion for sequences: ``labels`` are padded CTC token ids (B, S).

    ``label_lengths`` gives each row's true length and ``out_lengths`` the valid log-prob
    frames; a perturbed input is adversarial when its greedy decode differs from its labels.
    """

    def __init__(self, ids, label_lengths, out_lengths):
        super().__init__(ids)
        self.label_lengths = label_lengths
        self.out_lengths = out_lengths  # a tensor, or a callable returning it

    def __call__(self, perturbed, outputs):
        raw = getattr(outputs, "raw", outputs)
        out_lengths = self.out_lengths() if callable(self.out_lengths) else self.out_lengths
        is_adv = ~greedy_matches(raw, out_lengths, self.labels.raw, self.label_lengths)
        return type(outputs)(is_adv) if hasattr(outputs, "raw") else is_adv


class _Waveform(nn.Module):
    """Foolbox-facing model: scaled waveform z (B, T) -> CTC log-probs (B, T', V)."""

    def __init__(self, log_probs_fn, lengths, mask, scale):
        super().__init__()
        self._log_probs = log_probs_fn  # a bound method, not a submodule
        self.lengths, self.mask, self.scale = lengths, mask, scale
        self.out_lengths = None  # CTC frame counts of the last forward (fixed for the batch)

    def forward(self, z):
        wave = (z * self.scale).clamp(-1.0, 1.0) * self.mask
        log_probs, self.out_lengths = self._log_probs(wave, self.lengths)
        return log_probs


class _CTCMixin:
    """Overrides shared by both threat models (see the module docstring)."""

    def configure(self, mask, waveform, label_lengths, start_scale):
        self._mask, self._waveform = mask, waveform
        self._label_lengths, self._start_scale = label_lengths, start_scale
        return self

    def get_loss_fn(self, model, labels):
        ids = labels.raw
        waveform, label_lengths = self._waveform, self._label_lengths

        def loss_fn(inputs):
            log_probs = model(inputs).raw  # foolbox model -> eagerpy tensor; unwrap to torch
            # frame counts from this same forward: no extra forward per batch to learn them
            loss = ctc_loss(log_probs, waveform.out_lengths, ids, label_lengths, reduction="sum")
            return type(inputs)(loss)  # back to an eagerpy tensor of the same backend

        return loss_fn

    def get_random_start(self, x0, epsilon):
        x = super().get_random_start(x0, epsilon)
        return x0 + (x - x0) * type(x0)(self._mask * self._start_scale)


class _CTCL2PGD(_CTCMixin, L2PGD):
    pass


class _CTCLinfPGD(_CTCMixin, LinfPGD):
    pass


class PGD(Attack):
    track = "attack"

    def run(self, batch, model, budget):
        effort = getattr(self, "effort", "full")
        steps = getattr(self, "steps", None) or STEPS.get(effort, STEPS["full"])  # curves set steps
        rel = REL_STEPSIZE.get(effort, REL_STEPSIZE["full"])
        dev = torch.device(model.device)
        wave = batch.wave.to(dev, torch.float32)
        lengths = batch.lengths.to(dev)
        B = wave.shape[0]
        mask = batch.mask.to(dev)
        ids, id_lengths = _tokenizer(model).encode_batch(list(batch.transcripts))
        ids, id_lengths = ids.to(dev), id_lengths.to(dev)
        l2 = _is_l2(budget)
        if l2:
            radius = torch.as_tensor(budget.max_l2(wave, lengths), device=dev, dtype=wave.dtype)
            scale = radius.clamp_min(1e-12)[:, None]
            z0 = wave / scale
            bound = float(z0.abs().max()) + 2.0  # contains every z within L2 distance 1
            attack = _CTCL2PGD(rel_stepsize=rel, steps=steps, random_start=True)
            start_scale, epsilon = L2_START_SCALE, 1.0
        else:
            eps = float(budget.value)
            scale = torch.ones(B, 1, device=dev, dtype=wave.dtype)
            z0 = wave
            bound = 1.0
            attack = _CTCLinfPGD(rel_stepsize=rel, steps=steps, random_start=True)
            start_scale, epsilon = 1.0, eps
        waveform = _Waveform(model.log_probs, lengths, mask, scale).eval()
        fmodel = foolbox.PyTorchModel(waveform, bounds=(-bound, bound), device=dev)
        attack.configure(mask, waveform, id_lengths, start_scale)
        criterion = CTCLabels(ids, id_lengths, lambda: waveform.out_lengths)
        devices = [dev] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(getattr(self, "seed", 0)) + 4321)
            z_adv = attack.run(fmodel, z0, criterion, epsilon=epsilon)
        with torch.no_grad():
            adv = (z_adv * scale).clamp(-1.0, 1.0) * mask
            delta = adv - wave
            if l2:  # guard against float rounding at the ball's surface
                norms = delta.norm(dim=1).clamp_min(1e-20)
                delta = delta * torch.clamp(radius / norms, max=1.0)[:, None]
            else:
                delta = delta.clamp(-eps, eps)
            adv = (wave + delta).clamp(-1.0, 1.0) * mask
        return adv.to(batch.wave.device)
