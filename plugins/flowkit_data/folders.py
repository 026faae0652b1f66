"""Images read from a folder of PNG/JPEG files through Pillow, class subfolders giving the labels.

``root`` holds either the images themselves (unlabelled) or one subfolder per class (labels
``0 .. K-1`` in the sorted order of the subfolder names). Each file is decoded once, when the dataset
is built: converted to grey (``L``) or ``RGB``, resized (shorter side to ``resize`` pixels, bilinear),
centre-cropped to ``crop`` x ``crop``, and scaled to [-1, 1] as ``pixel / 127.5 - 1`` (the scaling of
uint8 arrays in ``kind = "images"``). ``flip`` mirrors each drawn image left-right with probability
1/2, drawn from the data generator after the rows (so a resumed run draws the same flips).

With ``lazy = true`` only the headers are read when the dataset is built (the mode and size of every
file, checked as the eager reading checks them); each file is decoded when a batch draws it, by
``workers`` processes, for folders larger than memory (:class:`LazyImageFolder`).
"""

from __future__ import annotations

from pathlib import Path

import attrs
import torch

from flowkit.errors import FlowkitError
from flowkit.interfaces import BuildContext, Dataset
from flowkit.params import param
from flowkit.rows import held_out_field, split_seed_field
from flowkit_data.images import ImageArray, ReadWhenDrawn
from flowkit_data.lazy import FolderFiles, LazyRows, file_image
from flowkit_data.pixels import (
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

#: The suffixes read as images (lower case; ``.JPG`` is read too).
SUFFIXES = (".png", ".jpg", ".jpeg")


class ImageFolder(ImageArray):
    """Images ``(N, C, H, W)`` in [-1, 1] from the PNG/JPEG files under ``root``; class subfolders
    are labels. Every unreadable file, mixed size without a resize, empty class folder or empty root
    is a :class:`FlowkitError` naming it."""

    @attrs.define(frozen=True)
    class Params:
        root: str = param(
            doc="A folder of PNG/JPEG images, or of one subfolder per class; relative to the pipeline file."
        )
        channels: int = channels_field()
        resize: int = resize_field()
        crop: int = crop_field()
        flip: bool = flip_field()
        held_out: float = held_out_field()
        split_seed: int = split_seed_field()
        lazy: bool = lazy_field()
        workers: int = workers_field()

    def __new__(cls, params: Params | None = None, base_dir: str | Path | None = None) -> ImageFolder:
        # lazy = true builds the variant that decodes when drawn (same parameters, same draws)
        chosen = LazyImageFolder if cls is ImageFolder and params is not None and params.lazy else cls
        return super().__new__(chosen)

    def __init__(self, params: Params | None = None, base_dir: str | Path | None = None) -> None:
        root, files, labels, self.classes = _found(params, base_dir)
        assert params is not None  # _found refuses None
        if params.workers:
            raise FlowkitError(
                f"dataset 'image-folder': workers = {params.workers} decode images when drawn; set "
                "lazy = true (images decoded when the dataset is built need no workers)"
            )
        pillow("image-folder", "images")
        images = decode_all([file_image(file) for file in files], params.channels, params)
        label_tensor = torch.tensor(labels, dtype=torch.int64) if self.classes else None
        super().__init__(params, images, label_tensor, f"image folder '{root}'")
        self.root, self.flip = root, params.flip

    @classmethod
    def from_params(cls, params: Params, context: BuildContext) -> ImageFolder:
        """Build, resolving a relative ``root`` against the folder of ``context.source``."""
        source = Path(context.source)
        base_dir = source.parent if source.is_file() else None
        dataset = cls(params, base_dir=base_dir)
        # the resolved pipeline (in the run directory) finds the folder from anywhere
        dataset.params = attrs.evolve(params, root=str(dataset.root.resolve()))
        return dataset


class LazyImageFolder(ReadWhenDrawn, ImageFolder):
    """``image-folder`` with ``lazy = true``: each file decoded when a batch draws it, in ``workers``
    processes, never all held; bitwise the batches the eager folder draws (only the held-out images
    are held in memory, for the metrics)."""

    def __init__(self, params: ImageFolder.Params | None = None, base_dir: str | Path | None = None) -> None:
        root, files, labels, self.classes = _found(params, base_dir)
        assert params is not None  # _found refuses None
        Dataset.__init__(self, params)
        pillow("image-folder", "images")
        encoded = [file_image(file) for file in files]
        mode, shape = survey(encoded, params.channels, params)
        source = FolderFiles(files, mode, Sizes(params.resize, params.crop), shape)
        label_tensor = torch.tensor(labels, dtype=torch.int64) if self.classes else None
        self.rows = LazyRows(
            source,
            len(files),
            label_tensor,
            held_out=params.held_out,
            split_seed=params.split_seed,
            workers=params.workers,
            what=f"image folder '{root}'",
        )
        self.num_classes = self.rows.num_classes
        self._shape = (1 if mode == "L" else 3, *shape[:2])
        self.root, self.flip = root, params.flip


def _found(
    params: ImageFolder.Params | None, base_dir: str | Path | None
) -> tuple[Path, list[Path], list[int], list[str]]:
    """The resolved root, its image files, their labels and the class names (``[]``: unlabelled)."""
    if params is None:
        raise FlowkitError("dataset 'image-folder' needs a root, e.g. root = \"images/\"")
    root = Path(params.root).expanduser()
    if not root.is_absolute() and base_dir is not None:
        root = Path(base_dir) / root
    return (root, *find_images(root))


def find_images(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """The image files under ``root``, their labels and the class names (``[]``: unlabelled)."""
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise FlowkitError(f"image folder '{root}' {what}")
    entries = sorted(root.iterdir())
    folders = [entry for entry in entries if entry.is_dir() and not entry.name.startswith(".")]
    loose = [entry for entry in entries if _is_image(entry)]
    if folders and loose:
        raise FlowkitError(
            f"image folder '{root}' holds both images ('{loose[0].name}') and class folders "
            f"('{folders[0].name}'); put every image in a class folder, or none"
        )
    if not folders:
        if not loose:
            raise FlowkitError(f"image folder '{root}' holds no images ({', '.join(SUFFIXES)})")
        return loose, [0] * len(loose), []
    files: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(folders):
        found = sorted(entry for entry in folder.rglob("*") if _is_image(entry))
        if not found:
            raise FlowkitError(
                f"class folder '{folder}' holds no images ({', '.join(SUFFIXES)}); remove it or add images"
            )
        files += found
        labels += [label] * len(found)
    return files, labels, [folder.name for folder in folders]


def _is_image(entry: Path) -> bool:
    return entry.is_file() and entry.suffix.lower() in SUFFIXES and not entry.name.startswith(".")
