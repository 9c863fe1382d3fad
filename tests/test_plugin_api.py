"""Plugin API unit tests: Budget enforcement, AudioBatch checks, TargetModel counters."""
import math
import subprocess
import sys

import pytest
import torch

from arena.core.audio import AudioBatch
from arena.core.budget import Budget, ThreatModel, quantize_int16
from arena.plugins.api import TargetModel


def _clean(B=3, T=8000, seed=0):
    g = torch.Generator().manual_seed(seed)
    wave = (torch.rand(B, T, generator=g) - 0.5) * 0.6
    lengths = torch.tensor([T, T // 2, T - 123][:B])
    for i, n in enumerate(lengths.tolist()):
        wave[i, n:] = 0
    return quantize_int16(wave), lengths


def test_import_arena_is_light_and_exports_the_api():
    code = ("import sys, arena; assert 'torch' not in sys.modules, 'torch imported'; "
            "from arena import Attack, Defense, AudioBatch, Budget, TargetModel, TargetedAttack; "
            "print(Budget.parse('snr30').id)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "snr30"


def test_budget_ids_roundtrip():
    assert Budget.parse("snr30") == Budget(ThreatModel.SNR, 30)
    assert Budget.parse("linf0.003").value == pytest.approx(0.003)
    for text in ("snr40", "snr25", "snr35", "linf0.001", "linf0.003", "linf0.01"):
        assert Budget.parse(text).id == text
    for bad in ("l2-30", "snr", "linf-1", "linf0", "30"):
        with pytest.raises(ValueError):
            Budget.parse(bad)


@pytest.mark.parametrize("bid", ["snr40", "snr30", "snr25", "linf0.001", "linf0.01"])
def test_project_within_budget_on_grid_and_clipped(bid):
    budget = Budget.parse(bid)
    clean, lengths = _clean()
    adv = clean + torch.randn_like(clean) * 0.5      # far over every budget, and past [-1, 1]
    adv[0, :100] = 3.0
    out = budget.project(clean, adv, lengths)
    assert out.shape == clean.shape and out.dtype == torch.float32
    assert bool((budget.overshoot(clean, out, lengths) <= 1.0 + 1e-6).all())
    assert float(out.abs().max()) <= 1.0
    assert torch.equal(torch.round(out * 32768), out * 32768)      # int16 grid
    for i, n in enumerate(lengths.tolist()):
        assert float(out[i, n:].abs().sum()) == 0.0                 # padding stays zero
    # something of the attack survives (the projection scales, it does not discard)
    assert bool((budget.achieved_snr(clean, out, lengths) < math.inf).all())


def test_project_keeps_small_perturbations_and_measures_snr():
    budget = Budget.parse("snr30")
    clean, lengths = _clean()
    mask = (torch.arange(clean.shape[1])[None] < lengths[:, None]).float()
    delta = torch.randn_like(clean) * mask
    delta = delta / delta.norm(dim=1, keepdim=True) * budget.max_l2(clean, lengths)[:, None] * 0.5
    adv = quantize_int16(clean + delta)
    out = budget.project(clean, adv, lengths)
    assert torch.allclose(out, adv * mask, atol=1e-7)
    snr = budget.achieved_snr(clean, out, lengths)
    assert bool(((snr > 35) & (snr < 37)).all())                   # half the allowed norm: +6 dB
    assert budget.achieved_snr(clean, clean, lengths).isinf().all()
    over = Budget.parse("snr30").overshoot(clean, clean + 2 * delta * 2, lengths)
    assert bool((over > 1.9).all())


def test_linf_projection_clamps_each_sample():
    budget = Budget.parse("linf0.003")
    clean, lengths = _clean()
    out = budget.project(clean, clean + 0.1, lengths)
    d = (out - clean).abs()
    assert float(d.max()) <= 0.003 + 1e-7
    assert float(budget.overshoot(clean, out, lengths).max()) <= 1.0 + 1e-5


def test_audiobatch_validation_names_the_problem():
    w, n = torch.zeros(2, 100), torch.tensor([100, 50])
    AudioBatch(["a", "b"], w, n, transcripts=["x", "y"])
    with pytest.raises(ValueError, match="float32"):
        AudioBatch(["a", "b"], w.double(), n)
    with pytest.raises(ValueError, match="lengths"):
        AudioBatch(["a", "b"], w, n.int())
    with pytest.raises(ValueError, match="ids"):
        AudioBatch(["a"], w, n)
    with pytest.raises(ValueError, match="transcripts"):
        AudioBatch(["a", "b"], w, n, transcripts=["x"])
    with pytest.raises(ValueError, match="2-D"):
        AudioBatch(["a", "b"], torch.zeros(2, 3, 4), n)


def test_target_model_counts_calls(tiny_model):
    model = TargetModel(tiny_model)
    wave, lengths = torch.randn(2, 8000) * 0.1, torch.tensor([8000, 6000])
    texts = ["hello world", "open"]
    assert len(model.transcribe(wave, lengths)) == 2
    assert (model.forward_calls, model.backward_calls) == (1, 0)
    loss = model.loss(wave, lengths, texts)
    assert loss.shape == (2,) and not loss.requires_grad           # frozen weights, plain wave
    assert (model.forward_calls, model.backward_calls) == (2, 0)
    g = model.gradient(wave, lengths, texts)
    assert g.shape == wave.shape and float(g.abs().sum()) > 0
    assert (model.forward_calls, model.backward_calls) == (3, 1)
    # a plugin backpropagating by itself through log_probs is counted too
    x = wave.clone().requires_grad_(True)
    lp, _ = model.log_probs(x, lengths)
    lp.sum().backward()
    assert x.grad is not None
    assert (model.forward_calls, model.backward_calls) == (4, 2)
    assert all(not p.requires_grad for p in tiny_model.parameters())


@pytest.mark.parametrize("budget_id", ["snr30", "linf0.003"])
def test_unchanged_16_bit_audio_passes_projection_unchanged(budget_id):
    """Corpus audio is k / 32768 (int16 read by soundfile): a no-op attack must not move it."""
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(-32768, 32768, (2, 4000), generator=g).float() / 32768
    lengths = torch.tensor([4000, 3000])
    clean[1, 3000:] = 0
    out = Budget.parse(budget_id).project(clean, clean.clone(), lengths)
    assert torch.equal(out, clean)


SEEDED = '''
from arena import Attack, Defense

class A(Attack):
    def run(self, batch, model, budget):
        return batch.wave + self.seed * 2.0 ** -15   # one int16 step per unit of seed

class D(Defense):
    def transcribe(self, batch, model):
        return ["a" * self.seed] * len(batch)
'''


@pytest.mark.parametrize("track", ["attack", "defense"])
def test_the_harness_gives_plugins_the_job_seed(track, tmp_path):
    """README: `self.seed` is set. The worker sets it from the job's seed, in the sandbox."""
    from arena.asr.models import TINY_CONFIG, build_model, save_checkpoint
    from arena.sandbox import SandboxLimits, run_attack_job, run_defense_job
    from arena.submissions.manifest import plugin_spec

    folder = tmp_path / "seeded"
    folder.mkdir()
    entry = "plugin:A" if track == "attack" else "plugin:D"
    (folder / "submission.toml").write_text(f'name = "seeded"\ntrack = "{track}"\nentry = "{entry}"\n'
                                            'authors = ["t"]\nversion = "1"\n')
    (folder / "plugin.py").write_text(SEEDED)
    torch.manual_seed(0)
    model_path = tmp_path / "tiny.safetensors"
    save_checkpoint(build_model("conformer-ctc", **TINY_CONFIG), model_path)
    clean, lengths = _clean(B=2)
    batch = AudioBatch(["u1", "u2"], clean, lengths, transcripts=["hello", "world"])
    limits = SandboxLimits(wall_s=60)
    if track == "attack":
        r = run_attack_job(plugin_spec(folder), model_path, [batch], "snr30", seed=7, limits=limits)
        assert r.status == "ok", r.error
        assert torch.allclose(r.batches[0].adv - clean, torch.full_like(clean, 7 * 2.0 ** -15), atol=1e-6)
    else:
        r = run_defense_job(plugin_spec(folder), model_path, [batch], seed=3, limits=limits)
        assert r.status == "ok", r.error
        assert r.batches[0].transcripts == ["aaa", "aaa"]
