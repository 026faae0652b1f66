"""Rows of a ``.npy`` file read by worker processes: a torch ``DataLoader`` whose workers stay alive
between draws and read the rows the main process chose.

Which rows a batch holds is decided in the main process, by the data generator (so a checkpoint of
the generator resumes the draws bitwise); the workers only read them, each a contiguous part of the
batch, in order. Each worker opens the file memory-mapped itself (a memory map is not sent to a worker:
pickled, it would be the whole array). The workers are started by a fork server (or spawned), never
forked from the training process: a forked worker would inherit its open files, the run directory's
lock among them, and hold the run after the training process let it go.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch.utils.data


class _MappedRows(torch.utils.data.Dataset[np.ndarray]):
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
    """``read(rows)``: the rows of a ``.npy`` file, in the order asked, read by ``workers`` processes
    (0: in this process, from ``array``)."""

    def __init__(self, file: Path, array: np.ndarray, workers: int) -> None:
        self.array, self.workers = array, workers
        self._parts = _Parts()
        self._loader = None
        if workers > 0:
            self._loader = torch.utils.data.DataLoader(
                _MappedRows(file),
                batch_sampler=self._parts,
                num_workers=workers,
                persistent_workers=True,
                collate_fn=_as_is,
                multiprocessing_context=_CONTEXT,
            )

    def read(self, rows: np.ndarray) -> np.ndarray:
        """``array[rows]``; with workers, each reads a contiguous part of ``rows``."""
        if self._loader is None or len(rows) < 2:
            return np.asarray(self.array[rows])
        self._parts.parts = [part.tolist() for part in np.array_split(rows, min(self.workers, len(rows)))]
        return np.concatenate(list(self._loader))
