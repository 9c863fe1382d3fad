"""The reference plugins in baselines/: manifests, output contract, budgets, and that each
attack does what it claims on a tiny random model (no absolute WERs: the model is random)."""
import importlib.util
import math
import tomllib
from pathlib import Path

import pytest
import torch

from arena import AudioBatch, Budget, TargetModel
from arena.asr.models import TINY_CONFIG

ROOT = Path(__file__).resolve().parents[1] / "arena" / "baselines"
ATTACKS = ["noop", "noise", "fgsm", "pgd", "kenansville", "apgd"]
TARGETED = ["cw-targeted"]
DEFENSES = ["none", "resample", "quantize", "lowpass", "smoothing"]
BUDGETS = ["snr30", "linf0.003"]
TINY = TINY_CONFIG


def load_module(name: str):
    """(module, manifest) of a baseline, imported from its folder by file path."""
    folder = ROOT / name
    manifest = tomllib.loads((folder / "submission.toml").read_text())
    module = manifest["entry"].split(":")[0]
    spec = importlib.util.spec_from_file_location(f"_baseline_{name.replace('-', '_')}",
                                                  folder / f"{module}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, manifest


def load_plugin(name: str, effort: str = "quick"):
    """Instantiate a baseline from its folder the way a trusted loader would."""
    mod, manifest = load_module(name)
    plugin = getattr(mod, manifest["entry"].split(":")[1])()
    assert plugin.track == manifest["track"]
    plugin.effort = effort
    return plugin


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def net(tiny_net):
    return tiny_net


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(1)
    lengths = torch.tensor([6000, 9000, 4000])
    T = int(lengths.max())
    t = torch.arange(T) / 16000
    tones = torch.stack([0.3 * torch.sin(2 * math.pi * f * t) for f in (220.0, 440.0, 330.0)])
    wave = (tones + 0.05 * torch.randn(3, T, generator=gen)).float()
    wave = wave * (torch.arange(T)[None, :] < lengths[:, None])
    return AudioBatch(ids=["u0", "u1", "u2"], wave=wave, lengths=lengths,
                      transcripts=["call mom", "play some music", "hi there"],
                      targets=["stop", "call dad now", "call mom"])


_RUNS = {}


def attack_run(name, budget_id, net, batch):
    """(adversarial wave, forward calls, backward calls), computed once per module run."""
    key = (name, budget_id)
    if key not in _RUNS:
        model = TargetModel(net)
        adv = load_plugin(name).run(batch, model, Budget.parse(budget_id))
        _RUNS[key] = (adv, model.forward_calls, model.backward_calls)
    return _RUNS[key]


def padding(batch):
    return torch.arange(batch.wave.shape[1])[None, :] >= batch.lengths[:, None]


def test_manifests_are_valid():
    from arena.submissions.manifest import load_manifest

    names = sorted(p.name for p in ROOT.iterdir() if (p / "submission.toml").is_file())
    assert names == sorted(ATTACKS + TARGETED + DEFENSES)
    for name in names:
        m = load_manifest(ROOT / name)
        assert m.name == name and m.authors == ["ASR Arena baselines"] and m.description


@pytest.mark.parametrize("budget_id", BUDGETS)
@pytest.mark.parametrize("name", ATTACKS + TARGETED)
def test_attack_output_contract(name, budget_id, net, batch):
    budget = Budget.parse(budget_id)
    adv, _, backward_calls = attack_run(name, budget_id, net, batch)
    assert adv.shape == batch.wave.shape and adv.dtype == torch.float32
    assert torch.isfinite(adv).all()
    assert (adv[padding(batch)] == 0).all(), "padding must stay untouched"
    assert adv.abs().max() <= 1.0
    assert (budget.overshoot(batch.wave, adv, batch.lengths) <= 1.0 + 1e-4).all()
    if name == "noop":
        assert torch.equal(adv, batch.wave)
    if name == "kenansville":
        assert backward_calls == 0


@pytest.mark.parametrize("budget_id", BUDGETS)
def test_noise_fills_the_budget_and_is_seeded(budget_id, net, batch):
    budget = Budget.parse(budget_id)
    a = load_plugin("noise").run(batch, TargetModel(net), budget)
    b = load_plugin("noise").run(batch, TargetModel(net), budget)
    assert torch.equal(a, b)
    ratio = budget.overshoot(batch.wave, a, batch.lengths)
    assert (ratio > 0.99).all(), ratio  # nothing clips here: peaks are far from 1


@pytest.mark.parametrize("budget_id", BUDGETS)
def test_gradient_attacks_raise_the_loss(budget_id, net, batch):
    def loss(name):
        adv = attack_run(name, budget_id, net, batch)[0]
        return TargetModel(net).loss(adv, batch.lengths, batch.transcripts).detach()

    clean = TargetModel(net).loss(batch.wave, batch.lengths, batch.transcripts).detach()
    noise, fgsm, pgd = loss("noise"), loss("fgsm"), loss("pgd")
    assert (fgsm > clean).all(), (clean, fgsm)
    assert (pgd - clean > noise - clean).all(), (clean, noise, pgd)
    assert pgd.sum() >= fgsm.sum() - 1e-3, (fgsm, pgd)


@pytest.mark.parametrize("budget_id", BUDGETS)
def test_quick_effort_is_cheap(budget_id, net, batch):
    _, forward, backward = attack_run("pgd", budget_id, net, batch)
    assert backward <= 10 and forward <= 12
    _, forward, backward = attack_run("fgsm", budget_id, net, batch)
    assert backward == 1 and forward == 1


@pytest.mark.parametrize("budget_id", BUDGETS)
def test_cw_targeted_moves_towards_the_targets(budget_id, net, batch):
    model = TargetModel(net)
    adv, _, backward_calls = attack_run("cw-targeted", budget_id, net, batch)
    assert backward_calls <= load_module("cw-targeted")[0].STEPS["quick"]
    before = model.loss(batch.wave, batch.lengths, batch.targets).detach()
    after = model.loss(adv, batch.lengths, batch.targets).detach()
    assert (after < before).all(), (before, after)


def test_cw_greedy_match_agrees_with_the_tokenizer(net, batch):
    """The on-device success test is true exactly for the greedy path's own id sequence
    (merged repeats, blanks dropped) and false for other texts."""
    greedy_matches = load_module("cw-targeted")[0].greedy_matches
    lp, out_len = TargetModel(net).log_probs(batch.wave, batch.lengths)
    paths = []
    for row, n in zip(lp.argmax(-1), out_len.tolist()):
        seq = row[:n].tolist()
        paths.append([t for i, t in enumerate(seq) if t != 0 and (i == 0 or seq[i - 1] != t)])
    ids = torch.zeros(len(paths), max(1, max(map(len, paths))), dtype=torch.long)
    for r, p in enumerate(paths):
        ids[r, : len(p)] = torch.tensor(p, dtype=torch.long)
    id_len = torch.tensor([len(p) for p in paths])
    assert greedy_matches(lp.detach(), out_len, ids, id_len).tolist() == [True] * 3
    other, other_len = net.tokenizer.encode_batch(batch.targets)
    assert greedy_matches(lp.detach(), out_len, other, other_len).tolist() == [False] * 3


def test_kenansville_is_black_box_and_spends_the_l2_budget(net, batch):
    model, budget = TargetModel(net), Budget.parse("snr30")
    adv = load_plugin("kenansville").run(batch, model, budget)
    assert model.backward_calls == 0 and model.forward_calls == 0
    assert (budget.overshoot(batch.wave, adv, batch.lengths) > 0.3).all()


@pytest.mark.parametrize("name", DEFENSES)
def test_defenses_return_one_string_per_utterance(name, net, batch):
    blind = AudioBatch(ids=["x0", "x1", "x2"], wave=batch.wave, lengths=batch.lengths)
    out = load_plugin(name).transcribe(blind, TargetModel(net))
    assert isinstance(out, list) and len(out) == 3 and all(isinstance(s, str) for s in out)


@pytest.mark.parametrize("name", ["resample", "quantize", "lowpass"])
def test_purifiers_keep_shape_and_padding(name, batch):
    out = load_plugin(name).purify(batch.wave, batch.lengths)
    assert out.shape == batch.wave.shape and out.dtype == torch.float32
    assert (out[padding(batch)] == 0).all() and torch.isfinite(out).all()


def test_smoothing_is_deterministic_and_votes(net, batch):
    blind = AudioBatch(ids=["x0", "x1", "x2"], wave=batch.wave, lengths=batch.lengths)
    a = load_plugin("smoothing").transcribe(blind, TargetModel(net))
    b = load_plugin("smoothing").transcribe(blind, TargetModel(net))
    assert a == b
    model = TargetModel(net)
    load_plugin("smoothing", "full").transcribe(blind, model)
    assert model.forward_calls == 5
    vote = load_module("smoothing")[0].vote
    assert vote(["a b", "a c", "a b"]) == "a b"
    assert vote(["xyz", "abc", "abd", "xyz", "abd"]) == "abd"  # tie: closest to the rest
    assert vote(["b", "a"]) == "b"  # full tie: the first draw


def test_apgd_checkpoints_and_best_iterate(net, batch):
    """APGD's step-size checkpoints follow Croce & Hein's schedule, and the returned audio
    is never worse (in word errors against the references) than the clean input."""
    mod = load_module("apgd")[0]
    assert mod.checkpoints(100) == [22, 41, 58, 70, 80, 87, 93, 99]
    assert mod.word_errors("a b c", "a x c d") == 2
    model, budget = TargetModel(net), Budget.parse("snr30")
    attack = load_plugin("apgd")
    attack.steps = 6
    adv = attack.run(batch, model, budget)
    # one forward + backward per step and one at the start; fewer only when it stopped early
    assert model.forward_calls == model.backward_calls <= 7
    assert (budget.overshoot(batch.wave, adv, batch.lengths) <= 1.0 + 1e-5).all()
    clean = net.transcribe(batch.wave, batch.lengths)
    hyps = net.transcribe(adv, batch.lengths)
    clean_err = sum(mod.word_errors(r, h) for r, h in zip(batch.transcripts, clean))
    errors = [mod.word_errors(r, h) for r, h in zip(batch.transcripts, hyps)]
    assert sum(errors) >= clean_err
    if model.forward_calls < 7:  # early stop: only when every utterance has every word wrong
        assert all(e >= len(r.split()) for e, r in zip(errors, batch.transcripts))


def test_apgd_stops_early_only_when_nothing_is_left_to_gain():
    """`ascend` on a toy objective: it stops as soon as every row reaches `enough` errors,
    and runs every step while one row has not."""
    import torch

    mod = load_module("apgd")[0]
    calls = []

    def evaluate(delta, reach=(3.0, 3.0)):
        calls.append(1)
        loss = delta.sum(1)
        errors = torch.tensor([min(reach[0], len(calls) - 1.0), min(reach[1], len(calls) - 1.0)])
        return loss, errors, torch.ones_like(delta)

    x, mask = torch.zeros(2, 8), torch.ones(2, 8)
    mod.ascend(x, mask, torch.ones(2), True, 20, evaluate, enough=torch.tensor([3.0, 3.0]))
    assert len(calls) == 4      # errors 0, 1, 2, 3: stop
    calls.clear()
    mod.ascend(x, mask, torch.ones(2), True, 20, lambda d: evaluate(d, (3.0, 2.0)),
               enough=torch.tensor([3.0, 3.0]))
    assert len(calls) == 21
