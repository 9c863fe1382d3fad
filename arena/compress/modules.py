"""Compressed drop-in modules and the `compress_(model, config)` entry point (torchao style).

`compress_` swaps every in-scope nn.Linear / nn.Conv1d for a `CompressedLinear` /
`CompressedConv1d` under the same attribute name. The new module holds the DENSE weight as
its parameter (the same Parameter object) and, in forward, applies the mask first and then
fake quantization:  w_hat = Q(w * mask) * mask, with straight-through gradients to the dense
weight (mask gradient rule from `grad_mode`) and ordinary gradients to the input.

Scope (default): every nn.Linear and nn.Conv1d; `include` / `exclude` are fnmatch patterns on
module names (exclude wins). Quantization (when `bits` is set) applies to every layer in
scope. Sparsity (N:M or unstructured) applies only to layers where it makes sense:

* N:M needs at least one full group of M along the input dimension (weight.shape[1] >= M), so
  depthwise convs (1 input channel per group) stay dense;
* and the layer must have at least `min_sparse_numel` weights (default 1024), so tiny layers
  (e.g. the 29 x 32 CTC head of the test model) stay dense.

Layers in scope that are not quantized (`bits=None`, e.g. recipe "2:4") keep their values at
fp16 precision (the packed file stores them in fp16; the forward rounds them the same way).
Everything else (biases, norms, BatchNorm statistics) is snapped to `leftover_dtype`
(fp16 by default) by `compress_` and again by `export_packed`, so the in-memory model and the
packed file are numerically the same.
"""
from __future__ import annotations

import fnmatch
import json
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from arena.compress.algorithms import GRAD_MODES, PruningAlgorithm, build_algorithm, masked_weight
from arena.compress.masks import global_magnitude_masks, nm_applicable
from arena.compress.quant import INT2_MODES, QuantSpec, dequantize, fake_quant, quantize, ste
from arena.compress.schedules import Gradual, OneShot, Schedule, nm_at, schedule_from_dict, schedule_to_dict

__all__ = ["CompressionConfig", "CompressedLinear", "CompressedConv1d", "compress_",
           "compressed_modules", "update_masks", "compression_hooks", "snap_leftovers_",
           "leftover_names", "LEFTOVER_DTYPES"]

LEFTOVER_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class CompressionConfig:
    """One compression method. N:M ("keep N of every M") and unstructured `sparsity` exclude
    each other. `bits=2` uses `int2_mode` ("ternary" by default, or "four-level")."""

    bits: int | None = None
    int2_mode: str = "ternary"
    group_size: int | None = None
    n: int | None = None
    m: int | None = None
    sparsity: float | None = None            # unstructured, layer-wise or global
    sparsity_scope: str = "layer"            # "layer" | "global" (unstructured magnitude only)
    algorithm: str = "magnitude"             # see arena.compress.algorithms.ALGORITHMS
    grad_mode: str | None = None             # zero | ste | srste; None = algorithm default
    srste_lambda: float = 2e-4
    schedule: Schedule = field(default_factory=lambda: OneShot(0))
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    min_sparse_numel: int = 1024
    leftover_dtype: str = "float16"
    seed: int = 0

    def __post_init__(self):
        if (self.n is None) != (self.m is None):
            raise ValueError("give both n and m for N:M sparsity")
        if self.n is not None and not 1 <= self.n <= self.m:
            raise ValueError(f"N:M needs 1 <= N <= M, got {self.n}:{self.m}")
        if self.n is not None and self.sparsity is not None:
            raise ValueError("N:M and unstructured sparsity exclude each other")
        if self.int2_mode not in INT2_MODES:
            raise ValueError(f"int2_mode must be one of {INT2_MODES}")
        if self.grad_mode is not None and self.grad_mode not in GRAD_MODES:
            raise ValueError(f"grad_mode must be one of {GRAD_MODES}")
        if self.leftover_dtype not in LEFTOVER_DTYPES:
            raise ValueError(f"leftover_dtype must be one of {sorted(LEFTOVER_DTYPES)}")
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))

    @property
    def sparse(self) -> bool:
        return (self.n is not None and self.n < self.m) or bool(self.sparsity)

    @property
    def target_sparsity(self) -> float:
        return 1.0 - self.n / self.m if self.n is not None else float(self.sparsity or 0.0)

    def quant_spec(self) -> QuantSpec | None:
        return None if self.bits is None else QuantSpec(self.bits, self.int2_mode, self.group_size)

    def build_algorithm(self) -> PruningAlgorithm:
        return build_algorithm(self.algorithm, seed=self.seed)

    def effective_grad_mode(self) -> str:
        return self.grad_mode or type(self.build_algorithm()).default_grad_mode

    def to_dict(self) -> dict:
        d = asdict(self)
        d["schedule"] = schedule_to_dict(self.schedule)
        d["include"], d["exclude"] = list(self.include), list(self.exclude)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict) -> CompressionConfig:
        d = dict(d)
        d["schedule"] = schedule_from_dict(d.get("schedule"))
        return cls(**d)

    def in_scope(self, name: str) -> bool:
        inc = any(fnmatch.fnmatchcase(name, p) for p in self.include)
        return inc and not any(fnmatch.fnmatchcase(name, p) for p in self.exclude)


