"""Image datasets: scikit-learn's bundled 8x8 digits, and image arrays read from .npy/.npz files.

Both hold ``(N, C, H, W)`` float32 images in [-1, 1] with optional int64 class labels, split once into
a training part (what ``sample`` draws from, uniformly with replacement) and a held-out part (what
image metrics compare samples with). The split is a fixed permutation of seed ``split_seed``: the same
file and parameters give the same split on every machine.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np
import torch
from torch import Tensor

from flowkit.errors import FlowkitError
from flowkit.interfaces import BuildContext, Dataset
from flowkit.params import param
from flowkit.rows import HeldOutRows, held_out_field, split_seed_field
from flowkit_data.lazy import LazyRows
from flowkit_data.loader import MappedRows
from flowkit_data.pixels import flipped


class ImageArray(HeldOutRows):
    """Images ``(N, C, H, W)`` in [-1, 1] with optional labels ``(N,)``, split into training and held-out.

    ``sample`` and ``sample_labelled`` draw the same training rows for the same generator state (one
    ``randint`` of ``n`` rows), so a labelled and an unlabelled run see the same images.
    """

    value_range = (-1.0, 1.0)
    noun = "images"

    #: Flip each drawn image left-right with probability 1/2 (a dataset's ``flip`` option).
    flip = False

    @property
    def images(self) -> Tensor:
        """The training images ``(N, C, H, W)``."""
        return self.train_data

    def _rows(
        self, n: int, generator: torch.Generator | None, device: torch.device | None
    ) -> tuple[Tensor, Tensor | None]:
        x, y = self._drawn(n, generator, device)
        return (flipped(x, generator) if self.flip else x), y

    def _drawn(
        self, n: int, generator: torch.Generator | None, device: torch.device | None
    ) -> tuple[Tensor, Tensor | None]:
        """``n`` training images and their labels as stored, before any flip."""
        return super()._rows(n, generator, device)


class ReadWhenDrawn:
    """Images that a :class:`LazyRows` (``self.rows``) reads when a batch draws them (memory-mapped
    or decoded by workers), put before an :class:`ImageArray` class in the bases: its size, its
    draw and its held-out images come from the rows, not from tensors held in memory."""

    rows: LazyRows
    _shape: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    def __len__(self) -> int:
        return len(self.rows.train_rows)

    def _drawn(
        self, n: int, generator: torch.Generator | None, device: torch.device | None
    ) -> tuple[Tensor, Tensor | None]:
        return self.rows.draw(n, generator, device)

    def held_out(self) -> tuple[Tensor, Tensor | None] | None:
        """The held-out images ``(M, C, H, W)`` (read into memory) and labels; ``None`` if ``M = 0``."""
        return self.rows.held_out()


class Digits(ImageArray):
    """scikit-learn's bundled 8x8 handwritten digits: 1,797 images ``(1, 8, 8)`` of 10 classes.

    Pixels (0..16) are scaled to [-1, 1] as ``pixel / 8 - 1``. The data ships inside the scikit-learn
    wheel (nothing is downloaded): ``pip install "flowkit[images]"``.
    """

    @attrs.define(frozen=True)
    class Params:
        held_out: float = held_out_field()
        split_seed: int = split_seed_field()

    def __init__(self, params: Params | None = None) -> None:
        params = params if params is not None else self.Params()
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise FlowkitError(
                "dataset 'digits' needs scikit-learn (its 8x8 digits ship inside the wheel); install "
                'the images extra: pip install "flowkit[images]"'
            ) from None
        bunch = load_digits()
        images = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / 8.0 - 1.0)[:, None]
        labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
        super().__init__(params, images, labels, "dataset 'digits'")


class ImageFile(ImageArray):
    """Images from a ``.npy`` or ``.npz`` file: ``(N, C, H, W)``, ``(N, H, W, C)`` or ``(N, H, W)``.

    ``uint8`` pixels are scaled to [-1, 1] (``pixel / 127.5 - 1``); floating-point images must already
    lie in [-1, 1]. Labels (optional): the ``labels_key`` array of the ``.npz``, or a ``labels`` ``.npy``
    file, of ``N`` integers ``0 .. K-1``. Each mistake (suffix, shape, range, dtype, labels length) is a
    :class:`FlowkitError` naming the file and what would be right.
    """

    @attrs.define(frozen=True)
    class Params:
        path: str = param(doc="A .npy or .npz file of images; relative to the pipeline file.")
        key: str = param("images", doc="The images array of a .npz file.")
        labels: str = param(
            "", doc="A .npy file of N integer labels (a .npz holds them under labels_key instead)."
        )
        labels_key: str = param("labels", doc="The labels array of a .npz file (none: unlabelled).")
        layout: str = param(
            "auto",
            doc="'NCHW', 'NHWC', or 'auto' (NHWC when the last axis has 1, 3 or 4 channels and the "
            "second does not).",
            validator=attrs.validators.in_(["auto", "NCHW", "NHWC"]),
        )
        held_out: float = held_out_field()
        split_seed: int = split_seed_field()
        mmap: bool = param(
            False,
            doc="Read a .npy file memory-mapped: only the rows drawn are read, for data larger than memory "
            "(under torchrun each rank draws from its own shard of the training rows).",
        )
        workers: int = param(
            0,
            doc="With mmap: worker processes that read the drawn rows (0: read in the training process).",
            validator=attrs.validators.ge(0),
        )

    def __new__(cls, params: Params | None = None, base_dir: str | Path | None = None) -> ImageFile:
        # mmap = true builds the memory-mapped variant (same parameters, same draws)
        chosen = MappedImageFile if cls is ImageFile and params is not None and params.mmap else cls
        return super().__new__(chosen)

    def __init__(self, params: Params | None = None, base_dir: str | Path | None = None) -> None:
        if params is None:
            raise FlowkitError("dataset 'images' needs a path, e.g. path = \"images.npz\"")
        if params.workers:
            raise FlowkitError(
                f"dataset 'images': workers = {params.workers} read a memory-mapped file; set mmap = true "
                "(a file held in memory needs no workers)"
            )
        file = _resolve(params.path, base_dir)
        images, labels = _read(file, params, base_dir)
        super().__init__(
            params, _images(images, file, params.layout), _labels(labels, images.shape[0], file), str(file)
        )
        self.file = file

    @classmethod
    def from_params(cls, params: Params, context: BuildContext) -> ImageFile:
        """Build, resolving relative paths against the folder of ``context.source``."""
        source = Path(context.source)
        base_dir = source.parent if source.is_file() else None
        dataset = cls(params, base_dir=base_dir)
        labels = str(_resolve(params.labels, base_dir).resolve()) if params.labels else ""
        # the resolved pipeline (in the run directory) finds the files from anywhere
        dataset.params = attrs.evolve(
            params, path=str(_resolve(params.path, base_dir).resolve()), labels=labels
        )
        return dataset


class MappedImageFile(ReadWhenDrawn, ImageFile):
    """``kind = "images"`` with ``mmap = true``: a ``.npy`` file memory-mapped, never read whole.

    Each draw reads its rows from the file (through ``workers`` processes, or here) and scales them as
    :class:`ImageFile` does, so both give bitwise the same batches for the same generator; only the
    held-out images are held in memory. The rows drawn are chosen here, by the data generator, so a
    checkpoint resumes the draws bitwise. Under torchrun rank ``r`` of ``w`` draws from the training
    rows ``r, r + w, r + 2w, ...`` of the split (its shard); outside torchrun, from all of them.
    """

    def __init__(self, params: ImageFile.Params | None = None, base_dir: str | Path | None = None) -> None:
        assert params is not None  # ImageFile.__new__ builds this class only with parameters
        Dataset.__init__(self, params)
        file = self.file = _resolve(params.path, base_dir)
        if file.suffix != ".npy":
            raise FlowkitError(
                f"image file '{file}' has the suffix '{file.suffix}'; mmap = true reads a .npy file "
                "(save the images array with numpy.save)"
            )
        if not file.is_file():
            raise FlowkitError(f"image file '{file}' does not exist")
        try:
            array = np.load(file, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise FlowkitError(
                f"image file '{file}' is not a readable .npy array: {error or type(error).__name__}"
            ) from None
        if array.ndim == 3:
            array = array[:, None]  # (N, H, W): one channel
        self.array = array
        count = array.shape[0] if array.ndim == 4 else 0
        _images(np.asarray(array[:1]), file, params.layout)  # shape, dtype: the first row's verdict
        self._check_values(file)
        labels = _load_npy(_resolve(params.labels, base_dir), "labels file") if params.labels else None
        self.rows = LazyRows(
            MappedRows(file),
            count,
            _labels(labels, count, file),
            held_out=params.held_out,
            split_seed=params.split_seed,
            workers=params.workers,
            what=str(file),
            convert=self._convert,
        )
        self.num_classes = self.rows.num_classes
        self._shape = tuple(self._convert(np.asarray(array[:1])).shape[1:])

    def _check_values(self, file: Path) -> None:
        """Float images lie in [-1, 1] and are finite: checked in chunks, never the whole file at once."""
        if self.array.dtype.kind != "f":
            return
        chunk = max(1, (64 << 20) // max(1, int(np.prod(self.array.shape[1:])) * self.array.itemsize))
        for start in range(0, self.array.shape[0], chunk):
            _images(np.asarray(self.array[start : start + chunk]), file, "NCHW")

    def _convert(self, rows: np.ndarray) -> Tensor:
        return _images(rows, self.file, self.params.layout)


def _resolve(path: str, base_dir: str | Path | None) -> Path:
    file = Path(path).expanduser()
    return Path(base_dir) / file if not file.is_absolute() and base_dir is not None else file


def _load_npy(file: Path, what: str) -> np.ndarray:
    if file.suffix != ".npy":
        raise FlowkitError(f"{what} '{file}' has the suffix '{file.suffix}'; expected a .npy file")
    if not file.is_file():
        raise FlowkitError(f"{what} '{file}' does not exist")
    try:
        return np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise FlowkitError(
            f"{what} '{file}' is not a readable .npy array: {error or type(error).__name__}"
        ) from None


def _read(
    file: Path, params: ImageFile.Params, base_dir: str | Path | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The images array and the labels array (or ``None``) the parameters name."""
    if file.suffix not in (".npy", ".npz"):
        raise FlowkitError(
            f"image file '{file}' has the suffix '{file.suffix}'; expected a .npy or .npz file"
        )
    labels = None
    if file.suffix == ".npy":
        images = _load_npy(file, "image file")
    else:
        if not file.is_file():
            raise FlowkitError(f"image file '{file}' does not exist")
        try:
            with np.load(file, allow_pickle=False) as archive:
                names = list(archive.files)
                if params.key not in names:
                    raise FlowkitError(
                        f"image file '{file}' has no array '{params.key}' "
                        f"(it holds {', '.join(names) or 'none'}); "
                        "set [data] key to the images array"
                    )
                images = archive[params.key]
                labels = archive[params.labels_key] if params.labels_key in names else None
        except (ValueError, OSError, EOFError) as error:
            raise FlowkitError(f"image file '{file}' is not a readable .npz archive: {error}") from None
    if params.labels:
        labels = _load_npy(_resolve(params.labels, base_dir), "labels file")
    return images, labels


