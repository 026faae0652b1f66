"""A dataset read from a ``.npy`` or ``.pt`` file: rows drawn uniformly at random."""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np
import torch
from torch import Tensor

from flowkit.errors import FlowkitError
from flowkit.interfaces import BuildContext, Dataset
from flowkit.params import param

SUFFIXES = (".npy", ".pt")
#: The dtypes a ``.npy`` data file may hold.
ACCEPTED = "float16, float32 or float64"


class FileDataset(Dataset):
    """Samples stored in a file: an array ``(N, *D)`` of floats, one sample per row.

    The file is read once, when the dataset is built, and checked (it exists, it is ``.npy`` or ``.pt``,
    floating point, at least 2 dimensions, at least one row, finite). ``sample`` draws rows uniformly
    with replacement using the given generator; the rows are copied to a device once and cached there.
    A relative ``path`` is resolved against the folder of the pipeline file (``context.source``), or
    the working directory when there is no pipeline file.
    """

    @attrs.define(frozen=True)
    class Params:
        path: str = param(
            doc="A .npy or .pt file holding an (N, *D) float array; relative to the pipeline file."
        )

    def __init__(self, params: Params | None = None, base_dir: str | Path | None = None) -> None:
        if params is None:
            raise FlowkitError("dataset 'file' needs a path, e.g. path = \"data.npy\"")
        super().__init__(params)
        self.file = _resolve(params.path, base_dir)
        self.data = _load(self.file)
        self._on_device: dict[torch.device, Tensor] = {}

    @classmethod
    def from_params(cls, params: Params, context: BuildContext) -> FileDataset:
        """Build, resolving a relative path against the folder of ``context.source``."""
        source = Path(context.source)
        base_dir = source.parent if source.is_file() else None  # "<pipeline>" names no file
        dataset = cls(params, base_dir=base_dir)
        # The resolved pipeline (written into the run directory) must find the file from anywhere.
        dataset.params = attrs.evolve(params, path=str(_resolve(params.path, base_dir).resolve()))
        return dataset

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[1:])

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def sample(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | None = None
    ) -> Tensor:
        """``n`` rows drawn uniformly with replacement, shape ``(n, *D)``, float32, on ``device``."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise FlowkitError(f"number of samples must be a non-negative int, got {n!r}")
        target = torch.device(device) if device is not None else torch.device("cpu")
        if target.type == "cuda" and target.index is None:
            target = torch.device("cuda", torch.cuda.current_device())
        if generator is not None and generator.device.type != target.type:
            raise FlowkitError(
                f"the generator lives on '{generator.device}' but samples were requested on '{target}'; "
                f"pass a generator made on the same device (torch.Generator(device='{target.type}'))"
            )
        data = self._on_device.get(target)
        if data is None:
            data = self._on_device[target] = self.data.to(target)
        rows = torch.randint(0, data.shape[0], (n,), generator=generator, device=target)
        return data.index_select(0, rows)


def _resolve(path: str, base_dir: str | Path | None) -> Path:
    file = Path(path).expanduser()
    if not file.is_absolute() and base_dir is not None:
        file = Path(base_dir) / file
    return file


def _dtype_name(dtype: np.dtype) -> str:
    """``int64``, ``float128 (long double)``, ``complex64``, ``a structured dtype [('x', '<f4')]``."""
    if dtype.fields is not None:
        return f"a structured dtype {dtype.descr}"
    if dtype.kind == "f" and dtype.itemsize > 8:
        return f"{dtype.name} (long double)"
    return dtype.name


def _load(file: Path) -> Tensor:
    """Read and check the array in ``file``; return it as a float32 CPU tensor ``(N, *D)``."""
    if file.suffix not in SUFFIXES:
        raise FlowkitError(f"data file '{file}' has the suffix '{file.suffix}'; expected a .npy or .pt file")
    if file.is_dir():
        raise FlowkitError(f"data file '{file}' is a directory; expected a .npy or .pt file")
    if not file.is_file():
        raise FlowkitError(f"data file '{file}' does not exist")
    if file.suffix == ".npy":
        try:
            array = np.load(file, allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:  # an empty file raises EOFError
            reason = str(error) or type(error).__name__
            raise FlowkitError(f"data file '{file}' is not a readable .npy array: {reason}") from error
        if array.dtype.kind != "f" or array.dtype.itemsize > 8:  # long double: torch has no such type
            raise FlowkitError(
                f"data file '{file}' holds {_dtype_name(array.dtype)} values; expected floating point "
                f"samples: {ACCEPTED}, either byte order (convert with array.astype(numpy.float32))"
            )
        # a big-endian file (written on another machine) becomes native: torch reads native only
        data = torch.from_numpy(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("=")))
    else:
        try:
            data = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for unreadable files
            reason = str(error) or type(error).__name__
            raise FlowkitError(f"data file '{file}' is not a readable torch file: {reason}") from error
        if not isinstance(data, Tensor):
            raise FlowkitError(
                f"data file '{file}' holds a {type(data).__name__}; expected one tensor of samples "
                "(save it with torch.save(tensor, path))"
            )
        if not data.is_floating_point():
            raise FlowkitError(
                f"data file '{file}' holds {data.dtype} values; expected floating point samples "
                "(convert with tensor.float())"
            )
    if data.dim() < 2:
        raise FlowkitError(
            f"data file '{file}' holds an array of shape {tuple(data.shape)}; expected at least 2 "
            "dimensions (N samples, *event shape), e.g. (N, 2)"
        )
    if data.shape[0] == 0:
        raise FlowkitError(f"data file '{file}' holds no samples (shape {tuple(data.shape)})")
    data = data.detach().to(torch.float32).contiguous()
    bad = int((~torch.isfinite(data)).sum())
    if bad:
        raise FlowkitError(
            f"data file '{file}' contains {bad} NaN or infinite values; remove or impute them first"
        )
    return data
