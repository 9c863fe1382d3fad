import json

import numpy as np
import torch

from arena.asr.models import TINY_CONFIG as TINY
from arena.asr.models import build_model
from arena.asr.train import TrainConfig, _speed_perturb, distill_loss, lr_at, train
from arena.data.batching import AudioSet


def _toy_set(n=12):
    rng = np.random.default_rng(0)
    audio = [(rng.standard_normal(int(rng.integers(4000, 9000))) * 3000).astype(np.int16)
             for _ in range(n)]
    return AudioSet([f"u{i}" for i in range(n)], [["call mom", "play jazz", "stop"][i % 3]
                                                    for i in range(n)], audio)


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    data = _toy_set()
    cfg = TrainConfig(steps=6, batch_seconds=2.0, warmup=2, checkpoint_every=2, eval_every=0)
    torch.manual_seed(0)
    straight = build_model("conformer-ctc", **TINY)
    train(straight, data, cfg, tmp_path / "a", progress=False)

    torch.manual_seed(0)
    first = build_model("conformer-ctc", **TINY)

    def crash(event, model, step):  # killed during the fifth step, after the step-4 checkpoint
        if step == 4 and event == "before_step":
            raise KeyboardInterrupt

    try:
        train(first, data, cfg, tmp_path / "b", progress=False, hooks=[crash])
    except KeyboardInterrupt:
        pass
    # a new process would build a fresh model and resume from the checkpoint
    torch.manual_seed(123)
    resumed = build_model("conformer-ctc", **TINY)
    logs = []
    state = train(resumed, data, cfg, tmp_path / "b", progress=False, log=logs.append)
    assert state.step == 6 and any("resumed" in line and "step 4" in line for line in logs)
    assert torch.allclose(_params(straight), _params(resumed), atol=1e-6)
    records = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in records)


def test_training_reduces_loss(tmp_path):
    data = _toy_set(6)
    torch.manual_seed(0)
    model = build_model("conformer-ctc", **TINY)
    cfg = TrainConfig(steps=40, batch_seconds=4.0, warmup=5, lr=3e-3, noise_prob=0.0,
                      eval_every=0, checkpoint_every=40)
    state = train(model, data, cfg, tmp_path, progress=False)
    losses = [h["loss"] for h in state.history]
    assert losses[-1] < 0.7 * losses[0]


def test_lr_schedule():
    cfg = TrainConfig(steps=100, warmup=10, lr=1.0, final_lr_fraction=0.1)
    assert lr_at(cfg, 0) == 0.1 and lr_at(cfg, 9) == 1.0
    assert abs(lr_at(cfg, 100) - 0.1) < 1e-9 and lr_at(cfg, 50) < lr_at(cfg, 20)


def test_speed_perturbation_shifts_pitch_and_length_and_keeps_padding_silent():
    sr = 16000
    t = torch.arange(sr) / sr
    tone = torch.sin(2 * torch.pi * 500 * t)
    wave = torch.stack([tone, torch.cat([tone[: sr // 2], torch.zeros(sr // 2)])])
    lengths = torch.tensor([sr, sr // 2])
    fast, fast_len = _speed_perturb(wave, lengths, 1.1)
    assert fast_len.tolist() == [14546, 7273] and fast.shape[1] == 14546
    spectrum = torch.fft.rfft(fast[0, : fast_len[0]]).abs()
    peak_hz = spectrum.argmax().item() * sr / int(fast_len[0])
    assert abs(peak_hz - 550) < 3  # 10% faster: 500 Hz -> 550 Hz
    assert fast[1, fast_len[1] + 40:].abs().max() < 1e-3  # padding stays silence
    same, same_len = _speed_perturb(wave, lengths, 1.0)
    assert same is wave and same_len is lengths


def test_distill_loss_is_zero_for_the_teacher_itself_and_ignores_padding():
    torch.manual_seed(0)
    teacher = torch.randn(2, 7, 5).log_softmax(-1)
    lengths = torch.tensor([7, 4])
    assert distill_loss(teacher, teacher, lengths).abs() < 1e-6
    student = torch.randn(2, 7, 5).log_softmax(-1)
    assert distill_loss(student, teacher, lengths) > 0.05
    # frames past an utterance's length do not count
    padded = student.clone()
    padded[1, 4:] = torch.randn(3, 5).log_softmax(-1)
    assert torch.isclose(distill_loss(padded, teacher, lengths), distill_loss(student, teacher, lengths))


def test_training_with_a_teacher_moves_the_student_towards_it(tmp_path):
    data = _toy_set(6)
    torch.manual_seed(0)
    teacher = build_model("conformer-ctc", **TINY).eval()
    student = build_model("conformer-ctc", **TINY)
    wave = torch.from_numpy(data.wave(0).astype(np.float32))[None]
    lengths = torch.tensor([wave.shape[1]])

    def gap():
        with torch.no_grad():
            s, n = student.eval()(wave, lengths)
            t, _ = teacher(wave, lengths)
        return float(distill_loss(s, t, n))

    before = gap()
    cfg = TrainConfig(steps=15, batch_seconds=4.0, warmup=3, lr=3e-3, noise_prob=0.0,
                      distill_weight=50.0, eval_every=0, checkpoint_every=15, speed_factors=())
    train(student, data, cfg, tmp_path, progress=False, teacher=teacher)
    assert gap() < 0.5 * before   # 15 steps: 0.32 -> 0.06 measured
