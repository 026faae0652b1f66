"""Images read from a folder of PNG/JPEG files through Pillow, class subfolders giving the labels.

``root`` holds either the images themselves (unlabelled) or one subfolder per class (labels
``0 .. K-1`` in the sorted order of the subfolder names). Each file is decoded once, when the dataset
is built: converted to grey (``L``) or ``RGB``, resized (shorter side to ``resize`` pixels, bilinear),
centre-cropped to ``crop`` x ``crop``, and scaled to [-1, 1] as ``pixel / 127.5 - 1`` (the scaling of
uint8 arrays in ``kind = "images"``). ``flip`` mirrors each drawn image left-right with probability
1/2, drawn from the data generator after the rows (so a resumed run draws the same flips).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch import Tensor

from flowkit.errors import FlowkitError
from flowkit.interfaces import BuildContext
from flowkit.params import param
from flowkit.rows import held_out_field, split_seed_field
from flowkit_data.images import ImageArray

#: The suffixes read as images (lower case; ``.JPG`` is read too).
SUFFIXES = (".png", ".jpg", ".jpeg")
_choices = attrs.validators.in_([0, 1, 3])
_at_least_0 = attrs.validators.ge(0)


class ImageFolder(ImageArray):
    """Images ``(N, C, H, W)`` in [-1, 1] from the PNG/JPEG files under ``root``; class subfolders
    are labels. Every unreadable file, mixed size without a resize, empty class folder or empty root
    is a :class:`FlowkitError` naming it."""

    @attrs.define(frozen=True)
    class Params:
        root: str = param(
            doc="A folder of PNG/JPEG images, or of one subfolder per class; relative to the pipeline file."
        )
        channels: int = param(
            0, doc="1 (grey), 3 (RGB), or 0: 1 if every image is grey, else 3.", validator=_choices
        )
        resize: int = param(
            0,
            doc="Resize each image so its shorter side has this many pixels (bilinear; 0: keep the size).",
            validator=_at_least_0,
        )
        crop: int = param(
            0, doc="Crop the centre crop x crop pixels after the resize (0: no crop).", validator=_at_least_0
        )
        flip: bool = param(False, doc="Mirror each drawn training image left-right with probability 1/2.")
        held_out: float = held_out_field()
        split_seed: int = split_seed_field()

    def __init__(self, params: Params | None = None, base_dir: str | Path | None = None) -> None:
        if params is None:
            raise FlowkitError("dataset 'image-folder' needs a root, e.g. root = \"images/\"")
        root = Path(params.root).expanduser()
        if not root.is_absolute() and base_dir is not None:
            root = Path(base_dir) / root
        files, labels, self.classes = find_images(root)
        images = decode_all(files, params)
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

    def _rows(
        self, n: int, generator: torch.Generator | None, device: torch.device | None
    ) -> tuple[Tensor, Tensor | None]:
        x, y = super()._rows(n, generator, device)
        if self.flip:
            mirror = torch.rand((n,), generator=generator, device=x.device) < 0.5
            x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
        return x, y


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


def decode_all(files: list[Path], params: ImageFolder.Params) -> Tensor:
    """``(N, C, H, W)`` float32 in [-1, 1]: every file decoded, converted, resized and cropped."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise FlowkitError(
            "dataset 'image-folder' reads images through Pillow; install it: pip install \"flowkit[images]\""
        ) from None
    opened = []
    for file in files:
        try:
            with Image.open(file) as image:
                image.load()
                opened.append((file, image.copy()))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
            raise FlowkitError(
                f"image file '{file}' cannot be read as an image: {error or type(error).__name__}"
            ) from None
    channels = params.channels or (1 if all(_is_grey(image) for _, image in opened) else 3)
    mode = "L" if channels == 1 else "RGB"
    arrays, first = [], None
    for file, image in opened:
        array = np.asarray(_transform(image.convert(mode), params), dtype=np.uint8)
        if first is None:
            first = (file, array.shape)
        elif array.shape != first[1]:
            raise FlowkitError(
                f"image file '{file}' is {_size(array.shape)} but '{first[0]}' is {_size(first[1])}; "
                "images of one dataset need one size: set [data] resize and crop (e.g. resize = 32, "
                "crop = 32)"
            )
        arrays.append(array)
    stacked = np.stack(arrays)
    if stacked.ndim == 3:
        stacked = stacked[:, :, :, None]
    scaled = stacked.astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(np.ascontiguousarray(scaled.transpose(0, 3, 1, 2)))


def _is_grey(image: object) -> bool:
    return getattr(image, "mode", "") in ("1", "L", "LA", "I", "I;16", "F")


def _transform(image: Any, params: ImageFolder.Params) -> Any:  # PIL images (imported lazily)
    """The resize (shorter side to ``resize``) and the centre crop the parameters ask for."""
    from PIL import Image

    if params.resize:
        width, height = image.size
        scale = params.resize / min(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
    if params.crop:
        width, height = image.size
        if params.crop > min(width, height):
            raise FlowkitError(
                f"[data] crop = {params.crop} is larger than an image of {width}x{height} pixels "
                "(after the resize); lower crop or raise resize"
            )
        left, top = (width - params.crop) // 2, (height - params.crop) // 2
        image = image.crop((left, top, left + params.crop, top + params.crop))
    return image


def _size(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]}" + (f" with {shape[2]} channels" if len(shape) == 3 else "")