class _Compressed:
    """Shared state and logic of the compressed modules."""

    weight: nn.Parameter

    def _setup(self, cfg: CompressionConfig, layer_index: int, sparse: bool):
        self.quant = cfg.quant_spec()
        self.n, self.m = (cfg.n, cfg.m) if sparse and cfg.n is not None else (None, None)
        self.sparsity_target = cfg.sparsity if sparse and cfg.sparsity else None
        self.is_sparse = sparse
        self.algorithm = cfg.build_algorithm()
        self.grad_mode = cfg.effective_grad_mode()
        self.srste_lambda = cfg.srste_lambda
        self.layer_index = layer_index
        if sparse:
            self.register_buffer("mask", torch.ones_like(self.weight, dtype=torch.bool))
        else:
            self.mask = None
        # current schedule level: sparsity in [0, 1], or -1 = dense (no mask yet). A Python
        # float (no device sync in forward), saved in the state dict as `_extra_state`.
        self.level = -1.0

    def get_extra_state(self):
        return {"level": self.level}

    def set_extra_state(self, state):
        self.level = float(state["level"])

    # ---- state
    def active_nm(self) -> tuple[int, int] | None:
        """The (n, m) in force now; None when dense or unstructured."""
        if not self.is_sparse or self.n is None or self.level < 0:
            return None
        k = nm_at(self.level, self.n, self.m)
        return None if k is None else (k, self.m)

    def active_sparsity(self) -> float | None:
        if not self.is_sparse or self.n is not None or self.level < 0:
            return None
        return self.level

    def compute_mask(self) -> torch.Tensor | None:
        nm, sp = self.active_nm(), self.active_sparsity()
        if nm is None and not sp:
            return None
        with torch.no_grad():
            if nm is not None:
                return self.algorithm.mask(self.weight, n=nm[0], m=nm[1], layer_index=self.layer_index)
            return self.algorithm.mask(self.weight, sparsity=sp, layer_index=self.layer_index)

    def set_level(self, level: float | None, recompute: bool = True):
        if not self.is_sparse:
            return
        self.level = -1.0 if level is None else float(level)
        if recompute and not self.algorithm.dynamic:
            mask = self.compute_mask()
            self.mask.copy_(torch.ones_like(self.mask) if mask is None else mask)

    def current_mask(self) -> torch.Tensor | None:
        if not self.is_sparse or self.level < 0:
            return None
        if self.algorithm.dynamic:
            return self.compute_mask()
        if self.active_nm() is None and not self.active_sparsity():
            return None
        return self.mask

    # ---- weights
    def effective_weight(self) -> torch.Tensor:
        """The weight the forward uses: Q(w * mask) * mask, straight-through to w."""
        w = self.weight
        mask = self.current_mask()
        if mask is not None:
            w = masked_weight(w, mask, self.grad_mode, self.srste_lambda)
        if self.quant is not None:
            return fake_quant(w, self.quant, mask)
        return ste(w, w.detach().half().to(w.dtype))  # unquantized: fp16 values

    @torch.no_grad()
    def packed_parts(self) -> dict:
        """What the packed file stores for this layer (consistent with effective_weight)."""
        mask = self.current_mask()
        w = self.weight.detach().float()
        if mask is not None:
            w = w * mask
        out = {"mask": None if mask is None else mask.bool().clone(), "nm": self.active_nm(),
               "quant": self.quant}
        if self.quant is not None:
            out["codes"], out["scales"] = quantize(w, self.quant)
        else:
            out["values"] = w.half()
        return out

    def extra_repr(self) -> str:
        q = "fp16" if self.quant is None else f"int{self.quant.bits}" + (
            f"-{self.quant.int2_mode}" if self.quant.bits == 2 else "")
        sp = (f", {self.n}:{self.m}" if self.n
              else f", sparsity={self.sparsity_target}" if self.sparsity_target else "")
        return super().extra_repr() + f", {q}{sp}, grad={self.grad_mode}"


