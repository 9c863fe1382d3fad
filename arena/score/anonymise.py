"""What a defense sees: anonymous rounds.

A defense must transcribe the clean audio and every attacked copy of the same utterances.
If one job held two copies of an utterance, the defense could group near-identical inputs
and answer each group with the transcript of its cleanest member. So the versions are split
over rounds, one sandbox job each: a round holds every utterance at most once, which version
of an utterance lands in which round is drawn per utterance from the OS's cryptographic RNG,
and so are the order and the names the defense sees. The assignment is kept in the harness.
Cost: one job per version count (1 + attacks x budgets still missing) instead of one.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

_RNG = secrets.SystemRandom()


@dataclass(frozen=True)
class RoundItem:
    name: str         # what the defense sees: random, meaningless
    version: int      # index of the input set (clean, or one attack cell's audio)
    uid: str          # the utterance (never shown)


def assign_rounds(versions_of: dict[str, list[int]]) -> list[list[RoundItem]]:
    """Rounds for utterances that each come in some versions (utterance -> version indices):
    round r holds at most one version of every utterance; every (utterance, version) pair
    is in exactly one round; items are shuffled and named at random."""
    n_rounds = max((len(v) for v in versions_of.values()), default=0)
    rounds: list[list[RoundItem]] = [[] for _ in range(n_rounds)]
    for uid, versions in versions_of.items():
        order = list(versions)
        _RNG.shuffle(order)
        slots = _RNG.sample(range(n_rounds), len(order))
        for version, r in zip(order, slots):
            rounds[r].append(RoundItem(secrets.token_hex(8), version, uid))
    for items in rounds:
        _RNG.shuffle(items)
    return [items for items in rounds if items]


def restore(rounds: list[list[RoundItem]], hypotheses: list[dict[str, str | None]]
            ) -> dict[tuple[int, str], str | None]:
    """(version, utterance) -> the defense's transcript, from each round's answers by name."""
    out: dict[tuple[int, str], str | None] = {}
    for items, answers in zip(rounds, hypotheses):
        for item in items:
            out[(item.version, item.uid)] = answers.get(item.name)
    return out
