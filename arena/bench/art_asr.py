"""An ART speech-recognizer estimator around an arena ASR model, for ART's attacks.

Written the way ART's own PyTorch speech recognizers are (art.estimators.speech_recognition:
PyTorchDeepSpeech, PyTorchEspresso), which is what Armory's ASR scenarios drive ART's PGD
through: the estimator subclasses ``PytorchSpeechRecognizerMixin``, ``SpeechRecognizerMixin``
and ``PyTorchEstimator``; attacks hand it numpy arrays, and ``loss_gradient(x, y)`` moves
them to the device, runs the model and the CTC loss against the transcripts ``y``, back-
propagates to the input and returns the gradient as numpy. ART's iterative attacks (e.g.
``ProjectedGradientDescent`` -> ``ProjectedGradientDescentNumpy`` for any estimator that is
not a PyTorch/TF classifier) do the step, the projection and the clipping in numpy, so every
step pays a host->device copy of the batch and a device->host copy of the gradient.

Differences from those estimators, each one in ART's favour or neutral:

* inputs may be a dense padded ``(B, T)`` float32 array (one copy to the device per call
  instead of one per utterance) or, as in ART's speech recognizers, an object array of 1-D
  arrays of different lengths;
* the true lengths of a dense padded batch are given out of band (``set_lengths``), since
  ART's interface has no place for them; without it every row counts as full length;
* the model stays in eval mode for gradients. ART's recognizers switch to train mode (with
  batch norm frozen) because cuDNN RNNs only backpropagate in train mode; our models have
  no RNN, and train mode would switch on dropout and SpecAugment, i.e. a different model.

Like ART's recognizers (whose models keep trainable parameters, since estimators also
`fit`), `loss_gradient` backpropagates with the weights' `requires_grad` on by default, so
each step also computes weight gradients, which an attack does not need (about 1.5x the
backward arithmetic). `freeze_weights=True` turns them off: the same arithmetic as ours.
"""
from __future__ import annotations

import numpy as np
import torch
from art.estimators.pytorch import PyTorchEstimator
from art.estimators.speech_recognition.speech_recognizer import (
    PytorchSpeechRecognizerMixin,
    SpeechRecognizerMixin,
)

from arena.asr.ctc import ctc_loss
from arena.core.audio import SAMPLE_RATE

__all__ = ["ArenaSpeechRecognizer"]


