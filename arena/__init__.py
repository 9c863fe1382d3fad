"""ASR Arena: adversarial robustness of compressed speech recognition models."""
__version__ = "0.1.0"
