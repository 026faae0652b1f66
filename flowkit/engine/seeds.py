"""Seeds per stage: every random draw of a run derives from ``[run] seed`` and the stage's name."""

from __future__ import annotations

import hashlib


def stage_seed(seed: int, stage: str) -> int:
    """A 63-bit seed for ``stage`` derived from the run seed (independent streams per stage), so
    changing one stage (say, the number of training steps) leaves the draws of the others unchanged."""
    return int(hashlib.sha256(f"{seed}:{stage}".encode()).hexdigest()[:15], 16)
