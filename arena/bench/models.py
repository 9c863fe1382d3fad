"""Latency and memory of zoo variants, as ratios to a dense baseline measured in the same run.

Baseline: the dense model in bf16 on CUDA (`to_fast_device` with sparse kernels off); on CPU
the dense model in fp32 (bf16 matmuls are slow on CPUs, so fp32 is what one deploys there).
When "dense" is not among the zoo files, the first variant's dequantized weights stand in for
it (same shapes, same compute as a dense model) and the row says so.
"""
from __future__ import annotations

import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from arena.core.audio import SAMPLE_RATE
from arena.zoo.fast import cuda_available, to_fast_device
from arena.zoo.registry import DENSE, available, load_model, resolve

__all__ = ["bench_models"]


def _weight_bytes(model) -> int:
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        try:
            total += t.numel() * t.element_size()
        except Exception:  # tensor subclasses (semi-structured) without numel semantics
            total += sum(p.numel() * p.element_size() for p in getattr(t, "packed", []) or [])
    return total


def _measure(model, wave, lengths, repeats: int, device: torch.device) -> dict:
    cuda = device.type == "cuda"
    with torch.inference_mode():
        model(wave, lengths)  # warm-up (kernel selection, allocator)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(wave, lengths)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return {"latency_ms": 1000 * statistics.median(times),
            "latency_ms_min": 1000 * min(times),
            "peak_mem_bytes": torch.cuda.max_memory_allocated() if cuda else None,
            "weight_mem_bytes": _weight_bytes(model)}


def bench_models(names_or_paths, device=None, batch: int = 8, seconds: float = 10.0,
                 repeats: int = 10, print_table: bool = True, seed: int = 0) -> list[dict]:
    """Forward latency (median of `repeats`) and peak memory of each model on `device`, with
    ratios to the dense baseline. Returns one dict per variant (baseline first)."""
    device = torch.device(device or ("cuda" if cuda_available() else "cpu"))
    names = list(names_or_paths) or available()
    if not names:
        raise FileNotFoundError("no models to benchmark (the zoo is empty)")
    gen = torch.Generator().manual_seed(seed)
    n = int(seconds * SAMPLE_RATE)
    wave = (0.1 * torch.randn(batch, n, generator=gen)).to(device)
    lengths = torch.full((batch,), n, dtype=torch.long, device=device)
    cuda = device.type == "cuda"

    def load(name, sparse=True):
        model = load_model(name, device="cpu")
        return to_fast_device(model, device, sparse=sparse)

    base_name = DENSE if (DENSE in names or DENSE in available()) else names[0]
    base_label = ("dense bf16 (cuda)" if cuda else "dense fp32 (cpu)")
    if base_name != DENSE:
        base_label += f" [stand-in: {base_name} dequantized]"
    base_model = load(base_name, sparse=False)
    base = _measure(base_model, wave, lengths, repeats, device)
    del base_model
    rows = []
    for name in names:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        model = load(name)
        res = _measure(model, wave, lengths, repeats, device)
        paths = getattr(model, "fast_paths", {})
        del model
        row = {"name": str(name), "path": str(resolve(name)), "device": str(device),
               "dtype": "bfloat16" if cuda else "float32", "batch": batch, "seconds": seconds,
               **res, "baseline": base_label,
               "latency_ratio": res["latency_ms"] / base["latency_ms"],
               "peak_mem_ratio": (res["peak_mem_bytes"] / base["peak_mem_bytes"]
                                  if cuda and base["peak_mem_bytes"] else None),
               "weight_mem_ratio": res["weight_mem_bytes"] / base["weight_mem_bytes"],
               "sparse_layers": sum(v == "sparse-2:4" for v in paths.values())}
        rows.append(row)
    if print_table:
        _print(rows, base, base_label)
    return rows


def _print(rows, base, label):
    t = Table(title=f"baseline: {label}, {base['latency_ms']:.1f} ms")
    for c in ("model", "latency ms", "x baseline", "peak mem MB", "x baseline", "2:4 kernels"):
        t.add_column(c, justify="right" if c != "model" else "left")
    for r in rows:
        peak = "-" if r["peak_mem_bytes"] is None else f"{r['peak_mem_bytes'] / 2**20:.1f}"
        pr = "-" if r["peak_mem_ratio"] is None else f"{r['peak_mem_ratio']:.2f}"
        t.add_row(r["name"], f"{r['latency_ms']:.1f}", f"{r['latency_ratio']:.2f}", peak, pr,
                  str(r["sparse_layers"]))
    Console().print(t)
