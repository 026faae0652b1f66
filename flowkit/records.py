"""Records of the contract: plain values that components and hooks pass around.

Nothing here is a component: the broadcasting helper :func:`per_sample`, a schedule's
:class:`Coefficients`, what sampling produces (:class:`Samples`), what a loss may return besides a
tensor (:class:`LossValue`), what a component's ``setup`` receives when a stage starts
(:class:`StageContext`, with the run's seeds by :func:`stage_seed`) and what ``flowkit_register``
receives (:class:`Registrar`). It imports no other flowkit module, so every contract module may use it;
:mod:`flowkit.interfaces` re-exports each name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol, overload

import attrs
import torch
from torch import Tensor

#: What a trained network predicts: a velocity, a score, or the posterior ``log p_{1|t}(y | x_t)`` over
#: the values of each token of a discrete path (log-probabilities, ``(B, *D, V)``).
Role = Literal["velocity", "score", "posterior"]
#: ``progress(done, total)``: a simulator reports how far it is (steps, or thousandths of the time span).
Progress = Callable[[int, int], None]


@overload
def per_sample(values: Tensor, like: Tensor) -> Tensor: ...
@overload
def per_sample(values: float, like: Tensor) -> float: ...
def per_sample(values: Tensor | float, like: Tensor) -> Tensor | float:
    """View per-sample ``values (B,)`` as ``(B, 1, ..., 1)`` to broadcast over ``like (B, *D)``.

    A Python float (a constant coefficient) is returned as it is: it broadcasts without a tensor.
    """
    if isinstance(values, (int, float)):
        return float(values)
    return values.reshape((-1,) + (1,) * (like.dim() - 1))


@attrs.frozen
class Coefficients:
    """``alpha_t``, ``beta_t`` and their time derivatives for a Gaussian path, each ``(B,)`` or a float.

    A schedule returns constants (OT's ``alpha' = 1``) as Python floats: they broadcast for free.
    """

    alpha: Tensor | float
    beta: Tensor | float
    d_alpha: Tensor | float
    d_beta: Tensor | float

    def tensors(self, t: Tensor) -> Coefficients:
        """The same coefficients with each float constant as a tensor of ``t``'s shape, dtype and device
        (``torch.full_like(t, value)``): where the arithmetic must be that of tensors (``float / tensor``
        is computed as ``reciprocal * float``, not as a division)."""
        return Coefficients(
            *(
                c if isinstance(c, Tensor) else torch.full_like(t, c)
                for c in attrs.astuple(self, recurse=False)
            )
        )

    def broadcast(self, like: Tensor) -> Coefficients:
        """The same coefficients shaped ``(B, 1, ..., 1)`` to broadcast over ``like (B, *D)``."""
        return Coefficients(*(per_sample(c, like) for c in attrs.astuple(self, recurse=False)))


@attrs.define(frozen=True)
class NoParams:
    """Parameters of a component that takes none."""


@attrs.frozen
class Samples:
    """What the sampling stage produces: ``samples (N, *D)`` on the CPU, a short ``trajectory
    (T + 1, K, *D)`` of the first ``K`` of them (or ``None``), the function evaluations ``nfe``, and
    for a conditional model the labels ``y (N,)`` the samples were drawn for."""

    samples: Tensor
    trajectory: Tensor | None = None
    nfe: int = 0
    #: The class each sample was asked for ``(N,)`` int64 (the null class: unconditional), or ``None``.
    y: Tensor | None = None
    #: The draws of ``p_init`` the samples came from ``(N, *D)`` on the CPU (simulating them again
    #: with the run's simulator and sampling generator gives ``samples``), or ``None`` where the stage
    #: that sampled does not give them (a plugin's ``flowkit_sample``).
    x0: Tensor | None = None


@attrs.frozen
class LossValue:
    """What a loss may return instead of a scalar tensor: the ``loss`` to minimise (a scalar tensor,
    what is backpropagated) and extra ``scalars`` to report (each a scalar tensor, e.g. an unweighted
    error). The engine detaches the scalars, averages them like the loss (over the steps since the
    last log and over the ranks) and writes them at every log step as ``loss/<name>`` into the
    ``flowkit_log`` metrics (so into ``metrics.jsonl``); it reads them from the device only then."""

    loss: Tensor
    scalars: dict[str, Tensor] = attrs.Factory(dict)


def stage_seed(seed: int, stage: str) -> int:
    """A 63-bit seed for ``stage`` derived from the run seed (independent streams per stage), so
    changing one stage (say, the number of training steps) leaves the draws of the others unchanged."""
    return int(hashlib.sha256(f"{seed}:{stage}".encode()).hexdigest()[:15], 16)


def resolve_relative(path: str | Path, source: str) -> Path:
    """``path`` (``~`` expanded) resolved against the folder of the pipeline file ``source``; a path
    is left relative to the working directory when ``source`` names no file (``"<dict>"``)."""
    file = Path(path).expanduser()
    origin = Path(source)
    if not file.is_absolute() and origin.is_file():
        file = origin.parent / file
    return file


@attrs.frozen
class StageContext:
    """What :meth:`flowkit.interfaces.Component.setup` receives when a stage starts.

    ``stage`` is ``"train"``, ``"sample"``, ``"evaluate"`` (a run, or ``flowkit sample`` /
    ``flowkit evaluate`` on a finished one) or ``"likelihood"`` (``flowkit likelihood``); ``seed`` is
    the run's ``[run] seed``; ``device`` the run's torch device; ``directory`` the run directory
    (``None`` in the Python API before a run); ``source`` the pipeline file (``"<dict>"`` for a dict).
    """

    stage: str
    seed: int
    device: torch.device = attrs.field(factory=lambda: torch.device("cpu"))
    directory: Path | None = None
    source: str = "<pipeline>"
    #: Makes a generator on the run's device from a seed (the device backend's ``generator``).
    make_generator: Callable[[int], torch.Generator] | None = None
    #: Opens a finished run directory as a :class:`TrainedRun` (the engine's loader; ``None`` where
    #: no engine runs the stage): how a component reaches another run's model (reflow's teacher)
    #: without importing the engine.
    open_run: Callable[[Path], TrainedRun] | None = None

    def generator(self, name: str) -> torch.Generator:
        """A generator on :attr:`device` seeded from the run seed and ``name`` only (not the stage):
        the same draws in every stage and every command for the same seed, independent of every
        other stream of the run (``stage_seed(seed, "setup:" + name)``)."""
        seed = stage_seed(self.seed, f"setup:{name}")
        if self.make_generator is not None:
            return self.make_generator(seed)
        return torch.Generator(device=self.device).manual_seed(seed)

    def resolve(self, path: str | Path) -> Path:
        """``path`` resolved against the pipeline file's folder, as a component resolves a relative
        path in ``from_params`` (:func:`resolve_relative`)."""
        return resolve_relative(path, self.source)


class TrainedRun(Protocol):
    """A finished run opened by :attr:`StageContext.open_run`: its model with the sampling weights
    of ``model.pt`` and its ``[sample]`` sampler."""

    #: The run directory.
    directory: Path

    def draw(self, n: int, seed: int, steps: int | None = None) -> Samples:
        """``n`` draws of ``p_init`` and the samples the run's ``[sample]`` simulator and dynamics
        carry them to (``x0`` and ``samples``, ``(n, *D)`` on the CPU; ``y``: a conditional model's
        classes), from a sampling generator seeded by ``seed`` (the same ``seed``, the same draws
        bitwise); ``steps`` replaces ``[sample] steps``."""

    def weights(self) -> dict[str, Tensor]:
        """The state dict of the run's model as it samples (the EMA weights where it kept them)."""


class Registrar(Protocol):
    """What ``flowkit_register`` receives: adds components, kinds and config tables."""

    def add(self, kind: str, name: str, cls: type) -> None:
        """Register ``cls`` (derived from ``KINDS[kind]``) as the ``kind`` component ``name``."""

    def add_kind(self, kind: str, interface: type) -> None:
        """A new kind of component whose classes derive from ``interface``."""

    def add_table(self, name: str, params: type) -> None:
        """A pipeline table ``[name]`` validated against the attrs class ``params``."""
