"""The character vocabulary and greedy CTC decoding."""
from __future__ import annotations

import torch

from arena.core.text import ALPHABET, SPACES, normalize_text

BLANK = 0


class Tokenizer:
    """Characters of ALPHABET as ids 1..28; id 0 is the CTC blank."""

    def __init__(self, alphabet: str = ALPHABET):
        self.alphabet = alphabet
        self._index = {c: i + 1 for i, c in enumerate(alphabet)}

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet) + 1

    def encode(self, text: str) -> list[int]:
        text = normalize_text(text)
        return [self._index[c] for c in text]

    def encode_batch(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded targets (B, S) and their lengths, as torch's ctc_loss takes them."""
        ids = [self.encode(t) for t in texts]
        lengths = torch.tensor([len(i) for i in ids], dtype=torch.long)
        targets = torch.zeros(len(ids), max(1, int(lengths.max()) if ids else 1), dtype=torch.long)
        for row, seq in enumerate(ids):
            targets[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return targets, lengths

    def decode_ids(self, ids) -> str:
        return "".join(self.alphabet[i - 1] for i in ids if 0 < i <= len(self.alphabet))

    def greedy_decode(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        """Best path: argmax per frame, merge repeats, drop blanks; (B, T, V) -> B strings."""
        best = log_probs.argmax(dim=-1).cpu()
        out = []
        for row, n in zip(best, lengths.cpu().tolist()):
            seq = row[: int(n)]
            keep = torch.ones_like(seq, dtype=torch.bool)
            keep[1:] = seq[1:] != seq[:-1]
            chars = [int(i) for i in seq[keep] if int(i) != BLANK]
            out.append(SPACES.sub(" ", self.decode_ids(chars)).strip())
        return out
