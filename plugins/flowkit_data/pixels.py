"""Encoded images (PNG/JPEG files, or the bytes a Hugging Face dataset stores) to pixels: decoding
through Pillow, the choice of grey or RGB, the resize and centre crop, the check that every image has
one size, the scaling to [-1, 1] and the random flips. Shared by ``image-folder`` and ``hf-dataset``,
read all at once when the dataset is built or a batch at a time (``lazy = true``).

Each image is an :class:`Encoded`: where its bytes are, and how an error names it, so a bad file (or
row) is one error line that names it, whichever dataset read it.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs
import numpy as np
import torch
from torch import Tensor

from flowkit.errors import FlowkitError
from flowkit.params import param

_choices = attrs.validators.in_([0, 1, 3])
_at_least_0 = attrs.validators.ge(0)
#: The modes Pillow reads as one channel.
_GREY = ("1", "L", "LA", "I", "I;16", "F")


def channels_field() -> int:
    return param(0, doc="1 (grey), 3 (RGB), or 0: 1 if every image is grey, else 3.", validator=_choices)


def resize_field() -> int:
    return param(
        0,
        doc="Resize each image so its shorter side has this many pixels (bilinear; 0: keep the size).",
        validator=_at_least_0,
    )


def crop_field() -> int:
    return param(
        0, doc="Crop the centre crop x crop pixels after the resize (0: no crop).", validator=_at_least_0
    )


def flip_field() -> bool:
    return param(False, doc="Mirror each drawn training image left-right with probability 1/2.")


def lazy_field() -> bool:
    return param(
        False,
        doc="Decode each image when a batch draws it instead of all when the dataset is built: for "
        "images larger than memory (under torchrun each rank draws from its own shard).",
    )


def workers_field() -> int:
    return param(
        0,
        doc="With lazy: worker processes that decode the drawn images (0: decode in the training process).",
        validator=_at_least_0,
    )


class Sizing(Protocol):
    """The parameters that size an image: ``resize`` (shorter side) and ``crop`` (centre square)."""

    @property
    def resize(self) -> int: ...

    @property
    def crop(self) -> int: ...


@attrs.frozen
class Sizes:
    """A :class:`Sizing` of its own: what a worker process is sent (not the dataset's parameters)."""

    resize: int
    crop: int


@attrs.frozen
class Encoded:
    """One image: a file or its bytes, ``name`` for an error about it ("image file '/a/b.png'") and
    ``ref`` for an error that names it beside another ("'/a/b.png'")."""

    source: Path | bytes
    name: str
    ref: str


def pillow(kind: str, extra: str) -> Any:
    """``PIL.Image``, or a :class:`FlowkitError` naming the extra that installs Pillow."""
    try:
        from PIL import Image
    except ImportError:
        raise FlowkitError(
            f"dataset '{kind}' reads images through Pillow; install it: pip install \"flowkit[{extra}]\""
        ) from None
    return Image


def open_image(image: Encoded, *, load: bool) -> Any:  # a PIL image (Pillow is imported lazily)
    """The image, decoded (``load``) or only its header read (its size and mode, nothing decoded)."""
    from PIL import Image, UnidentifiedImageError

    source = io.BytesIO(image.source) if isinstance(image.source, bytes) else image.source
    try:
        if not load:
            with Image.open(source) as opened:
                return opened  # size and mode stay readable once closed
        with Image.open(source) as opened:
            opened.load()
            return opened.copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        if isinstance(error, UnidentifiedImageError) and isinstance(image.source, bytes):
            error = UnidentifiedImageError("Pillow cannot identify the image data")  # not an address
        raise FlowkitError(
            f"{image.name} cannot be read as an image: {error or type(error).__name__}"
        ) from None


def choose_mode(channels: int, modes: Iterable[str]) -> str:
    """``"L"`` or ``"RGB"``: as ``channels`` says, or (0) grey if every image is grey."""
    if channels == 0:
        channels = 1 if all(mode in _GREY for mode in modes) else 3
    return "L" if channels == 1 else "RGB"


def sized(width: int, height: int, sizing: Sizing) -> tuple[int, int]:
    """``(width, height)`` after the resize (shorter side to ``resize``) and the centre crop."""
    width, height = _resized(width, height, sizing.resize)
    if sizing.crop:
        _check_crop(width, height, sizing.crop)
        width = height = sizing.crop
    return width, height


def pixels(image: Any, mode: str, sizing: Sizing) -> np.ndarray:
    """``(H, W)`` (grey) or ``(H, W, 3)`` uint8: the image converted, resized and cropped."""
    from PIL import Image

    image = image.convert(mode)
    if sizing.resize:
        width, height = image.size
        image = image.resize(_resized(width, height, sizing.resize), Image.Resampling.BILINEAR)
    if sizing.crop:
        width, height = image.size
        _check_crop(width, height, sizing.crop)
        left, top = (width - sizing.crop) // 2, (height - sizing.crop) // 2
        image = image.crop((left, top, left + sizing.crop, top + sizing.crop))
    return np.asarray(image, dtype=np.uint8)


def _resized(width: int, height: int, resize: int) -> tuple[int, int]:
    if not resize:
        return width, height
    scale = resize / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _check_crop(width: int, height: int, crop: int) -> None:
    if crop > min(width, height):
        raise FlowkitError(
            f"[data] crop = {crop} is larger than an image of {width}x{height} pixels "
            "(after the resize); lower crop or raise resize"
        )


def shape_of(width: int, height: int, mode: str) -> tuple[int, ...]:
    """The shape of :func:`pixels` for an image of this size (after the transforms) and mode."""
    return (height, width) if mode == "L" else (height, width, 3)


def check_size(image: Encoded, shape: tuple[int, ...], first: Encoded, first_shape: tuple[int, ...]) -> None:
    """Raise the one-size error naming both images unless ``shape == first_shape``."""
    if shape != first_shape:
        raise FlowkitError(
            f"{image.name} is {_size(shape)} but {first.ref} is {_size(first_shape)}; images of one "
            "dataset need one size: set [data] resize and crop (e.g. resize = 32, crop = 32)"
        )


def decode_all(images: Sequence[Encoded], channels: int, sizing: Sizing) -> Tensor:
    """``(N, C, H, W)`` float32 in [-1, 1]: every image decoded, converted, resized and cropped."""
    opened = [open_image(image, load=True) for image in images]
    mode = choose_mode(channels, (image.mode for image in opened))
    arrays: list[np.ndarray] = []
    for image, decoded in zip(images, opened, strict=True):
        arrays.append(pixels(decoded, mode, sizing))
        check_size(image, arrays[-1].shape, images[0], arrays[0].shape)
    return scaled(np.stack(arrays))


def survey(images: Iterable[Encoded], channels: int, sizing: Sizing) -> tuple[str, tuple[int, ...]]:
    """The mode and the pixel shape of every image, from their headers alone (nothing is decoded, no
    image is held): what :func:`decode_all` checks, checked before any image is drawn."""
    seen = []
    for image in images:
        header = open_image(image, load=False)
        width, height = header.size
        seen.append((attrs.evolve(image, source=b""), header.mode, sized(width, height, sizing)))
    mode = choose_mode(channels, (header_mode for _, header_mode, _ in seen))
    first = shape_of(*seen[0][2], mode)
    for image, _, size in seen:
        check_size(image, shape_of(*size, mode), seen[0][0], first)
    return mode, first


def scaled(stacked: np.ndarray) -> Tensor:
    """``(N, C, H, W)`` float32 ``pixel / 127.5 - 1`` from ``(N, H, W)`` or ``(N, H, W, C)`` uint8."""
    if stacked.ndim == 3:
        stacked = stacked[:, :, :, None]
    values = stacked.astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(np.ascontiguousarray(values.transpose(0, 3, 1, 2)))


def flipped(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Each image mirrored left-right with probability 1/2, drawn from ``generator`` (after the rows,
    so a resumed run draws the same flips)."""
    mirror = torch.rand((x.shape[0],), generator=generator, device=x.device) < 0.5
    return torch.where(mirror[:, None, None, None], x.flip(-1), x)


def _size(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]}" + (f" with {shape[2]} channels" if len(shape) == 3 else "")
