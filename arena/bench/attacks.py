"""`arena bench attacks`: our PGD against IBM ART's PGD, same model, budget, utterances, steps.

One run measures three things on the same utterances (length-sorted, cut into batches of
a fixed size with the scorer's own `length_batches`), the same model file and the same number
of PGD steps:

* ours   -- the PGD baseline submission (baselines/pgd, foolbox-based) through the scorer's
            real path: `arena.sandbox.run_attack_job`, i.e. job folder, bubblewrap sandbox,
            a fresh worker process that loads the model, then every batch. Its throughput
            counts the whole call (sandbox and start-up included); the same figure without
            the worker's start-up (spawn + imports + model load) is reported beside it.
* batch1 -- the same job with one utterance per batch.
* art    -- ART's `ProjectedGradientDescent` (numpy implementation, the one ART uses for any
            estimator that is not a PyTorch/TF classifier) through `ArenaSpeechRecognizer`
            (arena.bench.art_asr), in this process, model already loaded. Like ART's own
            speech recognizers it backpropagates into trainable weights (weight gradients
            computed every step and thrown away); `art-frozen` repeats the best ART batch
            size with the weights frozen, i.e. the same arithmetic as ours, and is reported
            beside it (`ratio_vs_art_frozen`).

Fair settings (both sides): the same steps; the same step size, rel * epsilon with the
baseline's rel (0.25 below 100 steps, 0.1 from 100 on); gradient normalised per utterance
(L2 norm under an SNR budget, sign under L-inf); projection onto the budget ball and a clip to
[-1, 1] after every step; padding kept at zero (ART: its `mask` argument). An SNR budget is a
per-utterance L2 radius r_b = ||x_b|| 10^(-SNR/20): ART takes `eps` as an array, and with a
dense (B, T) input and `eps` of shape (B, 1) its L2 step (eps_step * g/||g||) and projection
(rescaling to eps) are per utterance, i.e. exactly that ball; so ART gets eps = r (B, 1) and
eps_step = rel * r. (ART's variable-length object-array input is not used: ART projects each
1-D row of it with a per-sample norm, i.e. element by element, so it would not be an L2 ball.)
An L-inf budget maps directly: eps = epsilon, eps_step = rel * epsilon. Differences that
remain: ours starts at a random point in a quarter of the ball (ART's numpy PGD refuses
random starts for non-classifiers, so ART starts at x). Both outputs then go through the
harness's projection (Budget.project: projection, clip, int16 rounding) before the WER.

Each side runs at every batch size given and is reported at its best throughput. The
in-process parts (ART, transcription) use as many torch threads as the sandbox worker (one),
so on a CPU both sides get the same cores.
"""
from __future__ import annotations

import datetime
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from arena.asr.metrics import wer
from arena.asr.models import build_model, save_checkpoint
from arena.core import paths
from arena.core.audio import AudioBatch, pad_waves
from arena.core.budget import Budget, ThreatModel
from arena.data.batching import AudioSet, length_batches
from arena.data.corpus import ensure_split
from arena.sandbox import SandboxLimits, bwrap, run_attack_job
from arena.submissions.manifest import plugin_spec
from arena.zoo.registry import DENSE, available, load_model, resolve

__all__ = ["BenchData", "bench_attacks", "load_dev", "print_attacks", "device_name"]

SANDBOX_THREADS = 1  # arena.sandbox.jobs starts the worker with one intra-op thread
SAMPLE_RATE = 16_000
DEFAULTS = {"cpu": dict(n=16, steps=10, batch_sizes=(4, 8, 16)),
            "cuda": dict(n=512, steps=30, batch_sizes=(16, 64, 256, 512))}


@dataclass
class BenchData:
    ids: list[str]
    texts: list[str]
    waves: list[np.ndarray]  # float32 in [-1, 1], 16 kHz

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def durations(self) -> np.ndarray:
        return np.array([len(w) / SAMPLE_RATE for w in self.waves])


