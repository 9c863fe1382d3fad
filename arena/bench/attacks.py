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
            (arena.bench.art_asr), model already loaded; on a CPU each run in a fresh fork
            of this process (`art_process`, `_in_fresh_fork`), which like our job has never
            run the batches' shapes; on a GPU in this process. Like ART's own speech
            recognizers it backpropagates into trainable weights (weight gradients computed
            every step and thrown away); `art-frozen` is the same with the weights
            frozen, i.e. the same arithmetic as ours (one forward and one backward to the
            input per step), and is reported beside it (`ratio_vs_art_frozen`).

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

Timing: the whole set of runs is repeated `repeats` times (rounds; 3 on a CPU), each round
going through the batch sizes with ours, ART and ART-frozen back to back, so that a burst of
load from other processes hits both sides alike; every time reported is the fastest of its
rounds (timeit's rule: noise only ever adds time), and `rounds_s` lists them all. ΔWER comes
from the first round (every round computes the same adversarial audio).
"""
from __future__ import annotations

import datetime
import os
import pickle
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
from arena.core.audio import SAMPLE_RATE, AudioBatch, pad_waves
from arena.core.budget import Budget, ThreatModel
from arena.data.batching import AudioSet, length_batches
from arena.data.corpus import ensure_split
from arena.sandbox import SandboxLimits, bwrap, run_attack_job
from arena.submissions.manifest import plugin_spec
from arena.zoo.registry import DENSE, available, load_model, resolve

__all__ = ["BenchData", "bench_attacks", "load_dev", "print_attacks", "device_name"]

SANDBOX_THREADS = 1  # arena.sandbox.jobs starts the worker with one intra-op thread
DEFAULTS = {"cpu": dict(n=16, steps=10, batch_sizes=(4, 8, 16), repeats=3),
            "cuda": dict(n=512, steps=30, batch_sizes=(16, 64, 256, 512), repeats=1)}


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


_CPU_TAG = "arena-bench-cpu-s"


def _pgd_submission(workdir: Path, steps: int, rel: float) -> Path:
    """A copy of baselines/pgd whose entry runs the baseline's PGD class with `steps` steps
    and step size `rel` (the baseline ties both to its effort profile)."""
    dst = workdir / "pgd-bench"
    shutil.copytree(paths.baselines_dir() / "pgd", dst,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (dst / "bench_pgd.py").write_text(
        '"""The baseline PGD with the benchmark\'s step count (arena bench attacks); prints the\n'
        'CPU seconds of each run() call to stderr for the benchmark to read."""\n'
        "import sys\nimport time\n\nimport pgd\n\n"
        f"pgd.STEPS.update(quick={int(steps)}, full={int(steps)})\n"
        f"pgd.REL_STEPSIZE.update(quick={float(rel)!r}, full={float(rel)!r})\n\n\n"
        "class BenchPGD(pgd.PGD):\n"
        "    def run(self, batch, model, budget):\n"
        "        t = time.process_time()\n"
        "        adv = super().run(batch, model, budget)\n"
        f"        print('{_CPU_TAG}', time.process_time() - t, file=sys.stderr, flush=True)\n"
        "        return adv\n")
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


def _run_ours(submission, model_path, plan, budget, device, seed, limits) -> tuple[dict, list]:
    """One sandboxed job over `plan`: (times, adversarial batches)."""
    t0 = time.perf_counter()
    result = run_attack_job(plugin_spec(submission), model_path, [b for _, b in plan], budget.id,
                            device=device, limits=limits, trusted=False, seed=seed, effort="quick")
    seconds = time.perf_counter() - t0
    # the whole job's CPU seconds over all its processes, as the sandbox measured them
    cpu_s = getattr(result, "cpu_s", None) or None
    if result.status != "ok":
        raise RuntimeError(f"our PGD failed at batch size {len(plan[0][0])}: {result.error}\n"
                           f"{result.log[-2000:]}")
    times = {"seconds": seconds, "startup_s": result.startup_s, "job_wall_s": result.wall_s,
             "attack_s": sum(o.seconds for o in result.batches), "cpu_s": cpu_s,
             "attack_cpu_s": _attack_cpu_s(result.log, len(plan)),
             "forward_calls": result.forward_calls, "backward_calls": result.backward_calls}
    return times, [o.adv for o in result.batches]


