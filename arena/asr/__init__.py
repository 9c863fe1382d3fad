"""ASR models (waveform in, CTC log-probs out), tokenizer, decoding, metrics, training."""
from arena.asr.text import normalize_text, Tokenizer, TextError
from arena.asr.metrics import wer, cer
from arena.asr.models import ASRModel, build_model, load_checkpoint, save_checkpoint

__all__ = ["normalize_text", "Tokenizer", "TextError", "wer", "cer", "ASRModel", "build_model",
           "load_checkpoint", "save_checkpoint"]
