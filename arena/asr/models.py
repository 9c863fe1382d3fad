"""ASR models behind one interface: padded waveforms + lengths -> CTC log-probs + lengths.

The log-mel front end is inside the model, so the output is differentiable with respect to
the waveform (what white-box attacks need). Every weight matrix lives in an ordinary
nn.Linear or nn.Conv1d, so the compression core can swap modules in place.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from arena.asr.text import Tokenizer
from arena.core.audio import SAMPLE_RATE, length_mask


class ModelUnavailable(RuntimeError):
    """Weights that are not on this machine (no download happens at run time)."""


class ASRModel(nn.Module):
    """Base class. Subclasses set `arch` and implement `forward`."""

    arch = "base"

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        self.tokenizer = Tokenizer()

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor):
        raise NotImplementedError

    @torch.no_grad()
    def transcribe(self, wave: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        log_probs, out_lengths = self(wave, lengths)
        return self.tokenizer.greedy_decode(log_probs, out_lengths)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class LogMelFrontend(nn.Module):
    """80 log-mel bands every 10 ms, normalised per utterance over its real frames.

    Each row is framed as if it were alone: the STFT's centre padding reflects the row's own
    samples at its true end (torch's `center=True` would reflect the batch's zero padding
    into the last frames), so a transcript never depends on what it is batched with."""

    hop = 160
    n_fft = 400

    def __init__(self, n_mels: int = 80):
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=self.n_fft, win_length=self.n_fft, hop_length=self.hop,
            n_mels=n_mels, power=2.0, center=False)

    def reflect_pad(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, T + n_fft): n_fft/2 samples reflected about each row's first and
        last real sample, zeros after that (what `center=True` does to an unpadded row)."""
        half = self.n_fft // 2
        pos = torch.arange(-half, wave.shape[1] + half, device=wave.device)[None, :]
        last = (lengths - 1).clamp_min(0)[:, None]
        idx = pos.abs()                                   # reflect about sample 0
        idx = torch.where(idx > last, 2 * last - idx, idx)  # reflect about the last real one
        valid = (idx >= 0) & (pos <= last + half)
        padded = torch.gather(wave, 1, idx.clamp(0, wave.shape[1] - 1).expand(wave.shape[0], -1))
        return padded * valid.to(wave.dtype)

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor):
        with torch.autocast(device_type=wave.device.type, enabled=False):
            padded = self.reflect_pad(wave.float(), lengths)
            feats = torch.log(self.mel(padded) + 1e-6)  # (B, F, T)
        frames = lengths // self.hop + 1
        mask = length_mask(frames, feats.shape[-1])[:, None, :].to(feats.dtype)
        count = mask.sum(-1, keepdim=True).clamp_min(1.0)
        mean = (feats * mask).sum(-1, keepdim=True) / count
        var = (((feats - mean) * mask) ** 2).sum(-1, keepdim=True) / count
        feats = (feats - mean) / torch.sqrt(var + 1e-5) * mask
        return feats, frames


class SpecAugment(nn.Module):
    """Frequency and time masking, active only in training mode."""

    def __init__(self, freq_masks=2, freq_width=10, time_masks=2, time_width=10):
        super().__init__()
        self.freq = torchaudio.transforms.FrequencyMasking(freq_width, iid_masks=True)
        self.time = torchaudio.transforms.TimeMasking(time_width, iid_masks=True)
        self.n_freq, self.n_time = freq_masks, time_masks

    def forward(self, feats):
        if not self.training:
            return feats
        x = feats.unsqueeze(1)
        for _ in range(self.n_freq):
            x = self.freq(x)
        for _ in range(self.n_time):
            x = self.time(x)
        return x.squeeze(1)


