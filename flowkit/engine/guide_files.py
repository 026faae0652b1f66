"""The files of a guide trained alongside (``[train] guide``) in its run directory.

Beside each ``checkpoint-NNNNNNN.pt`` the train stage writes ``guide-checkpoint-NNNNNNN.pt``, the
guide's training state at the same step (written first, so that a checkpoint never lacks its guide),
and beside ``model.pt`` the guide's sampling weights ``guide.pt`` (written first too). They are
written and checked like the model's: atomically, with their digest in the manifest
(:mod:`flowkit.engine.manifest`). A checkpoint whose guide file is missing, damaged or does not fit
the guide is skipped by resume as a damaged checkpoint is, naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flowkit.engine.alongside import GUIDE_FORMAT
from flowkit.engine.checkpoints import (
    checkpoint_name,
    list_checkpoints,
    load_state,
    load_weights,
    non_finite,
    save_state,
)
from flowkit.engine.manifest import forget
from flowkit.engine.records import Pipeline
from flowkit.errors import FlowkitError

#: The guide's sampling weights in a run directory (beside ``model.pt``).
GUIDE_WEIGHTS = "guide.pt"


def guide_checkpoint_name(step: int) -> str:
    """``guide-checkpoint-0000300.pt``: the guide's state beside ``checkpoint-0000300.pt``."""
    return f"guide-{checkpoint_name(step)}"


def save_guide_checkpoint(directory: Path, step: int, state: dict[str, Any]) -> Path:
    """The guide's training state at the model's ``step``, recorded in the manifest."""
    return save_state(directory / guide_checkpoint_name(step), state)


def save_guide_weights(directory: Path, weights: dict[str, Any]) -> Path:
    """The guide's sampling weights, ``guide.pt``, recorded in the manifest."""
    return save_state(directory / GUIDE_WEIGHTS, weights)


def prune_guide_checkpoints(directory: Path) -> None:
    """Remove the guide checkpoints whose model checkpoint was pruned (or never written)."""
    kept = {path.name for _, path in list_checkpoints(directory)}
    removed = []
    for path in directory.glob("guide-checkpoint-*.pt"):
        if path.is_file() and path.name.removeprefix("guide-") not in kept:
            path.unlink(missing_ok=True)
            removed.append(path.name)
    forget(directory, removed)


def attach_guide_state(state: dict[str, Any], path: Path, pipeline: Pipeline) -> None:
    """Put the guide's state saved beside the checkpoint ``path`` into ``state["guide"]``, checked
    against the pipeline's guide; a one-line :class:`FlowkitError` naming the checkpoint and the
    guide's file where it is missing or does not fit. Nothing to do without a guide alongside."""
    if pipeline.alongside is None:
        return
    file = path.with_name(f"guide-{path.name}")
    try:
        guide = load_state(file)
        why = _first_problem(guide, pipeline, int(state["step"]))
        if why is not None:
            raise FlowkitError(f"{file}: {why}")
    except FlowkitError as exc:
        raise FlowkitError(f"{path}: its guide's state cannot be used ({exc})") from None
    state["guide"] = guide


def load_guide_weights(pipeline: Pipeline, directory: Path, step: int | None = None) -> None:
    """Load the sampling weights of the guide trained alongside: ``guide.pt``, or the guide's
    checkpoint beside the model's at ``step`` (a run whose training has not finished). Nothing to do
    without a guide alongside."""
    alongside = pipeline.alongside
    if alongside is None:
        return
    file = directory / (GUIDE_WEIGHTS if step is None else guide_checkpoint_name(step))
    if not file.is_file():
        raise FlowkitError(f"{directory}: no {file.name}: the guide trained alongside was not saved")
    load_weights(file, alongside.model)
    alongside.model.eval()


def _first_problem(guide: dict[str, Any], pipeline: Pipeline, step: int) -> str | None:
    """Why the guide state ``guide`` cannot continue the pipeline's guide at the model's ``step``."""
    alongside = pipeline.alongside
    assert alongside is not None
    if guide.get("format") != GUIDE_FORMAT:
        return f"not a guide checkpoint (no '{GUIDE_FORMAT}' format tag)"
    missing = [k for k in ("step", "raw", "model", "optimizer", "generator") if k not in guide]
    if missing:
        return f"incomplete guide checkpoint (no {', '.join(missing)})"
    trained = guide["step"]
    if isinstance(trained, bool) or not isinstance(trained, int) or not 0 <= trained <= step:
        return f"its step is {trained!r}, not a count of at most the model's {step}"
    expected = {name: tuple(t.shape) for name, t in alongside.model.state_dict().items()}
    for part in ("raw", "model"):
        weights = guide[part]
        if (
            not isinstance(weights, dict)
            or {name: tuple(t.shape) for name, t in weights.items() if isinstance(t, Tensor)} != expected
        ):
            return f"its '{part}' weights do not fit [train] guide's model"
        bad = non_finite(weights)
        if bad:
            return f"its '{part}' weights are not finite ({bad})"
    generator = guide["generator"]
    size = pipeline.device.generator(0).get_state().numel()
    if not (isinstance(generator, Tensor) and generator.dtype == torch.uint8 and generator.shape == (size,)):
        return "its generator state is not one of this device's generators"
    optimizer = guide["optimizer"]
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("state"), dict):
        return "its optimizer state is not an AdamW state"
    params = [p for p in alongside.model.parameters() if p.requires_grad]
    for index, per_param in optimizer["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(per_param, dict):
            return f"its optimizer state names parameter {index!r}, which the guide has not"
        for key in ("exp_avg", "exp_avg_sq"):
            moment = per_param.get(key)
            if not isinstance(moment, Tensor) or moment.shape != params[index].shape:
                return f"its optimizer state of parameter {index} has no {key} of the parameter's shape"
    return None