class CompressedLinear(_Compressed, nn.Linear):
    def __init__(self, src: nn.Linear, cfg: CompressionConfig, layer_index: int = 0, sparse: bool = False):
        nn.Module.__init__(self)
        self.in_features, self.out_features = src.in_features, src.out_features
        self.weight = src.weight
        self.bias = src.bias
        self._setup(cfg, layer_index, sparse)

    def forward(self, x):
        return F.linear(x, self.effective_weight(), self.bias)


class CompressedConv1d(_Compressed, nn.Conv1d):
    def __init__(self, src: nn.Conv1d, cfg: CompressionConfig, layer_index: int = 0, sparse: bool = False):
        nn.Module.__init__(self)
        if src.padding_mode != "zeros":
            raise ValueError("CompressedConv1d supports padding_mode='zeros' only")
        for a in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                  "groups", "padding_mode", "transposed", "output_padding",
                  "_reversed_padding_repeated_twice"):
            setattr(self, a, getattr(src, a))
        self.weight = src.weight
        self.bias = src.bias
        self._setup(cfg, layer_index, sparse)

    def forward(self, x):
        return F.conv1d(x, self.effective_weight(), self.bias, self.stride, self.padding,
                        self.dilation, self.groups)


COMPRESSED_TYPES = (CompressedLinear, CompressedConv1d)


def compressed_modules(model: nn.Module) -> list[tuple[str, _Compressed]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, COMPRESSED_TYPES)]


def _sparse_ok(weight: torch.Tensor, cfg: CompressionConfig) -> bool:
    if not cfg.sparse or weight.numel() < cfg.min_sparse_numel:
        return False
    return nm_applicable(weight.shape, cfg.m) if cfg.n is not None else True


def _set_submodule(model: nn.Module, name: str, new: nn.Module):
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


# ------------------------------------------------------------------ leftovers
def _recomputed_buffers(model: nn.Module) -> set[str]:
    """Buffers a freshly built model of the same arch/config reproduces bit for bit (e.g. the
    mel filterbank and window): not stored in the packed file, never snapped."""
    arch, config = getattr(model, "arch", None), getattr(model, "config", None)
    if arch is None or config is None:
        return set()
    # the model's own class rebuilds it from its config (compress knows no architecture)
    with torch.random.fork_rng(devices=[]):
        fresh = type(model)(**config)
    fresh_buf = dict(fresh.named_buffers())
    same = set()
    for name, b in model.named_buffers():
        fb = fresh_buf.get(name)
        if fb is not None and fb.shape == b.shape and fb.dtype == b.dtype and \
                torch.equal(fb, b.detach().cpu()) and not name.endswith(".mask"):
            same.add(name)
    return same


def leftover_names(model: nn.Module) -> tuple[list[str], list[str]]:
    """(stored, skipped) state-dict names outside the compressed weights. Skipped: buffers
    recomputed from the config, and integer buffers (BatchNorm's num_batches_tracked, unused
    in eval; it is reset to 0 on load)."""
    comp = set()
    for n, _ in compressed_modules(model):
        comp.update({f"{n}.weight", f"{n}.mask", f"{n}._extra_state"})
    recomputed = _recomputed_buffers(model)
    stored, skipped = [], []
    for k, v in model.state_dict().items():
        if k in comp:
            continue
        if k in recomputed or not v.is_floating_point():
            skipped.append(k)
        else:
            stored.append(k)
    return stored, skipped


