"""Rows read by worker processes: a torch ``DataLoader`` whose workers stay alive between draws and
read the rows the main process chose, from a source that reads a list of rows (``__getitems__``): the
rows of a memory-mapped ``.npy`` file, or images decoded from their files (``lazy = true``).

Which rows a batch holds is decided in the main process, by the data generator (so a checkpoint of
the generator resumes the draws bitwise); the workers only read them, each a contiguous part of the
batch, in order. Each worker opens the file memory-mapped itself (a memory map is not sent to a worker:
pickled, it would be the whole array). The workers are started by a fork server (or spawned), never
forked from the training process: a forked worker would inherit its open files, the run directory's
lock among them, and hold the run after the training process let it go. A source reports a bad row as
a :class:`Failure` (returned, not raised), so its error reaches the training process as the one line
it is, not as a worker's traceback.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch.utils.data

from flowkit.errors import FlowkitError


@dataclass(frozen=True)
class Failure:
    """What a source returns instead of rows it cannot read: the error line that names the bad one."""

    message: str


class MappedRows(torch.utils.data.Dataset[np.ndarray]):
    """Row ``i`` of the ``.npy`` file, the file opened memory-mapped on first use in each process."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self._array: np.ndarray | None = None

    def __getitem__(self, index: int) -> np.ndarray:
        raise NotImplementedError  # rows are read a part at a time: __getitems__

    def __getitems__(self, indices: list[int]) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.file, mmap_mode="r", allow_pickle=False)
        return np.asarray(self._array[np.asarray(indices, dtype=np.int64)])

    def __getstate__(self) -> dict[str, Any]:
        # sent to a worker without the map a read here may have opened (pickled, the whole array)
        return {**self.__dict__, "_array": None}


class _Parts:
    """The batch sampler: the parts of the current request, set before each pass of the loader."""

    def __init__(self) -> None:
        self.parts: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.parts)

    def __len__(self) -> int:
        return len(self.parts)


#: How workers start: a fork server where there is one (Linux), else spawned (macOS, Windows).
_CONTEXT = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _as_is(rows: Any) -> Any:  # the rows of __getitems__, already one array
    return rows


class RowReader:
    """``read(rows)``: the rows of ``source``, in the order asked, read by ``workers`` processes (0: in
    this process)."""

    def __init__(self, source: torch.utils.data.Dataset[Any], workers: int) -> None:
        self.source, self.workers = source, workers
        self._parts = _Parts()
        self._loader = None
        if workers > 0:
            self._loader = torch.utils.data.DataLoader(
                source,
                batch_sampler=self._parts,
                num_workers=workers,
                persistent_workers=True,
                collate_fn=_as_is,
                multiprocessing_context=_CONTEXT,
            )

    def read(self, rows: np.ndarray) -> np.ndarray:
        """``source[rows]``; with workers, each reads a contiguous part of ``rows``. A :class:`Failure`
        of the source is raised here, as a :class:`FlowkitError`."""
        if self._loader is None or len(rows) < 2:
            parts = [self.source.__getitems__(rows.tolist())]  # type: ignore[attr-defined]
        else:
            self._parts.parts = [part.tolist() for part in np.array_split(rows, min(self.workers, len(rows)))]
            parts = list(self._loader)
        for part in parts:
            if isinstance(part, Failure):
                raise FlowkitError(part.message)
        return np.concatenate(parts)
