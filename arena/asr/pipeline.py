"""Training the default model on the built-in corpus (checkpoints, resume, warm start)."""
from __future__ import annotations

from pathlib import Path

import torch

from arena.asr.models import build_model, read_metadata, save_checkpoint
from arena.asr.train import TrainConfig, train
from arena.core import paths
from arena.core.device import default_device
from arena.data.batching import AudioSet
from arena.data.corpus import DEFAULT_SEED, ensure_split, seed_tag


def train_default(out_dir=None, steps=3000, batch_seconds=60.0, lr=1.5e-3, device=None,
                  train_size=None, model_config=None, arch="conformer-ctc", resume=True,
                  export=None, progress=True, init=None, warmup=300):
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