@torch.no_grad()
def snap_leftovers_(model: nn.Module, dtype: str = "float16") -> list[str]:
    """Round the stored leftovers of `model` in place to `dtype`-representable values."""
    stored, _ = leftover_names(model)
    sd = model.state_dict(keep_vars=True)
    for k in stored:
        t = sd[k]
        t.data.copy_(t.data.to(LEFTOVER_DTYPES[dtype]).to(t.dtype))
    return stored


# ------------------------------------------------------------------ entry points
def compress_(model: nn.Module, config: CompressionConfig) -> nn.Module:
    """Swap in-scope Linear/Conv1d layers for compressed ones, in place; returns the model.

    Masks are initialised for step 0 of `config.schedule` (a OneShot(0) schedule, the
    default, prunes now). The config is kept as `model.compression_config`."""
    if compressed_modules(model):
        raise ValueError("model is already compressed")
    targets = [(n, m) for n, m in model.named_modules()
               if type(m) in (nn.Linear, nn.Conv1d) and config.in_scope(n)]
    for i, (name, mod) in enumerate(targets):
        sparse = _sparse_ok(mod.weight, config)
        cls = CompressedLinear if isinstance(mod, nn.Linear) else CompressedConv1d
        new = cls(mod, config, layer_index=i, sparse=sparse).to(mod.weight.device)
        new.train(mod.training)
        _set_submodule(model, name, new)
    model.compression_config = config
    snap_leftovers_(model, config.leftover_dtype)
    if _resolved(config.schedule):  # else compression_hooks(total_steps=...) sets step 0
        update_masks(model, 0, force=True)
    return model


def _resolved(s: Schedule) -> bool:
    return not (isinstance(s, Gradual) and s.end is None)


@torch.no_grad()
def update_masks(model: nn.Module, step: int, force: bool = False) -> None:
    """Bring every compressed layer to the schedule's state at `step`."""
    cfg: CompressionConfig = model.compression_config
    if not cfg.sparse:
        return
    level = cfg.schedule.sparsity_at(step, cfg.target_sparsity)
    layers = [m for _, m in compressed_modules(model) if m.is_sparse]
    due = force or cfg.schedule.is_update_step(step) or any(
        m.level != (-1.0 if level is None else float(level)) for m in layers)
    if not due:
        return
    if cfg.sparsity_scope == "global" and cfg.n is None and level and \
            cfg.algorithm == "magnitude":
        for m in layers:
            m.set_level(level, recompute=False)
        masks = global_magnitude_masks({str(i): m.weight for i, m in enumerate(layers)}, level)
        for i, m in enumerate(layers):
            m.mask.copy_(masks[str(i)])
        return
    for m in layers:
        m.set_level(level)


def compression_hooks(model: nn.Module, config: CompressionConfig | None = None,
                      total_steps: int | None = None) -> list:
    """Hooks for `arena.asr.train.train(..., hooks=...)`: after each optimiser step, masks
    follow the schedule (`update_masks(model, step + 1)`). A Gradual schedule with
    `end=None` is resolved against `total_steps` here. The model must be compressed with
    `compress_` already (or is compressed here with `config` when it is not)."""
    if not compressed_modules(model):
        if config is None:
            raise ValueError("model is not compressed and no config was given")
        compress_(model, config)
    cfg = config or model.compression_config
    if total_steps is not None:
        cfg = replace(cfg, schedule=cfg.schedule.resolved(total_steps))
    if not _resolved(cfg.schedule):
        raise ValueError("a Gradual schedule with end=None needs total_steps")
    model.compression_config = cfg
    update_masks(model, 0)  # no-op when the layers are already at the step-0 state

    def hook(event: str, model: nn.Module, step: int) -> None:
        if event == "after_step":
            update_masks(model, step + 1)

    return [hook]


def dense_weight_from_parts(parts: dict) -> torch.Tensor:
    """The fp32 weight a layer's packed parts stand for (the loader uses the same code)."""
    mask = parts["mask"]
    if parts.get("quant") is not None:
        w = dequantize(parts["codes"], parts["scales"], parts["quant"])
    else:
        w = parts["values"].float()
    return w if mask is None else w * mask
