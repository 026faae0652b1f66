"""Images of a Hugging Face ``datasets`` dataset saved with ``save_to_disk``: an image column
(``datasets.Image``) and an optional label column (``ClassLabel`` or integers ``0 .. K-1``).

The images are read as their stored bytes and decoded here through Pillow, with the conversion,
resize, centre crop, scaling and flips of ``image-folder`` (:mod:`flowkit_data.pixels`): the same
PNGs in a folder or in a dataset give bitwise the same tensors. ``datasets`` is imported only when
such a dataset is built (``pip install "flowkit[hf]"``). With ``lazy = true`` only the headers are read
when the dataset is built; each image is decoded when a batch draws it, by ``workers`` processes that
open the saved dataset themselves (its Arrow files are memory-mapped, never read whole).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch import Tensor

from flowkit.errors import FlowkitError
from flowkit.interfaces import BuildContext, Dataset
from flowkit.params import param
from flowkit.rows import held_out_field, split_seed_field
from flowkit_data.images import ImageArray, ReadWhenDrawn
from flowkit_data.lazy import DecodedImages, LazyRows
from flowkit_data.pixels import (
    Encoded,
    Sizes,
    channels_field,
    crop_field,
    decode_all,
    flip_field,
    lazy_field,
    pillow,
    resize_field,
    survey,
    workers_field,
)

#: Rows whose headers are read at once when a lazy dataset is surveyed (their bytes held meanwhile).
_CHUNK = 1024


class HFDataset(ImageArray):
    """Images ``(N, C, H, W)`` in [-1, 1] from the image column of a dataset saved with
    ``save_to_disk``, with the label column's labels. A missing directory, a directory that is no
    saved dataset, an unknown split or column, a column of no images, labels that are not class
    indices, an unreadable image and mixed sizes without a resize are each a :class:`FlowkitError`
    naming the directory and the column (and the row) at fault."""

    @attrs.define(frozen=True)
    class Params:
        path: str = param(
            doc="A directory written by datasets' save_to_disk (a Dataset or a DatasetDict); relative "
            "to the pipeline file."
        )
        image: str = param("image", doc="The column of images (a datasets.Image feature).")
        label: str = param(
            "", doc="The column of class labels 0 .. K-1 (ClassLabel or integers); empty: unlabelled."
        )
        split: str = param("", doc="The split of a saved DatasetDict (empty: its only split).")
        channels: int = channels_field()
        resize: int = resize_field()
        crop: int = crop_field()
        flip: bool = flip_field()
        held_out: float = held_out_field()
        split_seed: int = split_seed_field()
        lazy: bool = lazy_field()
        workers: int = workers_field()

    def __new__(cls, params: Params | None = None, base_dir: str | Path | None = None) -> HFDataset:
        # lazy = true builds the variant that decodes when drawn (same parameters, same draws)
        chosen = LazyHFDataset if cls is HFDataset and params is not None and params.lazy else cls
        return super().__new__(chosen)

    def __init__(self, params: Params | None = None, base_dir: str | Path | None = None) -> None:
        saved = SavedImages.open(params, base_dir)
        assert params is not None  # SavedImages.open refuses None
        if params.workers:
            raise FlowkitError(
                f"dataset 'hf-dataset': workers = {params.workers} decode images when drawn; set "
                "lazy = true (images decoded when the dataset is built need no workers)"
            )
        images = decode_all(list(saved.encoded(range(saved.count))), params.channels, params)
        super().__init__(params, images, saved.labels, saved.what)
        self.directory, self.flip = saved.directory, params.flip

    @classmethod
    def from_params(cls, params: Params, context: BuildContext) -> HFDataset:
        """Build, resolving a relative ``path`` against the folder of ``context.source``."""
        source = Path(context.source)
        base_dir = source.parent if source.is_file() else None
        dataset = cls(params, base_dir=base_dir)
        # the resolved pipeline (in the run directory) finds the dataset from anywhere
        dataset.params = attrs.evolve(params, path=str(dataset.directory.resolve()))
        return dataset


class LazyHFDataset(ReadWhenDrawn, HFDataset):
    """``hf-dataset`` with ``lazy = true``: each image decoded when a batch draws it, in ``workers``
    processes; bitwise the batches the eager dataset draws."""

    def __init__(self, params: HFDataset.Params | None = None, base_dir: str | Path | None = None) -> None:
        saved = SavedImages.open(params, base_dir)
        assert params is not None  # SavedImages.open refuses None
        Dataset.__init__(self, params)
        chunks = (range(start, min(start + _CHUNK, saved.count)) for start in range(0, saved.count, _CHUNK))
        mode, shape = survey(
            (image for rows in chunks for image in saved.encoded(rows)), params.channels, params
        )
        self.rows = LazyRows(
            SavedRows(saved, mode, Sizes(params.resize, params.crop), shape),
            saved.count,
            saved.labels,
            held_out=params.held_out,
            split_seed=params.split_seed,
            workers=params.workers,
            what=saved.what,
        )
        self.num_classes = self.rows.num_classes
        self._shape = (1 if mode == "L" else 3, *shape[:2])
        self.directory, self.flip = saved.directory, params.flip


class SavedImages:
    """The image column of one split of a saved dataset: its rows as encoded images, and the labels.
    Sent to worker processes without the opened dataset (nor the labels): each opens it itself
    (memory-mapped)."""

    def __init__(self, directory: Path, split: str, image: str, labels: Tensor | None, count: int) -> None:
        self.directory, self.split, self.image = directory, split, image
        self.labels, self.count = labels, count
        self.what = f"hf dataset '{directory}'"
        self._table: Any = None  # opened on first use in each process

    @classmethod
    def open(cls, params: HFDataset.Params | None, base_dir: str | Path | None) -> SavedImages:
        """The images the parameters name, every mistake in them a one-line error."""
        if params is None:
            raise FlowkitError("dataset 'hf-dataset' needs a path, e.g. path = \"my-dataset/\"")
        directory = Path(params.path).expanduser()
        if not directory.is_absolute() and base_dir is not None:
            directory = Path(base_dir) / directory
        datasets = _datasets()
        pillow("hf-dataset", "hf")
        table = _split(_load(datasets, directory), params.split, directory)
        what = f"hf dataset '{directory}'"
        columns = list(table.column_names)
        named = [(params.image, "image", "images (a datasets.Image feature)")]
        named += [(params.label, "label", "class labels")] if params.label else []
        for column, key, holds in named:
            if column not in columns:
                raise FlowkitError(
                    f"{what} has no column '{column}' (its columns: {', '.join(columns)}); set [data] "
                    f"{key} to the column of {holds}"
                )
        if not isinstance(table.features[params.image], datasets.Image):
            raise FlowkitError(
                f"column '{params.image}' of {what} holds {_feature(table.features[params.image])}, "
                "not images (a datasets.Image feature); set [data] image to the column of images"
            )
        labels = _labels(table, params.label, what, datasets) if params.label else None
        if len(table) == 0:
            raise FlowkitError(f"{what} holds no rows")
        saved = cls(directory, params.split, params.image, labels, len(table))
        saved._table = _encoded_column(table, params.image, datasets)
        return saved

    def encoded(self, indices: list[int] | range) -> list[Encoded]:
        if self._table is None:  # in a worker: open the saved dataset once
            datasets = _datasets()
            table = _split(_load(datasets, self.directory), self.split, self.directory)
            self._table = _encoded_column(table, self.image, datasets)
        stored = self._table[list(indices)][self.image]
        return [self.named(index, cell) for index, cell in zip(indices, stored, strict=True)]

    def named(self, index: int, cell: dict[str, Any] | None) -> Encoded:
        """Row ``index`` as an encoded image, from its stored cell (``{"bytes", "path"}``)."""
        data = (cell or {}).get("bytes")
        place = (cell or {}).get("path")
        source: Path | bytes = data if data is not None else Path(place) if place else b""
        return Encoded(source, f"row {index} of {self.what} (column '{self.image}')", f"row {index}")

    def __getstate__(self) -> dict[str, Any]:
        # sent to a worker without the opened dataset (the worker opens it, memory-mapped)
        return {**self.__dict__, "_table": None, "labels": None}


class SavedRows(DecodedImages):
    """The source of ``hf-dataset`` with ``lazy = true``: rows of a saved dataset decoded when drawn."""

    def __init__(self, saved: SavedImages, mode: str, sizes: Sizes, shape: tuple[int, ...]) -> None:
        super().__init__(mode, sizes, shape, saved.named(0, None))
        self.saved = saved

    def encoded(self, indices: list[int]) -> list[Encoded]:
        return self.saved.encoded(indices)


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise FlowkitError(
            "dataset 'hf-dataset' reads Hugging Face datasets; install them: pip install \"flowkit[hf]\""
        ) from None
    return datasets


def _load(datasets: Any, directory: Path) -> Any:
    if not directory.is_dir():
        what = "is not a folder" if directory.exists() else "does not exist"
        raise FlowkitError(f"hf dataset '{directory}' {what}")
    saved = any((directory / name).is_file() for name in ("state.json", "dataset_dict.json"))
    if not saved:
        raise FlowkitError(
            f"hf dataset '{directory}' is not a dataset saved with save_to_disk (it holds neither "
            "state.json nor dataset_dict.json); save it with datasets' Dataset.save_to_disk"
        )
    try:
        return datasets.load_from_disk(str(directory))
    except (OSError, ValueError, KeyError, TypeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FlowkitError(f"hf dataset '{directory}' cannot be loaded: {first}") from None


def _split(loaded: Any, split: str, directory: Path) -> Any:
    """The one ``Dataset`` of ``loaded``: itself, or the ``split`` of a ``DatasetDict``."""
    splits = list(loaded.keys()) if hasattr(loaded, "keys") else None
    if splits is None:
        if split:
            raise FlowkitError(
                f"hf dataset '{directory}' is one Dataset, not a DatasetDict of splits; remove [data] "
                f'split = "{split}"'
            )
        return loaded
    if not split and len(splits) == 1:
        return loaded[splits[0]]
    if split not in splits:
        given = f"has no split '{split}'" if split else "holds several splits"
        raise FlowkitError(
            f"hf dataset '{directory}' {given} (its splits: {', '.join(splits)}); set [data] split to one"
        )
    return loaded[split]


def _encoded_column(table: Any, column: str, datasets: Any) -> Any:
    """The image column alone, read as the stored bytes (decoded here, not by ``datasets``)."""
    return table.select_columns([column]).cast_column(column, datasets.Image(decode=False))


def _labels(table: Any, column: str, what: str, datasets: Any) -> Tensor:
    feature = table.features[column]
    integer = isinstance(feature, datasets.ClassLabel) or (
        isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint"))
    )
    if not integer:
        raise FlowkitError(
            f"column '{column}' of {what} holds {_feature(feature)}; [data] label names a column of "
            "class labels 0 .. K-1 (ClassLabel or integers)"
        )
    values = np.asarray(table.select_columns([column]).with_format("numpy")[:][column])
    if len(values) and values.min() < 0:
        raise FlowkitError(
            f"column '{column}' of {what} holds the label {int(values.min())}; expected class labels 0 .. K-1"
        )
    return torch.from_numpy(values.astype(np.int64))


def _feature(feature: Any) -> str:
    """How an error names a column's feature: ``int64 values``, ``string values``, ``Sequence``."""
    dtype = getattr(feature, "dtype", None)
    return f"{dtype} values" if isinstance(dtype, str) else f"{type(feature).__name__} values"
