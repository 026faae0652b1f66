"""The mixture path of discrete flow matching (Gat et al. 2024, arXiv 2407.15595), ``docs/math.md``,
"Discrete flow matching".

Each token of ``x_t`` is the data token ``z`` with probability ``kappa_t`` and a draw of the source
``p_0`` otherwise, independently across tokens: ``p_t(x | z) = kappa_t delta_z(x) + (1 - kappa_t) p_0(x)``
with ``kappa_t = t^n``. The source is the mask (every token the extra state ``V``) or uniform over the
vocabulary. The conditional CTMC rates that generate it are ``u_t(y | x, z) = kappa'_t / (1 - kappa_t)
(delta_z(y) - delta_x(y))``; the marginal ones replace ``delta_z`` by the posterior ``p_{1|t}(y | x)``,
which is what a network learns (:meth:`MixturePath.rates`).
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from torch import Tensor

from flowkit.errors import CapabilityError
from flowkit.interfaces import BuildContext, ProbabilityPath, per_sample
from flowkit.params import param


def vocabulary_of(context: BuildContext, needed_by: str) -> int:
    """The vocabulary ``V`` of the pipeline's categorical dataset (its ``vocabulary`` attribute);
    refuses a dataset that has none, naming ``needed_by``."""
    dataset = context.dataset
    vocabulary = int(getattr(dataset, "vocabulary", 0) or 0)
    if dataset is None or vocabulary < 2:
        name = "(none)" if dataset is None else dataset.display_name
        raise CapabilityError(
            f"{needed_by} needs categorical data (a dataset with a vocabulary of tokens), but dataset "
            f'\'{name}\' has none; use e.g. [data] kind = "checkerboard-grid", "digits-tokens" or "tokens"'
        )
    return vocabulary


class MixturePath(ProbabilityPath):
    """``x_t = z`` token by token with probability ``kappa_t = t^exponent``, else a source draw.

    Tokens are int64 ``(B, *D)`` in ``0 .. V - 1`` (``V``: the dataset's ``vocabulary``); the mask
    source adds the state ``V`` (:attr:`mask_token`), so a network reads ``states = V + 1`` values and
    predicts ``V``. ``t_range = (0, t_max)``: the rates ``kappa' / (1 - kappa)`` blow up at ``t = 1``.
    """

    @attrs.define(frozen=True)
    class Params:
        source: Literal["mask", "uniform"] = param(
            "mask",
            doc="Source distribution p_0: every token masked, or uniform over the vocabulary.",
            validator=attrs.validators.in_(["mask", "uniform"]),
        )
        exponent: float = param(
            1.0, doc="n of the schedule kappa_t = t^n (1: linear).", validator=attrs.validators.gt(0.0)
        )
        t_max: float = param(
            0.999,
            doc="Last time of training and sampling (kappa' / (1 - kappa) is infinite at t = 1).",
            validator=[attrs.validators.gt(0.0), attrs.validators.lt(1.0)],
        )

    def __init__(self, params: Params | None = None, *, vocabulary: int) -> None:
        super().__init__(params)
        self.vocabulary = int(vocabulary)
        masked = self.params.source == "mask"
        #: The mask state (``V``) of the mask source, ``None`` for the uniform one.
        self.mask_token: int | None = self.vocabulary if masked else None
        #: Values a token of ``x_t`` takes: ``V + 1`` with the mask, ``V`` without.
        self.states = self.vocabulary + (1 if masked else 0)

    @classmethod
    def from_params(cls, params: Params, context: BuildContext) -> MixturePath:
        """Build for the vocabulary of the pipeline's categorical dataset."""
        return cls(params, vocabulary=vocabulary_of(context, "path 'mixture'"))

    @property
    def t_range(self) -> tuple[float, float]:
        return (0.0, self.params.t_max)

    def kappa(self, t: Tensor) -> Tensor:
        """``kappa_t = t^n``: the share of data tokens at ``t``."""
        return t**self.params.exponent

    def d_kappa(self, t: Tensor) -> Tensor:
        """``kappa'_t = n t^(n - 1)``."""
        n = self.params.exponent
        return n * t ** (n - 1)

    def jump_coefficient(self, t: Tensor) -> Tensor:
        """``kappa'_t / (1 - kappa_t)``: the rate ``u_t(y | x)`` per unit of posterior ``p_{1|t}(y | x)``."""
        return self.d_kappa(t) / (1 - self.kappa(t))

    def sample_prior(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
    ) -> Tensor:
        """``x_0 ~ p_0``, int64 ``shape``: all ``V`` (mask), or uniform on ``0 .. V - 1``."""
        if self.mask_token is not None:
            return torch.full(shape, self.mask_token, dtype=torch.long, device=device)
        return torch.randint(0, self.vocabulary, shape, generator=generator, device=device)

    def noise_is_prior(self) -> bool:
        return True

    def sample(
        self, z: Tensor, t: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """``x_t ~ p_t(. | z)`` for tokens ``z (B, *D)`` at ``t (B,)``: each token the source ``noise``
        (drawn from ``generator`` when ``None``) with probability ``1 - kappa_t``, else ``z``'s."""
        if z.is_floating_point():
            raise CapabilityError(
                f"path 'mixture' moves categorical tokens (int64), but the data is {z.dtype}; use a "
                'categorical dataset (e.g. kind = "checkerboard-grid")'
            )
        source = noise if noise is not None else self.sample_prior(tuple(z.shape), generator, z.device)
        keep_source = torch.rand(z.shape, generator=generator, device=z.device) < per_sample(
            1 - self.kappa(t.to(torch.float32)), z
        )
        return torch.where(keep_source, source, z)

    def target_velocity(self, x: Tensor, z: Tensor, t: Tensor) -> Tensor:
        raise CapabilityError(
            "path 'mixture' moves tokens by jumps and has no velocity; train it with [loss] kind = "
            '"cross-entropy" or "generalized-kl", and sample it with dynamics = "ctmc" and '
            'simulator = "discrete-euler"'
        )

    def rates(self, posterior: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """The marginal CTMC rates ``u_t(y | x) = kappa'_t / (1 - kappa_t) p_{1|t}(y | x)`` of jumping,
        token by token, from ``x (B, *D)`` to each value ``y`` in ``0 .. V - 1`` (``y != x``), given the
        posterior ``p_{1|t} (B, *D, V)`` at ``t (B,)``; ``(B, *D, V)``, zero at ``y = x``. The rate of
        staying is minus their sum (a mask token has no entry: it is left, never entered)."""
        coefficient = per_sample(self.jump_coefficient(t.to(posterior.dtype)), posterior)
        rates = coefficient * posterior
        own = torch.nn.functional.one_hot(x.clamp(max=self.vocabulary - 1), self.vocabulary).bool()
        own &= (x < self.vocabulary).unsqueeze(-1)
        return rates.masked_fill(own, 0.0)
