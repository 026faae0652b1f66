"""Facts about the machine and the process that any plugin may read: the process's place among those
torchrun started, and the memory free on the host.

Part of what plugins may import (as the contract): it reads the environment and the operating system
only, and imports neither the engine nor torch (joining a process group is the engine's:
:mod:`flowkit.engine.distributed`).
"""

from __future__ import annotations

import os
from pathlib import Path

from flowkit.errors import FlowkitError


def launched() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from torchrun's environment, ``None`` outside torchrun."""
    if "WORLD_SIZE" not in os.environ:
        return None
    try:
        rank = int(os.environ.get("RANK", "0"))
        size = int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise FlowkitError(
            "RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them); found "
            f"RANK={os.environ.get('RANK')!r}, WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}, "
            f"LOCAL_RANK={os.environ.get('LOCAL_RANK')!r}"
        ) from None
    return rank, size, local


def launched_size() -> int:
    """The number of processes torchrun started (1 outside torchrun)."""
    found = launched()
    return found[1] if found is not None else 1


def local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK``; 0 outside torchrun): its GPU under NCCL."""
    found = launched()
    return found[2] if found is not None and found[1] > 1 else 0


def cpu_memory_available() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` (what can be allocated without swapping), else the
    physical memory, else ``None``."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None
