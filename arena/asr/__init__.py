"""ASR models (waveform in, CTC log-probs out), text normal form and decoding, WER/CER,
training and evaluation. Import the submodules (arena.asr.models, .text, .metrics, ...)."""
