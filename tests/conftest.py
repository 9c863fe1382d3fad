import os

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


TINY = dict(d_model=32, num_layers=1, num_heads=2, ffn_dim=64, conv_kernel=7, dropout=0.0)


@pytest.fixture
def tiny_model():
    from arena.asr.models import build_model

    torch.manual_seed(0)
    return build_model("conformer-ctc", **TINY).eval()


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    d = tmp_path / "data"
    monkeypatch.setenv("ARENA_DATA", str(d))
    return d
