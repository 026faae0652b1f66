"""The optimiser's parts: the learning-rate schedule, the moving average of the weights, AdamW, one
update from a loss, and restoring the optimiser and its schedule from a checkpoint."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from flowkit.engine.sections import TrainSection


def lr_factor(cfg: TrainSection) -> Callable[[int], float]:
    """The learning-rate multiplier at step ``k``: linear warm-up, then constant or cosine decay."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class WeightAverage:
    """Exponential moving average of a network's parameters: ``avg <- d_k avg + (1 - d_k) param``.

    The decay warms up, ``d_k = min(decay, (1 + k) / (10 + k))`` at update ``k``: with a fixed 0.999
    the average would still hold 37% of the random initial weights after 1,000 steps (5% after
    3,000). One fused ``_foreach_lerp_`` per step over preallocated copies (``AveragedModel`` also
    rebuilds parameter lists on every update; see ``benchmarks/reference/engine-notes.md``).
    """

    def __init__(self, network: nn.Module, decay: float) -> None:
        self.network = network
        self.decay = decay
        self.updates = 0
        self.names = [name for name, _ in network.named_parameters()]
        self.params: list[Tensor] = [p for _, p in network.named_parameters()]
        self.averages = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """Move the averages towards the current parameters."""
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        torch._foreach_lerp_(self.averages, self.params, 1.0 - decay)

    def state_dict(self) -> dict[str, Tensor]:
        """The network's state dict with the averaged parameters (buffers as they are)."""
        state = dict(self.network.state_dict())
        state.update({name: avg.clone() for name, avg in zip(self.names, self.averages, strict=True)})
        return state

    @torch.no_grad()
    def load_averages(self, state: dict[str, Tensor], updates: int) -> None:
        """Restore the averages from a :meth:`state_dict` and the number of updates made so far."""
        for name, avg in zip(self.names, self.averages, strict=True):
            avg.copy_(state[name])
        self.updates = updates


def adamw(params: list[nn.Parameter], cfg: TrainSection) -> torch.optim.Optimizer:
    """AdamW with its fused kernel where the device has one (CPU and CUDA in torch >= 2.4): the same
    update in one kernel instead of a loop over the tensors (``benchmarks/reference/engine-notes.md``)."""
    try:
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):  # e.g. a device without a fused implementation
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainSection
) -> torch.optim.lr_scheduler.LambdaLR | None:
    """The schedule :func:`lr_factor` of ``cfg`` on ``optimizer``, or ``None`` for a constant rate
    without warm-up: skipping it keeps the hot loop as lean as a hand-written one."""
    if cfg.lr_schedule == "constant" and cfg.warmup_steps == 0:
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg))


def restore_optimizer(
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LambdaLR | None,
    cfg: TrainSection,
    step: int,
    state: Mapping[str, Any],
) -> None:
    """Continue ``optimizer`` and ``schedule`` from a checkpoint's ``state`` at ``step``, with this
    pipeline's ``[train]`` rate and weight decay: the rate at ``step`` is ``lr * factor(step)`` over
    this pipeline's ``steps``, so a run resumed with ``--set train.lr=...`` uses it from its first step."""
    optimizer.load_state_dict(state["optimizer"])
    factor = lr_factor(cfg)(step) if schedule is not None else 1.0
    for group in optimizer.param_groups:
        group["initial_lr"] = cfg.lr
        group["lr"] = cfg.lr * factor
        group["weight_decay"] = cfg.weight_decay
    if schedule is not None:
        if state.get("scheduler"):
            schedule.load_state_dict(state["scheduler"])
        schedule.base_lrs = [cfg.lr for _ in optimizer.param_groups]
        schedule.last_epoch = step
        schedule._last_lr = [group["lr"] for group in optimizer.param_groups]


def update(
    loss: Tensor,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LambdaLR | None,
    average: WeightAverage | None,
    params: list[nn.Parameter],
    grad_clip: float,
    before_clip: Callable[[], None] | None = None,
) -> None:
    """One step on ``loss``: its gradients (then ``before_clip``, e.g. averaging them across ranks),
    the norm clipped to ``grad_clip`` where positive, the optimiser's step, the schedule's, the
    moving average's."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if before_clip is not None:
        before_clip()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    if schedule is not None:
        schedule.step()
    if average is not None:
        average.update()
