"""Schrödinger-bridge conditional flow matching (Tong et al. 2023; ``docs/math.md``, "Couplings").

* :class:`BrownianBridgePath` (``brownian-bridge``): ``x_t = (1 - t) x0 + t z + sigma sqrt(t (1 - t)) eps``
  between a noise point ``x0`` (the ``noise`` of :meth:`sample`) and a data point ``z``, with
  ``eps ~ N(0, I)`` drawn from the generator. Given ``(x0, z)``: velocity
  ``u = z - x0 + (1 - 2t) / (2 t (1 - t)) (x_t - mu_t)``
  ``= z - x0 + sigma (1 - 2t) / (2 sqrt(t (1 - t))) eps``
  and score ``-(x_t - mu_t) / (sigma^2 t (1 - t)) = -eps / (sigma sqrt(t (1 - t)))``.
* :class:`SBCFMLoss` (``sb-cfm``): pairs each batch by the entropic plan with ``epsilon = 2 sigma^2``
  (then the path's marginals are those of the Schrödinger bridge from ``p_init`` to ``p_data`` with
  reference ``sigma W``; the training loop pairs each batch by it, see ``Loss.coupling``), and
  trains a velocity head and a score head (model ``velocity-score``), so the model samples with the
  flow ODE and with the SDE
  ``dX = [u + sigma^2 / 2 s] dt + sigma dW`` (``dynamics = { kind = "extension-sde", sigma = SIGMA }``).
"""

from __future__ import annotations

from typing import cast

import attrs
import torch
from torch import Tensor, nn

from flowkit.errors import CapabilityError, FlowkitError
from flowkit.interfaces import Loss, NoisePredictor, ProbabilityPath, VectorField, call_network, per_sample
from flowkit.params import param
from flowkit_couplings.couplings import Sinkhorn


