"""The packed model file: a safetensors file that really stores compressed weights.

Header metadata: `format = "arena-packed"`, `version`, `name`, `recipe`, `arch`, `config`
(model config JSON), `compression` (CompressionConfig JSON), `layers` (per compressed layer:
[name, bits (0 = fp16 values), int2 mode, group size, n, m, sparsity kind]), `leftovers`
(state-dict names stored, in order), `skipped` (names recomputed on load), `leftover_dtype`,
plus any extra string fields (e.g. `test_wer`).

Tensors (each a flat blob; layers are concatenated in `layers` order, each byte-aligned):

* `codes`   uint8  quantized codes of the KEPT weights only, bit-packed little-endian,
                   `bits` bits each (int8: 1 per byte, int4: 2 per byte, int2: 4 per byte),
                   code + offset (int: 2^(bits-1); ternary: 1; four-level: 2).
* `values`  fp16   kept weights of sparse layers that are not quantized (recipe "2:4").
* `index`   uint8  where the kept weights are. N:M: each full group's pattern is one of
                   C(M, N) combinations; its rank is a base-C digit, k digits are packed into
                   one ceil(k*log2 C)-bit field (2:4: 5 groups in 13 bits = 2.6 bits/group,
                   1:4: 2 bits, 4:8: 6.2 bits). The `in % M` trailing inputs are dense and
                   need no index. Unstructured sparsity: a 1-bit-per-weight bitmap.
* `scales`  fp16   one per output channel (or per group of `group_size` inputs).
* `leftovers` fp16 (or bf16 / fp32, `leftover_dtype`): biases, norm weights, BatchNorm
                   statistics, concatenated in `leftovers` order. Buffers that a freshly built
                   model of the same config reproduces exactly (mel filterbank, window) are not
                   stored; integer buffers (num_batches_tracked) are reset.

Exactness: the compressed model snaps its leftovers to fp16 (compress_ and export_packed do),
its scales are fp16-representable, and loader and fake-quant forward share `dequantize`, so
`load_packed` reproduces the fake-quantized model's weights bit for bit.
"""
from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from collections.abc import Callable
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from arena.compress.masks import from_group_view, group_view
from arena.compress.modules import (
    LEFTOVER_DTYPES,
    CompressionConfig,
    compressed_modules,
    dense_weight_from_parts,
    leftover_names,
    snap_leftovers_,
)
from arena.compress.quant import QuantSpec
from arena.compress.recipes import recipe_name

# makes an untrained model from its architecture name and config (the zoo passes the ASR
# package's build_model): the packed format itself knows no architecture
ModelBuilder = Callable[..., nn.Module]

__all__ = ["export_packed", "load_packed", "size_report", "pack_bits", "unpack_bits",
           "encode_nm", "decode_nm", "FORMAT", "read_header"]

FORMAT = "arena-packed"
VERSION = "1"
BLOBS = ("codes", "values", "index", "scales", "leftovers")


# ------------------------------------------------------------------ bit packing
def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Non-negative integers < 2**bits -> little-endian bit stream (uint8)."""
    v = np.ascontiguousarray(values, dtype=np.uint64).reshape(-1)
    if bits == 8:
        return v.astype(np.uint8)
    shifts = np.arange(bits, dtype=np.uint64)
    b = ((v[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return np.packbits(b.reshape(-1), bitorder="little")


def unpack_bits(buf: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of pack_bits: `count` integers of `bits` bits (uint64)."""
    buf = np.asarray(buf, dtype=np.uint8)
    if bits == 8:
        return buf[:count].astype(np.uint64)
    b = np.unpackbits(buf, count=count * bits, bitorder="little").reshape(count, bits)
    return (b.astype(np.uint64) << np.arange(bits, dtype=np.uint64)).sum(1, dtype=np.uint64)