class SelfAttention(nn.Module):
    """Drop-in for nn.MultiheadAttention (time-first, key_padding_mask) with its four
    projections as plain nn.Linear, so that quantization and N:M masks can wrap them."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, query, key, value, key_padding_mask=None, need_weights=False):
        T, B, D = query.shape
        h = self.heads

        def split(x):
            return x.view(T, B, h, D // h).permute(1, 2, 0, 3)  # (B, h, T, d)

        q, k, v = split(self.query(query)), split(self.key(key)), split(self.value(value))
        mask = None
        if key_padding_mask is not None:
            mask = (~key_padding_mask)[:, None, None, :]  # True = attend
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.permute(2, 0, 1, 3).reshape(T, B, D)
        return self.out(y), None


class ConformerCTC(ASRModel):
    """Log-mel -> 4x convolutional subsampling -> torchaudio Conformer -> CTC head."""

    arch = "conformer-ctc"
    # ctc_upsample: the head emits that many output frames per 40 ms encoder frame, so
    # fast speech (up to ~1 character per encoder frame here) still fits CTC's alignment
    # (repeats need a blank between them) without paying for a longer encoder sequence
    DEFAULT = dict(d_model=144, num_layers=6, num_heads=4, ffn_dim=576, conv_kernel=15,
                   n_mels=80, dropout=0.1, ctc_upsample=2)

    def __init__(self, **config):
        cfg = {**self.DEFAULT, **config}
        super().__init__(cfg)
        d = cfg["d_model"]
        self.frontend = LogMelFrontend(cfg["n_mels"])
        self.spec_augment = SpecAugment()
        self.subsample = nn.Sequential(
            nn.Conv1d(cfg["n_mels"], d, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv1d(d, d, 3, stride=2, padding=1), nn.GELU())
        self.encoder = torchaudio.models.Conformer(
            input_dim=d, num_heads=cfg["num_heads"], ffn_dim=cfg["ffn_dim"],
            num_layers=cfg["num_layers"], depthwise_conv_kernel_size=cfg["conv_kernel"],
            dropout=cfg["dropout"])
        for layer in self.encoder.conformer_layers:
            layer.self_attn = SelfAttention(d, cfg["num_heads"], cfg["dropout"])
        self.head = nn.Linear(d, self.tokenizer.vocab_size * cfg["ctc_upsample"])

    def forward(self, wave, lengths):
        feats, frames = self.frontend(wave, lengths)  # zero beyond each row's frames
        feats = self.spec_augment(feats)
        # subsampling: each stride-2 conv sees zeros past a row's end, as it would alone
        x = feats
        for conv, act in ((self.subsample[0], self.subsample[1]), (self.subsample[2], self.subsample[3])):
            x = act(conv(x))
            frames = (frames - 1) // 2 + 1
            x = x * length_mask(frames, x.shape[-1])[:, None, :].to(x.dtype)
        frames = frames.clamp(min=1, max=x.shape[-1])
        # the encoder's layers are run here rather than through torchaudio's Conformer.forward,
        # whose padding mask takes max(lengths).item(): a device->host sync on every forward
        # (every attack step). The static frame count gives the same mask without one.
        pad = ~length_mask(frames, x.shape[-1])  # (B, T') True = padding
        x = x.permute(2, 0, 1)  # (T', B, d), time first as torchaudio's layers expect
        keep = (~pad).T[:, :, None].to(x.dtype)  # (T', B, 1)
        for layer in self.encoder.conformer_layers:
            x = conformer_layer(layer, x, pad, keep)
        x = x.transpose(0, 1)
        up = self.config["ctc_upsample"]
        logits = self.head(x).float()
        logits = logits.view(logits.shape[0], logits.shape[1] * up, -1)
        return F.log_softmax(logits, dim=-1), frames * up


def conformer_layer(layer, x: torch.Tensor, pad: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """torchaudio's ConformerLayer.forward with the padding masked in the convolution module
    too (torchaudio masks only attention): the depthwise conv's input is zeroed on padded
    frames, so valid frames see the zeros they would see at the end of an unpadded row.
    x (T, B, D); pad (B, T) True = padding; keep (T, B, 1) = 1 on valid frames."""
    x = x + 0.5 * layer.ffn1(x)
    if layer.convolution_first:
        x = x + _masked_conv_module(layer.conv_module, x, keep)
    h = layer.self_attn_layer_norm(x)
    h, _ = layer.self_attn(query=h, key=h, value=h, key_padding_mask=pad, need_weights=False)
    x = x + layer.self_attn_dropout(h)
    if not layer.convolution_first:
        x = x + _masked_conv_module(layer.conv_module, x, keep)
    x = x + 0.5 * layer.ffn2(x)
    return layer.final_layer_norm(x)


def _masked_conv_module(module, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    pointwise, glu, depthwise, *rest = module.sequential
    h = module.layer_norm(x)                         # (T, B, D)
    h = glu(pointwise(h.permute(1, 2, 0)))           # (B, C, T)
    h = h * keep.permute(1, 2, 0)                    # zero the padded frames before mixing time
    h = depthwise(h)
    for m in rest:
        h = m(h)
    return h.permute(2, 0, 1)


# torchaudio's English CTC bundles emit these labels; we permute the head to our alphabet
_BUNDLE_LABELS = ("-", "|", "E", "T", "A", "O", "N", "I", "H", "S", "R", "D", "L", "U", "M",
                  "W", "C", "F", "G", "Y", "P", "B", "V", "K", "'", "X", "J", "Q", "Z")


class Wav2Vec2CTC(ASRModel):
    """torchaudio's wav2vec2 architecture with a character CTC head (aux_num_out)."""

    arch = "wav2vec2-ctc"
    # wav2vec2-base sizes; tests pass a tiny config
    DEFAULT = dict(extractor_mode="group_norm",
                   extractor_conv_layer_config=None, extractor_conv_bias=False,
                   encoder_embed_dim=768, encoder_projection_dropout=0.1,
                   encoder_pos_conv_kernel=128, encoder_pos_conv_groups=16,
                   encoder_num_layers=12, encoder_num_heads=12, encoder_attention_dropout=0.1,
                   encoder_ff_interm_features=3072, encoder_ff_interm_dropout=0.0,
                   encoder_dropout=0.1, encoder_layer_norm_first=False, encoder_layer_drop=0.0,
                   normalize_waveform=False)

    def __init__(self, **config):
        cfg = {**self.DEFAULT, **config}
        super().__init__(cfg)
        params = {k: v for k, v in cfg.items() if k != "normalize_waveform"}
        self.net = torchaudio.models.wav2vec2_model(aux_num_out=self.tokenizer.vocab_size, **params)

    def forward(self, wave, lengths):
        if self.config["normalize_waveform"]:
            mask = length_mask(lengths, wave.shape[1]).to(wave.dtype)
            n = lengths.clamp_min(1)[:, None].to(wave.dtype)
            mean = (wave * mask).sum(1, keepdim=True) / n
            std = torch.sqrt((((wave - mean) * mask) ** 2).sum(1, keepdim=True) / n + 1e-7)
            wave = (wave - mean) / std * mask
        logits, out_lengths = self.net(wave, lengths)
        if out_lengths is None:
            out_lengths = torch.full((wave.shape[0],), logits.shape[1], dtype=torch.long)
        return F.log_softmax(logits.float(), dim=-1), out_lengths

    @classmethod
    def from_bundle(cls, bundle_name: str = "WAV2VEC2_ASR_BASE_960H") -> Wav2Vec2CTC:
        """Pretrained weights from torchaudio's pipeline bundle, only from the local hub cache."""
        bundle = getattr(torchaudio.pipelines, bundle_name, None)
        if bundle is None:
            raise ModelUnavailable(f"torchaudio has no pipeline bundle named {bundle_name!r}")
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(bundle._path).name
        if not path.is_file():
            raise ModelUnavailable(
                f"weights of {bundle_name} are not in the local torch hub cache ({path}); "
                "this machine downloads nothing at run time: copy the file there first")
        labels = tuple(bundle.get_labels())
        if labels != _BUNDLE_LABELS:
            raise ModelUnavailable(f"{bundle_name} has labels {labels}, not an English CTC set")
        pretrained = bundle.get_model()  # reads the cached file; no download
        cfg = dict(bundle._params)
        cfg.pop("aux_num_out", None)
        cfg["normalize_waveform"] = bool(getattr(bundle, "_normalize_waveform", False))
        model = cls(**cfg)
        state = pretrained.state_dict() if hasattr(pretrained, "state_dict") else pretrained
        state = {k.removeprefix("model."): v for k, v in state.items()}
        # reorder the aux head rows from the bundle's label order to ours
        ours = ["-"] + [("|" if c == " " else c.upper()) for c in model.tokenizer.alphabet]
        order = torch.tensor([_BUNDLE_LABELS.index(c) for c in ours])
        state["aux.weight"] = state["aux.weight"][order]
        state["aux.bias"] = state["aux.bias"][order]
        model.net.load_state_dict(state)
        return model


