"""Packed file format: bit-exact round trips, loaded model == fake-quantized twin, size
accounting, and the size target of the default model for int4+2:4."""
from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch

from arena.asr.models import build_model
from arena.compress import ZOO_RECIPES, compress_, parse_recipe
from arena.compress.masks import nm_mask
from arena.compress.packed import (
    decode_nm,
    encode_nm,
    export_packed,
    load_packed,
    pack_bits,
    read_header,
    size_report,
    unpack_bits,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tiny_net):
    return tiny_net


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8, 13, 44])
def test_pack_bits_roundtrip(bits):
    rng = np.random.default_rng(bits)
    v = rng.integers(0, 2 ** bits, size=1001, dtype=np.uint64)
    buf = pack_bits(v, bits)
    assert len(buf) == (1001 * bits + 7) // 8
    assert np.array_equal(unpack_bits(buf, bits, 1001), v)


@pytest.mark.parametrize("shape", [(8, 16), (5, 14), (16, 32, 3), (3, 9, 2)])
@pytest.mark.parametrize("nm", [(2, 4), (1, 4), (4, 8), (3, 4)])
def test_nm_index_roundtrip(shape, nm):
    mask = nm_mask(torch.randn(shape), *nm)
    assert torch.equal(decode_nm(encode_nm(mask, *nm), shape, *nm), mask)


def test_index_is_frugal():
    mask = nm_mask(torch.randn(144, 576), 2, 4)
    groups = 144 * 576 // 4
    assert len(encode_nm(mask, 2, 4)) * 8 / groups <= 2.61  # log2(6) = 2.585


@pytest.mark.parametrize("recipe", list(ZOO_RECIPES) + ["int8+2:4", "4:8", "int4g16", "sp50",
                                                         "int2f+2:4"])
def test_loaded_matches_fake_quantized_twin(tiny, tmp_path, recipe):
    model = compress_(copy.deepcopy(tiny), parse_recipe(recipe))
    path = export_packed(model, tmp_path / "m.packed.safetensors", name=recipe,
                         extra={"test_wer": 0.5})
    loaded = load_packed(path, build_model)
    assert type(loaded).__name__ == "ConformerCTC"
    assert not any("Compressed" in type(m).__name__ for m in loaded.modules())
    # weights reconstructed bit for bit
    for name, mod in model.named_modules():
        if hasattr(mod, "packed_parts"):
            with torch.no_grad():
                w = mod.effective_weight()
            assert torch.equal(loaded.get_submodule(name).weight, w), name
    torch.manual_seed(1)
    wave, lengths = 0.1 * torch.randn(3, 9000), torch.tensor([9000, 7000, 4000])
    with torch.no_grad():
        a, la = model(wave, lengths)
        b, lb = loaded(wave, lengths)
    assert torch.equal(la, lb)
    assert (a - b).abs().max() < 1e-4
    assert model.transcribe(wave, lengths) == loaded.transcribe(wave, lengths)
    rep = size_report(path, build_model)
    assert rep["parts_sum"] == rep["file_bytes"] == os.path.getsize(path)
    _, header = read_header(path)
    assert header["__metadata__"]["format"] == "arena-packed"
    assert header["__metadata__"]["test_wer"] == "0.5"


def test_bitmap_roundtrip_exact(tiny, tmp_path):
    model = compress_(copy.deepcopy(tiny), parse_recipe("int4+sp50"))
    loaded = load_packed(export_packed(model, tmp_path / "x.safetensors"), build_model)
    lin = model.encoder.conformer_layers[0].ffn1.sequential[1]
    assert torch.equal((loaded.encoder.conformer_layers[0].ffn1.sequential[1].weight != 0),
                       lin.current_mask() & (lin.packed_parts()["codes"] != 0))


def test_trained_state_survives(tiny, tmp_path):
    """BatchNorm statistics and moved biases (not the fresh-model values) are stored."""
    model = compress_(copy.deepcopy(tiny), parse_recipe("int8"))
    bn = model.encoder.conformer_layers[0].conv_module.sequential[3]
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        model.head.bias.add_(0.123456789)
    loaded = load_packed(export_packed(model, tmp_path / "x.safetensors"), build_model)
    lbn = loaded.encoder.conformer_layers[0].conv_module.sequential[3]
    assert torch.equal(lbn.running_mean, bn.running_mean)
    assert torch.equal(loaded.head.bias, model.head.bias)  # snapped to fp16 on export
    assert torch.equal(model.head.bias, model.head.bias.half().float())


