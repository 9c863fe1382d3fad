"""`arena bench attacks` and the attack hot loop: the ART adapter's gradient, the PGD
baseline's host round trips, a small real run (real sandbox, real ART) through the CLI, and
the FLOP-utilisation measurement. Tiny random models; no timing assertions beyond "> 0"."""
import collections
import json
import math
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.utils._python_dispatch import TorchDispatchMode

from arena import AudioBatch, Budget, TargetModel
from arena.asr.models import TINY_CONFIG

TINY = TINY_CONFIG
TINY_W2V = dict(encoder_embed_dim=32, encoder_num_layers=1, encoder_num_heads=2,
                encoder_ff_interm_features=64, encoder_pos_conv_kernel=16, encoder_pos_conv_groups=4,
                extractor_conv_layer_config=[(16, 10, 5), (16, 3, 2), (16, 2, 2)])
TEXTS = ["call mom", "play some music", "hi there", "stop"]
LENGTHS = [6000, 9000, 4000, 7000]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def net(tiny_net):
    model = tiny_net
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _waves():
    rng = np.random.default_rng(1)
    out = []
    for i, n in enumerate(LENGTHS):
        t = np.arange(n) / 16000
        out.append((0.3 * np.sin(2 * math.pi * (220 + 70 * i) * t)
                    + 0.05 * rng.standard_normal(n)).astype(np.float32))
    return out


def _padded(k=3):
    from arena.core.audio import pad_waves

    wave, lengths = pad_waves(_waves()[:k])
    return wave, lengths, TEXTS[:k]


# ---------------------------------------------------------------- the hot loop
def test_conformer_forward_matches_torchaudio_encoder_forward(net):
    """ConformerCTC runs the encoder layers itself (no max(lengths).item()); on rows without
    padding (where torchaudio's unmasked convolution module is exact) it gives the same
    output as torchaudio's Conformer.forward."""
    from arena.core.audio import pad_waves

    waves = _waves()[:3]
    n = min(len(w) for w in waves)
    wave, lengths = pad_waves([w[:n] for w in waves])
    with torch.no_grad():
        ours, out_lengths = net(wave, lengths)
        feats, frames = net.frontend(wave, lengths)
        x = net.subsample(feats)
        for _ in range(2):
            frames = (frames - 1) // 2 + 1
        frames = frames.clamp(min=1, max=x.shape[-1])
        x, frames = net.encoder(x.transpose(1, 2), frames)  # torchaudio's forward
        logits = net.head(x).float()
        up = net.config["ctc_upsample"]
        ref = torch.log_softmax(logits.view(logits.shape[0], logits.shape[1] * up, -1), -1)
    assert torch.equal(out_lengths, frames * up)
    torch.testing.assert_close(ours, ref)


