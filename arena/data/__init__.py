"""Speech data: the built-in synthetic corpus, manifests, loaders and batching."""
from arena.data.manifest import Utterance, ManifestError, read_manifest, load_audio
from arena.data.corpus import CorpusSpec, ensure_split, build_split

__all__ = ["Utterance", "ManifestError", "read_manifest", "load_audio", "CorpusSpec",
           "ensure_split", "build_split"]
