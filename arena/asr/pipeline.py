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
                  export=None, progress=True, init=None, warmup=300):
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
    if init:
        warm_start(model, init)
    cfg = TrainConfig(steps=steps, batch_seconds=batch_seconds, lr=lr, device=device,
                      amp=device.startswith("cuda"), warmup=warmup)
    print(f"training {arch} ({model.num_parameters():,} parameters) on {len(train_set)} "
          f"utterances, {steps} steps, device {device}")
    state = train(model, train_set, cfg, out_dir, dev=dev_set, resume=resume, progress=progress)
    final = Path(export) if export else out_dir / "final.safetensors"
    # a warm-started model's card counts the steps behind its initial weights too
    prior_steps = _recorded_steps(init) if init else 0
    save_checkpoint(model.cpu(), final, extra={
        "train_steps": prior_steps + state.step, "data_seed_tag": seed_tag(DEFAULT_SEED),
        "train_utterances": len(train_set), "parameters": model.num_parameters()})
    print(f"wrote {final}")
    return final


def _recorded_steps(path) -> int:
    from arena.asr.models import read_metadata

    if str(path).endswith(".safetensors"):
        return int(read_metadata(path).get("train_steps", 0))
    return int(torch.load(path, map_location="cpu", weights_only=False).get("step", 0))


def warm_start(model, path) -> None:
    """Initialise from another run's weights (a state.pt or safetensors file). A CTC head
    with fewer output frames per encoder frame is repeated to fill the larger one."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=False)["model"]
    own = model.state_dict()
    for k, v in state.items():
        if k in own and own[k].shape != v.shape and k.startswith("head.") and \
                own[k].shape[0] % v.shape[0] == 0:
            state[k] = v.repeat(own[k].shape[0] // v.shape[0], *([1] * (v.ndim - 1)))
    model.load_state_dict(state)
    print(f"initialised from {path}")


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


def publish_dense(checkpoint, device=None, progress=True) -> dict:
    """Copy a trained checkpoint into the zoo as `dense`, evaluate it on dev and test and
    write its model card (arena/zoo/cards/dense.json)."""
    import shutil

    from arena.asr.models import read_metadata
    from arena.compress.zoo import write_card
    from arena.data.corpus import DEFAULT_SEED, seed_tag
    from arena.models_io import zoo_path

    dest = zoo_path("dense")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint, dest)
    meta = read_metadata(dest)
    card = dict(name="dense", recipe="dense", arch=meta.get("arch"),
                config=json.loads(meta.get("config", "{}")),
                parameters=int(meta.get("parameters", 0)), train_steps=int(meta.get("train_steps", 0)),
                train_utterances=int(meta.get("train_utterances", 0)),
                data_seed_tag=seed_tag(DEFAULT_SEED), bits=None, sparsity=None, fine_tuned=None,
                bytes=dest.stat().st_size, size_ratio=1.0, rel_wer_regression=0.0)
    for split in ("dev", "test"):
        res = evaluate_named("dense", split, device=device, progress=progress)
        card[f"{split}_wer"], card[f"{split}_cer"] = res["wer"], res["cer"]
        card[f"{split}_utterances"] = res["n_utterances"]
    write_card("dense", card)
    return card
