"""One CPU thread count per job, taken from the config, whichever engine starts the job.

Snakemake exports OMP_NUM_THREADS (and the BLAS variants) as the rule's `threads`, which the Snakefile
takes from the stage's `cpus` resource. DVC and a command typed by hand export nothing, and torch and
faiss then use every core of the machine. A float sum split over a different number of threads rounds
differently, so the same stage would write different numbers depending on which engine ran it and on how
many cores the machine has. Setting the config's count before torch or faiss is imported closes that gap.
"""

from __future__ import annotations

import os
import sys
from typing import Any

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def stage_cpus(cfg: dict[str, Any], rule: str, wildcards: dict[str, str] | None = None) -> int | None:
    """The `cpus` resource of the plan's stage for this job; None for a job outside the plan."""
    from research_rl import workflow

    try:
        cpus = workflow.resources(cfg, rule, wildcards).get("cpus")
    except KeyError:
        return None
    return int(cpus) if cpus else None


def pin_threads(cfg: dict[str, Any], rule: str, wildcards: dict[str, str] | None = None) -> int | None:
    """Fix this process's thread count: the engine's where it set one (Snakemake clamps `threads` to the
    cores it was given), else the stage's `cpus`. Returns the count, or None where neither is known."""
    given = os.environ.get("OMP_NUM_THREADS")
    count = int(given) if given and given.isdigit() and int(given) > 0 else stage_cpus(cfg, rule, wildcards)
    if count is None:
        return None
    for name in THREAD_VARIABLES:
        os.environ[name] = str(count)
    if "torch" in sys.modules:  # already imported: its pool read the environment at import time
        sys.modules["torch"].set_num_threads(count)
    return count
