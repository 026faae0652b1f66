"""A third-party-style plugin module for the contract's stage-time capabilities.

It imports only the contract, as a plugin package would, and registers through ``flowkit_register``:

* ``prepared-blob`` (dataset): its one-time preparation (the blob's centre, drawn from the run's seed)
  lives in ``setup``; every call is recorded in ``SETUPS``;
* ``jvp-flow`` (loss): a small MeanFlow-like loss that differentiates the model forward with
  ``torch.func.jvp`` (``forward_mode_ad = True``);
* ``reporting-cfm`` (loss): flow matching with a weight of 2, reporting the unweighted error;
* ``counting-flow`` (dynamics): the flow ODE, counting its ``from_params`` calls in ``BUILDS``;
* ``[contract]`` (a table).

The module is on ``PYTHONPATH`` of the processes tests/test_distributed.py starts (``tests/``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import torch
from torch import Tensor, nn

from flowkit import hookimpl
from flowkit.interfaces import (
    ODE,
    BuildContext,
    Dataset,
    Loss,
    LossValue,
    ProbabilityPath,
    StageContext,
    VectorField,
)
from flowkit.params import param

#: ``(stage, seed, directory, centre)`` of every ``prepared-blob`` set-up, in order.
SETUPS: list[tuple[str, int, Any, Tensor]] = []
#: How many times ``counting-flow`` was built.
BUILDS: list[str] = []


class PreparedBlob(Dataset):
    """A 2D Gaussian blob around a centre that ``setup`` draws (the "expensive preparation")."""

    @attrs.define(frozen=True)
    class Params:
        scale: float = param(0.5, doc="Standard deviation of the blob.")

    centre: Tensor | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return (2,)

    def setup(self, stage: StageContext) -> None:
        generator = stage.generator("prepared-blob")
        self.centre = torch.randn(2, generator=generator, device=generator.device)
        SETUPS.append((stage.stage, stage.seed, stage.directory, self.centre.clone()))

    def sample(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | None = None
    ) -> Tensor:
        if self.centre is None:
            raise RuntimeError("dataset 'prepared-blob' was not set up")
        noise = torch.randn((n, 2), generator=generator, device=device)
        return self.centre.to(noise.device) + self.params.scale * noise


class Velocity(VectorField):
    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.network(x, t)


class JvpFlow(Loss):
    """``|u(x_t, t) - sg(v + 0.1 du/dt)|^2`` with ``du/dt = d/dt u(x_t + s v, t + s)`` at ``s = 0``
    (``torch.func.jvp``): a MeanFlow-like target needing the model's forward derivative."""

    trains = "velocity"
    forward_mode_ad: ClassVar[bool] = True

    def model_role(self, network: nn.Module, path: ProbabilityPath) -> nn.Module:
        return Velocity(network)

    def __call__(
        self, model: nn.Module, path: ProbabilityPath, z: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        x0 = torch.randn(z.shape, generator=generator, device=z.device)
        t = torch.rand((z.shape[0],), generator=generator, device=z.device)
        x = (1 - t[:, None]) * x0 + t[:, None] * z
        v = z - x0
        u, du = torch.func.jvp(lambda x, t: model(x, t), (x, t), (v, torch.ones_like(t)))
        target = (v + 0.1 * du).detach()
        return ((u - target) ** 2).mean()


class ReportingCFM(Loss):
    """Flow matching weighted by 2, reporting the unweighted error as ``unweighted``."""

    trains = "velocity"

    @attrs.define(frozen=True)
    class Params:
        name: str = param("unweighted", doc="The reported scalar's name.")

    def model_role(self, network: nn.Module, path: ProbabilityPath) -> nn.Module:
        return Velocity(network)

    def __call__(
        self, model: nn.Module, path: ProbabilityPath, z: Tensor, generator: torch.Generator | None = None
    ) -> LossValue:
        x0 = torch.randn(z.shape, generator=generator, device=z.device)
        t = torch.rand((z.shape[0],), generator=generator, device=z.device)
        x = (1 - t[:, None]) * x0 + t[:, None] * z
        error = ((model(x, t) - (z - x0)) ** 2).mean()
        return LossValue(2 * error, {self.params.name: error})


class CountingFlow(ODE):
    """The flow ODE of the velocity; every ``from_params`` is recorded in ``BUILDS``."""

    needs = frozenset({"velocity"})

    def __init__(self, params: Any = None, velocity: nn.Module | None = None) -> None:
        super().__init__(params)
        self.velocity = velocity

    @classmethod
    def from_params(cls, params: Any, context: BuildContext) -> CountingFlow:
        BUILDS.append("built")
        return cls(params, context.role("velocity", needed_by="dynamics 'counting-flow'"))

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        assert self.velocity is not None
        return self.velocity(x, t)


@attrs.define(frozen=True)
class ContractTable:
    """``[contract]``: a plugin's own table."""

    level: int = param(1, doc="A number.")


@hookimpl
def flowkit_register(registry: Any) -> None:
    registry.add("dataset", "prepared-blob", PreparedBlob)
    registry.add("loss", "jvp-flow", JvpFlow)
    registry.add("loss", "reporting-cfm", ReportingCFM)
    registry.add("dynamics", "counting-flow", CountingFlow)
    registry.add_table("contract", ContractTable)
