"""Loading a (packed) model onto the fastest path of a device.

Default path on CUDA: dequantize on load (load_packed already reconstructs dense weights) and
run everything except the log-mel front end in bf16 under autocast. For Linear layers whose
weight is 2:4 sparse, `torch.sparse.to_sparse_semi_structured` is used only when a micro
benchmark at that layer's shape says it is faster (and its output matches); shapes the
sparse kernels do not support fall back to dense bf16. Off CUDA the model is returned as is
(fp32, dense), since bf16 matmuls are slow on most CPUs.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["to_fast_device", "is_2to4", "cuda_available"]


def cuda_available() -> bool:
    return torch.cuda.is_available()


def is_2to4(weight: torch.Tensor) -> bool:
    """True when every group of 4 consecutive inputs of every row has at most 2 non-zeros."""
    if weight.ndim != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight.detach() != 0).reshape(weight.shape[0], -1, 4).sum(-1) <= 2).all())


def _time_cuda(fn, iters: int = 20) -> float:
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def _try_semi_structured(lin: nn.Linear, tokens: int, dtype) -> str:
    """Swap lin.weight for a semi-structured sparse tensor if measured faster; returns the path."""
    try:
        from torch.sparse import to_sparse_semi_structured
    except ImportError:
        return "dense-bf16"
    w = lin.weight.detach()
    x = torch.randn(tokens, w.shape[1], device=w.device, dtype=dtype)
    try:
        sw = to_sparse_semi_structured(w)
        ref = F.linear(x, w, lin.bias)
        out = F.linear(x, sw, lin.bias)
        if not torch.allclose(out.float(), ref.float(), atol=1e-2, rtol=1e-2):
            return "dense-bf16"
        t_dense = _time_cuda(lambda: F.linear(x, w, lin.bias))
        t_sparse = _time_cuda(lambda: F.linear(x, sw, lin.bias))
    except Exception:  # unsupported shape / dtype / GPU: stay dense
        return "dense-bf16"
    if t_sparse < 0.95 * t_dense:
        lin.weight = nn.Parameter(sw, requires_grad=False)
        return "sparse-2:4"
    return "dense-bf16"


def to_fast_device(model_or_path, device="cuda", dtype=torch.bfloat16, sparse: bool = True,
                   tokens: int = 4096):
    """The deployed model on `device`, on its fastest path. Accepts a model, a zoo name or a
    path. Sets `model.fast_paths` ({layer name: "dense-bf16" | "sparse-2:4"} on CUDA)."""
    if isinstance(model_or_path, (str, Path)):
        from arena.zoo.registry import load_model

        model = load_model(model_or_path, device="cpu")
    else:
        model = model_or_path
    device = torch.device(device)
    if device.type != "cuda" or not cuda_available():
        model = model.to(device).eval()
        model.fast_paths = {}
        return model
    model = model.to(device).eval()
    for name, child in model.named_children():
        if name != "frontend":  # the log-mel front end stays fp32 (it disables autocast)
            child.to(dtype)
    paths = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            paths[name] = "dense-bf16"
            if sparse and is_2to4(mod.weight):
                with torch.no_grad():
                    paths[name] = _try_semi_structured(mod, tokens, dtype)
    forward = model.forward

    @functools.wraps(forward)
    def fast_forward(wave, lengths):
        with torch.autocast("cuda", dtype=dtype):
            return forward(wave, lengths)

    model.forward = fast_forward
    model.fast_paths = paths
    return model