class ArenaSpeechRecognizer(PytorchSpeechRecognizerMixin, SpeechRecognizerMixin, PyTorchEstimator):
    """ART estimator for an ``arena.asr.models.ASRModel`` (waveform in, CTC log-probs out)."""

    estimator_params = PyTorchEstimator.estimator_params

    def __init__(self, model, device_type: str = "cpu", clip_values=(-1.0, 1.0),
                 freeze_weights: bool = False):
        super().__init__(model=None, clip_values=clip_values, channels_first=None,
                         preprocessing_defences=None, postprocessing_defences=None,
                         preprocessing=None, device_type=device_type)
        self._model = model.to(self._device).eval()
        self.freeze_weights = freeze_weights
        for p in self._model.parameters():
            p.requires_grad_(not freeze_weights)
        self.tokenizer = model.tokenizer
        self._lengths: np.ndarray | None = None
        self._input_shape = None  # variable-length audio, as in ART's speech recognizers

    # ------------------------------------------------------------ inputs
    def set_lengths(self, lengths) -> None:
        """True lengths (samples) of the rows of the dense padded batches that follow."""
        self._lengths = None if lengths is None else np.asarray(lengths, dtype=np.int64)

    def _batch(self, x: np.ndarray, requires_grad: bool):
        """(wave (B, T) on the device, lengths (B,), object_input)."""
        if x.dtype == object:
            rows = [torch.as_tensor(np.asarray(r, dtype=np.float32)) for r in x]
            lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
            wave = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True).to(self._device)
            obj = True
        else:
            x = np.asarray(x, dtype=np.float32)
            wave = torch.from_numpy(x).to(self._device)
            if self._lengths is not None and len(self._lengths) == len(x):
                lengths = torch.from_numpy(self._lengths)
            else:
                lengths = torch.full((len(x),), x.shape[1], dtype=torch.long)
            obj = False
        if requires_grad:
            wave.requires_grad_(True)
        return wave, lengths.to(self._device), obj

    def _ctc(self, log_probs, out_lengths, y, reduction: str):
        ids, id_lengths = self.tokenizer.encode_batch([str(t) for t in y])
        return ctc_loss(log_probs, out_lengths, ids, id_lengths, reduction)

    # ------------------------------------------------------------ ART interface
    def predict(self, x: np.ndarray, batch_size: int = 128, **kwargs) -> np.ndarray:
        """Greedy CTC transcripts, an array of str."""
        x_pre, _ = self._apply_preprocessing(x, None, fit=False)
        out: list[str] = []
        with torch.no_grad():
            for i in range(0, len(x_pre), batch_size):
                saved = self._lengths
                if saved is not None and len(saved) == len(x_pre):
                    self._lengths = saved[i:i + batch_size]
                try:
                    wave, lengths, _ = self._batch(x_pre[i:i + batch_size], requires_grad=False)
                finally:
                    self._lengths = saved
                log_probs, out_lengths = self._model(wave, lengths)
                out.extend(self.tokenizer.greedy_decode(log_probs, out_lengths))
        return np.array(out)

    def loss_gradient(self, x: np.ndarray, y: np.ndarray, **kwargs) -> np.ndarray:
        """Gradient of the summed CTC loss of transcripts `y` w.r.t. `x`, shaped like `x`."""
        x_pre, _ = self._apply_preprocessing(x, None, fit=False)
        wave, lengths, obj = self._batch(x_pre, requires_grad=True)
        for p in self._model.parameters():  # the model may be shared with other code
            p.requires_grad_(not self.freeze_weights)
        with torch.enable_grad():
            log_probs, out_lengths = self._model(wave, lengths)
            loss = self._ctc(log_probs, out_lengths, y, "sum")
            loss.backward()
        grad = wave.grad.cpu().numpy()  # the device->host round trip of every ART step
        if obj:
            results = np.empty(len(grad), dtype=object)
            results[:] = [grad[i, : int(n)] for i, n in enumerate(lengths.cpu())]
        else:
            results = grad.astype(x.dtype if x.dtype != object else np.float32, copy=False)
        return self._apply_preprocessing_gradient(x, results)

    def compute_loss(self, x: np.ndarray, y: np.ndarray, **kwargs) -> np.ndarray:
        """CTC loss per utterance."""
        x_pre, _ = self._apply_preprocessing(x, None, fit=False)
        with torch.no_grad():
            wave, lengths, _ = self._batch(x_pre, requires_grad=False)
            log_probs, out_lengths = self._model(wave, lengths)
            return self._ctc(log_probs, out_lengths, y, "none").cpu().numpy()

    def compute_loss_and_decoded_output(self, masked_adv_input: torch.Tensor, original_output: np.ndarray,
                                        **kwargs):
        """(mean CTC loss as a tensor, greedy transcripts) for ART's PyTorch ASR attacks."""
        real_lengths = kwargs.get("real_lengths")
        if real_lengths is None:
            lengths = torch.full((masked_adv_input.shape[0],), masked_adv_input.shape[1], dtype=torch.long)
        else:
            lengths = torch.as_tensor(np.asarray(real_lengths), dtype=torch.long)
        lengths = lengths.to(self._device)
        log_probs, out_lengths = self._model(masked_adv_input.to(self._device), lengths)
        loss = self._ctc(log_probs, out_lengths, original_output, "mean")
        decoded = self.tokenizer.greedy_decode(log_probs.detach(), out_lengths)
        return loss, np.array(decoded)

    def to_training_mode(self) -> None:
        self._model.train()

    def fit(self, x: np.ndarray, y: np.ndarray, batch_size: int = 128, nb_epochs: int = 10, **kwargs) -> None:
        raise NotImplementedError("training is not supported by this adapter")

    def get_activations(self, x: np.ndarray, layer, batch_size: int = 128, framework: bool = False):
        raise NotImplementedError

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    @property
    def input_shape(self):
        return self._input_shape

    @property
    def model(self):
        return self._model

    @property
    def device(self) -> torch.device:
        return self._device
