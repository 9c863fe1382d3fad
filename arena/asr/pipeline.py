"""Glue between the corpus, the models and the CLI: train the default model, evaluate by name."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from arena import paths


def default_device(device: str | None = None) -> str:
    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def train_default(out_dir=None, steps=3000, batch_seconds=60.0, lr=1.5e-3, device=None,
                  train_size=None, model_config=None, arch="conformer-ctc", resume=True,
                  export=None, progress=True):
    from arena.asr.models import build_model, save_checkpoint
    from arena.asr.train import TrainConfig, train
    from arena.data.batching import AudioSet
    from arena.data.corpus import DEFAULT_SEED, ensure_split, seed_tag

    device = default_device(device)
    out_dir = Path(out_dir or paths.runs_dir() / "dense")
    train_set = AudioSet.from_manifest(ensure_split("train", DEFAULT_SEED), limit=train_size,
                                       progress=progress)
    dev_set = AudioSet.from_manifest(ensure_split("dev", DEFAULT_SEED), limit=200)
    model = build_model(arch, **(model_config or {}))
    cfg = TrainConfig(steps=steps, batch_seconds=batch_seconds, lr=lr, device=device,
                      amp=device.startswith("cuda"))
    print(f"training {arch} ({model.num_parameters():,} parameters) on {len(train_set)} "
          f"utterances, {steps} steps, device {device}")
    state = train(model, train_set, cfg, out_dir, dev=dev_set, resume=resume, progress=progress)
    final = Path(export) if export else out_dir / "final.safetensors"
    save_checkpoint(model.cpu(), final, extra={
        "train_steps": state.step, "data_seed_tag": seed_tag(DEFAULT_SEED),
        "train_utterances": len(train_set), "parameters": model.num_parameters()})
    print(f"wrote {final}")
    return final


def evaluate_named(model_name: str, split: str, limit=None, device=None, progress=True) -> dict:
    from arena.asr.evaluate import evaluate
    from arena.data.batching import AudioSet
    from arena.data.corpus import ensure_split
    from arena.models_io import load_model

    device = default_device(device)
    manifest = ensure_split(split, progress=progress)
    data = AudioSet.from_manifest(manifest, limit=limit)
    model = load_model(model_name, device=device)
    res = evaluate(model, data, device=device)
    return {"model": model_name, "split": split, "wer": round(res.wer, 5), "cer": round(res.cer, 5),
            "n_utterances": res.n_utterances, "audio_seconds": round(res.audio_seconds, 2),
            "seconds": round(res.seconds, 2), "device": device}
