"""The guide trained alongside the model (``[train] guide``): autoguidance's weaker model, built with
the pipeline and trained in the same train stage, on the same batches.

Autoguidance (docs/math.md, "Autoguidance") wants a guide that makes the model's errors, only more of
them: the same task, less training and less capacity. :func:`build_alongside` builds it from
``[model]`` with the keys ``[train] guide model`` changes (a smaller ``hidden``), its initial weights
from a seed of its own. :class:`GuideTrainer` trains it for ``[train] guide steps`` on the batches
the model trains on (the data, labels and paired noise of each step), with its own AdamW, learning
rate schedule, weight average and loss generator, so that the model trains exactly as it would
without a guide: nothing the model draws is drawn differently. Its state is part of the training
state and is saved in a file of its own beside each checkpoint (:mod:`flowkit.engine.guide_files`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import attrs
import torch
from torch import Tensor, nn

from flowkit.config import Location, Structurer
from flowkit.engine.distributed import World
from flowkit.engine.optim import WeightAverage, adamw, restore_optimizer, scheduler, update
from flowkit.engine.records import Alongside
from flowkit.engine.seeds import stage_seed
from flowkit.errors import ConfigError
from flowkit.interfaces import Loss, LossValue, Model, ProbabilityPath

if TYPE_CHECKING:
    from flowkit.engine.records import Pipeline
    from flowkit.engine.sections import RunSection, TrainSection

#: Format tag of the guide's part of a checkpoint (``guide-checkpoint-NNNNNNN.pt``).
GUIDE_FORMAT = "flowkit-guide-checkpoint-1"


def build_alongside(
    build: Structurer,
    model_table: Any,
    run: RunSection,
    train: TrainSection,
    loss: Loss,
    path: ProbabilityPath,
    top: Location,
) -> Alongside | None:
    """The guide ``[train] guide`` describes (``None`` where it is absent): ``[model]`` with the keys
    the guide's ``model`` table changes (a table with another ``kind`` stands alone), built from the
    seed stage ``guide-init`` so that the model's own initial weights are untouched."""
    guide = train.guide
    if guide is None:
        return None
    where = top.child("train").child("guide")
    base = {"kind": model_table} if isinstance(model_table, str) else dict(cast(Mapping, model_table))
    changes = dict(guide.model)
    other_kind = "kind" in changes and changes["kind"] != base.get("kind")
    table = changes if other_kind else {**base, **changes}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stage_seed(run.seed, "guide-init"))
        model = cast(Model, build.build("model", table, where.child("model")))
    if not model.trainable:
        raise where.child("model").error(
            f"model '{model.registered_name}' is exact; the guide is a network trained alongside the model"
        )
    steps = guide.steps if guide.steps is not None else train.steps
    if steps > train.steps:
        raise where.child("steps").error(
            f"the guide trains {steps} steps, beyond [train] steps = {train.steps}; it trains on the "
            "run's batches, so at most as many"
        )
    classes = int(getattr(build.context.model, "num_classes", 0) or 0)
    guide_classes = int(getattr(model, "num_classes", 0) or 0)
    if guide_classes and guide_classes != classes:
        raise where.child("model").error(
            f"the guide is conditioned on {guide_classes} classes, the model on {classes or 'none'}; "
            "give it the model's classes or none (class_conditional = false)"
        )
    network = run.device.prepare_module(model)
    role = loss.roles(network, path)[loss.trains]
    settings = attrs.evolve(
        train,
        steps=steps,
        lr=guide.lr if guide.lr is not None else train.lr,
        ema_decay=guide.ema_decay if guide.ema_decay is not None else train.ema_decay,
        guide=None,
    )
    return Alongside(model, network, role, settings, bool(guide_classes))