def _images(array: np.ndarray, file: Path, layout: str) -> Tensor:
    """``(N, C, H, W)`` float32 in [-1, 1] from a uint8 or float array in one of the layouts."""
    if array.dtype == np.uint8:
        scaled = array.astype(np.float32) / 127.5 - 1.0
    elif array.dtype.kind == "f":
        scaled = array.astype(np.float32)
        if not np.isfinite(scaled).all():
            raise FlowkitError(f"image file '{file}' contains NaN or infinite values")
        low, high = float(scaled.min(initial=0.0)), float(scaled.max(initial=0.0))
        if low < -1.0 or high > 1.0:
            hint = " (pixels in [0, 1]: x * 2 - 1; in [0, 255]: store uint8)" if low >= 0 else ""
            raise FlowkitError(
                f"image file '{file}' holds float values in [{low:g}, {high:g}]; float images must lie "
                f"in [-1, 1]{hint}"
            )
    else:
        raise FlowkitError(
            f"image file '{file}' holds {array.dtype} values; expected uint8 pixels (0..255) or float "
            "values in [-1, 1]"
        )
    if scaled.ndim == 3:
        scaled = scaled[:, None]  # (N, H, W): one channel
    if scaled.ndim != 4 or scaled.shape[0] == 0:
        raise FlowkitError(
            f"image file '{file}' holds an array of shape {array.shape}; expected (N, C, H, W), "
            "(N, H, W, C) or (N, H, W) with N >= 1"
        )
    channels_last = scaled.shape[3] in (1, 3, 4) and scaled.shape[1] not in (1, 3, 4)
    if layout == "NHWC" or (layout == "auto" and channels_last):
        scaled = scaled.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(scaled))


def _labels(array: np.ndarray | None, count: int, file: Path) -> Tensor | None:
    """``(N,)`` int64 labels ``0 .. K-1``, checked against the ``count`` images."""
    if array is None:
        return None
    if array.dtype.kind not in "iu":
        raise FlowkitError(f"labels of '{file}' are {array.dtype}; expected integers 0 .. K-1")
    if array.ndim != 1 or array.shape[0] != count:
        raise FlowkitError(
            f"labels of '{file}' have shape {array.shape}; expected one label per image: ({count},)"
        )
    if array.min() < 0:
        raise FlowkitError(f"labels of '{file}' hold {int(array.min())}; expected integers 0 .. K-1")
    return torch.from_numpy(array.astype(np.int64))