class BrownianBridgePath(ProbabilityPath):
    """The Brownian bridge from ``x0 ~ N(0, I)`` to ``z``; shapes ``(B, *D)``, ``t (B,)``.

    ``t_range = [t_margin, 1 - t_margin]``: the conditional velocity's noise term grows like
    ``1 / sqrt(t (1 - t))`` at both ends (its variance integrates to a logarithm there).

    The targets of :meth:`sample_with_target` and :meth:`sample_with_score` are conditional on the pair
    ``(x0, z)`` — the ones a coupling needs. :meth:`target_velocity` and :meth:`target_score`, which get
    only ``z``, are those of ``p_t(x | z) = N(t z, b_t^2 I)`` with ``b_t^2 = (1 - t)^2 + sigma^2 t (1 - t)``,
    the path given ``z`` alone under the independent coupling (``x0`` integrated out).
    """

    provides_score = True

    @attrs.define(frozen=True)
    class Params:
        sigma: float = param(
            0.5, doc="Noise of the bridge (0: the straight OT path).", validator=attrs.validators.ge(0)
        )
        t_margin: float = param(
            1e-3,
            doc="Times are drawn and sampled in [t_margin, 1 - t_margin].",
            validator=[attrs.validators.gt(0), attrs.validators.lt(0.1)],
        )

    @property
    def sigma(self) -> float:
        return float(self.params.sigma)

    @property
    def t_range(self) -> tuple[float, float]:
        """``[t_margin, 1 - t_margin]``."""
        m = float(self.params.t_margin)
        return (m, 1.0 - m)

    def noise_is_prior(self) -> bool:
        """``True``: the noise is ``x0 ~ N(0, I)`` itself."""
        return True

    def sample_prior(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
    ) -> Tensor:
        """``x0 ~ N(0, I)``, ``shape = (B, *D)``."""
        return torch.randn(tuple(shape), generator=generator, device=device)

    def _draw(
        self, z: Tensor, t: Tensor, noise: Tensor | None, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(x0, eps, t (B, 1, ..), sqrt(t (1 - t)) (B, 1, ..))``."""
        if t.dim() != 1 or t.shape[0] != z.shape[0]:
            raise FlowkitError(f"t must have shape (B,) = ({z.shape[0]},), got {tuple(t.shape)}")
        if noise is None:
            noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        elif noise.shape != z.shape:
            raise FlowkitError(f"noise has shape {tuple(noise.shape)}, expected that of z {tuple(z.shape)}")
        eps = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        tt = per_sample(t.to(z.dtype), z)
        return noise, eps, tt, torch.sqrt(tt * (1.0 - tt))

    def sample(
        self, z: Tensor, t: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """``x_t = (1 - t) x0 + t z + sigma sqrt(t (1 - t)) eps`` with ``x0 = noise``; ``(B, *D)``."""
        x0, eps, tt, root = self._draw(z, t, noise, generator)
        return (1.0 - tt) * x0 + tt * z + self.sigma * root * eps

    def sample_with_target(
        self, z: Tensor, t: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(x_t, u_t(x_t | x0, z))``, ``u = z - x0 + sigma (1 - 2t) / (2 sqrt(t (1 - t))) eps``."""
        x, velocity, _ = self.sample_with_score(z, t, noise, generator)
        return x, velocity

    def sample_with_score(
        self, z: Tensor, t: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(x_t, u_t(x_t | x0, z), eps)``; the conditional score is ``-eps / (sigma sqrt(t (1 - t)))``."""
        x0, eps, tt, root = self._draw(z, t, noise, generator)
        x = (1.0 - tt) * x0 + tt * z + self.sigma * root * eps
        velocity = z - x0 + (self.sigma * (1.0 - 2.0 * tt) / (2.0 * root)) * eps
        return x, velocity, eps

    def _marginal_std(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """``b_t`` and ``b'_t`` of ``p_t(x | z) = N(t z, b_t^2 I)``, shaped to broadcast over ``like``."""
        tt = per_sample(t.to(like.dtype), like)
        s2 = self.sigma**2
        b = torch.sqrt((1.0 - tt) ** 2 + s2 * tt * (1.0 - tt))
        return b, (-2.0 * (1.0 - tt) + s2 * (1.0 - 2.0 * tt)) / (2.0 * b)

    def target_velocity(self, x: Tensor, z: Tensor, t: Tensor) -> Tensor:
        """``u_t(x | z) = z + b'_t / b_t (x - t z)`` (given ``z`` alone; see the class docstring)."""
        b, db = self._marginal_std(t, x)
        tt = per_sample(t.to(x.dtype), x)
        return z + db / b * (x - tt * z)

    def target_score(self, x: Tensor, z: Tensor, t: Tensor) -> Tensor:
        """``grad log p_t(x | z) = -(x - t z) / b_t^2`` (given ``z`` alone)."""
        b, _ = self._marginal_std(t, x)
        tt = per_sample(t.to(x.dtype), x)
        return -(x - tt * z) / (b * b)


def head(network: nn.Module, name: str) -> nn.Module:
    """The ``velocity`` or ``score`` head of a two-headed network (e.g. model ``velocity-score``)."""
    return cast(nn.Module, getattr(network, name))


class HeadVelocity(VectorField):
    """The velocity head of a two-headed network: ``forward(x (B, *D), t (B,)) = network.velocity(x, t)``."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: Tensor, t: Tensor, **inputs: Tensor) -> Tensor:
        return call_network(head(self.network, "velocity"), x, t, **inputs)


class BridgeScore(NoisePredictor):
    """The score head as a noise prediction on the bridge.

    ``s(x (B, *D), t (B,)) = -network.score(x, t) / (sigma sqrt(t (1 - t)))``.
    """

    def __init__(self, network: nn.Module, path: BrownianBridgePath) -> None:
        super().__init__()
        self.network = network
        self.path = path

    def predict_noise(self, x: Tensor, t: Tensor, **inputs: Tensor) -> Tensor:
        """The predicted ``eps``, ``(B, *D)``."""
        return call_network(head(self.network, "score"), x, t, **inputs)

    def forward(self, x: Tensor, t: Tensor, **inputs: Tensor) -> Tensor:
        tt = per_sample(t.to(x.dtype), x)
        return -self.predict_noise(x, t, **inputs) / (self.path.sigma * torch.sqrt(tt * (1.0 - tt)))


class SBCFMLoss(Loss):
    """Schrödinger-bridge CFM: ``E ||u^theta_t(x) - u_t(x | x0, z)||^2 + w E ||eps^theta_t(x) - eps||^2``.

    ``(x0, z)`` are paired by :class:`~flowkit_couplings.couplings.Sinkhorn` with
    ``epsilon = 2 sigma^2`` (the path's ``sigma``); ``t ~ U(t_range)``. The score head predicts the
    bridge noise ``eps`` (weight ``lambda_t = sigma^2 t (1 - t)`` on the score error, a target of order
    1 at every ``t``); the score is ``-eps^theta / (sigma sqrt(t (1 - t)))``. Needs
    ``[path] kind = "brownian-bridge"`` with ``sigma > 0`` and ``[model] kind = "velocity-score"``.
    Trains the velocity (what ``flow`` integrates) and provides the score (for ``extension-sde``).
    """

    trains = "velocity"

    @attrs.define(frozen=True)
    class Params:
        score_weight: float = param(
            1.0, doc="Weight w of the score head's loss.", validator=attrs.validators.ge(0)
        )
        iterations: int = param(
            200, doc="Most Sinkhorn iterations per batch.", validator=attrs.validators.gt(0)
        )

    #: The entropic plan (set up by :meth:`check`); declared as the loss's coupling, so the training
    #: loop pairs each batch by it.
    coupling: Sinkhorn | None = None

    def check(self, path: ProbabilityPath) -> None:
        """Refuse any path but a Brownian bridge with ``sigma > 0``; set up the coupling."""
        name = path.display_name
        if not isinstance(path, BrownianBridgePath):
            raise CapabilityError(
                f"loss 'sb-cfm' trains on the Brownian-bridge path, but path '{name}' is not one; use "
                '[path] kind = "brownian-bridge", or [loss] kind = "cfm" with a coupling on this path'
            )
        if path.sigma <= 0:
            raise CapabilityError(
                "loss 'sb-cfm' pairs by the entropic plan with epsilon = 2 sigma^2, but [path] sigma = 0; "
                'set [path] sigma > 0, or use [loss] kind = "cfm" with coupling = "exact-ot"'
            )
        if self.coupling is None or self.coupling.params.epsilon != 2.0 * path.sigma**2:
            params = Sinkhorn.Params(epsilon=2.0 * path.sigma**2, iterations=self.params.iterations)
            self.coupling = Sinkhorn(params)
            self.coupling.registered_as("coupling", "sinkhorn")

    def roles(self, network: nn.Module, path: ProbabilityPath) -> dict[str, nn.Module]:
        """``{"velocity": the velocity head, "score": the score head}``."""
        self.check(path)
        assert isinstance(path, BrownianBridgePath)
        if not (hasattr(network, "velocity") and hasattr(network, "score")):
            raise CapabilityError(
                "loss 'sb-cfm' trains a velocity and a score, but the [model] has no "
                'velocity and score heads; use [model] kind = "velocity-score"'
            )
        return {"velocity": HeadVelocity(network), "score": BridgeScore(network, path)}

    def model_role(self, network: nn.Module, path: ProbabilityPath) -> nn.Module:
        """The velocity head (see :meth:`roles`)."""
        return self.roles(network, path)["velocity"]

    def __call__(
        self,
        model: nn.Module,
        path: ProbabilityPath,
        z: Tensor,
        generator: torch.Generator | None = None,
        y: Tensor | None = None,
        x0: Tensor | None = None,
    ) -> Tensor:
        """Scalar loss on data ``z (B, *D)``; ``model`` is the velocity head. Draws ``t``, then the
        bridge noise from ``generator``. The noise is ``x0 (B, *D)``, paired with ``z`` by the plan
        (:attr:`coupling`) in the training loop; without it (called outside the loop) the noise and
        the plan's pairs are drawn here from ``generator``, after ``t``."""
        self.check(path)
        assert isinstance(path, BrownianBridgePath) and self.coupling is not None
        network = model.network if isinstance(model, HeadVelocity) else model
        lo, hi = path.t_range
        t = lo + (hi - lo) * torch.rand((z.shape[0],), generator=generator, device=z.device, dtype=z.dtype)
        if x0 is None:
            noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
            x0, z, y = self.coupling(noise, z, y, generator)
        x, velocity, eps = path.sample_with_score(z, t, x0, generator)
        loss = nn.functional.mse_loss(call_network(head(network, "velocity"), x, t, y=y), velocity)
        if self.params.score_weight > 0:
            score = call_network(head(network, "score"), x, t, y=y)
            loss = loss + self.params.score_weight * nn.functional.mse_loss(score, eps)
        return loss
