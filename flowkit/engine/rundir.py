"""The run directory: claimed atomically, never overwritten; files in it written atomically.

A run directory holds ``pipeline.toml`` (resolved), ``model.pt`` (weights only), ``samples.npy``,
``metrics.json`` and what reporter plugins write. Every file is written to a temporary name in the
same directory and moved into place, so a crash never leaves a truncated file under the real name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from flowkit.errors import FlowkitError


def run_directory(template: str, source: str, out: str | None = None) -> Path:
    """The run directory: ``out``, or ``template`` with ``{name}`` the pipeline file's stem; never an
    existing non-empty one (a numbered sibling, ``NAME-2``, ``NAME-3``, ..., is claimed instead)."""
    name = Path(source).stem if not source.startswith("<") else "pipeline"
    base = Path(out if out is not None else template.replace("{name}", name))
    if not base.name:  # "." or "": number a sibling of the folder it names
        base = base.resolve()
    candidate, i = base, 1
    while not _claim(candidate):
        i += 1
        candidate = base.with_name(f"{base.name}-{i}")
    return candidate


def _claim(directory: Path) -> bool:
    """Make ``directory`` ours: a new one, or an empty one nobody else has claimed (atomic).

    Two runs started together must never share a directory: creating the directory, or the marker
    file in an existing empty one, succeeds for exactly one of them.
    """
    try:
        directory.mkdir(parents=True)
    except FileExistsError:
        if not directory.is_dir() or any(directory.iterdir()):
            return False
    try:
        with open(directory / "pipeline.toml", "x", encoding="utf-8"):
            return True
    except FileExistsError:
        return False


def write_atomic(path: Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Write ``path`` through ``write(handle)`` into a temporary file beside it, then move it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        write(handle)
    os.replace(tmp, path)
    return path


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """``data`` as indented JSON with sorted keys."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    return write_atomic(path, lambda handle: handle.write(text.encode()))


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    import tomli_w

    return write_atomic(path, lambda handle: tomli_w.dump(data, handle))


def write_array(path: Path, array: np.ndarray) -> Path:
    return write_atomic(path, lambda handle: np.save(handle, array))


def save_weights(path: Path, state: dict[str, Any]) -> Path:
    """Weights only (loadable with ``torch.load(weights_only=True)``), atomically."""
    return write_atomic(path, lambda handle: torch.save(state, handle))


def load_weights(path: str | Path, network: nn.Module, which: str = "model") -> int:
    """Load a run's weights into ``network``; ``which``: ``"model"`` (EMA) or ``"raw"``. Returns the step."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if which not in state:
        raise FlowkitError(
            f"{path}: no '{which}' weights (has: {', '.join(k for k in state if k != 'step')})"
        )
    network.load_state_dict(state[which])
    return int(state.get("step", 0))