def _attack_cpu_s(log: str, n_batches: int) -> float | None:
    """Sum of the CPU seconds BenchPGD printed, one line per batch (None if any is missing)."""
    values = [float(line.split()[1]) for line in log.splitlines()
              if line.startswith(_CPU_TAG + " ") and len(line.split()) == 2]
    return sum(values) if len(values) == n_batches else None


def _art_inputs(plan, budget, rel):
    """ART's numpy batches and PGD arguments, made before the clock starts (a data loader's job)."""
    inputs = []
    for _, batch in plan:
        x = batch.wave.numpy().astype(np.float32)
        lengths = batch.lengths.numpy()
        mask = batch.mask.numpy()
        if budget.threat == ThreatModel.SNR:
            eps = budget.max_l2(batch.wave, batch.lengths).numpy().astype(np.float32)[:, None]
            kw = dict(norm=2, eps=eps, eps_step=(rel * eps).astype(np.float32))
        else:
            kw = dict(norm=np.inf, eps=float(budget.value), eps_step=rel * float(budget.value))
        inputs.append((x, lengths, mask, np.array(batch.transcripts), kw))
    return inputs


def _run_art(est, inputs, steps, device) -> tuple[dict, list]:
    """ART's PGD over the prepared batches: (times, adversarial batches)."""
    from art.attacks.evasion import ProjectedGradientDescent

    advs = []
    _sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    for x, lengths, mask, y, kw in inputs:
        attack = ProjectedGradientDescent(est, max_iter=steps, targeted=False, num_random_init=0,
                                          batch_size=len(x), verbose=False, **kw)
        est.set_lengths(lengths)
        advs.append(attack.generate(x, y=y, mask=mask))
    _sync(device)
    seconds, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    est.set_lengths(None)
    advs = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in advs]
    return {"seconds": seconds, "cpu_s": cpu_s}, advs


