"""The losses of discrete flow matching on a :class:`~flowkit_discrete.path.MixturePath`: the network
predicts, token by token, the posterior ``p_{1|t}(. | x_t)`` over the vocabulary (logits ``(B, *D, V)``).

* ``cross-entropy``: ``-log p_{1|t}(z | x_t)`` averaged over the tokens (Gat et al. 2024, eq. 27);
* ``generalized-kl``: the Bregman divergence of the model's CTMC rates from the conditional ones,
  ``-kappa'/(1 - kappa) [p_{1|t}(x_t | x_t) - delta_z(x_t) + (1 - delta_z(x_t)) log p_{1|t}(z | x_t)]``
  (Shaul et al. 2024; ``docs/math.md``, "Discrete flow matching").

Both train the role ``posterior``: the network's logits as log-probabilities (``log_softmax``), what
the ``ctmc`` dynamics sample from and what guidance combines.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from flowkit.errors import CapabilityError
from flowkit.interfaces import BuildContext, Loss, ProbabilityPath, Role, call_network, per_sample
from flowkit_discrete.path import MixturePath, vocabulary_of

#: The role a discrete model plays: the log-posterior ``log p_{1|t}(y | x_t)``, ``(B, *D, V)``.
POSTERIOR: Role = "posterior"


class Posterior(nn.Module):
    """A logits network as the log-posterior: ``forward(x (B, *D), t (B,), **inputs) -> (B, *D, V)``,
    ``log_softmax`` of the network's output over the vocabulary."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: Tensor, t: Tensor, **inputs: Tensor | None) -> Tensor:
        return torch.log_softmax(call_network(self.network, x, t, **inputs), dim=-1)


class DiscreteLoss(Loss):
    """What both losses share: times uniform on the path's ``t_range``, ``x_t`` from the mixture path,
    the log-posterior of the network; the output shape ``(*D, V)``."""

    trains: ClassVar[Role] = POSTERIOR
    #: The registered name (what a message names before the registry stamps the instance).
    name: ClassVar[str] = "discrete"

    def __init__(self, params: Any = None, *, vocabulary: int = 0) -> None:
        super().__init__(params)
        self.vocabulary = int(vocabulary)

    @classmethod
    def from_params(cls, params: Any, context: BuildContext) -> DiscreteLoss:
        """Build for the vocabulary of the pipeline's categorical dataset."""
        return cls(params, vocabulary=vocabulary_of(context, f"loss '{cls.name}'"))

    def check(self, path: ProbabilityPath) -> None:
        if not isinstance(path, MixturePath):
            raise CapabilityError(
                f"loss '{self.display_name}' trains the posterior of a discrete mixture path, but path "
                f"'{path.display_name}' is not one; use [path] kind = \"mixture\""
            )

    def output_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Logits of the ``V`` values of every token: ``(*D, V)``."""
        if self.vocabulary < 2:
            raise CapabilityError(f"loss '{self.display_name}' was built without a vocabulary")
        return (*data_shape, self.vocabulary)

    def model_role(self, network: nn.Module, path: ProbabilityPath) -> nn.Module:
        return Posterior(network)

    def draw(
        self,
        model: nn.Module,
        path: ProbabilityPath,
        z: Tensor,
        generator: torch.Generator | None,
        y: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor, MixturePath]:
        """``(t (B,), x_t (B, *D), log p_{1|t} (B, *D, V), path)`` for the data tokens ``z``."""
        self.check(path)
        assert isinstance(path, MixturePath)
        if z.is_floating_point():
            raise CapabilityError(
                f"loss '{self.display_name}' trains on categorical tokens (int64), but the data is "
                f'{z.dtype}; use a categorical dataset (e.g. kind = "checkerboard-grid")'
            )
        lo, hi = path.t_range
        t = lo + (hi - lo) * torch.rand(z.shape[0], generator=generator, device=z.device)
        x = path.sample(z, t, generator=generator)
        log_posterior = model(x, t) if y is None else model(x, t, y=y)
        return t, x, log_posterior, path

    def __call__(
        self,
        model: nn.Module,
        path: ProbabilityPath,
        z: Tensor,
        generator: torch.Generator | None = None,
        y: Tensor | None = None,
    ) -> Tensor:
        t, x, log_posterior, mixture = self.draw(model, path, z, generator, y)
        return self.objective(log_posterior, z, x, t, mixture)

    @abc.abstractmethod
    def objective(self, log_posterior: Tensor, z: Tensor, x: Tensor, t: Tensor, path: MixturePath) -> Tensor:
        """The mean over tokens of the per-token loss; ``log_posterior (B, *D, V)``, tokens ``(B, *D)``."""


class CrossEntropyLoss(DiscreteLoss):
    """``E -log p_{1|t}(z | x_t)``, mean over tokens: the posterior's cross-entropy with the data."""

    name = "cross-entropy"

    def objective(self, log_posterior: Tensor, z: Tensor, x: Tensor, t: Tensor, path: MixturePath) -> Tensor:
        return -log_posterior.gather(-1, z.unsqueeze(-1)).mean()


class GeneralizedKLLoss(DiscreteLoss):
    """The generalized KL of the conditional rates from the model's, mean over tokens (the flow_matching
    library's ``MixturePathGeneralizedKL``); weighs times near the data by ``kappa' / (1 - kappa)``."""

    name = "generalized-kl"

    def objective(self, log_posterior: Tensor, z: Tensor, x: Tensor, t: Tensor, path: MixturePath) -> Tensor:
        log_p_data = log_posterior.gather(-1, z.unsqueeze(-1)).squeeze(-1)
        # p_{1|t}(x_t | x_t): zero where x_t is the mask, which the model never predicts
        inside = x < path.vocabulary
        p_current = log_posterior.exp().gather(-1, x.clamp(max=path.vocabulary - 1).unsqueeze(-1)).squeeze(-1)
        p_current = p_current * inside
        same = (x == z).to(log_posterior.dtype)
        coefficient = per_sample(path.jump_coefficient(t.to(log_posterior.dtype)), z)
        return (-coefficient * (p_current - same + (1 - same) * log_p_data)).mean()
