"""The batch producer: each training step's data, labels and, where the loss declares a coupling or the
path's source is a dataset, the source points (noise) paired with them.

The loss receives a batch whose noise is already paired; how long a coupling takes shapes neither the
loss nor the contract. The draws come from streams of their own, each seeded from ``[run] seed`` and the
rank: ``data`` (the data ``z`` and labels ``y``), ``noise`` (the source points ``x0 ~ p_init``, drawn by
the path's ``sample_prior``; only where a coupling is active or the path's source is a dataset) and
the loss's own ``loss`` stream (the coupling's random choice in ``pair``, then what the loss draws
itself). A coupling whose ``solve`` is worth running beside the training step
(``Coupling.background``: ``exact-ot``) is solved a step ahead: during step ``k`` the producer draws
batch ``k + 1`` from the data and noise streams and hands its solve to one worker thread; step
``k + 1`` waits only for what is left of it. Only the data and noise streams are drawn ahead, so a
checkpoint holds them as they were before that batch (:meth:`BatchProducer.streams`) and a resumed run
draws it again, bitwise. See ``docs/design.md``, "Pairing a step ahead".
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

from flowkit.engine.distributed import rank_seed
from flowkit.engine.guidance import num_classes
from flowkit.engine.returns import draw_prior, returned_labelled, returned_tensor
from flowkit.errors import FlowkitError

if TYPE_CHECKING:
    from flowkit.engine.records import Pipeline

#: The name (prefix) of the one worker thread that pairs the next batch while a step trains.
PAIRING_THREAD = "flowkit-pairing"


class PairingError(FlowkitError):
    """The pairing of a batch (the coupling's ``solve``, on the worker thread or not) raised ``cause``."""

    def __init__(self, step: int, loss: str, cause: BaseException) -> None:
        super().__init__(
            f"training step {step}: pairing noise and data failed (loss '{loss}'): "
            f"{type(cause).__name__}: {cause}"
        )
        self.step = step
        self.cause = cause


class _Drawn(NamedTuple):
    """A batch's draws before the pairing: ``z (B, *D)``, ``y (B,)`` or ``None``, ``x0 (B, *D)``; where
    both ends are labelled and the coupling matches them, the data's labels as drawn (before any
    dropout) and the source's labels ``y0 (B,)``."""

    z: Tensor
    y: Tensor | None
    x0: Tensor
    labels: dict[str, Tensor] | None = None


class _Ahead:
    """A batch drawn a step ahead: its draws, its solve under way, and the data and noise generator
    states from before its draws (what a checkpoint saves, and what :meth:`BatchProducer.close` restores)."""

    __slots__ = ("drawn", "future", "streams")

    def __init__(self, drawn: _Drawn, future: Future[Any], streams: dict[str, Tensor]) -> None:
        self.drawn, self.future, self.streams = drawn, future, streams


class BatchProducer:
    """This rank's training batches: :meth:`next` gives ``(z, keywords)`` for the loss call
    ``loss(model, path, z, generator=loss_generator, **keywords)``, the keywords being ``y`` (labels of
    a conditional model) and ``x0`` (the paired noise, where the loss declares a coupling); an
    unconditional loss without a coupling is called with none, as it always was."""

    def __init__(self, pipeline: Pipeline, batch_size: int, rank: int, loss_gen: torch.Generator) -> None:
        assert pipeline.loss is not None and pipeline.train is not None
        self.pipeline, self.batch_size, self.loss_gen = pipeline, batch_size, loss_gen
        self.device = pipeline.device.device
        #: The shape of a batch of data, ``(B, *D)``: what the dataset's ``sample`` must return.
        self.shape = (batch_size, *pipeline.dataset.shape)
        seed = pipeline.run.seed
        self.data_gen = pipeline.device.generator(rank_seed(seed, "data", rank))
        #: The coupling the loss declares (``None``: the loss draws its own noise, unless the path's
        #: source is a dataset).
        self.coupling = pipeline.loss.coupling
        #: Whether each batch's ``x0`` is drawn here and passed to the loss: where the loss declares a
        #: coupling, and where the path's source is a dataset (``ProbabilityPath.source``: the loss's
        #: own draws would be Gaussian noise), paired as drawn without a coupling.
        self.pairs = self.coupling is not None or pipeline.path.source is not None
        self.noise_gen = pipeline.device.generator(rank_seed(seed, "noise", rank)) if self.pairs else None
        #: Whether each batch is drawn and its solve started a step ahead, on a worker thread
        #: (``Coupling.background``). ``False``: each batch is paired inside its own step, on this
        #: thread; the same draws from the same streams, so the same training, bitwise.
        self.ahead = self.coupling is not None and self.coupling.background
        #: Classes of a conditional model (0: unconditional); labels are drawn with the data then.
        self.num_classes = num_classes(pipeline)
        #: Whether both ends are labelled and the coupling pairs within classes by them
        #: (``Coupling.matches_source_labels``): labels are then drawn at both ends.
        source = pipeline.path.source
        self.match_labels = (
            self.coupling is not None
            and self.coupling.matches_source_labels
            and source is not None
            and source.num_classes > 0
            and pipeline.dataset.num_classes > 0
        )
        self.label_dropout = pipeline.train.label_dropout
        self._loss_name = pipeline.loss.display_name
        self._next: _Ahead | None = None  # the batch of the next step, drawn ahead
        self._worker: ThreadPoolExecutor | None = None

    def next(self, step: int, ahead: bool) -> tuple[Tensor, dict[str, Tensor]]:
        """Batch ``step``'s data and the loss's keywords; with ``ahead`` (and :attr:`ahead`), also
        draws batch ``step + 1`` and starts its solve on the worker thread."""
        if not self.pairs:
            if self.num_classes:
                z, y = self.labelled_batch()
                return z, {"y": y}
            return self.data(), {}
        return self._paired(step, ahead and self.ahead)

    def data(self) -> Tensor:
        """``z (B, *D)`` from the data generator."""
        z = self.pipeline.dataset.sample(self.batch_size, generator=self.data_gen, device=self.device)
        return returned_tensor(z, self.pipeline.dataset, "sample", self.shape, "a batch of data")

    def labelled_batch(self) -> tuple[Tensor, Tensor]:
        """``(z (B, *D), y (B,))``: a batch with its labels, each replaced by the null class
        ``num_classes`` with probability ``[train] label_dropout`` (drawn from the data generator)."""
        z, y = returned_labelled(
            self.pipeline.dataset.sample_labelled(
                self.batch_size, generator=self.data_gen, device=self.device
            ),
            self.pipeline.dataset,
            "sample_labelled",
            self.batch_size,
        )
        return z, self.dropped(y)

    def dropped(self, y: Tensor) -> Tensor:
        """The labels ``y (B,)`` a conditional model is given: each the null class with probability
        ``[train] label_dropout`` (drawn from the data generator)."""
        if self.label_dropout > 0:
            drop = torch.rand(y.shape, generator=self.data_gen, device=self.device) < self.label_dropout
            y = y.masked_fill(drop, self.num_classes)
        return y

    def _draw(self) -> _Drawn:
        """The next batch's draws: the data (and labels) from the data stream, ``x0 ~ p_init`` from
        the noise stream."""
        assert self.noise_gen is not None
        if self.match_labels:
            return self._draw_labelled()
        z, y = self.labelled_batch() if self.num_classes else (self.data(), None)
        x0 = draw_prior(self.pipeline.path, tuple(z.shape), self.noise_gen, self.device)
        return _Drawn(z, y, x0 if x0.dtype == z.dtype else x0.to(z.dtype))

    def _draw_labelled(self) -> _Drawn:
        """Both ends labelled: the data with its labels (the model's labels dropped from them where it
        is conditional), and the source points with theirs, from the noise stream."""
        source = self.pipeline.path.source
        assert source is not None and self.noise_gen is not None
        z, y1 = self.pipeline.dataset.sample_labelled(
            self.batch_size, generator=self.data_gen, device=self.device
        )
        y = self.dropped(y1) if self.num_classes else None
        x0, y0 = source.sample_labelled(self.batch_size, generator=self.noise_gen, device=self.device)
        return _Drawn(z, y, x0 if x0.dtype == z.dtype else x0.to(z.dtype), {"y": y1, "y0": y0})

    def _solve(self, drawn: _Drawn) -> Any:
        """The coupling's solve of ``drawn`` (by both ends' labels where they are matched)."""
        assert self.coupling is not None
        if drawn.labels is not None:
            return self.coupling.solve(drawn.x0, drawn.z, drawn.labels["y"], y0=drawn.labels["y0"])  # type: ignore[call-arg]
        return self.coupling.solve(drawn.x0, drawn.z, drawn.y)

    def _pair(self, solution: Any, drawn: _Drawn) -> tuple[Tensor, Tensor, Tensor | None]:
        """The coupling's pairs of ``drawn`` given its ``solution``; the labels are the model's."""
        assert self.coupling is not None
        if drawn.labels is not None:
            x0, z, _ = self.coupling.pair(  # type: ignore[call-arg]
                solution, drawn.x0, drawn.z, drawn.labels["y"], self.loss_gen, y0=drawn.labels["y0"]
            )
            return x0, z, drawn.y
        return self.coupling.pair(solution, drawn.x0, drawn.z, drawn.y, self.loss_gen)

    def _paired(self, step: int, ahead: bool) -> tuple[Tensor, dict[str, Tensor]]:
        """This step's batch paired (drawn ahead, or now: the first step, after a resume or :meth:`close`)."""
        coupling = self.coupling
        current, self._next = self._next, None
        if coupling is None:  # a dataset source without a coupling: the pairs as drawn
            drawn = self._draw()
            return drawn.z, ({"x0": drawn.x0} if drawn.y is None else {"y": drawn.y, "x0": drawn.x0})
        if current is None:
            drawn = self._draw()
            solution = self._solution(lambda: self._solve(drawn), step)
        else:
            drawn = current.drawn
            solution = self._solution(current.future.result, step)
        if ahead:
            before = self.streams()
            following = self._draw()
            if self._worker is None:
                self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=PAIRING_THREAD)
            future = self._worker.submit(self._solve, following)
            self._next = _Ahead(following, future, before)
        x0, z, y = self._pair(solution, drawn)
        if drawn.y is None:
            return z, {"x0": x0}
        # a conditional model: the condition travels with its data point (class-aware pairing by it)
        return z, {"y": y if y is not None else drawn.y, "x0": x0}

    def _solution(self, solve: Callable[[], Any], step: int) -> Any:
        """``solve()``'s result (computed by the worker, or here); an exception as :class:`PairingError`."""
        try:
            return solve()
        except Exception as exc:
            raise PairingError(step, self._loss_name, exc) from exc

    def streams(self) -> dict[str, Tensor]:
        """The data (and noise) generator states as of the steps taken: from before a batch drawn
        ahead, which a resumed run draws again."""
        if self._next is not None:
            return dict(self._next.streams)
        states = {"data": self.data_gen.get_state()}
        if self.noise_gen is not None:
            states["noise"] = self.noise_gen.get_state()
        return states

    def load_streams(self, saved: dict[str, Tensor] | None, seed: int, rank: int, step: int) -> None:
        """Continue the streams ``saved`` (:meth:`streams` of the same rank); without them (``None``:
        a checkpoint written by fewer processes), or for a noise stream the checkpoint lacks (written
        without a coupling), a fresh stream derived from the seed, the rank and ``step``."""
        self.close()  # a batch drawn ahead belongs to the state being replaced
        if saved is not None:
            self.data_gen.set_state(saved["data"])
        else:
            self.data_gen.manual_seed(rank_seed(seed, "data", rank, resumed_at=step))
        if self.noise_gen is None:
            return
        if saved is not None and "noise" in saved:
            self.noise_gen.set_state(saved["noise"])
        else:
            self.noise_gen.manual_seed(rank_seed(seed, "noise", rank, resumed_at=step))

    def close(self) -> None:
        """Stop the pairing worker, if any (waiting for a solve under way). A batch drawn ahead is
        dropped and the data and noise generators go back to before its draws, so the next
        :meth:`next` draws that batch again. Idempotent."""
        current, self._next = self._next, None
        if current is not None:
            current.future.cancel()
            self.data_gen.set_state(current.streams["data"])
            if self.noise_gen is not None:
                self.noise_gen.set_state(current.streams["noise"])
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.shutdown(wait=True, cancel_futures=True)
