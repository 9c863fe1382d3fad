"""Building the zoo: compression-aware fine-tuning from the dense checkpoint, packed export,
evaluation, and a model card per variant (`arena/zoo/cards/<stem>.json`)."""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from arena.asr.evaluate import evaluate
from arena.asr.models import build_model, load_checkpoint, read_metadata
from arena.asr.train import TrainConfig, train
from arena.compress.modules import compress_, compression_hooks
from arena.compress.packed import export_packed, load_packed, size_report
from arena.compress.recipes import parse_recipe
from arena.core import paths
from arena.core.device import default_device
from arena.core.hashing import sha256_file
from arena.data.batching import AudioSet
from arena.data.corpus import DEFAULT_SEED, ensure_split, seed_tag
from arena.zoo.registry import available, file_stem, load_model, zoo_path


@dataclass(frozen=True)
class FineTune:
    """How a zoo entry was fine-tuned: `arena compress --recipe R` with no options rebuilds
    the shipped entry R with these (the numbers its card records)."""
    steps: int
    distill: bool = False
    lr: float = 3e-4


# the shipped zoo; other recipes fine-tune with OTHER_RECIPES
ZOO_FINE_TUNING = {"int8": FineTune(0), "int4": FineTune(100), "int2": FineTune(250),
                   "2:4": FineTune(200), "1:4": FineTune(250),
                   "int4+2:4": FineTune(8000, distill=True, lr=1.2e-3)}
OTHER_RECIPES = FineTune(300)


def fine_tuning_for(recipe: str, steps: int | None = None, distill: bool | None = None,
                    lr: float | None = None) -> FineTune:
    """The recipe's recorded fine-tuning, with any option the user gave instead."""
    base = ZOO_FINE_TUNING.get(recipe, OTHER_RECIPES)
    return FineTune(base.steps if steps is None else steps,
                    base.distill if distill is None else distill, base.lr if lr is None else lr)


def _card_path(name: str) -> Path:
    return paths.zoo_dir() / "cards" / f"{file_stem(name)}.json"


def read_card(name: str) -> dict | None:
    p = _card_path(name)
    return json.loads(p.read_text()) if p.is_file() else None


def write_card(name: str, card: dict) -> Path:
    p = _card_path(name)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return p


def compression_config_for(recipe: str, fine_tune: bool):
    """Recipe -> config. Fine-tuning N:M recomputes the mask every step from the dense
    weights with SR-STE gradients (as in sparse-refined straight-through training);
    post-training is one-shot magnitude."""
    cfg = parse_recipe(recipe)
    if fine_tune and cfg.n is not None:
        cfg = replace(cfg, algorithm="ste", grad_mode="srste")
    return cfg


def build_variant(recipe: str, *, fine_tune: FineTune | None = None, device: str = "cpu",
                  eval_split: str = "test", out_path=None, batch_seconds: float = 40.0,
                  progress: bool = True, log=print) -> dict:
    """Compress the dense model with `recipe`, fine-tune it (default: the recipe's recorded
    fine-tuning; 0 steps = post-training), write the packed file (zoo by default) and return
    its card (also written for the zoo). With distillation the fine-tuning also matches the
    dense model's frame posteriors."""
    fine_tune = fine_tune or fine_tuning_for(recipe)
    steps, lr, distill = fine_tune.steps, fine_tune.lr, fine_tune.distill
    t0 = time.time()
    model = load_checkpoint(zoo_path("dense"), device=device)
    cfg = compression_config_for(recipe, fine_tune=steps > 0)
    compress_(model, cfg)
    if steps > 0:
        train_set = AudioSet.from_manifest(ensure_split("train"), progress=progress)
        hooks = compression_hooks(model, cfg, total_steps=steps)
        tcfg = TrainConfig(steps=steps, batch_seconds=batch_seconds, lr=lr, warmup=min(50, steps // 5),
                           device=device, eval_every=0, checkpoint_every=50, noise_prob=0.3)
        # the run folder is keyed by the dense weights and step count: resuming must never
        # pick up a fine-tuning run that started from another dense model
        dense_tag = sha256_file(zoo_path("dense"))[:10]
        kd = "-kd" if distill else ""
        lr_tag = "" if lr == 3e-4 else f"-lr{lr:g}"
        run_dir = paths.runs_dir() / f"compress-{file_stem(recipe)}-{steps}{kd}{lr_tag}-{dense_tag}"
        teacher = load_checkpoint(zoo_path("dense"), device=device) if distill else None
        train(model, train_set, tcfg, run_dir, hooks=hooks, progress=progress, log=log,
              teacher=teacher)
    model.eval()
    out = Path(out_path) if out_path else zoo_path(recipe)
    out.parent.mkdir(parents=True, exist_ok=True)
    export_packed(model.cpu(), out, name=recipe, recipe=recipe,
                  extra={"fine_tuned": steps > 0, "fine_tune_steps": steps})
    deployed = load_packed(out, build_model, device=device)
    data = AudioSet.from_manifest(ensure_split(eval_split, progress=progress))
    res = evaluate(deployed, data, device=device)
    dense_card = read_card("dense") or {}
    dense_wer = dense_card.get(f"{eval_split}_wer")
    sizes = size_report(out, build_model)
    card = dict(name=recipe, recipe=recipe, bits=cfg.bits,
                sparsity=None if cfg.n is None else f"{cfg.n}:{cfg.m}",
                int2_mode=cfg.int2_mode if cfg.bits == 2 else None,
                fine_tuned=steps > 0, fine_tune_steps=steps, fine_tune_lr=lr if steps > 0 else None,
                distilled=distill and steps > 0, bytes=out.stat().st_size,
                size_ratio=sizes.get("ratio_fp32"), size_ratio_bf16=sizes.get("ratio_bf16"),
                **{f"{eval_split}_wer": round(res.wer, 5), f"{eval_split}_cer": round(res.cer, 5)},
                rel_wer_regression=None if not dense_wer else round((res.wer - dense_wer) / dense_wer, 4),
                eval_utterances=res.n_utterances, build_seconds=round(time.time() - t0, 1),
                device=device, torch=torch.__version__)
    if out_path is None:
        write_card(recipe, card)
    return card


def evaluate_named(model_name: str, split: str, limit=None, device=None, progress=True) -> dict:
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


def refresh_cards(device=None, progress=True) -> list[dict]:
    """Re-evaluate every zoo model on the test split (dense on dev too) and update the
    accuracy fields of its card: what to run after the model code or the corpus changes
    while the weights stay the same."""
    cards = []
    dense_wer = None
    for name in available():
        card = read_card(name) or {"name": name}
        splits = ("dev", "test") if name == "dense" else ("test",)
        for split in splits:
            res = evaluate_named(name, split, device=device, progress=progress)
            card[f"{split}_wer"], card[f"{split}_cer"] = res["wer"], res["cer"]
            card[f"{split}_utterances" if name == "dense" else "eval_utterances"] = res["n_utterances"]
        if name == "dense":
            dense_wer = card["test_wer"]
        card["rel_wer_regression"] = (0.0 if name == "dense" else
                                      round((card["test_wer"] - dense_wer) / dense_wer, 4) if dense_wer
                                      else None)
        write_card(name, card)
        cards.append(card)
    return cards
