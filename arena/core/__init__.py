"""The contract every stage shares: audio (sample rate, padded batches and their masks),
perturbation budgets, the transcript normal form, content hashes and where files live.
It imports nothing else of the project. Import the submodules (arena.core.audio, ...)."""