def load_dev(n: int, progress: bool = False) -> BenchData:
    """The first n utterances of the dev split (built first if missing)."""

    data = AudioSet.from_manifest(ensure_split("dev", progress=progress), limit=n)
    return BenchData(list(data.ids), list(data.texts), [data.wave(i) for i in range(len(data))])


def device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} cores)"


def _resolve_model(model, workdir: Path, seed: int, config: dict | None):
    """(model file, label, note). 'dense' falls back to a random model when the zoo has none."""

    note = None
    if model == DENSE and DENSE not in available():
        note = "no dense model in the zoo yet: random weights"
        model = "random"
    if model == "random":
        torch.manual_seed(seed)
        net = build_model("conformer-ctc", **(config or {}))
        path = workdir / "random.safetensors"
        save_checkpoint(net, path)
        label = "random conformer-ctc" + (f" {config}" if config else "")
        return path, label, note
    return resolve(model), str(model), note


def _pgd_submission(workdir: Path, steps: int, rel: float) -> Path:
    """A copy of baselines/pgd whose entry runs the baseline's PGD class with `steps` steps
    and step size `rel` (the baseline ties both to its effort profile)."""

    dst = workdir / "pgd-bench"
    shutil.copytree(paths.baselines_dir() / "pgd", dst,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (dst / "bench_pgd.py").write_text(
        '"""The baseline PGD with the benchmark\'s step count (arena bench attacks)."""\n'
        "import pgd\n\n"
        f"pgd.STEPS.update(quick={int(steps)}, full={int(steps)})\n"
        f"pgd.REL_STEPSIZE.update(quick={float(rel)!r}, full={float(rel)!r})\n\n\n"
        "class BenchPGD(pgd.PGD):\n    pass\n")
    (dst / "submission.toml").write_text(
        'name = "pgd-bench"\ntrack = "attack"\nentry = "bench_pgd:BenchPGD"\n'
        'authors = ["ASR Arena baselines"]\nversion = "1.0"\n'
        'description = "baselines/pgd with a fixed step count, for arena bench attacks"\n')
    return dst


def _batches(data: BenchData, batch_size: int, with_transcripts: bool = True):
    """[(indices, AudioBatch)]: length-sorted, `batch_size` utterances each (the scorer's
    length_batches with no padded-seconds cap)."""

    out = []
    for idx in length_batches(data.durations, max_seconds=float("inf"), max_batch=batch_size):
        wave, lengths = pad_waves([data.waves[i] for i in idx])
        out.append((idx, AudioBatch(ids=[data.ids[i] for i in idx], wave=wave, lengths=lengths,
                                    transcripts=[data.texts[i] for i in idx] if with_transcripts else None)))
    return out


def _transcribe_all(net, data_waves: list, device, batch_size: int = 16) -> list[str]:

    durations = np.array([len(w) for w in data_waves], dtype=float)
    hyps: list[str | None] = [None] * len(data_waves)
    with torch.no_grad():
        for idx in length_batches(durations, max_seconds=float("inf"), max_batch=batch_size):
            wave, lengths = pad_waves([data_waves[i] for i in idx])
            log_probs, out_lengths = net(wave.to(device), lengths.to(device))
            for i, h in zip(idx, net.tokenizer.greedy_decode(log_probs, out_lengths)):
                hyps[i] = h
    return hyps


def _adv_wer(net, data: BenchData, plan, advs, budget, device) -> float:
    """WER after the harness's projection (Budget.project) of each batch's output."""

    waves: list = [None] * len(data)
    for (idx, batch), adv in zip(plan, advs):
        projected = budget.project(batch.wave, torch.as_tensor(adv).cpu(), batch.lengths)
        for row, i in enumerate(idx):
            waves[i] = projected[row, : int(batch.lengths[row])].numpy()
    return wer(data.texts, _transcribe_all(net, waves, device))


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _run_ours(submission, model_path, data, budget, batch_size, device, seed, limits, net, audio_s,
              clean_wer):

    n = len(data)
    plan = _batches(data, batch_size)
    t0 = time.perf_counter()
    result = run_attack_job(plugin_spec(submission), model_path, [b for _, b in plan], budget.id, device=device,
                            limits=limits, trusted=False, seed=seed, effort="quick")
    seconds = time.perf_counter() - t0
    if result.status != "ok":
        raise RuntimeError(f"our PGD failed at batch size {batch_size}: {result.error}\n{result.log[-2000:]}")
    attack_s = sum(o.seconds for o in result.batches)
    adv_wer = _adv_wer(net, data, plan, [o.adv for o in result.batches], budget, device)
    return {"impl": "ours", "batch_size": batch_size, "batches": len(plan), "seconds": seconds,
            "startup_s": result.startup_s, "attack_s": attack_s, "job_wall_s": result.wall_s,
            "attack_utt_per_s": n / max(attack_s, 1e-9),
            "utt_per_s": n / seconds, "audio_s_per_s": audio_s / seconds,
            "utt_per_s_excl_startup": n / max(seconds - result.startup_s, 1e-9),
            "overhead_fraction": 1.0 - attack_s / seconds,
            "forward_calls": result.forward_calls, "backward_calls": result.backward_calls,
            "adv_wer": adv_wer, "delta_wer": adv_wer - clean_wer}


def _run_art(est, data, budget, batch_size, steps, rel, device, net, audio_s, clean_wer):
    from art.attacks.evasion import ProjectedGradientDescent


    plan = _batches(data, batch_size)
    inputs = []  # numpy batches, made before the clock starts (a data loader's job)
    for _, batch in plan:
        x = batch.wave.numpy().astype(np.float32)
        lengths = batch.lengths.numpy()
        mask = (np.arange(x.shape[1])[None, :] < lengths[:, None]).astype(np.float32)
        if budget.threat == ThreatModel.SNR:
            eps = budget.max_l2(batch.wave, batch.lengths).numpy().astype(np.float32)[:, None]
            kw = dict(norm=2, eps=eps, eps_step=(rel * eps).astype(np.float32))
        else:
            kw = dict(norm=np.inf, eps=float(budget.value), eps_step=rel * float(budget.value))
        inputs.append((x, lengths, mask, np.array(batch.transcripts), kw))
    advs = []
    _sync(device)
    t0 = time.perf_counter()
    for x, lengths, mask, y, kw in inputs:
        attack = ProjectedGradientDescent(est, max_iter=steps, targeted=False, num_random_init=0,
                                          batch_size=len(x), verbose=False, **kw)
        est.set_lengths(lengths)
        advs.append(attack.generate(x, y=y, mask=mask))
    seconds = time.perf_counter() - t0
    est.set_lengths(None)
    adv_wer = _adv_wer(net, data, plan, [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
                                         for a in advs], budget, device)
    n = len(data)
    return {"impl": "art", "batch_size": batch_size, "batches": len(plan), "seconds": seconds,
            "utt_per_s": n / seconds, "audio_s_per_s": audio_s / seconds,
            "adv_wer": adv_wer, "delta_wer": adv_wer - clean_wer}


def bench_attacks(device=None, n: int | None = None, steps: int | None = None, budget="snr30",
                  model="dense", batch_sizes=None, art: bool = True, data: BenchData | None = None,
                  model_config: dict | None = None, seed: int = 0, limits=None, log=None) -> dict:
    """Run the comparison (module docstring) and return one dict (see `--json`)."""

    log = log or (lambda *_: None)
    device = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    defaults = DEFAULTS["cuda" if device.startswith("cuda") else "cpu"]
    steps = int(steps or defaults["steps"])
    budget = Budget.parse(budget)
    if data is None:
        data = load_dev(int(n or defaults["n"]))
    elif n:
        data = BenchData(data.ids[:n], data.texts[:n], data.waves[:n])
    n = len(data)
    if n == 0:
        raise ValueError("no utterances to attack")
    sizes = sorted({min(int(b), n) for b in (batch_sizes or defaults["batch_sizes"]) if int(b) >= 1})
    if not sizes:
        raise ValueError("no valid batch size")
    rel = 0.1 if steps >= 100 else 0.25  # the baseline's REL_STEPSIZE for full / quick
    limits = limits or SandboxLimits(wall_s=4 * 3600, cpu_s=8 * 3600)
    bwrap.require_sandbox()
    audio_s = float(data.durations.sum())
    threads = torch.get_num_threads()
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    workdir = Path(tempfile.mkdtemp(prefix="arena-bench-"))
    try:
        torch.set_num_threads(SANDBOX_THREADS)
        model_path, model_label, note = _resolve_model(model, workdir, seed, model_config)
        net = load_model(model_path, device=device).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        submission = _pgd_submission(workdir, steps, rel)
        from arena.asr.metrics import wer

        clean_wer = wer(data.texts, _transcribe_all(net, data.waves, device))
        log(f"clean WER {clean_wer:.3f} on {n} utterances ({audio_s:.1f} s of audio)")

        runs = []
        for b in sorted(set(sizes) | {1}):
            log(f"ours: batch size {b} ...")
            runs.append(_run_ours(submission, model_path, data, budget, b, device, seed, limits, net,
                                  audio_s, clean_wer))
        art_version, art_error = None, None
        if art:
            try:
                import art as art_pkg

                from arena.bench.art_asr import ArenaSpeechRecognizer

                art_version = art_pkg.__version__
            except ImportError as e:
                art_error = f"ART is not installed ({e}); pip install -e '.[bench]'"
                log(art_error)
            if art_version:
                device_type = "gpu" if device.startswith("cuda") else "cpu"
                est = ArenaSpeechRecognizer(net, device_type=device_type)
                for b in sizes:
                    log(f"art: batch size {b} ...")
                    runs.append(_run_art(est, data, budget, b, steps, rel, device, net, audio_s, clean_wer))
                best = max((r for r in runs if r["impl"] == "art"), key=lambda r: r["utt_per_s"])
                log(f"art, weights frozen: batch size {best['batch_size']} ...")
                frozen = ArenaSpeechRecognizer(net, device_type=device_type, freeze_weights=True)
                run = _run_art(frozen, data, budget, best["batch_size"], steps, rel, device, net, audio_s,
                               clean_wer)
                runs.append(dict(run, impl="art-frozen"))
                for p in net.parameters():
                    p.requires_grad_(False)
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(workdir, ignore_errors=True)

    ours = max((r for r in runs if r["impl"] == "ours" and r["batch_size"] in sizes),
               key=lambda r: r["utt_per_s"])
    batch1 = next(r for r in runs if r["impl"] == "ours" and r["batch_size"] == 1)
    arts = [r for r in runs if r["impl"] == "art"]
    best_art = max(arts, key=lambda r: r["utt_per_s"]) if arts else None
    frozen = next((r for r in runs if r["impl"] == "art-frozen"), None)

    def ratio(a, b):
        return a / b if b else None

    result = {
        "device": device, "device_name": device_name(device),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": model_label, "model_params": sum(p.numel() for p in net.parameters()),
        "model_note": note, "budget": budget.id, "steps": steps, "rel_stepsize": rel,
        "n": n, "audio_seconds": audio_s, "batch_sizes_tried": sizes,
        "cpu_threads": SANDBOX_THREADS, "load_avg_before": load_before,
        "load_avg_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "clean_wer": clean_wer,
        "ours_batch_size": ours["batch_size"], "ours_utt_per_s": ours["utt_per_s"],
        "ours_audio_s_per_s": ours["audio_s_per_s"],
        "ours_utt_per_s_excl_startup": ours["utt_per_s_excl_startup"],
        "ours_startup_s": ours["startup_s"], "ours_overhead_fraction": ours["overhead_fraction"],
        "ours_attack_utt_per_s": ours["attack_utt_per_s"],
        "ours_adv_wer": ours["adv_wer"], "ours_delta_wer": ours["delta_wer"],
        "batch1_utt_per_s": batch1["utt_per_s"], "batch1_audio_s_per_s": batch1["audio_s_per_s"],
        "batch1_utt_per_s_excl_startup": batch1["utt_per_s_excl_startup"],
        "batch1_delta_wer": batch1["delta_wer"],
        "ratio_vs_batch1": ratio(ours["utt_per_s"], batch1["utt_per_s"]),
        "art_version": art_version, "art_error": art_error,
        "art_batch_size": best_art["batch_size"] if best_art else None,
        "art_utt_per_s": best_art["utt_per_s"] if best_art else None,
        "art_audio_s_per_s": best_art["audio_s_per_s"] if best_art else None,
        "art_adv_wer": best_art["adv_wer"] if best_art else None,
        "art_delta_wer": best_art["delta_wer"] if best_art else None,
        "ratio_vs_art": ratio(ours["utt_per_s"], best_art["utt_per_s"]) if best_art else None,
        "ratio_vs_art_excl_startup": (ratio(ours["utt_per_s_excl_startup"], best_art["utt_per_s"])
                                      if best_art else None),
        "ratio_vs_art_attack_only": (ratio(ours["attack_utt_per_s"], best_art["utt_per_s"])
                                     if best_art else None),
        "art_frozen_utt_per_s": frozen["utt_per_s"] if frozen else None,
        "art_frozen_delta_wer": frozen["delta_wer"] if frozen else None,
        "ratio_vs_art_frozen": ratio(ours["utt_per_s"], frozen["utt_per_s"]) if frozen else None,
        "ratio_vs_art_frozen_attack_only": (ratio(ours["attack_utt_per_s"], frozen["utt_per_s"])
                                            if frozen else None),
        "runs": runs,
    }
    return result


def print_attacks(r: dict) -> None:

    console = Console(width=None if sys.stdout.isatty() else 132)
    t = Table(title=f"PGD-{r['steps']} {r['budget']} on {r['n']} utterances ({r['audio_seconds']:.1f} s), "
                    f"{r['model']}, {r['device_name']}, {r['date']}")
    for c in ("attack", "batch", "utt/s", "audio s/s", "utt/s excl. start-up", "utt/s attack only",
              "start-up s", "ΔWER"):
        t.add_column(c, justify="left" if c == "attack" else "right")
    for run in r["runs"]:
        ours = run["impl"] == "ours"
        name = ("our PGD (sandbox)" if ours else f"ART {r['art_version']} PGD"
                + (", weights frozen" if run["impl"] == "art-frozen" else ""))
        t.add_row(name, str(run["batch_size"]), f"{run['utt_per_s']:.2f}", f"{run['audio_s_per_s']:.2f}",
                  f"{run['utt_per_s_excl_startup']:.2f}" if ours else "-",
                  f"{run['attack_utt_per_s']:.2f}" if ours else f"{run['utt_per_s']:.2f}",
                  f"{run['startup_s']:.2f}" if ours else "-", f"{run['delta_wer']:+.3f}")
    console.print(t)
    if r.get("model_note"):
        console.print(f"model: {r['model_note']}")
    console.print(f"clean WER {r['clean_wer']:.3f}; load average before/after "
                  f"{r['load_avg_before']} / {r['load_avg_after']}; torch threads {r['cpu_threads']}")
    if r["ratio_vs_art"] is not None:
        console.print(f"ours (batch {r['ours_batch_size']}) vs ART (batch {r['art_batch_size']}): "
                      f"{r['ratio_vs_art']:.2f}x ({r['ratio_vs_art_excl_startup']:.2f}x excluding "
                      f"start-up, {r['ratio_vs_art_attack_only']:.2f}x attack only); "
                      f"ΔWER {r['ours_delta_wer']:+.3f} vs {r['art_delta_wer']:+.3f}")
    if r.get("ratio_vs_art_frozen") is not None:
        console.print(f"ours vs ART with the weights frozen (same arithmetic as ours): "
                      f"{r['ratio_vs_art_frozen']:.2f}x ({r['ratio_vs_art_frozen_attack_only']:.2f}x "
                      f"attack only); ΔWER {r['art_frozen_delta_wer']:+.3f}")
    if r.get("art_error"):
        console.print(f"ART: {r['art_error']}")
    console.print(f"ours vs batch size 1: {r['ratio_vs_batch1']:.2f}x")