def packed_nbytes(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


# ------------------------------------------------------------------ N:M index coding
_NM_TABLES: dict = {}


def _nm_tables(n: int, m: int):
    key = (n, m)
    if key not in _NM_TABLES:
        combos = list(combinations(range(m), n))
        rank = np.full(1 << m, -1, dtype=np.int64)
        pattern = np.zeros((len(combos), m), dtype=bool)
        for r, c in enumerate(combos):
            rank[sum(1 << j for j in c)] = r
            pattern[r, list(c)] = True
        C = len(combos)
        best = None
        for k in range(1, 25):
            if C ** k >= 2 ** 62:
                break
            b = max(1, (C ** k - 1).bit_length())
            if best is None or b / k < best[1] / best[0] - 1e-12:
                best = (k, b)
        _NM_TABLES[key] = (rank, pattern, C, best[0], best[1])
    return _NM_TABLES[key]


def _nm_groups(shape, m: int) -> int:
    rows, cin = shape[0], shape[1]
    taps = 1 if len(shape) == 2 else shape[2]
    return rows * taps * (cin // m)


def nm_index_nbytes(shape, n: int, m: int) -> int:
    _, _, C, k, b = _nm_tables(n, m)
    return packed_nbytes(math.ceil(_nm_groups(shape, m) / k), b)


def encode_nm(mask: torch.Tensor, n: int, m: int) -> np.ndarray:
    """Bool N:M mask -> packed combination ranks (uint8). Trailing `in % m` inputs not coded."""
    rank, _, C, k, b = _nm_tables(n, m)
    v = group_view(mask.bool().cpu())
    full = (v.shape[-1] // m) * m
    g = v[..., :full].reshape(-1, m).numpy().astype(np.int64)
    codes = rank[(g << np.arange(m)).sum(1)]
    if (codes < 0).any():
        raise ValueError(f"mask is not {n}:{m} (some group does not keep exactly {n})")
    pad = (-len(codes)) % k
    digits = np.concatenate([codes, np.zeros(pad, np.int64)]).reshape(-1, k)
    vals = (digits * (C ** np.arange(k, dtype=np.int64))).sum(1)
    return pack_bits(vals.astype(np.uint64), b)


def decode_nm(buf: np.ndarray, shape, n: int, m: int) -> torch.Tensor:
    """Inverse of encode_nm: the bool mask of a weight of `shape`."""
    _, pattern, C, k, b = _nm_tables(n, m)
    groups = _nm_groups(shape, m)
    vals = unpack_bits(buf, b, math.ceil(groups / k)).astype(np.int64)
    digits = (vals[:, None] // (C ** np.arange(k, dtype=np.int64))) % C
    digits = digits.reshape(-1)[:groups]
    rows, cin = shape[0], shape[1]
    taps = 1 if len(shape) == 2 else shape[2]
    full = (cin // m) * m
    v = torch.ones((rows, taps, cin), dtype=torch.bool)
    if full:
        v[..., :full] = torch.from_numpy(pattern[digits]).reshape(rows, taps, full)
    return from_group_view(v, len(shape)).contiguous()


# ------------------------------------------------------------------ export
def _quant_from_layer(entry) -> QuantSpec | None:
    _, bits, mode, g, *_ = entry
    return None if not bits else QuantSpec(bits, mode or "ternary", g or None)


def _code_offset(q: QuantSpec) -> int:
    return q.code_offset()


@torch.no_grad()
def export_packed(model: nn.Module, path, name: str | None = None, recipe: str | None = None,
                  extra: dict | None = None, snap: bool = True) -> Path:
    """Write the compressed model (after `compress_`) as a packed file; returns the path.

    With `snap=True` (default) the model's float leftovers are first rounded in place to the
    config's leftover dtype, so the model in memory stays numerically identical to the file.
    `extra` adds metadata fields (strings, or JSON-encoded values), e.g. test_wer.
    """
    cfg: CompressionConfig = getattr(model, "compression_config", None) or CompressionConfig()
    recipe = recipe or recipe_name(cfg)
    name = name or recipe
    if snap:
        snap_leftovers_(model, cfg.leftover_dtype)
    blobs: dict[str, list] = {k: [] for k in BLOBS}
    layers = []
    for lname, mod in compressed_modules(model):
        parts = mod.packed_parts()
        mask, nm, q = parts["mask"], parts["nm"], parts["quant"]
        kind = ""
        if mask is not None:
            if nm is not None:
                kind = "nm"
                blobs["index"].append(encode_nm(mask, *nm))
            else:
                kind = "bitmap"
                blobs["index"].append(np.packbits(mask.cpu().numpy().reshape(-1), bitorder="little"))
        keep = None if mask is None else mask.cpu().reshape(-1)
        if q is not None:
            codes = parts["codes"].cpu().reshape(-1).to(torch.int64)
            if keep is not None:
                codes = codes[keep]
            blobs["codes"].append(pack_bits((codes + _code_offset(q)).numpy().astype(np.uint64), q.bits))
            blobs["scales"].append(parts["scales"].cpu().reshape(-1).half())
        else:
            vals = parts["values"].cpu().reshape(-1)
            blobs["values"].append(vals if keep is None else vals[keep])
        layers.append([lname, q.bits if q else 0, (q.int2_mode if q and q.bits == 2 else ""),
                       (q.group_size or 0) if q else 0, nm[0] if nm else 0, nm[1] if nm else 0, kind])
    stored, skipped = leftover_names(model)
    sd = model.state_dict()
    ldt = LEFTOVER_DTYPES[cfg.leftover_dtype]
    if stored:
        blobs["leftovers"].append(torch.cat([sd[k].detach().cpu().reshape(-1).to(ldt) for k in stored]))
    tensors = {}
    for k, parts in blobs.items():
        if not parts:
            continue
        if isinstance(parts[0], np.ndarray):
            tensors[k] = torch.from_numpy(np.concatenate(parts).astype(np.uint8))
        else:
            tensors[k] = torch.cat(parts).contiguous()
    meta = {"format": FORMAT, "version": VERSION, "name": name, "recipe": recipe,
            "arch": getattr(model, "arch", ""),
            "config": json.dumps(getattr(model, "config", {}), sort_keys=True, separators=(",", ":")),
            "compression": cfg.to_json(),
            "layers": json.dumps(layers, separators=(",", ":")),
            "leftovers": json.dumps(stored, separators=(",", ":")),
            "skipped": json.dumps(skipped, separators=(",", ":")),
            "leftover_dtype": cfg.leftover_dtype}
    for k, v in (extra or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


# ------------------------------------------------------------------ load
def read_header(path) -> tuple[int, dict]:
    """(header length in bytes incl. the 8-byte length prefix, parsed header JSON)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return 8 + n, json.loads(f.read(n))


def _unpack_layers(meta: dict, tensors: dict, shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """{layer name: reconstructed fp32 weight} from the blobs."""
    cur = {k: 0 for k in BLOBS}
    arrays = {k: (tensors[k].numpy() if k in ("codes", "index") else tensors[k])
              for k in BLOBS if k in tensors}
    out = {}
    for entry in json.loads(meta["layers"]):
        lname, bits, mode, g, n, m, kind = entry
        shape = shapes[lname]
        numel = math.prod(shape)
        mask = None
        if kind == "nm":
            nb = nm_index_nbytes(shape, n, m)
            mask = decode_nm(arrays["index"][cur["index"]:cur["index"] + nb], shape, n, m)
            cur["index"] += nb
        elif kind == "bitmap":
            nb = packed_nbytes(numel, 1)
            bits_ = np.unpackbits(arrays["index"][cur["index"]:cur["index"] + nb], count=numel,
                                  bitorder="little")
            mask = torch.from_numpy(bits_.astype(bool)).reshape(shape)
            cur["index"] += nb
        kept = numel if mask is None else int(mask.sum())
        q = _quant_from_layer(entry)
        parts = {"mask": mask, "quant": q}
        if q is not None:
            nb = packed_nbytes(kept, q.bits)
            vals = unpack_bits(arrays["codes"][cur["codes"]:cur["codes"] + nb], q.bits, kept)
            cur["codes"] += nb
            kept_codes = torch.from_numpy(vals.astype(np.int64) - _code_offset(q)).to(torch.int8)
            codes = torch.zeros(numel, dtype=torch.int8)
            if mask is None:
                codes = kept_codes
            else:
                codes[mask.reshape(-1)] = kept_codes
            rows = shape[0]
            k = numel // rows
            ng = 1 if not q.group_size or q.group_size >= k else math.ceil(k / q.group_size)
            ns = rows * ng
            scales = arrays["scales"][cur["scales"]:cur["scales"] + ns].float().reshape(rows, ng)
            cur["scales"] += ns
            parts.update(codes=codes.reshape(shape), scales=scales)
        else:
            vals = arrays["values"][cur["values"]:cur["values"] + kept]
            cur["values"] += kept
            full = torch.zeros(numel, dtype=torch.float16)
            if mask is None:
                full = vals.clone()
            else:
                full[mask.reshape(-1)] = vals
            parts["values"] = full.reshape(shape)
        out[lname] = dense_weight_from_parts(parts)
    for k in ("codes", "index", "values", "scales"):
        total = len(arrays[k]) if k in arrays else 0
        if cur[k] != total:
            raise ValueError(f"packed file is inconsistent: blob {k!r} has {total} entries, "
                             f"layers use {cur[k]}")
    return out


def load_packed(path, build: ModelBuilder, device="cpu"):
    """The deployed model of a packed file: the model `build(arch, **config)` makes, with
    dense fp32 weights reconstructed from the codes, in eval mode on `device`."""
    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not an {FORMAT} file")
    tensors = load_file(str(path), device="cpu")
    with torch.random.fork_rng(devices=[]):
        model = build(meta["arch"], **json.loads(meta["config"]))
    sd = model.state_dict()
    shapes = {n: tuple(sd[f"{n}.weight"].shape) for n, *_ in json.loads(meta["layers"])}
    new = {f"{n}.weight": w for n, w in _unpack_layers(meta, tensors, shapes).items()}
    stored = json.loads(meta["leftovers"])
    if stored:
        flat = tensors["leftovers"]
        i = 0
        for k in stored:
            t = sd[k]
            new[k] = flat[i:i + t.numel()].to(t.dtype).reshape(t.shape)
            i += t.numel()
        if i != flat.numel():
            raise ValueError("packed file is inconsistent: leftover blob size mismatch")
    for k in json.loads(meta["skipped"]):
        new[k] = sd[k]
    model.load_state_dict(new, strict=True)
    return model.to(device).eval()


# ------------------------------------------------------------------ size accounting
_DENSE_SIZES: dict = {}


def dense_sizes(arch: str, config_json: str, build: ModelBuilder) -> tuple[int, int]:
    """Bytes on disk of the dense fp32 and dense bf16 safetensors files of this model (with
    the arch and config header a dense checkpoint carries)."""
    key = (arch, config_json)
    if key not in _DENSE_SIZES:
        with torch.random.fork_rng(devices=[]):
            model = build(arch, **json.loads(config_json))
        header = {"arch": arch, "config": json.dumps(model.config, sort_keys=True)}
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        with tempfile.TemporaryDirectory() as d:
            p32 = Path(d) / "dense.safetensors"
            save_file(state, str(p32), metadata=header)
            p16 = Path(d) / "dense-bf16.safetensors"
            save_file({k: (v.to(torch.bfloat16) if v.is_floating_point() else v).contiguous()
                       for k, v in state.items()}, str(p16), metadata=header)
            _DENSE_SIZES[key] = (os.path.getsize(p32), os.path.getsize(p16))
    return _DENSE_SIZES[key]


CATEGORIES = {"codes": "quantized_payload", "values": "quantized_payload", "index": "index_bits",
              "scales": "scales", "leftovers": "float_leftovers"}


def size_report(path, build: ModelBuilder) -> dict:
    """Bytes on disk of a packed file by part, and ratios to the dense fp32 / bf16 files of
    the same model (written to temp files and measured). parts sum to `file_bytes`."""
    path = Path(path)
    file_bytes = os.path.getsize(path)
    header_bytes, header = read_header(path)
    meta = header.get("__metadata__", {})
    parts = {"quantized_payload": 0, "index_bits": 0, "scales": 0, "float_leftovers": 0,
             "header": header_bytes}
    for k, info in header.items():
        if k == "__metadata__":
            continue
        a, b = info["data_offsets"]
        parts[CATEGORIES.get(k, "float_leftovers")] += b - a
    fp32, bf16 = dense_sizes(meta.get("arch", ""), meta.get("config", "{}"), build)
    return {"path": str(path), "name": meta.get("name"), "recipe": meta.get("recipe"),
            "file_bytes": file_bytes, "parts": parts, "parts_sum": sum(parts.values()),
            "dense_fp32_bytes": fp32, "dense_bf16_bytes": bf16,
            "ratio_fp32": file_bytes / fp32, "ratio_bf16": file_bytes / bf16}
