"""Budget projection: the harness's enforcement keeps perturbations inside the ball and,
for SNR budgets, on it (no fixed shrink step that throws away SNR)."""
import torch

from arena.core.budget import Budget, quantize_int16


def _clean(b=16, t=16000):
    g = torch.Generator().manual_seed(0)
    return quantize_int16(0.1 * torch.randn(b, t, generator=g)), torch.full((b,), t), g


def test_snr_projection_lands_on_the_ball_after_rounding():
    clean, lengths, g = _clean()
    budget = Budget.parse("snr30")
    adv = clean + 0.05 * torch.randn(clean.shape, generator=g)  # far outside the ball
    out = budget.project(clean, adv, lengths)
    snr = budget.achieved_snr(clean, out, lengths)
    assert (snr >= 30.0).all()
    assert (snr - 30.0).max() < 0.01, snr  # a 0.97 shrink step lost ~0.27 dB here
    assert torch.equal(out, quantize_int16(out))


def test_inside_the_ball_is_unchanged_and_linf_is_a_box():
    clean, lengths, g = _clean(4)
    small = quantize_int16(clean + 1e-4 * torch.randn(clean.shape, generator=g))
    assert torch.equal(Budget.parse("snr30").project(clean, small, lengths), small)
    out = Budget.parse("linf0.003").project(clean, clean + 1.0, lengths)
    assert (out - clean).abs().max() <= 0.003 + 1e-7
