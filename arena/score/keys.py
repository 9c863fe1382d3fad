"""Cell keys: the content hash of everything that determines a cell (after the NIPS 2017
competition's eval_lib, where stored work is named by what produced it)."""
from __future__ import annotations

import hashlib
import json

import arena

# 3: padding-invariant model forward (the zoo files are unchanged, their function is not),
#    defense inputs split over anonymous rounds
SCORER_VERSION = "3"

# the adaptive evaluation's name on the board (":" is never in a submission name)
ADAPTIVE_ATTACK = "adaptive:apgd"


def content_key(**parts) -> str:
    blob = json.dumps({"harness": f"{arena.__version__}/{SCORER_VERSION}", **parts}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]
