"""Images read a batch at a time, never all held: the rows of a memory-mapped ``.npy`` file, or
images decoded when a batch draws them (``lazy = true`` of ``image-folder`` and ``hf-dataset``).

:class:`LazyRows` splits the rows as :class:`~flowkit_data.images.ImageArray` splits images held in
memory (the same permutation of ``split_seed``) and draws them the same way (one ``randint`` of ``n``
training rows from the data generator), so a lazy dataset draws bitwise the batches its eager twin
draws, and a checkpoint of the generator resumes it bitwise. Under torchrun rank ``r`` of ``w`` draws
from the training rows ``r, r + w, r + 2w, ...`` of the split (its shard). The rows are read by a
:class:`~flowkit_data.loader.RowReader`: in the training process, or by worker processes.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch.utils.data
from torch import Tensor

from flowkit.errors import FlowkitError
from flowkit.host import launched
from flowkit.rows import split_rows
from flowkit_data.loader import Failure, RowReader
from flowkit_data.pixels import Encoded, Sizes, check_size, open_image, pixels, scaled


class LazyRows:
    """``count`` rows of ``source`` with optional ``labels``: split into training and held-out rows,
    the training rows sharded per rank, each draw read by ``workers`` processes and ``convert``-ed to
    ``(n, C, H, W)`` float32. ``what`` names the data in errors."""

    def __init__(
        self,
        source: torch.utils.data.Dataset[Any],
        count: int,
        labels: Tensor | None,
        *,
        held_out: float,
        split_seed: int,
        workers: int,
        what: str,
        convert: Callable[[np.ndarray], Tensor] = scaled,
    ) -> None:
        train, test = split_rows(count, held_out, split_seed, what, "images")
        self.train_rows, self.test_rows = train.numpy(), test.numpy()
        place = launched()
        if place is not None and place[1] > 1:
            rank, world, _ = place
            if len(self.train_rows) < world:
                raise FlowkitError(
                    f"{what}: {len(self.train_rows)} training images cannot be shared by {world} ranks"
                )
            self.train_rows = self.train_rows[rank::world]
        self.labels, self.convert = labels, convert
        self.num_classes = int(labels.max()) + 1 if labels is not None else 0
        self.reader = RowReader(source, workers)

    def draw(
        self, n: int, generator: torch.Generator | None, device: torch.device | None
    ) -> tuple[Tensor, Tensor | None]:
        """``n`` training rows and their labels, drawn with replacement: as ``ImageArray`` draws them."""
        target = torch.device(device) if device is not None else torch.device("cpu")
        if target.type == "cuda" and target.index is None:
            target = torch.device("cuda", torch.cuda.current_device())
        rows = torch.randint(0, len(self.train_rows), (n,), generator=generator, device=target)
        chosen = self.train_rows[rows.cpu().numpy()]
        images = self.convert(self.reader.read(chosen)).to(target)
        labels = self.labels[torch.from_numpy(chosen)].to(target) if self.labels is not None else None
        return images, labels

    def held_out(self) -> tuple[Tensor, Tensor | None] | None:
        """The held-out images (read into memory) and labels; ``None`` if there are none."""
        if len(self.test_rows) == 0:
            return None
        images = self.convert(self.reader.read(self.test_rows))
        labels = self.labels[torch.from_numpy(self.test_rows)] if self.labels is not None else None
        return images, labels


class DecodedImages(torch.utils.data.Dataset[np.ndarray], abc.ABC):
    """The source of a lazy image dataset: images ``indices`` decoded, converted to ``mode``, resized
    and cropped, ``(n, H, W)`` or ``(n, H, W, 3)`` uint8, each checked to have the ``shape`` that
    ``first`` has. Subclasses say where the bytes of image ``i`` are (:meth:`encoded`)."""

    def __init__(self, mode: str, sizes: Sizes, shape: tuple[int, ...], first: Encoded) -> None:
        self.mode, self.sizes, self.shape, self.first = mode, sizes, shape, first

    @abc.abstractmethod
    def encoded(self, indices: list[int]) -> list[Encoded]:
        """The encoded bytes of images ``indices``."""

    def __getitem__(self, index: int) -> np.ndarray:
        raise NotImplementedError  # images are decoded a part of a batch at a time: __getitems__

    def __getitems__(self, indices: list[int]) -> np.ndarray | Failure:
        try:
            arrays = []
            for image in self.encoded(indices):
                arrays.append(pixels(open_image(image, load=True), self.mode, self.sizes))
                check_size(image, arrays[-1].shape, self.first, self.shape)
            return np.stack(arrays)
        except FlowkitError as error:  # returned: raised in a worker it would be a traceback
            return Failure(str(error))


class FolderFiles(DecodedImages):
    """Image files decoded when drawn (``image-folder`` with ``lazy = true``)."""

    def __init__(self, files: list[Path], mode: str, sizes: Sizes, shape: tuple[int, ...]) -> None:
        super().__init__(mode, sizes, shape, file_image(files[0]))
        self.files = files

    def encoded(self, indices: list[int]) -> list[Encoded]:
        return [file_image(self.files[index]) for index in indices]


def file_image(file: Path) -> Encoded:
    """An image file, named as ``image-folder``'s errors name it."""
    return Encoded(file, f"image file '{file}'", f"'{file}'")