class GuideTrainer:
    """The guide's optimisation, one step per step of the model's for its first ``[train] guide steps``.

    :meth:`step` takes the batch the model just trained on (``z`` and the loss's keywords: labels,
    paired noise) and updates the guide on it; the loss's own draws (times, noise) come from the
    guide's generator (seed stage ``guide-loss``). :meth:`state_dict` and :meth:`load_state_dict` are
    its whole state: a run resumed from a checkpoint trains the same guide, bitwise on the CPU.
    """

    def __init__(self, pipeline: Pipeline, world: World) -> None:
        alongside, loss = pipeline.alongside, pipeline.loss
        assert alongside is not None and loss is not None
        if world.distributed:
            raise ConfigError(
                f"{pipeline.source}: [train] guide: a guide trained alongside trains in one process; "
                "run without torchrun, or train the guide as a run of its own and name it "
                '(guide = "runs/NAME")'
            )
        self.pipeline, self.loss_fn, self.cfg = pipeline, loss, alongside.train
        self.model, self.role = alongside.model, alongside.role
        self.takes_labels = alongside.takes_labels
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.params:
            raise ConfigError(f"{pipeline.source}: [train] guide: the guide has no trainable parameters")
        self.optimizer = adamw(self.params, self.cfg)
        self.scheduler = scheduler(self.optimizer, self.cfg)
        self.ema = WeightAverage(self.model, self.cfg.ema_decay) if self.cfg.ema_decay > 0 else None
        self.generator = pipeline.device.generator(stage_seed(pipeline.run.seed, "guide-loss"))
        #: Steps the guide has trained (it stops at ``[train] guide steps``).
        self.trained = 0
        self.stochastic = any(isinstance(m, nn.Dropout) and m.p > 0 for m in self.model.modules())
        device = pipeline.device.device
        self._rng_devices = [device] if device.type == "cuda" else []
        self.model.train()

    @property
    def done(self) -> bool:
        """Whether the guide has trained all its steps."""
        return self.trained >= self.cfg.steps

    def step(self, z: Tensor, keywords: Mapping[str, Any]) -> Tensor | None:
        """One update of the guide on the model's batch; its loss (detached), or ``None`` once it is done."""
        if self.done:
            return None
        if not self.stochastic:
            return self._step(z, keywords)
        with torch.random.fork_rng(devices=self._rng_devices):  # its own dropout masks, per step
            torch.manual_seed(stage_seed(self.pipeline.run.seed, f"guide-dropout:{self.trained + 1}"))
            return self._step(z, keywords)

    def _step(self, z: Tensor, keywords: Mapping[str, Any]) -> Tensor:
        given = dict(keywords) if self.takes_labels else {k: v for k, v in keywords.items() if k != "y"}
        with self.pipeline.device.autocast():
            value = self.loss_fn(self.role, self.pipeline.path, z, generator=self.generator, **given)
        loss = value.loss if isinstance(value, LossValue) else value
        update(loss, self.optimizer, self.scheduler, self.ema, self.params, self.cfg.grad_clip)
        self.trained += 1
        return loss.detach()

    def tensors(self) -> list[Tensor]:
        """Its weights, raw and averaged (checked finite before every checkpoint)."""
        return [*self.params, *(self.ema.averages if self.ema is not None else [])]

    def weights(self) -> dict[str, Any]:
        """Weights-only state (``guide.pt``): ``model`` (the average where enabled) and ``raw``."""
        raw = self.model.state_dict()
        averaged = self.ema.state_dict() if self.ema is not None else raw
        return {"step": self.trained, "model": averaged, "raw": raw}

    def state_dict(self) -> dict[str, Any]:
        """Its whole training state: tensors and plain containers only."""
        return {
            **self.weights(),
            "format": GUIDE_FORMAT,
            "ema_updates": self.ema.updates if self.ema is not None else 0,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state_dict`; the rate is this pipeline's, as the model's is."""
        self.trained = int(state["step"])
        self.model.load_state_dict(state["raw"])
        if self.ema is not None:
            self.ema.load_averages(state["model"], int(state.get("ema_updates", self.trained)))
        restore_optimizer(self.optimizer, self.scheduler, self.cfg, self.trained, state)
        self.generator.set_state(state["generator"])

    def finish(self) -> None:
        """Put the weights guidance uses (the average, where enabled) into the guide, for sampling."""
        if self.ema is not None:
            self.model.load_state_dict(self.ema.state_dict())
        self.model.eval()
