"""Reflow (Liu, Gong and Liu 2022, "Flow straight and fast"; 2-rectified flow++, arXiv 2405.20320): the
coupling ``reflow`` trains on the (noise, sample) pairs of a finished teacher run, so the student
learns the teacher's straightened transport (``docs/math.md``, "Reflow").

The pairs are drawn once per run, when training starts (``setup``; never at ``flowkit validate``),
with the teacher's own ``[sample]`` sampler from a generator seeded by the student run's seed, and
kept in the run directory (``reflow-pairs.pt``, written by rank 0 under torchrun; every rank draws the
same pairs from the same seed): a resumed run reads them back instead of sampling again. The teacher
is reached through :attr:`flowkit.interfaces.StageContext.open_run`, the engine's loader, so this
module does not import the engine.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor

from flowkit.errors import FlowkitError
from flowkit.files import write_atomic
from flowkit.host import launched
from flowkit.interfaces import BuildContext, Coupling, StageContext, resolve_relative
from flowkit.params import param

#: The file in the run directory that keeps the drawn pairs.
PAIRS_FILE = "reflow-pairs.pt"


class Reflow(Coupling):
    """Pairs each batch by the teacher: ``pairs`` draws ``(x0, x1 = teacher(x0))`` made once, and each
    batch picks ``B`` of them uniformly with the loop's generator (the noise and data the loop drew
    are replaced; their shapes must match the teacher's). A conditional teacher's pairs carry the class
    each sample was drawn for, which replaces the data's labels."""

    @attrs.define(frozen=True)
    class Params:
        teacher: str = param(
            doc="The teacher: a finished run directory (relative to the pipeline file's folder)."
        )
        pairs: int = param(
            50_000,
            doc="How many (noise, sample) pairs to draw from the teacher, once per run.",
            validator=attrs.validators.ge(1),
        )
        teacher_steps: int | None = param(
            None,
            doc="Replaces the teacher's [sample] steps when drawing the pairs (default: as it sampled).",
            validator=attrs.validators.optional(attrs.validators.ge(1)),
        )

    def __init__(self, params: Reflow.Params | None = None) -> None:
        super().__init__(params)
        self.x0: Tensor | None = None
        self.x1: Tensor | None = None
        self.y: Tensor | None = None

    @classmethod
    def from_params(cls, params: Reflow.Params, context: BuildContext) -> Reflow:
        """Resolve ``teacher`` against the pipeline file, so the run's ``pipeline.toml`` finds it too."""
        teacher = resolve_relative(params.teacher, context.source).resolve()
        return cls(attrs.evolve(params, teacher=str(teacher)))

    def setup(self, stage: StageContext) -> None:
        """Draw the pairs (or read those of an earlier start of this run) when training starts."""
        if stage.stage != "train" or self.x0 is not None:
            return
        kept = stage.directory / PAIRS_FILE if stage.directory is not None else None
        if kept is not None and kept.is_file():
            self._keep(torch.load(kept, map_location="cpu", weights_only=True))
            return
        if stage.open_run is None:
            raise FlowkitError("coupling 'reflow': this stage cannot open the teacher run (no engine loader)")
        teacher = stage.open_run(Path(self.params.teacher))
        seed = stage.generator("reflow").initial_seed()
        drawn = teacher.draw(self.params.pairs, seed, self.params.teacher_steps)
        state: dict[str, Any] = {"x0": drawn.x0, "x1": drawn.samples, "teacher": str(self.params.teacher)}
        if drawn.y is not None:
            state["y"] = drawn.y
        self._keep(state)
        rank = launched()
        if kept is not None and (rank is None or rank[0] == 0):  # only rank 0 writes the run directory
            buffer = io.BytesIO()
            torch.save(state, buffer)
            write_atomic(kept, lambda handle: handle.write(buffer.getvalue()))

    def _keep(self, state: dict[str, Any]) -> None:
        self.x0, self.x1, self.y = state["x0"], state["x1"], state.get("y")

    def __call__(
        self,
        x0: Tensor,
        x1: Tensor,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """``B`` teacher pairs picked uniformly (with replacement) by ``generator``."""
        if self.x0 is None or self.x1 is None:
            raise FlowkitError(
                "coupling 'reflow' was called before its pairs were drawn: setup(stage) draws them when "
                "training starts"
            )
        if tuple(self.x0.shape[1:]) != tuple(x0.shape[1:]):
            raise FlowkitError(
                f"coupling 'reflow': the teacher {self.params.teacher} samples points of shape "
                f"{tuple(self.x0.shape[1:])}, but this pipeline's data has shape {tuple(x0.shape[1:])}"
            )
        if y is not None and self.y is None:
            raise FlowkitError(
                f"coupling 'reflow': this model is class-conditional but the teacher {self.params.teacher} "
                "is not (its samples carry no classes); use a conditional teacher"
            )
        device = generator.device if generator is not None else x0.device
        pick = torch.randint(0, self.x0.shape[0], (x0.shape[0],), generator=generator, device=device).cpu()
        labels = None if y is None or self.y is None else self.y[pick].to(y.device)
        return self.x0[pick].to(x0), self.x1[pick].to(x1), labels
