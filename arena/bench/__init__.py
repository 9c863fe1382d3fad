"""Benchmarks of the attack hot loop: our PGD against IBM ART's, and model FLOP utilisation.

`arena bench attacks` (arena.bench.attacks) and its `--mfu` part (arena.bench.mfu). ART is an
optional dependency (`pip install -e ".[bench]"`); arena.bench.art_asr imports it lazily.
"""
