"""Running untrusted plugins: bubblewrap, limits, the job folder contract."""
from arena.sandbox.bwrap import SandboxUnavailable, probe, require_sandbox
from arena.sandbox.jobs import (BatchOutcome, JobResult, SandboxLimits, run_attack_job,
                                run_defense_job)

__all__ = ["SandboxUnavailable", "probe", "require_sandbox", "BatchOutcome", "JobResult",
           "SandboxLimits", "run_attack_job", "run_defense_job"]