ARCHITECTURES: dict[str, type[ASRModel]] = {
    ConformerCTC.arch: ConformerCTC,
    Wav2Vec2CTC.arch: Wav2Vec2CTC,
}

# the smallest Conformer worth running (random weights, milliseconds a batch): what
# `arena validate` dry-runs a submission against, and what the tests build
TINY_CONFIG = dict(d_model=32, num_layers=1, num_heads=2, ffn_dim=64, conv_kernel=7, dropout=0.0)


def build_model(arch: str = ConformerCTC.arch, **config) -> ASRModel:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**config)


def save_checkpoint(model: ASRModel, path, extra: dict | None = None) -> None:
    """Weights as safetensors, with the architecture and config in the header metadata."""
    meta = {"arch": model.arch, "config": json.dumps(model.config, sort_keys=True)}
    for k, v in (extra or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)


def read_metadata(path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_checkpoint(path, device="cpu") -> ASRModel:
    """A model from a dense safetensors checkpoint, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    meta = read_metadata(path)
    if "arch" not in meta:
        raise ValueError(f"{path} has no 'arch' in its metadata: not an arena checkpoint")
    model = build_model(meta["arch"], **json.loads(meta.get("config", "{}")))
    model.load_state_dict(load_file(str(path), device="cpu"))
    return model.to(device).eval()
