
import pytest
import torch

from arena.asr.metrics import cer, wer
from arena.asr.models import ModelUnavailable, Wav2Vec2CTC, build_model, load_checkpoint, save_checkpoint
from arena.asr.text import Tokenizer
from arena.core.text import normalize_text


def test_normalisation():
    assert normalize_text("  What's   the Weather—in Café-Paris?! ") == "what's the weather in cafe paris"
    assert normalize_text("") == ""
    with pytest.raises(ValueError):
        normalize_text("?!", strict=True)


def test_wer_and_cer_on_known_strings():
    assert wer(["the cat sat"], ["the cat sat"]) == 0.0
    assert wer(["the cat sat"], ["the bat sat down"]) == pytest.approx(2 / 3)
    assert wer(["The Cat", "a b"], ["the cat!", "a"]) == pytest.approx(1 / 4)
    assert cer(["abcd"], ["abed"]) == pytest.approx(0.25)
    assert wer(["a b"], [""]) == 1.0
    with pytest.raises(ValueError):
        wer(["a"], [])


def test_greedy_ctc_decoding_merges_repeats_and_drops_blanks():
    tok = Tokenizer()
    # frames: h h _ e l _ l o <space> <space> _ w  -> "hello w"
    seq = ["h", "h", None, "e", "l", None, "l", "o", " ", " ", None, "w"]
    ids = [0 if c is None else tok.encode(c)[0] if c != " " else tok.alphabet.index(" ") + 1
           for c in seq]
    lp = torch.full((1, len(ids), tok.vocab_size), -10.0)
    lp[0, torch.arange(len(ids)), torch.tensor(ids)] = 0.0
    assert tok.greedy_decode(lp, torch.tensor([len(ids)])) == ["hello w"]
    assert tok.greedy_decode(lp, torch.tensor([5])) == ["hel"]
    targets, lengths = tok.encode_batch(["ab", "c'd e"])
    assert lengths.tolist() == [2, 5] and targets.shape == (2, 5)


def test_conformer_gradient_wrt_waveform(tiny_model):
    wave = (torch.randn(2, 16000) * 0.1).requires_grad_(True)
    lengths = torch.tensor([16000, 12000])
    lp, out_len = tiny_model(wave, lengths)
    assert lp.shape[0] == 2 and lp.shape[2] == 29 and out_len.tolist()[0] == lp.shape[1]
    assert out_len[1] < out_len[0]
    assert torch.allclose(lp.exp().sum(-1), torch.ones_like(lp[..., 0]), atol=1e-4)
    tok = tiny_model.tokenizer
    tg, tl = tok.encode_batch(["hello", "hi"])
    loss = torch.nn.functional.ctc_loss(lp.transpose(0, 1), tg, out_len, tl)
    loss.backward()
    g = wave.grad
    assert torch.isfinite(g).all() and g[0].abs().sum() > 0
    assert g[1, 12400:].abs().max() < 1e-6 * g[1].abs().max() + 1e-12  # padding gets (almost) none


def test_default_model_size_and_plain_modules():
    m = build_model("conformer-ctc")
    assert 2e6 <= m.num_parameters() <= 5e6
    assert not any(isinstance(x, torch.nn.MultiheadAttention) for x in m.modules())
    weights = sum(x.weight.numel() for x in m.modules() if isinstance(x, (torch.nn.Linear, torch.nn.Conv1d)))
    assert weights / m.num_parameters() > 0.95


def test_checkpoint_roundtrip(tmp_path, tiny_model):
    path = tmp_path / "m.safetensors"
    save_checkpoint(tiny_model, path, extra={"train_steps": 3})
    again = load_checkpoint(path)
    wave, lengths = torch.randn(1, 8000) * 0.1, torch.tensor([8000])
    assert torch.equal(tiny_model(wave, lengths)[0], again(wave, lengths)[0])
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_wav2vec2_small_config_same_interface():
    cfg = dict(extractor_conv_layer_config=[(16, 10, 5), (16, 3, 2), (16, 2, 2)],
               encoder_embed_dim=32, encoder_pos_conv_kernel=16, encoder_pos_conv_groups=4,
               encoder_num_layers=2, encoder_num_heads=2, encoder_ff_interm_features=64,
               normalize_waveform=True)
    m = build_model("wav2vec2-ctc", **cfg).eval()
    wave = (torch.randn(2, 8000) * 0.1).requires_grad_(True)
    lp, out_len = m(wave, torch.tensor([8000, 6000]))
    assert lp.shape[-1] == 29 and out_len[1] < out_len[0]
    lp[0].sum().backward()
    assert torch.isfinite(wave.grad).all() and wave.grad.abs().sum() > 0
    assert len(m.transcribe(wave.detach(), torch.tensor([8000, 6000]))) == 2


def test_wav2vec2_bundle_not_cached_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ModelUnavailable, match="not in the local torch hub cache"):
        Wav2Vec2CTC.from_bundle("WAV2VEC2_ASR_BASE_960H")
    with pytest.raises(ModelUnavailable, match="no pipeline bundle"):
        Wav2Vec2CTC.from_bundle("NOT_A_BUNDLE")
