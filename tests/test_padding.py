"""A transcript must not depend on what the utterance is batched with: every zoo model,
alone vs inside a batch padded to 3x its length (issue: the padding-invariant model)."""
import pytest
import torch

from arena.core.audio import pad_waves
from arena.data.batching import AudioSet
from arena.data.corpus import DEFAULT_SEED, ensure_split
from arena.zoo.registry import available, load_model

ZOO = available()


@pytest.fixture(scope="module")
def dev_utterances(tmp_path_factory):
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ARENA_DATA", str(tmp_path_factory.mktemp("data")))
        manifest = ensure_split("dev", DEFAULT_SEED, size=4, progress=False)
        data = AudioSet.from_manifest(manifest)
    return [torch.as_tensor(data.wave(i)) for i in range(len(data))]


def test_the_zoo_is_shipped():
    assert {"dense", "int8", "int4", "int2", "2:4", "1:4", "int4+2:4"} <= set(ZOO)


@pytest.mark.parametrize("name", ZOO)
def test_alone_equals_padded_batch(name, dev_utterances):
    model = load_model(name)
    with torch.no_grad():
        for w in dev_utterances:
            alone, n_alone = model(w[None], torch.tensor([len(w)]))
            longer = torch.zeros(3 * len(w))
            longer[: len(w)] = w  # a batch whose longest row is 3x this one
            wave, lengths = pad_waves([w, longer])
            batched, n_batched = model(wave, lengths)
            n = int(n_alone[0])
            assert int(n_batched[0]) == n
            assert (alone[0, :n] - batched[0, :n]).abs().max().item() < 1e-3
            assert model.transcribe(w[None], torch.tensor([len(w)])) == \
                model.transcribe(wave, lengths)[:1]


def test_padding_values_do_not_leak(tiny_net):
    """Whatever the padding holds (not just zeros), the valid frames do not change."""
    torch.manual_seed(1)
    w = 0.1 * torch.randn(2, 8000)
    lengths = torch.tensor([8000, 5000])
    noisy = w.clone()
    noisy[1, 5000:] = torch.randn(3000)
    with torch.no_grad():
        a, n = tiny_net(torch.where(torch.arange(8000) < lengths[:, None], w, 0.0), lengths)
        b, _ = tiny_net(noisy, lengths)
    k = int(n[1])
    assert (a[1, :k] - b[1, :k]).abs().max().item() < 1e-4
