"""Conditioning at sampling time: the labels asked for and guidance (docs/math.md, "Guidance").

A conditional model (``Network.num_classes > 0``) is trained on labelled data, with the null label
``num_classes`` in place of the true one with probability ``[train] label_dropout``. At sampling time
:class:`GuidedField` wraps the model's velocity or score: it evaluates the field with the asked labels
and with the null label in one batch, and the ``[sample] guidance`` guider (kind ``guider``; ``cfg``:
``(1 + w) f(x, t | y) - w f(x, t | null)``) combines the two. :func:`build_guidance` builds the
``[sample]`` dynamics on it once, when the pipeline is built; :func:`guided_dynamics` sets the labels
(and resets the guider) before each simulation. So every simulator (ODE or SDE, fixed-step or
adaptive) samples the guided model without knowing of labels, and sampling builds nothing. The labels
are a fixed cycle over the asked classes (no random draw), so the samples of a class are the same
whatever else is asked for the other rows.
"""

from __future__ import annotations

from typing import cast

import attrs
import torch
from torch import Tensor, nn

from flowkit.engine.records import Guidance, Pipeline, sample_times
from flowkit.errors import CapabilityError, ConfigError
from flowkit.interfaces import ODE, Guider, ScoreModel, VectorField, classifier_free


def num_classes(pipeline: Pipeline) -> int:
    """The classes the pipeline's model is conditioned on (0: an unconditional model)."""
    return int(getattr(pipeline.model, "num_classes", 0) or 0)


def check_conditioning(pipeline: Pipeline) -> None:
    """Refuse, at build time, what conditioning cannot do: a conditional model on unlabelled data,
    guidance for an unconditional model, classes the data does not have, guidance with an untrained
    null class."""
    classes = num_classes(pipeline)
    source, guide = pipeline.source, pipeline.sample.guidance
    if classes and pipeline.dataset.num_classes != classes:
        raise ConfigError(
            f"{source}: [model]: model '{pipeline.model.registered_name}' is conditioned on {classes} "
            f"classes, but dataset '{pipeline.dataset.registered_name}' has "
            f"{pipeline.dataset.num_classes or 'no'} labels; use a labelled dataset or an unconditional model"
        )
    if guide is None:
        return
    if guide.guide_model is not None:  # autoguidance: the guide model, not the null label
        if guide.stateful and pipeline.capture:
            raise ConfigError(
                f"{source}: [sample] guidance: guider '{guide.registered_name}' keeps state across the "
                "steps of a simulation, which a captured sampler graph cannot; use a backend that does "
                'not capture (e.g. [run] device = { kind = "cuda", capture = false })'
            )
        if classes:
            _check_classes(pipeline, classes)
        return
    if not classes:
        raise ConfigError(
            f"{source}: [sample] guidance: model '{pipeline.model.registered_name}' is not conditional "
            "(it takes no class label); remove guidance, or use a conditional model on labelled data "
            '(e.g. [model] kind = "unet" with [data] kind = "digits")'
        )
    _check_classes(pipeline, classes)
    train = pipeline.train
    if guide.needs_unconditional and train is not None and train.label_dropout == 0:
        scale = getattr(guide.params, "scale", None)
        what = f"scale = {scale}" if scale is not None else f"'{guide.registered_name}'"
        raise ConfigError(
            f"{source}: [sample] guidance {what} needs the unconditional (null-label) model, "
            "but [train] label_dropout = 0 never trains it; set [train] label_dropout (e.g. 0.1) or scale = 0"
        )
    if guide.stateful and pipeline.capture:
        raise ConfigError(
            f"{source}: [sample] guidance: guider '{guide.registered_name}' keeps state across the steps "
            "of a simulation, which a captured sampler graph cannot; use a backend that does not capture "
            '(e.g. [run] device = { kind = "cuda", capture = false }) or a guider without state'
        )


def _check_classes(pipeline: Pipeline, classes: int) -> None:
    """Refuse a list of ``[sample] guidance classes`` that are not the model's classes."""
    guide = pipeline.sample.guidance
    if guide is not None and isinstance(guide.classes, list):
        bad = [c for c in guide.classes if not 0 <= c < classes]
        if bad or not guide.classes:
            raise ConfigError(
                f"{pipeline.source}: [sample] guidance classes: {bad or '[]'} "
                f"{'are not classes' if bad else 'is empty'}; the dataset's classes are 0 .. {classes - 1} "
                '(or "all", or "null" for unconditional samples)'
            )