class _HostSyncs(TorchDispatchMode):
    """Counts the ops that read a tensor value on the host (.item(), bool(), int(), ...):
    on a GPU each one waits for the device."""

    def __init__(self):
        super().__init__()
        self.count = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func.overloadpacket) in ("aten._local_scalar_dense", "aten.nonzero", "aten.is_nonzero"):
            self.count[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("budget_id", ["snr30", "linf0.003"])
def test_pgd_baseline_host_syncs_do_not_grow_with_steps(budget_id, net):
    from tests.test_baselines import load_plugin

    wave, lengths, texts = _padded()
    batch = AudioBatch(ids=["a", "b", "c"], wave=wave, lengths=lengths, transcripts=texts)
    counts = {}
    for steps in (2, 5):
        plugin = load_plugin("pgd", effort="quick")
        type(plugin).run.__globals__["STEPS"]["quick"] = steps  # the plugin's own module
        try:
            model = TargetModel(net)
            with _HostSyncs() as probe:
                plugin.run(batch, model, Budget.parse(budget_id))
        finally:
            type(plugin).run.__globals__["STEPS"]["quick"] = 10
        assert model.backward_calls == steps
        assert model.forward_calls == steps  # no forward beyond the steps' own (frame counts)
        counts[steps] = sum(probe.count.values())
    assert counts[2] == counts[5], f"host reads grow with the step count: {counts}"


# ---------------------------------------------------------------- the ART adapter
def test_art_adapter_gradient_matches_autograd(net):
    pytest.importorskip("art")
    from arena.bench.art_asr import ArenaSpeechRecognizer

    wave, lengths, texts = _padded()
    est = ArenaSpeechRecognizer(net, device_type="cpu")  # weights trainable, as in ART
    reference = TargetModel(net).gradient(wave, lengths, texts).numpy()
    assert np.abs(reference).max() > 0
    est.set_lengths(lengths.numpy())  # dense padded batch, true lengths out of band
    grad = est.loss_gradient(wave.numpy(), np.array(texts))
    assert grad.shape == wave.shape and grad.dtype == np.float32
    np.testing.assert_allclose(grad, reference, rtol=1e-5, atol=1e-6)
    est.set_lengths(None)
    rows = np.empty(3, dtype=object)  # ART's variable-length format
    rows[:] = [wave[i, : int(n)].numpy() for i, n in enumerate(lengths)]
    grads = est.loss_gradient(rows, np.array(texts))
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(grads[i], reference[i, : int(n)], rtol=1e-5, atol=1e-6)
    losses = est.compute_loss(rows, np.array(texts))
    torch.testing.assert_close(torch.from_numpy(losses), TargetModel(net).loss(wave, lengths, texts))
    assert list(est.predict(rows)) == TargetModel(net).transcribe(wave, lengths)
    frozen = ArenaSpeechRecognizer(net, device_type="cpu", freeze_weights=True)
    frozen.set_lengths(lengths.numpy())
    np.testing.assert_allclose(frozen.loss_gradient(wave.numpy(), np.array(texts)), reference,
                               rtol=1e-5, atol=1e-6)
    assert not any(p.requires_grad for p in net.parameters())


def test_art_pgd_stays_in_the_per_utterance_l2_ball(net):
    pytest.importorskip("art")
    from art.attacks.evasion import ProjectedGradientDescent

    from arena.bench.art_asr import ArenaSpeechRecognizer

    wave, lengths, texts = _padded()
    budget = Budget.parse("snr30")
    eps = budget.max_l2(wave, lengths).numpy()[:, None]
    mask = (np.arange(wave.shape[1])[None, :] < lengths.numpy()[:, None]).astype(np.float32)
    est = ArenaSpeechRecognizer(net)
    est.set_lengths(lengths.numpy())
    attack = ProjectedGradientDescent(est, norm=2, eps=eps, eps_step=0.5 * eps, max_iter=3,
                                      batch_size=3, verbose=False)
    adv = attack.generate(wave.numpy(), y=np.array(texts), mask=mask)
    delta = adv - wave.numpy()
    assert (delta[mask == 0] == 0).all()
    ratio = np.linalg.norm(delta, axis=1) / eps[:, 0]
    assert (ratio <= 1 + 1e-5).all() and (ratio > 0.9).all()  # 3 steps of half the radius


# ---------------------------------------------------------------- the benchmark
def test_dense_falls_back_to_random_weights_without_a_zoo(tmp_path, monkeypatch):
    from arena.bench.attacks import _resolve_model
    from arena.zoo.registry import load_model

    monkeypatch.setenv("ARENA_ZOO", str(tmp_path / "zoo"))
    path, label, note = _resolve_model("dense", tmp_path, seed=0, config=TINY)
    assert "random" in label and "random" in note
    assert load_model(path).config["d_model"] == 32


def test_bench_attacks_cli_small_real_run(tmp_path, monkeypatch, net):
    """Real sandbox, real ART, through `arena bench attacks --json`."""
    pytest.importorskip("art")
    from arena.asr.models import save_checkpoint
    from arena.bench import attacks
    from arena.cli import main
    from arena.sandbox import bwrap

    if bwrap.probe():
        pytest.skip(f"no sandbox here: {bwrap.probe()}")
    data = attacks.BenchData([f"u{i}" for i in range(4)], TEXTS, _waves())
    monkeypatch.setattr(attacks, "load_dev", lambda n, progress=False: attacks.BenchData(
        data.ids[:n], data.texts[:n], data.waves[:n]))
    monkeypatch.setitem(attacks.DEFAULTS["cpu"], "repeats", 2)
    model_path = tmp_path / "tiny.safetensors"
    save_checkpoint(net, model_path)
    res = CliRunner().invoke(main, ["bench", "attacks", "--device", "cpu", "--json", "--n", "4",
                                    "--steps", "2", "--budget", "snr30", "--model", str(model_path),
                                    "--batch-sizes", "2,4"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    r = json.loads(res.output)
    for key in ("ours_utt_per_s", "art_utt_per_s", "ratio_vs_art", "batch1_utt_per_s",
                "ours_delta_wer", "art_delta_wer", "ours_batch_size", "art_batch_size",
                "device_name", "date", "ours_audio_s_per_s", "art_audio_s_per_s",
                "ours_utt_per_s_excl_startup", "ratio_vs_batch1"):
        assert key in r, key
    assert r["n"] == 4 and r["steps"] == 2 and r["budget"] == "snr30" and r["device"] == "cpu"
    for key in ("ours_utt_per_s", "art_utt_per_s", "batch1_utt_per_s", "ours_audio_s_per_s",
                "art_audio_s_per_s", "ours_utt_per_s_excl_startup"):
        assert r[key] > 0, key
    assert r["ratio_vs_art"] == pytest.approx(r["ours_utt_per_s"] / r["art_utt_per_s"])
    assert r["ratio_vs_batch1"] == pytest.approx(r["ours_utt_per_s"] / r["batch1_utt_per_s"])
    assert r["ours_batch_size"] in (2, 4) and r["art_batch_size"] in (2, 4)
    assert sorted((x["impl"], x["batch_size"]) for x in r["runs"]) == [
        ("art", 2), ("art", 4), ("art-frozen", 2), ("art-frozen", 4), ("ours", 1), ("ours", 2), ("ours", 4)]
    assert r["art_frozen_batch_size"] in (2, 4)
    assert r["ratio_vs_art_frozen"] == pytest.approx(r["ours_utt_per_s"] / r["art_frozen_utt_per_s"])
    assert r["repeats"] == 2 and r["art_process"] == "a fresh fork per run"
    for run in r["runs"]:
        assert -1.0 <= run["delta_wer"] <= 10.0
        assert len(run["rounds_s"]) == 2 and run["seconds"] == min(run["rounds_s"])  # fastest round
        if run["impl"] == "ours":  # every batch attacked, each step one forward + one backward
            assert run["backward_calls"] == run["forward_calls"] == run["batches"] * 2
            assert run["attack_cpu_s"] > 0
            if run["cpu_s"] is not None:  # the sandbox measured the job's CPU (start-up included)
                assert run["attack_cpu_s"] < run["cpu_s"]
        else:
            assert run["cpu_s"] > 0
    assert r["ratio_vs_art_frozen_attack_only_cpu"] > 0
    best = max((x for x in r["runs"] if x["impl"] == "art"), key=lambda x: x["utt_per_s"])
    assert r["art_delta_wer"] == best["delta_wer"]


def test_art_runs_in_a_fresh_fork_and_its_errors_come_back():
    from arena.bench.attacks import _in_fresh_fork

    seen = []
    pid = _in_fresh_fork(lambda: seen.append(1) or os.getpid())
    assert pid != os.getpid() and not seen   # another process: nothing it did is here
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        _in_fresh_fork(lambda: 1 / 0)
    with pytest.raises(RuntimeError, match="died"):
        _in_fresh_fork(os._exit, 3)


def test_mfu_counts_flops_and_reports_no_peak_on_cpu():
    from arena.bench.mfu import bench_mfu

    rows = bench_mfu(device="cpu", batch=1, seconds=0.5, steps=1, default_model="random",
                     configs={"default": TINY, "wav2vec2-base": TINY_W2V})
    assert [r["kind"] for r in rows] == ["default", "wav2vec2-base"]
    for r in rows:
        assert r["gflop_per_step"] > 0 and r["step_ms"] > 0 and r["tflops"] > 0
        assert r["fraction_of_peak"] is None and r["dtype"] == "float32"


@pytest.mark.gpu
def test_bench_on_gpu_small(tmp_path, net):
    pytest.importorskip("art")
    from arena.bench.attacks import BenchData, bench_attacks
    from arena.bench.mfu import bench_mfu

    data = BenchData([f"u{i}" for i in range(4)], TEXTS, _waves())
    r = bench_attacks(device="cuda", steps=2, model="random", model_config=TINY, batch_sizes=[4], data=data)
    assert r["ours_utt_per_s"] > 0 and r["art_utt_per_s"] > 0 and "device_name" in r
    rows = bench_mfu(device="cuda", batch=2, seconds=1.0, steps=2, default_model="random",
                     configs={"default": TINY, "wav2vec2-base": TINY_W2V})
    assert all(row["dtype"] == "bf16-autocast" and row["tflops"] > 0 for row in rows)
