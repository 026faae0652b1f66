"""The step machine: :class:`TrainLoop`, one optimisation step at a time, and its whole state.

:class:`TrainLoop` is one optimisation step at a time (benchmarks time exactly it) and the whole
training state (:meth:`TrainLoop.state_dict`); the train stage (:mod:`flowkit.engine.train`) runs it
for ``[train] steps`` with logging, checkpoints and the hooks.

Divergence is found without a device sync per step: the losses since the last check are stacked and
checked in one read at every log step and before every checkpoint, which names the exact step of the
first non-finite loss. A checkpoint is written only after that check and a check of the weights, so
no checkpoint ever holds non-finite weights.

Each batch comes from the batch producer (:mod:`flowkit.engine.batches`): the data, the labels and,
where the loss declares a coupling (:attr:`~flowkit.interfaces.Loss.coupling`), the noise paired with
the data, solved a step ahead on a worker thread where the coupling's solve is worth it. See
``docs/design.md``, "Pairing a step ahead".
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from flowkit.engine.alongside import GuideTrainer
from flowkit.engine.batches import PAIRING_THREAD, BatchProducer, PairingError
from flowkit.engine.checkpoints import FORMAT
from flowkit.engine.distributed import (
    average_gradients,
    current_world,
    gather_to_main,
    mean_over_ranks,
    per_rank_batch,
    rank_seed,
    wrap_model,
)
from flowkit.engine.optim import WeightAverage, adamw, restore_optimizer, scheduler, update
from flowkit.engine.scalars import LossScalars
from flowkit.errors import CapabilityError, FlowkitError
from flowkit.interfaces import LossValue

if TYPE_CHECKING:
    from flowkit.engine.records import Pipeline


class Diverged(FlowkitError):
    """A non-finite loss at ``step`` (or non-finite weights after its update)."""

    def __init__(self, step: int, what: str) -> None:
        super().__init__(f"training diverged at step {step} ({what})")
        self.step = step
        self.what = what


__all__ = ["PAIRING_THREAD", "Diverged", "PairingError", "TrainLoop"]


class TrainLoop:
    """The optimisation of a pipeline's network: AdamW, a learning-rate schedule and an EMA of the weights.

    :meth:`step` is one optimisation step — draw a batch, the loss, backward, update — exactly what
    ``flowkit run`` does per step. The forward pass goes through ``pipeline.network`` (what the device
    backend prepared); the parameters and saved state are ``pipeline.model``'s. The data and loss
    draws come from generators seeded from ``[run] seed``. :meth:`state_dict` and
    :meth:`load_state_dict` are the whole state: a loop restored from a checkpoint continues exactly
    as the uninterrupted one (bitwise, on the CPU).

    Under torchrun (:mod:`flowkit.engine.distributed`) each rank draws ``batch_size / world_size``
    points from its own generators, the forward pass goes through ``DistributedDataParallel`` (so the
    averaged gradient is that of the global batch) and the logged losses are averaged over the ranks.
    A loss that differentiates forward (``Loss.forward_mode_ad``, which DDP's wrapper breaks) is given
    the plain network instead, and the loop averages the gradients over the ranks after the backward
    pass (:func:`~flowkit.engine.distributed.average_gradients`): the same step.

    A loss may return a :class:`~flowkit.interfaces.LossValue`: its ``loss`` is backpropagated and its
    scalars are logged as ``loss/<name>`` (:attr:`last_scalars`, at every log step).

    Where the loss's coupling is solved ahead (:attr:`ahead`), :meth:`step` draws the next batch and
    starts its solve on a worker thread (:data:`PAIRING_THREAD`) before it trains; :meth:`close` (or ``with
    TrainLoop(...) as loop``) stops the thread and puts the generators back to before that batch.
    :meth:`run` and the train stage (:func:`flowkit.engine.train.train_with`) close it on every way
    out. Otherwise no thread is started.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        cfg, loss = pipeline.train, pipeline.loss
        if cfg is None or loss is None:
            raise CapabilityError(
                f"{pipeline.source}: model '{pipeline.model.registered_name}' is not trained"
            )
        self.pipeline, self.cfg, self.loss_fn = pipeline, cfg, loss
        self.backend = pipeline.device
        self.device = self.backend.device
        self.network = pipeline.model
        self.role = pipeline.context.roles[loss.trains]
        self.params = [p for p in self.network.parameters() if p.requires_grad]
        if not self.params:
            raise CapabilityError(
                f"{pipeline.source}: [model]: model '{self.network.registered_name}' has "
                "no trainable parameters"
            )
        self.optimizer = adamw(self.params, cfg)
        self.scheduler = scheduler(self.optimizer, cfg)
        self.ema = WeightAverage(self.network, cfg.ema_decay) if cfg.ema_decay > 0 else None
        #: This process's rank and the number of processes (one of one outside torchrun).
        self.world = current_world()
        #: Points this rank draws per step (the global ``batch_size`` over the ranks).
        self.batch_size = per_rank_batch(cfg.batch_size, self.world)
        #: Whether this loop averages the gradients itself (a forward-mode-AD loss under torchrun).
        self.averages_gradients = self.world.distributed and type(loss).forward_mode_ad
        if self.world.distributed and not self.averages_gradients:  # DDP's backward averages them
            self.role = loss.model_role(wrap_model(pipeline.network, self.world), pipeline.path)
        #: The extra scalars the loss reports, since the last log step (:class:`LossScalars`).
        self.scalars = LossScalars(loss.display_name)
        #: ``{"loss/<name>": mean}`` of the last log step (``{}``: the loss reports none).
        self.last_scalars: dict[str, float] = {}
        seed = pipeline.run.seed
        rank = self.world.rank
        self.loss_gen = self.backend.generator(rank_seed(seed, "loss", rank))
        #: Each step's batch: data, labels and, where the loss declares a coupling, the paired noise.
        self.batches = BatchProducer(pipeline, self.batch_size, rank, self.loss_gen)
        self.data_gen = self.batches.data_gen
        #: The source points a coupling pairs (``None`` where the loss declares no coupling).
        self.noise_gen = self.batches.noise_gen
        #: The last step completed (0 before the first).
        self.current_step = 0
        #: The mean loss of the last log step (``None`` before the first).
        self.last_logged: float | None = None
        self._window: list[Tensor] = []  # losses since the last log step
        self._checked = 0  # how many of them were checked finite
        #: Classes of a conditional model (0: unconditional); labels are drawn with the data then.
        self.num_classes = self.batches.num_classes
        # Dropout draws from torch's global generator: each step seeds it (inside a fork) from the run
        # seed and the step number, so the run neither depends on nor changes the global state, and a
        # resumed run draws the same masks.
        self.stochastic = any(isinstance(m, nn.Dropout) and m.p > 0 for m in self.network.modules())
        self._rng_devices = [self.device] if self.device.type == "cuda" else []
        self.network.train()
        #: The guide trained alongside (``[train] guide``) on this loop's batches; ``None`` without one.
        self.guide = GuideTrainer(pipeline, self.world) if pipeline.alongside is not None else None

    @property
    def ahead(self) -> bool:
        """Whether each batch is drawn and its coupling solved a step ahead, on a worker thread
        (``Coupling.background``). Set it to ``False`` to pair each batch inside its own step, on this
        thread: the same draws from the same streams, so the same training, bitwise; only no thread."""
        return self.batches.ahead

    @ahead.setter
    def ahead(self, value: bool) -> None:
        self.batches.ahead = value

    @property
    def lr(self) -> float:
        """The current learning rate."""
        return float(self.optimizer.param_groups[0]["lr"])

    def step(self, ahead: bool = True) -> Tensor:
        """One optimisation step; returns the loss as a detached scalar tensor (no device sync).

        Where the coupling is solved ahead, ``ahead = True`` also draws the next step's batch and starts its
        pairing on the worker thread (``False``: the last step; nothing is left running)."""
        if not self.stochastic:
            return self._step(ahead)
        with torch.random.fork_rng(devices=self._rng_devices):
            step = self.current_step + 1  # each rank its own masks (rank 0's: a one-process run's)
            torch.manual_seed(rank_seed(self.pipeline.run.seed, f"dropout:{step}", self.world.rank))
            return self._step(ahead)

    def _step(self, ahead: bool) -> Tensor:
        z, keywords = self.batches.next(self.current_step + 1, ahead)
        value: Tensor | LossValue
        with self.backend.autocast():
            value = self.loss_fn(self.role, self.pipeline.path, z, generator=self.loss_gen, **keywords)
        loss = self.scalars.take(value)  # a LossValue's scalars are kept for the log step
        average = self._average_gradients if self.averages_gradients else None
        update(loss, self.optimizer, self.scheduler, self.ema, self.params, self.cfg.grad_clip, average)
        if self.guide is not None:  # after the model's update: the model trains as without a guide
            guide_loss = self.guide.step(z, keywords)
            if guide_loss is not None:
                self.scalars.keep("guide", guide_loss)  # logged as loss/guide
        return loss.detach()

    def close(self) -> None:
        """Stop the pairing worker, if any (waiting for a solve under way). A batch drawn ahead is
        dropped and the data and noise generators go back to before its draws, so the loop is as if
        it had run one step at a time: the next :meth:`step` draws that batch again. Idempotent."""
        self.batches.close()

    def __enter__(self) -> TrainLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def labelled_batch(self) -> tuple[Tensor, Tensor]:
        """``(z (B, *D), y (B,))``: a batch with its labels (see :meth:`BatchProducer.labelled_batch`)."""
        return self.batches.labelled_batch()

    def run(self, total: int) -> Iterator[tuple[int, Tensor, float | None]]:
        """The steps after :attr:`current_step` up to ``total``, yielding ``(step, loss, mean)`` after
        each: the detached loss, and the mean loss since the last log every ``[train] log_every`` steps
        and at the last step (``None`` otherwise). Raises :class:`Diverged` at a log step whose window
        holds a non-finite loss, naming the step of the first. The pairing worker, if any, is closed
        when the steps end, on an exception and when the iteration is abandoned."""
        try:
            for step in range(self.current_step + 1, total + 1):
                loss = self.step(ahead=step < total)
                self.current_step = step
                self._window.append(loss)
                mean = None
                if step % self.cfg.log_every == 0 or step == total:
                    self.check_losses()
                    mean = float(torch.stack(self._window).mean())
                    self.last_scalars = self.scalars.means(self.world)
                    self._window.clear()
                    self._checked = 0
                    self.last_logged = mean
                yield step, loss, mean
        finally:
            self.close()

    def check_losses(self) -> None:
        """Raise :class:`Diverged` if a loss since the last check is not finite (one device read).

        Under torchrun the losses are first averaged over the ranks (one all-reduce), so the window
        holds the losses of the global batch and every rank finds the same divergence."""
        fresh = self._window[self._checked :]
        if not fresh and not self.world.distributed:
            return
        if self.world.distributed:  # every rank takes part, even with nothing new (checkpoints)
            stacked = torch.stack(fresh) if fresh else torch.empty(0, device=self.device)
            fresh = list(mean_over_ranks(stacked, self.world).unbind())
            self._window[self._checked :] = fresh
            if not fresh:
                return
        finite = torch.isfinite(torch.stack(fresh))
        if not bool(finite.all()):
            first = int((~finite).nonzero()[0, 0])
            step = self.current_step - len(fresh) + 1 + first
            raise Diverged(step, f"loss {float(fresh[first])}")
        self._checked = len(self._window)

    def check_weights(self) -> None:
        """Raise :class:`Diverged` if a weight (raw or averaged) is not finite after the last step."""
        tensors = [*self.params, *(self.ema.averages if self.ema is not None else [])]
        tensors += self.guide.tensors() if self.guide is not None else []
        if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
            raise Diverged(self.current_step, "non-finite weights after the update")

    def divergence(self, exc: Diverged) -> str:
        """What to say about a divergence when there is no run directory (the Python API)."""
        return f"{self.pipeline.source}: {exc}; lower [train] lr (now {self.cfg.lr}) or set [train] grad_clip"

    def weights(self, step: int) -> dict[str, Any]:
        """Weights-only state: ``model`` (what sampling uses: the EMA where enabled) and ``raw``."""
        if self.ema is None:
            return {"step": step, "model": self.network.state_dict()}
        return {"step": step, "model": self.ema.state_dict(), "raw": self.network.state_dict()}

    def state_dict(self) -> dict[str, Any]:
        """The whole training state after :attr:`current_step`: tensors and plain containers only
        (loadable with ``torch.load(weights_only=True)``). Checks it first (:class:`Diverged`)."""
        self.check_losses()
        self.check_weights()
        state = self.weights(self.current_step)
        # As of the steps taken: a batch drawn ahead is drawn again by the resumed run.
        mine = {**self.batches.streams(), "loss": self.loss_gen.get_state()}
        # Every rank's generators, in rank order, on rank 0 (the one that writes the checkpoint).
        every = gather_to_main(mine, self.world) or [mine]
        state.update(
            {
                "format": FORMAT,
                "raw": self.network.state_dict(),
                "ema_updates": self.ema.updates if self.ema is not None else 0,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "generators": every[0],
                "rank_generators": every,
                "world_size": self.world.size,
                "window": torch.stack(self._window).cpu() if self._window else torch.empty(0),
                "scalar_window": self.scalars.state_dict(),
                "last_logged": self.last_logged,
            }
        )
        if self.guide is not None:  # the train stage writes it to a file of its own
            state["guide"] = self.guide.state_dict()
        return state

    def _average_gradients(self) -> None:
        """Average this rank's gradients with the others' (a forward-mode-AD loss under torchrun)."""
        average_gradients(self.params, self.world)

    def load_state_dict(self, state: dict[str, Any]) -> int:
        """Continue from a :meth:`state_dict` (a checkpoint); returns its step.

        The learning rate and weight decay are this pipeline's ``[train]`` values, so a run resumed
        with ``--set train.lr=...`` uses the new rate from its first step; with the cosine schedule the
        rate at step ``k`` is ``lr * factor(k)`` over this pipeline's ``[train] steps``.
        """
        step = int(state["step"])
        self.close()  # a batch drawn ahead belongs to the state being replaced
        self.network.load_state_dict(state["raw"])
        if self.ema is not None:
            self.ema.load_averages(state["model"], int(state.get("ema_updates", step)))
        restore_optimizer(self.optimizer, self.scheduler, self.cfg, step, state)
        self._load_generators(state, step)
        window = state.get("window")
        self._window = [loss.to(self.device) for loss in window] if window is not None else []
        self._checked = len(self._window)
        self.scalars.load_state_dict(state.get("scalar_window"), self.device)
        self.last_logged = state.get("last_logged")
        self.current_step = step
        if self.guide is not None:
            if "guide" not in state:
                raise FlowkitError(
                    f"{self.pipeline.source}: the training state at step {step} has no guide's state"
                )
            self.guide.load_state_dict(state["guide"])
        return step

    def _load_generators(self, state: dict[str, Any], step: int) -> None:
        """Rank ``r`` continues the streams rank ``r`` saved; a rank the checkpoint has none for (it was
        written by fewer processes) starts a fresh stream derived from the seed, its rank and ``step``.
        So a run resumed with as many processes continues bitwise; with another number, statistically."""
        saved = state.get("rank_generators") or [state["generators"]]  # one-process checkpoints
        rank = self.world.rank
        seed = self.pipeline.run.seed
        mine = saved[rank] if rank < len(saved) else None
        self.batches.load_streams(mine, seed, rank, step)
        if mine is not None:
            self.loss_gen.set_state(mine["loss"])
        else:
            self.loss_gen.manual_seed(rank_seed(seed, "loss", rank, resumed_at=step))

    def finish(self) -> None:
        """Put the weights sampling should use (the EMA, where enabled) into the network."""
        if self.ema is not None:
            self.network.load_state_dict(self.ema.state_dict())
        self.network.eval()
        if self.guide is not None:
            self.guide.finish()
