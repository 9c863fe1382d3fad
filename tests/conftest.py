
import pytest
import torch

from arena.asr.models import TINY_CONFIG

torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)




@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is as fast, and on a shared 2-core machine two
    spinning OpenMP threads were measured 10-20x slower under contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_net():
    """A tiny random Conformer-CTC shared by a test module (eval mode)."""
    from arena.asr.models import build_model

    torch.manual_seed(0)
    return build_model("conformer-ctc", **TINY_CONFIG).eval()


@pytest.fixture
def tiny_model():
    from arena.asr.models import build_model

    torch.manual_seed(0)
    return build_model("conformer-ctc", **TINY_CONFIG).eval()


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    d = tmp_path / "data"
    monkeypatch.setenv("ARENA_DATA", str(d))
    return d


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A tiny random Conformer-CTC saved as a model file (what a sandbox job targets)."""
    from arena.asr.models import build_model, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_checkpoint(build_model("conformer-ctc", **TINY_CONFIG), path)
    path.chmod(0o644)    # as zoo files are: the plugin may read its own target
    return path