def _in_fresh_fork(fn, *args):
    """fn(*args) in a forked child, its result pickled back through a pipe. The child has
    torch imported and the model loaded but has never run the batches' shapes: the state
    our sandboxed job starts its attack in (a fresh fork of a slot's server). Run in this
    process, ART's second and third rounds would find the oneDNN kernels and the heap of its
    first round (the same shapes) ready, which a real run of ART, batch after batch of new
    lengths, never has. CPU only: CUDA cannot be used in a forked child."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: never returns
        try:
            os.close(read)
            try:
                payload = pickle.dumps((True, fn(*args)))
            except BaseException as e:  # noqa: BLE001 - handed to the parent
                payload = pickle.dumps((False, f"{type(e).__name__}: {e}"))
            with os.fdopen(write, "wb") as f:
                f.write(payload)
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        payload = f.read()
    _, status = os.waitpid(pid, 0)
    if not payload:
        raise RuntimeError(f"the process of an ART run died (wait status {status})")
    ok, value = pickle.loads(payload)   # our own child's bytes
    if not ok:
        raise RuntimeError(f"ART failed: {value}")
    return value


def _summarise(impl: str, batch_size: int, n_batches: int, rounds: list[dict], n: int, audio_s: float,
               adv_wer: float, clean_wer: float) -> dict:
    """One row of `runs`: each time the fastest of its rounds, rates from those times."""
    seconds = min(r["seconds"] for r in rounds)
    cpus = [r["cpu_s"] for r in rounds if r["cpu_s"] is not None]
    cpu_s = min(cpus) if cpus else None
    row = {"impl": impl, "batch_size": batch_size, "batches": n_batches, "seconds": seconds,
           "rounds_s": [r["seconds"] for r in rounds], "cpu_s": cpu_s,
           "utt_per_cpu_s": n / max(cpu_s, 1e-9) if cpu_s else None,
           "utt_per_s": n / seconds, "audio_s_per_s": audio_s / seconds,
           "adv_wer": adv_wer, "delta_wer": adv_wer - clean_wer}
    if impl == "ours":
        attack_s = min(r["attack_s"] for r in rounds)
        excl = min(r["seconds"] - r["startup_s"] for r in rounds)
        attack_cpu = [r["attack_cpu_s"] for r in rounds if r["attack_cpu_s"] is not None]
        row.update(startup_s=min(r["startup_s"] for r in rounds),
                   attack_cpu_s=min(attack_cpu) if attack_cpu else None,
                   attack_utt_per_cpu_s=n / max(min(attack_cpu), 1e-9) if attack_cpu else None,
                   job_wall_s=min(r["job_wall_s"] for r in rounds), attack_s=attack_s,
                   rounds_attack_s=[r["attack_s"] for r in rounds],
                   attack_utt_per_s=n / max(attack_s, 1e-9),
                   utt_per_s_excl_startup=n / max(excl, 1e-9),
                   overhead_fraction=1.0 - attack_s / seconds,
                   forward_calls=rounds[0]["forward_calls"], backward_calls=rounds[0]["backward_calls"])
    return row


def bench_attacks(device=None, n: int | None = None, steps: int | None = None, budget="snr30",
                  model="dense", batch_sizes=None, art: bool = True, data: BenchData | None = None,
                  model_config: dict | None = None, seed: int = 0, limits=None, log=None,
                  repeats: int | None = None) -> dict:
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
    repeats = int(repeats or defaults["repeats"])
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
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
        clean_wer = wer(data.texts, _transcribe_all(net, data.waves, device))
        log(f"clean WER {clean_wer:.3f} on {n} utterances ({audio_s:.1f} s of audio)")

        art_version, art_error = None, None
        if art:
            try:
                import art as art_pkg
                import art.attacks.evasion  # noqa: F401 - once, here, not in every forked run

                from arena.bench.art_asr import ArenaSpeechRecognizer

                art_version = art_pkg.__version__
            except ImportError as e:
                art_error = f"ART is not installed ({e}); pip install -e '.[bench]'"
                log(art_error)
        impls = {"ours": None}
        if art_version:
            device_type = "gpu" if device.startswith("cuda") else "cpu"
            impls["art"] = ArenaSpeechRecognizer(net, device_type=device_type)
            impls["art-frozen"] = ArenaSpeechRecognizer(net, device_type=device_type, freeze_weights=True)
        plans = {b: _batches(data, b) for b in sorted(set(sizes) | {1})}
        art_forked = torch.device(device).type == "cpu" and hasattr(os, "fork")
        art_inputs = {b: _art_inputs(plans[b], budget, rel) for b in sizes} if art_version else {}
        rounds: dict[tuple, list] = {}
        wers: dict[tuple, float] = {}
        for r in range(repeats):
            for b in plans:  # ours, ART, ART-frozen back to back at each batch size
                for impl, est in impls.items():
                    if impl != "ours" and b not in sizes:
                        continue
                    log(f"round {r + 1}/{repeats}: {impl}, batch size {b} ...")
                    if impl == "ours":
                        times, advs = _run_ours(submission, model_path, plans[b], budget, device, seed,
                                                limits)
                    elif art_forked:
                        times, advs = _in_fresh_fork(_run_art, est, art_inputs[b], steps, device)
                    else:
                        times, advs = _run_art(est, art_inputs[b], steps, device)
                    rounds.setdefault((impl, b), []).append(times)
                    if (impl, b) not in wers:
                        wers[(impl, b)] = _adv_wer(net, data, plans[b], advs, budget, device)
        for p in net.parameters():  # the ART estimators switch them on and off
            p.requires_grad_(False)
        runs = [_summarise(impl, b, len(plans[b]), rounds[(impl, b)], n, audio_s, wers[(impl, b)], clean_wer)
                for impl in impls for b in plans if (impl, b) in rounds]
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(workdir, ignore_errors=True)

    def best(impl):
        rows = [r for r in runs if r["impl"] == impl and r["batch_size"] in sizes]
        return max(rows, key=lambda r: r["utt_per_s"]) if rows else None

    ours, best_art, frozen = best("ours"), best("art"), best("art-frozen")
    batch1 = next(r for r in runs if r["impl"] == "ours" and r["batch_size"] == 1)

    def ratio(a, b):
        return a / b if a is not None and b else None

    def best_of(impl, key):
        values = [r[key] for r in runs if r["impl"] == impl and r["batch_size"] in sizes
                  and r.get(key) is not None]
        return max(values) if values else None

    result = {
        "device": device, "device_name": device_name(device),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": model_label, "model_params": sum(p.numel() for p in net.parameters()),
        "model_note": note, "budget": budget.id, "steps": steps, "rel_stepsize": rel,
        "n": n, "audio_seconds": audio_s, "batch_sizes_tried": sizes, "repeats": repeats,
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
        "art_process": "a fresh fork per run" if art_forked else "the benchmark's own",
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
        "art_frozen_batch_size": frozen["batch_size"] if frozen else None,
        "art_frozen_utt_per_s": frozen["utt_per_s"] if frozen else None,
        "art_frozen_delta_wer": frozen["delta_wer"] if frozen else None,
        "ratio_vs_art_frozen": ratio(ours["utt_per_s"], frozen["utt_per_s"]) if frozen else None,
        "ratio_vs_art_frozen_attack_only": (ratio(ours["attack_utt_per_s"], frozen["utt_per_s"])
                                            if frozen else None),
        # the same comparisons in CPU seconds (each side's best batch size): what the work
        # costs whatever else the machine runs; on an idle machine they match the ones above
        "ours_utt_per_cpu_s": best_of("ours", "utt_per_cpu_s"),
        "ours_attack_utt_per_cpu_s": best_of("ours", "attack_utt_per_cpu_s"),
        "art_utt_per_cpu_s": best_of("art", "utt_per_cpu_s"),
        "art_frozen_utt_per_cpu_s": best_of("art-frozen", "utt_per_cpu_s"),
        "ratio_vs_art_cpu": ratio(best_of("ours", "utt_per_cpu_s"), best_of("art", "utt_per_cpu_s")),
        "ratio_vs_art_frozen_attack_only_cpu": ratio(best_of("ours", "attack_utt_per_cpu_s"),
                                                     best_of("art-frozen", "utt_per_cpu_s")),
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
                  f"{r['load_avg_before']} / {r['load_avg_after']}; torch threads {r['cpu_threads']}; "
                  f"each time the fastest of {r['repeats']} rounds")
    if r["ratio_vs_art"] is not None:
        console.print(f"ours (batch {r['ours_batch_size']}) vs ART (batch {r['art_batch_size']}): "
                      f"{r['ratio_vs_art']:.2f}x ({r['ratio_vs_art_excl_startup']:.2f}x excluding "
                      f"start-up, {r['ratio_vs_art_attack_only']:.2f}x attack only); "
                      f"ΔWER {r['ours_delta_wer']:+.3f} vs {r['art_delta_wer']:+.3f}")
    if r.get("ratio_vs_art_frozen") is not None:
        console.print(f"ours vs ART with the weights frozen (same arithmetic as ours): "
                      f"{r['ratio_vs_art_frozen']:.2f}x ({r['ratio_vs_art_frozen_attack_only']:.2f}x "
                      f"attack only); ΔWER {r['art_frozen_delta_wer']:+.3f}")
    if r.get("ratio_vs_art_cpu") is not None:
        frozen = r.get("ratio_vs_art_frozen_attack_only_cpu")
        console.print(f"in CPU seconds: ours vs ART {r['ratio_vs_art_cpu']:.2f}x (start-up included)"
                      + (f", attack only vs ART with the weights frozen {frozen:.2f}x" if frozen else ""))
    if r.get("art_error"):
        console.print(f"ART: {r['art_error']}")
    console.print(f"ours vs batch size 1: {r['ratio_vs_batch1']:.2f}x")