def test_size_target_default_model(tmp_path):
    """HARD TARGET: default model, int4+2:4 packed <= 9.4% of the dense fp32 file."""
    from arena.asr.models import build_model

    torch.manual_seed(0)
    model = build_model()
    compress_(model, parse_recipe("int4+2:4"))
    path = export_packed(model, tmp_path / "int4+2-4.packed.safetensors")
    rep = size_report(path, build_model)
    assert rep["parts_sum"] == rep["file_bytes"]
    assert rep["dense_fp32_bytes"] > 11_000_000
    assert rep["ratio_fp32"] <= 0.094, rep


@pytest.fixture
def tiny_zoo(tiny, tmp_path, monkeypatch):
    from arena.asr.models import save_checkpoint
    from arena.zoo.registry import zoo_path

    monkeypatch.setenv("ARENA_ZOO", str(tmp_path / "zoo"))
    save_checkpoint(tiny, zoo_path("dense"))
    for r in ("int8", "int4+2:4"):
        model = compress_(copy.deepcopy(tiny), parse_recipe(r))
        export_packed(model, zoo_path(r), name=r,
                      extra={"test_wer": 0.25, "fine_tuned": True} if r == "int8" else None)
    cards = tmp_path / "zoo" / "cards"
    cards.mkdir()
    (cards / "int4+2-4.json").write_text('{"test_wer": 0.5, "rel_wer_regression": 0.2}')
    return tmp_path / "zoo"


def test_models_command_and_catalog(tiny_zoo):
    import json

    from click.testing import CliRunner

    from arena.cli import main
    from arena.zoo.registry import load_model

    res = CliRunner().invoke(main, ["models", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert set(rows) == {"dense", "int8", "int4+2:4"}
    assert rows["dense"]["size_ratio"] == 1.0 and rows["dense"]["wer"] is None
    assert rows["int8"]["wer"] == 0.25 and rows["int8"]["fine_tuned"] is True
    assert rows["int4+2:4"]["wer"] == 0.5 and rows["int4+2:4"]["rel_wer_regression"] == 0.2
    assert rows["int4+2:4"]["fine_tuned"] is None
    assert rows["int4+2:4"]["bytes"] == os.path.getsize(rows["int4+2:4"]["path"])
    assert 0 < rows["int4+2:4"]["size_ratio"] < rows["int8"]["size_ratio"] < 1
    assert type(load_model("int4+2:4")).__name__ == "ConformerCTC"


def test_bench_models_cpu(tiny_zoo):
    from arena.bench.models import bench_models
    from arena.zoo.fast import is_2to4, to_fast_device

    rows = bench_models(["int8", "int4+2:4"], device="cpu", batch=1, seconds=0.5, repeats=2,
                        print_table=False)
    assert [r["name"] for r in rows] == ["int8", "int4+2:4"]
    for r in rows:
        assert r["latency_ms"] > 0 and r["latency_ratio"] > 0 and r["baseline"].startswith("dense fp32")
    fast = to_fast_device("int4+2:4", "cpu")
    assert fast.fast_paths == {}
    assert is_2to4(fast.encoder.conformer_layers[0].ffn1.sequential[1].weight)
    assert not is_2to4(torch.ones(4, 8))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fast_device_cuda_matches(tiny_zoo):
    from arena.zoo.fast import to_fast_device
    from arena.zoo.registry import load_model

    ref = load_model("int4+2:4")
    fast = to_fast_device(load_model("int4+2:4"), "cuda")
    wave, lengths = 0.1 * torch.randn(2, 8000), torch.tensor([8000, 6000])
    with torch.no_grad():
        a, _ = ref(wave, lengths)
        b, _ = fast(wave.cuda(), lengths.cuda())
    assert (a - b.cpu()).abs().max() < 0.1
