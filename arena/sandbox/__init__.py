"""Running one plugin job in an isolated process (bubblewrap); see docs/design.md and docs/threat-model.md."""
from arena.sandbox.bwrap import SandboxUnavailable
from arena.sandbox.jobs import (
    BatchOutcome,
    JobResult,
    SandboxLimits,
    new_jobdir,
    run_attack_job,
    run_defense_job,
    run_defense_rounds,
)

__all__ = ["SandboxUnavailable", "SandboxLimits", "BatchOutcome", "JobResult", "run_attack_job",
           "run_defense_job", "run_defense_rounds", "new_jobdir"]
