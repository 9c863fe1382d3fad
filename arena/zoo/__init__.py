"""The model zoo: the shipped model files and cards (this folder), the registry (name ->
file, card, loader), the builder (fine-tune, pack, evaluate, card) and the fast-device
conversion. Import the submodules (arena.zoo.registry, .build, .fast)."""
