"""Model FLOP utilisation of the attack loop: achieved TFLOP/s of PGD steps.

One step is what a white-box attack pays per iteration: forward of the model on the current
waveform, CTC loss against the transcript, backward to the waveform (the weights are frozen,
so no weight gradients), and the update. FLOPs are counted on one step with
`torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions and attention, forward and
backward; elementwise ops and the FFT of the log-mel front end are not counted, so the figure
is a slight underestimate); TFLOP/s = FLOPs per step / measured seconds per step.

On CUDA the step runs under bf16 autocast (the DESIGN's "bf16 where accuracy allows") and the
fraction of the device's dense bf16 peak is printed for known devices. The H100 figure is the
one the issue's acceptance criteria use (790 TFLOP/s); the others are NVIDIA's dense bf16
datasheet numbers. On a CPU only TFLOP/s are printed, by default with one torch thread as in
the sandbox worker.
"""
from __future__ import annotations

import functools
import sys
import time

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

from arena.asr.ctc import ctc_loss
from arena.asr.models import build_model
from arena.core.audio import SAMPLE_RATE
from arena.zoo.registry import DENSE, available, load_model

__all__ = ["bench_mfu", "peak_bf16_flops", "print_mfu"]

PEAK_BF16 = [("H100", 790e12), ("H200", 989e12), ("A100", 312e12), ("L40S", 362e12),
             ("A10G", 70e12), ("L4", 121e12)]  # dense, FLOP/s; first match on the device name
DEFAULTS = {"cpu": dict(batch=2, seconds=2.0, steps=2), "cuda": dict(batch=64, seconds=10.0, steps=10)}


def peak_bf16_flops(device) -> float | None:
    device = torch.device(device)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16 if key in name), None)


def _model(kind: str, default_model, seed: int, config: dict | None):
    """(model, label): 'default' is the dense zoo model (random weights when the zoo has none,
    or `default_model` when given: a name or file); 'wav2vec2-base' is torchaudio's wav2vec2
    base architecture with random weights and our CTC head."""
    torch.manual_seed(seed)
    if kind == "wav2vec2-base":
        return build_model("wav2vec2-ctc", **(config or {})), "wav2vec2-base (random)"
    if default_model not in (None, "random") and (default_model != DENSE or DENSE in available()):
        return load_model(default_model), f"{default_model}"
    return build_model("conformer-ctc", **(config or {})), "conformer-ctc (random)"


def bench_mfu(device=None, models=("default", "wav2vec2-base"), batch: int | None = None,
              seconds: float | None = None, steps: int | None = None, default_model="dense",
              bf16: bool | None = None, seed: int = 0, configs: dict | None = None,
              cpu_threads: int | None = 1) -> list[dict]:
    """One row per model: FLOPs per PGD step, seconds per step, TFLOP/s, fraction of peak.
    On a CPU the loop runs with `cpu_threads` torch threads (default 1, as in the sandbox
    worker; None keeps the current setting)."""
    threads = torch.get_num_threads()
    try:
        if cpu_threads and torch.device(device or "cpu").type == "cpu":
            torch.set_num_threads(int(cpu_threads))
        return _bench_mfu(device, models, batch, seconds, steps, default_model, bf16, seed, configs)
    finally:
        torch.set_num_threads(threads)


def _sign_step(net, x, *, lengths, ids, id_lengths, out_lengths, bf16: bool, step_size: float = 1e-4):
    """One white-box attack iteration: forward, CTC against `ids`, backward to the input and
    a signed-gradient update of it."""
    x = x.detach().requires_grad_(True)
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=bf16):
        log_probs, _ = net(x, lengths)
    loss = ctc_loss(log_probs.float(), out_lengths, ids, id_lengths, reduction="sum")
    loss.backward()  # (not autograd.grad: FlopCounterMode's module hooks reject a leaf input there)
    return (x.detach() + step_size * x.grad.sign()).clamp(-1, 1)


def _bench_mfu(device, models, batch, seconds, steps, default_model, bf16, seed, configs) -> list[dict]:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    d = DEFAULTS["cuda" if cuda else "cpu"]
    batch, seconds, steps = int(batch or d["batch"]), float(seconds or d["seconds"]), int(steps or d["steps"])
    bf16 = cuda if bf16 is None else bf16
    peak = peak_bf16_flops(device)
    rows = []
    for kind in models:
        net, label = _model(kind, default_model, seed, (configs or {}).get(kind))
        net = net.to(device).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        gen = torch.Generator().manual_seed(seed)
        T = int(seconds * SAMPLE_RATE)
        wave = (0.1 * torch.randn(batch, T, generator=gen)).to(device)
        lengths = torch.full((batch,), T, dtype=torch.long, device=device)
        with torch.no_grad():
            _, out_lengths = net(wave[:1], lengths[:1])
        # transcripts of a plausible length for the audio (about 12 characters per second)
        S = max(1, min(int(12 * seconds), int(out_lengths[0]) // 2))
        ids = torch.randint(1, net.tokenizer.vocab_size, (batch, S), generator=gen).to(device)
        id_lengths = torch.full((batch,), S, dtype=torch.long, device=device)
        out_lengths = out_lengths.expand(batch).contiguous()
        step = functools.partial(_sign_step, net, lengths=lengths, ids=ids, id_lengths=id_lengths,
                                 out_lengths=out_lengths, bf16=bf16)
        with FlopCounterMode(display=False) as counter:
            x = step(wave)
        flops = counter.get_total_flops()
        x = step(x)  # warm-up (kernel selection, allocator)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            x = step(x)
        if cuda:
            torch.cuda.synchronize()
        per_step = (time.perf_counter() - t0) / steps
        achieved = flops / per_step
        rows.append({"model": label, "kind": kind, "params": sum(p.numel() for p in net.parameters()),
                     "device": str(device), "dtype": "bf16-autocast" if bf16 else "float32",
                     "cpu_threads": None if cuda else torch.get_num_threads(),
                     "batch": batch, "seconds": seconds, "steps_timed": steps,
                     "gflop_per_step": flops / 1e9, "step_ms": 1000 * per_step,
                     "tflops": achieved / 1e12, "peak_bf16_tflops": peak / 1e12 if peak else None,
                     "fraction_of_peak": achieved / peak if peak else None,
                     "utt_per_s": batch / per_step, "audio_s_per_s": batch * seconds / per_step})
        del net, x
        if cuda:
            torch.cuda.empty_cache()
    return rows


def print_mfu(rows: list[dict]) -> None:
    t = Table(title="attack loop (forward + CTC + backward to the input) FLOP utilisation")
    for c in ("model", "params M", "dtype", "batch x s", "GFLOP/step", "ms/step", "TFLOP/s", "of bf16 peak"):
        t.add_column(c, justify="left" if c == "model" else "right")
    for r in rows:
        frac = "-" if r["fraction_of_peak"] is None else f"{100 * r['fraction_of_peak']:.1f}%"
        t.add_row(r["model"], f"{r['params'] / 1e6:.1f}", r["dtype"], f"{r['batch']} x {r['seconds']:g}",
                  f"{r['gflop_per_step']:.1f}", f"{r['step_ms']:.1f}", f"{r['tflops']:.3f}", frac)
    Console(width=None if sys.stdout.isatty() else 132).print(t)
