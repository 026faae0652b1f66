"""Checkpoints: the whole training state in ``checkpoint-NNNNNNN.pt``, loaded without running code.

A checkpoint holds what continuing the run needs to reproduce the uninterrupted one bit for bit: the
raw weights, the EMA of the weights (and its update count), the optimiser and learning-rate schedule,
the step, every generator's state and the losses logged since the last log line. ``model.pt`` holds
the weights sampling uses (``model``: the EMA where enabled) and the raw ones.

Loading uses ``torch.load(weights_only=True)``: tensors and plain containers only, so a tampered file
can never execute code. Anything that is not such a file gives a one-line :class:`FlowkitError`.
Checkpoints and ``model.pt`` are written with their digest recorded in the run directory's manifest
and checked against it when read (:mod:`flowkit.engine.manifest`); :func:`newest_checkpoint` also
checks every field against the pipeline (:mod:`flowkit.engine.checkpoint_fields`) before one is used.
"""

from __future__ import annotations

import io
import pickle
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flowkit.engine.manifest import forget, mismatch, write_recorded
from flowkit.errors import FlowkitError

#: Format tag of a checkpoint file (a ``model.pt`` has none: it is weights only).
FORMAT = "flowkit-checkpoint-1"
_NAME = re.compile(r"checkpoint-(\d+)\.pt")


def checkpoint_name(step: int) -> str:
    """``checkpoint-0000300.pt``: the step, zero-padded so names sort in step order."""
    return f"checkpoint-{step:07d}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """The checkpoint files of a run directory, ``(step, path)``, oldest first."""
    found = []
    for path in directory.glob("checkpoint-*.pt"):
        match = _NAME.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def save_state(path: Path, state: dict[str, Any]) -> Path:
    """``state`` (tensors and plain containers) to ``path``, atomically and durably, with its digest
    recorded in the run directory's manifest."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return write_recorded(path, buffer.getvalue())


def load_state(path: str | Path) -> dict[str, Any]:
    """The dict saved in ``path``, on the CPU, loaded weights-only (never executing code).

    Raises a one-line :class:`FlowkitError` for a missing, truncated, foreign or tampered file, and
    for one whose bytes are not those recorded in its run directory's manifest (the most telling
    reason first: a file that does not even load says so).
    """
    path = Path(path)
    if path.is_dir():
        raise FlowkitError(f"{path}: a folder, not a weights file")
    if not path.is_file():
        raise FlowkitError(f"{path}: no such file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FlowkitError(f"{path}: cannot read it: {exc.strerror or type(exc).__name__}") from None
    state = _parse(path, data)
    why = mismatch(path, data)  # the bytes parsed are the bytes checked
    if why is not None:
        raise FlowkitError(f"{path}: {why}")
    return state


def _parse(path: Path, data: bytes) -> dict[str, Any]:
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FlowkitError(
            f"{path}: refused: the file holds more than tensors ({_short(first)}); flowkit loads weights "
            "only and never runs code from a file. Was it written by flowkit?"
        ) from None
    except Exception as exc:  # torch raises many types for a damaged file (EOFError, IndexError, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FlowkitError(
            f"{path}: not a readable weights file ({_short(first)}); it may be truncated"
        ) from None
    if not isinstance(state, dict):
        raise FlowkitError(
            f"{path}: not a flowkit weights file (it holds a {type(state).__name__}, not a dict)"
        )
    return state


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's training state, checked: its format tag, its keys, and finite weights."""
    state = load_state(path)
    if state.get("format") != FORMAT:
        raise FlowkitError(f"{path}: not a flowkit checkpoint (no '{FORMAT}' format tag)")
    missing = [key for key in ("step", "raw", "optimizer", "generators") if key not in state]
    if missing:
        raise FlowkitError(f"{path}: incomplete checkpoint (no {', '.join(missing)})")
    bad = non_finite(state["raw"])
    if bad:
        raise FlowkitError(f"{path}: the weights are not finite ({bad}); use an earlier checkpoint")
    return state


def newest_checkpoint(
    directory: Path, check: Callable[[dict[str, Any], Path], None] | None = None
) -> tuple[dict[str, Any] | None, Path | None, list[str]]:
    """The newest valid checkpoint of ``directory``: ``(state, path, skipped)``, where ``skipped``
    says, one line each, why newer files were passed over. ``(None, None, skipped)`` when none is valid.
    ``check(state, path)`` raises a :class:`FlowkitError` for a checkpoint that does not fit (its
    fields against the pipeline: :func:`flowkit.engine.checkpoint_fields.check_fields`)."""
    skipped: list[str] = []
    for _step, path in reversed(list_checkpoints(directory)):
        try:
            state = load_checkpoint(path)
            if check is not None:
                check(state, path)
            return state, path, skipped
        except FlowkitError as exc:
            skipped.append(str(exc))
    return None, None, skipped


def prune_checkpoints(directory: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (``keep = 0``: keep every one); returns the deleted."""
    if keep <= 0:
        return []
    removed = []
    for _step, path in list_checkpoints(directory)[:-keep]:
        if path.is_dir():  # not flowkit's file (a folder of that name): never removed
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    forget(directory, [path.name for path in removed])
    return removed


def non_finite(state: dict[str, Tensor] | Iterator[Tensor]) -> str:
    """``""`` when every floating tensor of ``state`` is finite; else the names of the first bad ones."""
    items = state.items() if isinstance(state, dict) else enumerate(state)
    bad = [
        str(name)
        for name, value in items
        if isinstance(value, Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]
    return ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")


def load_weights(path: str | Path, network: nn.Module, which: str = "model") -> int:
    """Load a run's weights (``model.pt`` or a checkpoint) into ``network``; ``which``: ``"model"``
    (what sampling uses: the EMA where enabled) or ``"raw"``. Returns the step they are from."""
    return load_weights_from(load_state(path), path, network, which)


def load_weights_from(
    state: dict[str, Any], path: str | Path, network: nn.Module, which: str = "model"
) -> int:
    """Load the ``which`` weights of ``state`` (read from ``path``) into ``network``; as
    :func:`load_weights`, for a state already read and checked."""
    if which not in state:
        has = [k for k in state if isinstance(state[k], dict)]
        raise FlowkitError(f"{path}: no '{which}' weights (has: {', '.join(has) or 'none'})")
    try:
        network.load_state_dict(state[which])
    except (RuntimeError, TypeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise FlowkitError(
            f"{path}: its '{which}' weights do not fit the pipeline's [model] ({_short(first)}); "
            "was [model] changed since the run?"
        ) from None
    return int(state.get("step", 0))
