"""Datasets held in memory as rows: the split into training and held-out rows, and the draw.

Images, token sequences and any other data that fit in memory as one tensor ``(N, *D)`` (with optional
labels ``(N,)``) share one rule for which rows are held out and one draw, so that a labelled and an
unlabelled run of the same data see the same rows for the same generator state. Plugins subclass
:class:`HeldOutRows` (it is part of the contract) instead of writing the split again.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import Tensor

from flowkit.errors import FlowkitError
from flowkit.interfaces import Dataset
from flowkit.params import param

__all__ = ["HeldOutRows", "held_out_field", "split_rows", "split_seed_field"]

_fraction = [attrs.validators.ge(0.0), attrs.validators.lt(1.0)]


def held_out_field(rows: str = "images") -> Any:
    """The ``held_out`` parameter: the share of the rows (named ``rows`` in its doc) kept out of training."""
    return param(
        0.2, doc=f"Share of the {rows} kept out of training for evaluation (0: none).", validator=_fraction
    )


def split_seed_field(rows: str = "images") -> Any:
    """The ``split_seed`` parameter: the seed of the permutation that splits the rows."""
    return param(0, doc=f"Seed of the permutation that splits training and held-out {rows}.")


def split_rows(count: int, held_out: float, split_seed: int, what: str, noun: str) -> tuple[Tensor, Tensor]:
    """``(training indices, held-out indices)`` of ``count`` rows: a permutation seeded by
    ``split_seed`` whose first ``round(held_out * count)`` entries are held out. Data read a row at a
    time (memory-mapped, decoded when drawn) split with it too, so they hold out the same rows."""
    held = round(held_out * count)
    if held >= count:
        raise FlowkitError(f"{what}: held_out = {held_out} leaves no training {noun} of {count}")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(split_seed))
    return order[held:], order[:held]


class HeldOutRows(Dataset):
    """Rows ``(N, *D)`` with optional labels ``(N,)``, split into training and held-out rows.

    The split is a permutation seeded by ``params.split_seed``; the first ``round(held_out * N)`` rows
    of it are held out. ``sample`` and ``sample_labelled`` draw the same training rows for the same
    generator state (one ``randint`` of ``n`` rows), from a copy of the rows kept on each device.
    """

    #: What one row is called in messages and docstrings ("images", "sequences").
    noun = "rows"

    def __init__(self, params: Any, rows: Tensor, labels: Tensor | None, what: str) -> None:
        super().__init__(params)
        train, test = split_rows(rows.shape[0], params.held_out, params.split_seed, what, self.noun)
        self.train_data, self.test_data = rows[train].contiguous(), rows[test].contiguous()
        self.labels = labels[train].contiguous() if labels is not None else None
        self.test_labels = labels[test].contiguous() if labels is not None else None
        self.num_classes = int(labels.max()) + 1 if labels is not None else 0
        self._on_device: dict[torch.device, tuple[Tensor, Tensor | None]] = {}

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.train_data.shape[1:])

    def __len__(self) -> int:
        return int(self.train_data.shape[0])

    def _rows(
        self, n: int, generator: torch.Generator | None, device: torch.device | None
    ) -> tuple[Tensor, Tensor | None]:
        target = torch.device(device) if device is not None else torch.device("cpu")
        if target.type == "cuda" and target.index is None:
            target = torch.device("cuda", torch.cuda.current_device())
        cached = self._on_device.get(target)
        if cached is None:
            labels = self.labels.to(target) if self.labels is not None else None
            cached = self._on_device[target] = (self.train_data.to(target), labels)
        rows, labels = cached
        drawn = torch.randint(0, rows.shape[0], (n,), generator=generator, device=target)
        return rows.index_select(0, drawn), labels.index_select(0, drawn) if labels is not None else None

    def sample(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | None = None
    ) -> Tensor:
        """``n`` training rows drawn with replacement, ``(n, *D)``."""
        return self._rows(n, generator, device)[0]

    def sample_labelled(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(x (n, *D), y (n,) int64)``: training rows with their labels."""
        x, y = self._rows(n, generator, device)
        if y is None:
            super().sample_labelled(n, generator, device)  # raises: no labels
            raise AssertionError  # pragma: no cover
        return x, y

    def held_out(self) -> tuple[Tensor, Tensor | None] | None:
        """The held-out rows ``(M, *D)`` and labels ``(M,)`` (or ``None``); ``None`` if ``M = 0``."""
        if self.test_data.shape[0] == 0:
            return None
        return self.test_data, self.test_labels
