"""Compression core: masks, schedules, algorithms / gradient modes, fake quantization,
compressed modules and recipes. Tiny models only."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from arena.compress import (
    CompressedConv1d,
    CompressedLinear,
    CompressionConfig,
    Gradual,
    OneShot,
    compress_,
    compression_hooks,
    parse_recipe,
    recipe_name,
    update_masks,
)
from arena.compress.algorithms import ALGORITHMS, build_algorithm, masked_weight
from arena.compress.masks import global_magnitude_masks, group_view, nm_mask, random_mask, unstructured_mask
from arena.compress.quant import QuantSpec, dequantize, fake_quant, num_levels, quantize
from arena.compress.schedules import nm_at


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the 2-core CPU is shared: intra-op threads make every small op ~100x slower
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_model():
    from arena.asr.models import TINY_CONFIG, build_model

    torch.manual_seed(0)
    return build_model("conformer-ctc", **TINY_CONFIG).eval()


# ------------------------------------------------------------------ masks
SHAPES = [(8, 16), (5, 12), (7, 10), (16, 32, 3), (6, 8, 1), (4, 13, 5)]


def _check_nm(mask, n, m):
    v = group_view(mask)
    full = (v.shape[-1] // m) * m
    groups = v[..., :full].reshape(-1, m)
    assert (groups.sum(-1) == n).all()
    assert v[..., full:].all()  # remainder left dense


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("nm", [(2, 4), (1, 4), (4, 8), (3, 4), (4, 4)])
def test_nm_mask_exact_counts(shape, nm):
    n, m = nm
    w = torch.randn(shape)
    mask = nm_mask(w, n, m)
    assert mask.shape == w.shape and mask.dtype == torch.bool
    _check_nm(mask, n, m)
    # magnitude: every kept weight in a group is at least as large as every pruned one
    v, mv = group_view(w.abs()), group_view(mask)
    full = (v.shape[-1] // m) * m
    if full and n < m:
        g, gm = v[..., :full].reshape(-1, m), mv[..., :full].reshape(-1, m)
        kept_min = torch.where(gm, g, torch.inf).amin(-1)
        pruned_max = torch.where(~gm, g, -torch.inf).amax(-1)
        assert (kept_min >= pruned_max).all()
    _check_nm(random_mask(w, n=n, m=m, seed=3), n, m)


def test_conv_groups_run_along_input_channels():
    w = torch.zeros(2, 4, 3)
    w[:, :2, :] = 1.0  # the two first input channels are large for every (out, tap)
    mask = nm_mask(w, 2, 4)
    assert mask[:, :2, :].all() and not mask[:, 2:, :].any()


def test_unstructured_and_global_and_random():
    w = torch.randn(10, 20)
    mask = unstructured_mask(w, 0.7)
    assert int(mask.sum()) == 60
    assert w.abs()[mask].min() >= w.abs()[~mask].max()
    ws = {"a": torch.randn(10, 10), "b": 3 * torch.randn(20, 5)}
    g = global_magnitude_masks(ws, 0.5)
    assert sum(int(x.sum()) for x in g.values()) == 100
    r1, r2 = random_mask(w, sparsity=0.5, seed=1), random_mask(w, sparsity=0.5, seed=1)
    assert torch.equal(r1, r2) and int(r1.sum()) == 100
    assert not torch.equal(r1, random_mask(w, sparsity=0.5, seed=2))


# ------------------------------------------------------------------ schedules
def test_one_shot():
    s = OneShot(5)
    assert s.sparsity_at(4, 0.5) is None and s.sparsity_at(5, 0.5) == 0.5
    assert s.is_update_step(5) and not s.is_update_step(6)


def test_gradual_zhu_gupta():
    s = Gradual(start=10, end=110, every=10, final_sparsity=0.8)
    assert s.sparsity_at(0, 0.5) is None
    assert s.sparsity_at(10, 0.5) == pytest.approx(0.0)
    # t = 60: (t - t0) / (n dt) = 0.5 -> 0.8 * (1 - 0.5^3) = 0.7
    assert s.sparsity_at(60, 0.5) == pytest.approx(0.8 * (1 - 0.5 ** 3))
    assert s.sparsity_at(65, 0.5) == pytest.approx(0.7)  # held between updates
    assert s.sparsity_at(35, 0.5) == pytest.approx(0.8 * (1 - 0.8 ** 3))
    assert s.sparsity_at(110, 0.5) == pytest.approx(0.8) and s.sparsity_at(500, 0.5) == 0.8
    assert s.is_update_step(30) and not s.is_update_step(31)
    r = Gradual().resolved(1000)
    assert r.end == 750 and r.sparsity_at(750, 0.5) == 0.5
    # N:M on the way: 4:4 (dense) -> 3:4 -> 2:4
    assert nm_at(None, 2, 4) is None and nm_at(0.1, 2, 4) is None
    assert nm_at(0.3, 2, 4) == 3 and nm_at(0.5, 2, 4) == 2 and nm_at(0.75, 1, 4) == 1


def test_gradual_nm_reaches_target_in_training_hooks():
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 64))
    cfg = CompressionConfig(n=2, m=4, schedule=Gradual(start=0, end=None, every=2))
    compress_(model, cfg)
    hooks = compression_hooks(model, total_steps=20)
    seen = set()
    for step in range(20):
        for h in hooks:
            h("after_step", model, step)
        seen.add(model[0].active_nm())
    assert model[0].active_nm() == (2, 4)
    assert (3, 4) in seen
    _check_nm(model[0].current_mask(), 2, 4)


# ------------------------------------------------------------------ algorithms and gradients
def test_registry():
    assert {"magnitude", "random", "ste"} <= set(ALGORITHMS)
    assert build_algorithm("ste").dynamic and not build_algorithm("magnitude").dynamic
    with pytest.raises(ValueError):
        build_algorithm("nope")


@pytest.mark.parametrize("mode", ["zero", "ste", "srste"])
def test_mask_gradient_modes(mode):
    torch.manual_seed(0)
    w = torch.randn(4, 8, requires_grad=True)
    mask = nm_mask(w, 2, 4)
    g = torch.randn(4, 8)
    (masked_weight(w, mask, mode, srste_lambda=0.1) * g).sum().backward()
    if mode == "zero":
        expected = g * mask
    elif mode == "ste":
        expected = g
    else:
        expected = g + 0.1 * (~mask) * w.detach()
    torch.testing.assert_close(w.grad, expected)


@pytest.mark.parametrize("algorithm,grad_mode,pruned_grad", [
    ("magnitude", None, False), ("random", None, False), ("ste", None, True),
    ("magnitude", "ste", True), ("ste", "srste", True)])
def test_ste_gradients_reach_dense_weights(algorithm, grad_mode, pruned_grad):
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(32, 32))
    compress_(lin, CompressionConfig(n=2, m=4, bits=4, algorithm=algorithm, grad_mode=grad_mode))
    x = torch.randn(5, 32)
    lin(x).pow(2).sum().backward()
    mask = lin[0].current_mask()
    assert lin[0].weight.grad is not None
    g_pruned = lin[0].weight.grad[~mask]
    assert bool((g_pruned != 0).any()) == pruned_grad
    assert (lin[0].weight.grad[mask] != 0).any()


def test_ste_algorithm_recomputes_mask_every_forward():
    lin = nn.Sequential(nn.Linear(16, 4))
    compress_(lin, CompressionConfig(n=2, m=4, algorithm="ste", min_sparse_numel=1))
    before = lin[0].current_mask().clone()
    with torch.no_grad():
        lin[0].weight.copy_(torch.randn(4, 16))
    after = lin[0].current_mask()
    assert not torch.equal(before, after)
    assert torch.equal(after, nm_mask(lin[0].weight, 2, 4))


# ------------------------------------------------------------------ quantization
@pytest.mark.parametrize("bits,mode,levels", [(8, "ternary", 255), (4, "ternary", 15),
                                              (2, "ternary", 3), (2, "four-level", 4)])
@pytest.mark.parametrize("group_size", [None, 16])
def test_fake_quant_levels(bits, mode, levels, group_size):
    torch.manual_seed(0)
    w = torch.randn(6, 64, 3)
    spec = QuantSpec(bits, mode, group_size)
    assert num_levels(spec) == levels
    wq = fake_quant(w, spec)
    rows = wq.reshape(6, -1)
    gs = group_size or rows.shape[1]
    for r in range(6):
        for start in range(0, rows.shape[1], gs):
            vals = rows[r, start:start + gs].unique()
            assert len(vals) <= levels
    codes, scales = quantize(w, spec)
    assert torch.equal(scales, scales.half().float())  # fp16-representable
    assert torch.equal(dequantize(codes, scales, spec), wq)
    if mode == "ternary" and bits == 2:
        assert set(codes.unique().tolist()) <= {-1, 0, 1}
    # int8 is close to the weights
    if bits == 8:
        assert (wq - w).abs().max() < w.abs().max() / 100


def test_fake_quant_straight_through_gradient():
    w = torch.randn(8, 16, requires_grad=True)
    g = torch.randn(8, 16)
    (fake_quant(w, QuantSpec(4)) * g).sum().backward()
    torch.testing.assert_close(w.grad, g)


# ------------------------------------------------------------------ modules, compress_, recipes
def test_compress_replaces_modules_and_rules():
    model = tiny_model()
    compress_(model, parse_recipe("int4+2:4"))
    layer = model.encoder.conformer_layers[0]
    assert isinstance(layer.self_attn.query, CompressedLinear)
    assert isinstance(layer.conv_module.sequential[0], CompressedConv1d)
    dw = layer.conv_module.sequential[2]
    assert isinstance(dw, CompressedConv1d) and not dw.is_sparse and dw.quant.bits == 4
    assert layer.ffn1.sequential[1].is_sparse
    assert model.head.is_sparse == (model.head.weight.numel() >= 1024)  # min_sparse_numel rule
    assert model.subsample[0].is_sparse
    _check_nm(model.subsample[0].current_mask(), 2, 4)
    assert model.subsample[0].current_mask().shape == (32, 80, 3)


def test_include_exclude():
    model = tiny_model()
    compress_(model, parse_recipe("int8", exclude=("head", "subsample.*")))
    assert type(model.head) is nn.Linear and type(model.subsample[0]) is nn.Conv1d
    assert isinstance(model.encoder.conformer_layers[0].self_attn.key, CompressedLinear)


@pytest.mark.parametrize("recipe", ["int8", "int4+2:4", "int2+2:4", "1:4"])
def test_input_gradient_finite_and_nonzero(recipe):
    model = compress_(tiny_model(), parse_recipe(recipe))
    wave = (0.1 * torch.randn(2, 6000)).requires_grad_(True)
    lengths = torch.tensor([6000, 4000])
    log_probs, _ = model(wave, lengths)
    log_probs[..., 1:].logsumexp(-1).sum().backward()
    assert torch.isfinite(wave.grad).all() and wave.grad.abs().sum() > 0


def test_parse_recipe():
    c = parse_recipe("int4+2:4")
    assert (c.bits, c.n, c.m) == (4, 2, 4)
    assert parse_recipe("dense") == CompressionConfig()
    assert parse_recipe("int2").int2_mode == "ternary"
    assert parse_recipe("int2f").int2_mode == "four-level"
    assert parse_recipe("2:4+int8").bits == 8
    assert parse_recipe("int4g64").group_size == 64
    assert parse_recipe("sp50").sparsity == 0.5
    for r in ["int8", "int4", "int2", "2:4", "1:4", "4:8", "int4+2:4", "int2+2:4", "int4+1:4",
              "int8+2:4", "int4g32+2:4", "sp50", "dense"]:
        assert recipe_name(parse_recipe(r)) == r
    for bad in ["int9", "5:4", "int4+int8", "2:4+1:4", "foo"]:
        with pytest.raises(ValueError):
            parse_recipe(bad)
    cfg = parse_recipe("int4+2:4", algorithm="ste", schedule=Gradual(0, 100, 10))
    assert CompressionConfig.from_dict(cfg.to_dict()) == cfg


def test_one_shot_later_step_is_dense_until_then():
    model = nn.Sequential(nn.Linear(32, 32))
    compress_(model, CompressionConfig(bits=8, n=2, m=4, schedule=OneShot(3)))
    assert model[0].current_mask() is None
    update_masks(model, 3)
    _check_nm(model[0].current_mask(), 2, 4)


def test_train_hook_with_real_loop_shape():
    """A few optimiser steps through the hooks keep N:M masks exact (ste + srste)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 8))
    cfg = CompressionConfig(bits=4, n=1, m=4, algorithm="ste", grad_mode="srste", min_sparse_numel=1)
    compress_(model, cfg)
    hooks = compression_hooks(model, total_steps=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(5):
        loss = model(torch.randn(4, 16)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        for h in hooks:
            h("before_step", model, step)
        opt.step()
        for h in hooks:
            h("after_step", model, step)
    for mod in (model[0], model[2]):
        _check_nm(mod.current_mask(), 1, 4)
    sd = copy.deepcopy(model.state_dict())
    assert any(k.endswith(".mask") for k in sd)


def test_state_dict_resume_keeps_masks_and_level():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(64, 32))
    cfg = CompressionConfig(bits=4, n=2, m=4, schedule=Gradual(0, 10, 2))
    compress_(a, cfg)
    for step in range(5):
        update_masks(a, step)
    b = compress_(nn.Sequential(nn.Linear(64, 32)), cfg)
    b.load_state_dict(a.state_dict())
    assert b[0].level == a[0].level and b[0].active_nm() == a[0].active_nm() == (3, 4)
    assert torch.equal(b[0].current_mask(), a[0].current_mask())


def test_compression_hooks_in_train_loop(tmp_path):
    """The real training loop with compression hooks: gradual 2:4, ste + srste, int4."""
    import numpy as np

    from arena.asr.train import TrainConfig, train
    from arena.data.batching import AudioSet

    rng = np.random.default_rng(0)
    data = AudioSet([f"u{i}" for i in range(4)], ["hello world", "yes", "no way", "call mom"],
                    [(rng.standard_normal(4000) * 2000).astype(np.int16) for _ in range(4)])
    model = tiny_model()
    cfg = parse_recipe("int4+2:4", algorithm="ste", grad_mode="srste",
                       schedule=Gradual(start=0, end=None, every=1))
    compress_(model, cfg)
    hooks = compression_hooks(model, cfg, total_steps=6)
    w0 = model.encoder.conformer_layers[0].ffn1.sequential[1].weight.detach().clone()
    train(model, data, TrainConfig(steps=6, batch_seconds=1.0, warmup=1, eval_every=0,
                                   checkpoint_every=100), tmp_path, hooks=hooks, progress=False,
          log=lambda s: None)
    lin = model.encoder.conformer_layers[0].ffn1.sequential[1]
    assert lin.active_nm() == (2, 4)
    _check_nm(lin.current_mask(), 2, 4)
    assert not torch.equal(lin.weight.detach(), w0)