def sample_labels(pipeline: Pipeline, n: int) -> Tensor | None:
    """The class asked of each of ``n`` samples, ``(n,)`` int64 on the CPU; ``None`` for an
    unconditional model. ``[sample] guidance classes``: ``"all"`` cycles ``0, 1, ..., K-1, 0, ...``; a
    list cycles through it; ``"null"`` asks every sample for the null class ``K`` (unconditional)."""
    classes = num_classes(pipeline)
    if not classes:
        return None
    guide = pipeline.sample.guidance
    asked = guide.classes if guide is not None else "all"
    if asked == "null":
        return torch.full((n,), classes, dtype=torch.long)
    cycle = torch.arange(classes) if asked == "all" else torch.tensor(list(asked), dtype=torch.long)
    return cycle[torch.arange(n) % len(cycle)]


class GuidedField(nn.Module):
    """``forward(x (B, *D), t (B,))``: the guider's combination of ``f(x, t, y)`` and ``f(x, t, null)``
    for the labels ``y (B,)``; without a guider, classifier-free guidance of weight ``scale``:
    ``(1 + w) f(x, t, y) - w f(x, t, null)``.

    ``field`` is a velocity or a score taking ``(x, t, y)``. Both evaluations go through the network as
    one batch of ``2B`` (one forward pass instead of two); where the guider does not use the
    unconditional one (``w = 0``) only the conditional one runs. The labels are set
    (``field.labels = y``, which also resets the guider) before each simulation; whether they are all
    the null class is read then, once, so that ``forward`` never synchronises with the device (a
    captured CUDA graph cannot).
    """

    def __init__(
        self,
        field: nn.Module,
        scale: float = 0.0,
        null: int = 0,
        guider: Guider | None = None,
        guide: tuple[nn.Module, bool] | None = None,
    ) -> None:
        super().__init__()
        self.field, self.null, self.guider = field, int(null), guider
        # Autoguidance: the guide model's field and whether it takes the labels.
        self.guide_field: nn.Module | None = guide[0] if guide is not None else None
        self._guide_labels = guide is not None and guide[1]
        self.scale = float(scale if guider is None else getattr(guider.params, "scale", 0.0))
        self._guides = guider.needs_unconditional if guider is not None else self.scale != 0
        self._labels: Tensor | None = None
        self._unconditional = False

    @property
    def labels(self) -> Tensor | None:
        """The labels ``(B,)`` of the batch the field is evaluated on."""
        return self._labels

    @labels.setter
    def labels(self, labels: Tensor | None) -> None:
        self._labels = labels
        self._unconditional = labels is not None and bool((labels == self.null).all())
        if self.guider is not None:
            self.guider.reset()

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        y = self._labels
        if self.guide_field is not None:
            return self._autoguided(x, t, y)
        return self.guide(self.field, x, t)

    def guide(self, field: nn.Module, x: Tensor, t: Tensor, *times: Tensor) -> Tensor:
        """The guider's combination of ``field(x, t, *times, y)`` and ``field(x, t, *times, null)`` for
        the labels set; ``times`` are further per-sample times ``(B,)`` of the field (the second time
        ``r`` of a two-time model's average velocity, :class:`GuidedCompanion`)."""
        y = self._labels
        if y is None or y.shape[0] != x.shape[0]:
            got = "none" if y is None else str(y.shape[0])
            raise RuntimeError(f"guided field called on a batch of {x.shape[0]} with {got} labels")
        if not self._guides or self._unconditional:  # nothing to guide: one evaluation
            return field(x, t, *times, y=y)
        both = field(
            torch.cat([x, x]),
            torch.cat([t, t]),
            *(torch.cat([s, s]) for s in times),
            y=torch.cat([y, torch.full_like(y, self.null)]),
        )
        conditional, unconditional = both.chunk(2)
        if self.guider is None:
            return classifier_free(conditional, unconditional, self.scale)
        return self.guider.combine(conditional, unconditional, x, t)

    def _autoguided(self, x: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        """The guider's combination of the model's field and the guide model's, both at ``(x, t)``
        and the labels ``y`` (none for an unconditional model; the null label is a class like any)."""
        inputs = {} if y is None else {"y": y}
        field = self.field(x, t, **inputs)
        if not self._guides:
            return field
        guide = cast(nn.Module, self.guide_field)(x, t, **(inputs if self._guide_labels else {}))
        return cast(Guider, self.guider).combine(field, guide, x, t)


class GuidedCompanion(nn.Module):
    """Another role of the model than the trained one, guided like it: ``forward(x, t, *times)`` is
    ``guided``'s combination of ``role(x, t, *times, y)`` and ``role(x, t, *times, null)`` with the
    labels (and guider) of ``guided``, so setting ``guided.labels`` sets both.

    The dynamics ``mean-flow`` are built from the average velocity ``u(x, t, r)`` of a two-time model,
    not from its velocity: this is that role with the labels. With classifier-free guidance its value
    is ``(1 + w) u(x, t, r | y) - w u(x, t, r | null)``, the guided velocity at ``r = t`` but, for
    ``r > t``, not the average of the guided flow (the guided field is not the field the average was
    trained on; Geng et al. train guidance into the network instead).
    """

    def __init__(self, guided: GuidedField, role: nn.Module) -> None:
        super().__init__()
        self.role = role
        self._guided = [guided]  # a list: the guided field is not a submodule of this one

    def forward(self, x: Tensor, t: Tensor, *times: Tensor) -> Tensor:
        return self._guided[0].guide(self.role, x, t, *times)


class GuidedVelocity(GuidedField, VectorField):
    """The guided velocity ``(1 + w) u(x, t | y) - w u(x, t | null)``."""


class GuidedScore(GuidedField, ScoreModel):
    """The guided score ``(1 + w) s(x, t | y) - w s(x, t | null)`` (for DSM-trained models)."""


def build_guidance(pipeline: Pipeline, guide_model: tuple[nn.Module, bool] | None = None) -> Guidance | None:
    """The guided field and the ``[sample]`` dynamics built on it (``from_params``, once: at build
    time); ``None`` for an unconditional model without a guide model. ``guide_model``: the role of
    the guider's guide model and whether it takes labels (:func:`flowkit.engine.guide_model.load_guide`)."""
    null = num_classes(pipeline)
    if not null and guide_model is None:
        return None
    dynamics = pipeline.sample.dynamics
    guide = pipeline.sample.guidance
    wrappers = {"velocity": GuidedVelocity, "score": GuidedScore}
    # The trained role only: the other is converted from the guided one through the path (the
    # conversion is affine in the field, so guiding either gives the same guided dynamics).
    trained = pipeline.loss.trains if pipeline.loss is not None else "velocity"
    if guide is not None:
        grid = None if pipeline.sample.simulator.adaptive else sample_times(pipeline, torch.device("cpu"))
        try:
            guide.prepare(grid)
        except CapabilityError as exc:
            raise ConfigError(
                f"{pipeline.source}: [sample] guidance ('{guide.registered_name}'): {exc}"
            ) from None
    # A role that is neither (a discrete posterior, as log-probabilities) is guided as it is: the
    # guider's combination of its conditional and unconditional values.
    field = wrappers.get(trained, GuidedField)(pipeline.context.roles[trained], 0.0, null, guide, guide_model)
    roles: dict[str, nn.Module] = {trained: field}
    # A role the dynamics are built from that the trained one does not give through the path (the
    # average velocity of a two-time model) is guided alongside it, with the same labels.
    for role in sorted(type(dynamics).needs - {trained, *wrappers}):
        if role not in pipeline.context.roles:
            continue  # the dynamics refuse the model themselves, naming what it lacks
        if guide_model is not None:
            raise ConfigError(
                f"{pipeline.source}: [sample] guidance ('{guide.registered_name if guide else 'auto'}'): "
                f"dynamics '{dynamics.registered_name}' are built from the model's '{role}', which a "
                f"guide model does not offer; autoguidance guides only the '{trained}'"
            )
        roles[role] = GuidedCompanion(field, pipeline.context.roles[role])
    context = attrs.evolve(pipeline.context, roles=roles)
    built = type(dynamics).from_params(dynamics.params, context)
    built.registered_as(dynamics.registered_kind, dynamics.registered_name)
    return Guidance(field, cast(ODE, built))


def guided_dynamics(pipeline: Pipeline, labels: Tensor | None) -> ODE:
    """The ``[sample]`` dynamics for ``labels (B,)`` (on the device): the guided ones built with the
    pipeline, their labels set to ``labels``; the pipeline's own dynamics when the model is
    unconditional (``labels`` is ``None``) and not autoguided. Builds nothing."""
    guidance = pipeline.guidance
    if labels is None and (guidance is None or guidance.field.guide_field is None):
        return pipeline.sample.dynamics
    if guidance is None:  # a pipeline record made without build_pipeline
        guidance = pipeline.guidance = build_guidance(pipeline)
        if guidance is None:
            raise RuntimeError("labels given to guided_dynamics for an unconditional model")
    guidance.field.labels = labels
    return guidance.dynamics
