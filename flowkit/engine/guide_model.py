"""The guide model of autoguidance (a guider whose :attr:`~flowkit.interfaces.Guider.guide_model`
names a run directory or checkpoint): loaded once, when the pipeline is built. The guide trained
alongside the model (:data:`~flowkit.interfaces.ALONGSIDE`) is the pipeline's own
(:mod:`flowkit.engine.alongside`), its weights those the run trains or saved.

The guide's architecture comes from its run's resolved ``pipeline.toml`` (it may be a smaller
network than the model's), its weights from the named checkpoint, or else the run's ``model.pt``, or
else its newest checkpoint (the sampling weights: the EMA where the run kept one). It must train the
same role on data of the same shape; it is given the labels where it is conditional on the same
classes, and none where it is unconditional.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from flowkit.engine.checkpoints import list_checkpoints, load_weights
from flowkit.engine.records import Pipeline
from flowkit.errors import ConfigError, FlowkitError
from flowkit.interfaces import ALONGSIDE


def _run_of(guide: Path) -> tuple[Path, Path]:
    """``(pipeline.toml, weights)`` of a run directory or of a checkpoint file in one."""
    if guide.is_dir():
        weights = guide / "model.pt"
        if not weights.is_file():
            found = list_checkpoints(guide)
            if not found:
                raise FlowkitError(f"{guide}: neither model.pt nor a checkpoint (has the run trained?)")
            weights = found[-1][1]
        return guide / "pipeline.toml", weights
    if guide.is_file():
        return guide.parent / "pipeline.toml", guide
    raise FlowkitError(f"{guide}: no such run directory or checkpoint")


def load_guide(pipeline: Pipeline, build: Callable[[Path], Pipeline]) -> tuple[nn.Module, bool] | None:
    """The guide's trained role (on the pipeline's device, in eval mode, no gradients) and whether it
    takes the labels; ``None`` when the pipeline's guider has no guide model. ``build`` builds a
    pipeline from a resolved ``pipeline.toml``."""
    guider = pipeline.sample.guidance
    where = guider.guide_model if guider is not None else None
    if where is None:
        return None
    origin = f"{pipeline.source}: [sample] guidance guide"
    if where == ALONGSIDE:
        if pipeline.alongside is None:
            raise ConfigError(
                f'{origin} = "alongside": [train] has no guide to train alongside the model; add one, '
                "e.g. [train] guide = { model = { hidden = [32, 32] }, steps = 500 }"
            )
        return pipeline.alongside.role, pipeline.alongside.takes_labels
    try:
        resolved, weights = _run_of(where)
        if not resolved.is_file():
            raise FlowkitError(f"{resolved.parent}: not a run directory (no resolved pipeline.toml)")
        guide = build(resolved)
        if guide.loss is None:
            raise FlowkitError(f"{resolved}: the guide's model is exact, not trained; name a trained run")
        load_weights(weights, guide.network)
    except FlowkitError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    trained = pipeline.loss.trains if pipeline.loss is not None else "velocity"
    if guide.loss.trains != trained:
        raise ConfigError(
            f"{origin}: the guide ({resolved.parent}) trains a {guide.loss.trains}, the model a {trained}; "
            "guide with a run of the same loss"
        )
    if tuple(guide.dataset.shape) != tuple(pipeline.dataset.shape):
        raise ConfigError(
            f"{origin}: the guide ({resolved.parent}) models data of shape {tuple(guide.dataset.shape)}, "
            f"the model {tuple(pipeline.dataset.shape)}; guide with a run on the same data"
        )
    classes = int(getattr(pipeline.model, "num_classes", 0) or 0)
    guide_classes = int(getattr(guide.model, "num_classes", 0) or 0)
    if guide_classes and guide_classes != classes:
        raise ConfigError(
            f"{origin}: the guide ({resolved.parent}) is conditioned on {guide_classes} classes, the "
            f"model on {classes or 'none'}; guide with a run of the same classes or an unconditional one"
        )
    guide.network.to(pipeline.device.device).eval().requires_grad_(False)
    return guide.context.roles[trained], bool(guide_classes)
