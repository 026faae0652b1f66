"""Categorical datasets: sequences of ``L`` tokens, each one of ``vocabulary`` values ``0 .. V - 1``.

Every dataset here returns int64 tensors ``(n, L)`` and declares ``vocabulary`` (the number of values a
token takes), which the mixture path, the losses and the token network read from the built dataset:

* ``tokens``: token sequences read from a ``.npy`` file of integers (and optional labels);
* ``checkerboard-grid``: a 2D checkerboard quantised to an ``N x N`` grid, two tokens of ``N`` levels;
* ``digits-tokens``: scikit-learn's 8x8 digits as 64 tokens of 17 grey levels (0..16), labelled,
  laid out as the images ``(1, 8, 8)``.

Datasets held in memory are split once into a training part (what ``sample`` draws from, uniformly
with replacement) and a held-out part, by a fixed permutation of ``split_seed``.
"""

from __future__ import annotations

import attrs
import numpy as np
import torch
from torch import Tensor

from flowkit.errors import FlowkitError
from flowkit.interfaces import BuildContext, Dataset, resolve_relative
from flowkit.params import param
from flowkit.rows import HeldOutRows, held_out_field, split_seed_field


class TokenArray(HeldOutRows):
    """Token sequences ``(N, *D)`` int64 in ``0 .. vocabulary - 1`` with optional labels ``(N,)``, split
    into training and held-out rows. ``sample`` and ``sample_labelled`` draw the same rows for the same
    generator state (one ``randint`` of ``n`` rows)."""

    #: Values a token takes (``0 .. vocabulary - 1``): what a categorical path and network read.
    vocabulary: int = 0
    noun = "rows"

    def __init__(self, params, tokens: Tensor, labels: Tensor | None, vocabulary: int, what: str) -> None:
        super().__init__(params, tokens, labels, what)
        self.vocabulary = int(vocabulary)

    @property
    def tokens(self) -> Tensor:
        """The training sequences ``(N, *D)``."""
        return self.train_data


class TokenFile(TokenArray):
    """Token sequences from a ``.npy`` file of integers ``(N, L)`` (``(N,)``: one token each), every
    value in ``0 .. vocabulary - 1``; labels (``(N,)`` integers ``0 .. K - 1``) from a second file."""

    @attrs.define(frozen=True)
    class Params:
        path: str = param(doc="The .npy file of integer tokens (N, L), relative to the pipeline file.")
        vocabulary: int = param(
            doc="Values a token takes (tokens are 0 .. vocabulary - 1).", validator=attrs.validators.ge(2)
        )
        labels: str = param("", doc="A .npy file of N integer class labels (empty: unlabelled).")
        held_out: float = held_out_field("sequences")
        split_seed: int = split_seed_field("sequences")

    def __init__(self, params: Params, source: str = "<pipeline>") -> None:
        what = f"dataset 'tokens' (path '{params.path}')"
        tokens = _integers(_load(resolve_relative(params.path, source), "tokens"), "tokens")
        tokens = tokens[:, None] if tokens.dim() == 1 else tokens
        if tokens.dim() != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
            raise FlowkitError(f"{what}: tokens must be a non-empty (N, L) array, got {tuple(tokens.shape)}")
        bad = (tokens < 0) | (tokens >= params.vocabulary)
        if bool(bad.any()):
            value = int(tokens[bad][0])
            raise FlowkitError(
                f"{what}: token {value} is outside 0 .. {params.vocabulary - 1} (vocabulary = "
                f"{params.vocabulary}); raise vocabulary or fix the file"
            )
        labels = None
        if params.labels:
            labels = _integers(_load(resolve_relative(params.labels, source), "labels"), "labels")
            if labels.shape != (tokens.shape[0],) or bool((labels < 0).any()):
                raise FlowkitError(
                    f"{what}: labels '{params.labels}' must be {tokens.shape[0]} integers >= 0, one per "
                    f"row, got shape {tuple(labels.shape)}"
                )
        super().__init__(params, tokens, labels, params.vocabulary, what)

    @classmethod
    def from_params(cls, params: Params, context: BuildContext) -> TokenFile:
        """Build, reading the files relative to the folder of ``context.source``."""
        return cls(params, context.source)


def _load(file, what: str) -> np.ndarray:
    if file.suffix != ".npy" or not file.is_file():
        raise FlowkitError(f"dataset 'tokens': {what} file '{file}' is not an existing .npy file")
    try:
        return np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise FlowkitError(
            f"dataset 'tokens': {what} file '{file}' is not a readable .npy array: {error}"
        ) from None


def _integers(array: np.ndarray, what: str) -> Tensor:
    if not np.issubdtype(array.dtype, np.integer):
        raise FlowkitError(
            f"dataset 'tokens': the {what} array holds {array.dtype} values; categorical data must be "
            "integers (save it with .astype(np.int64))"
        )
    return torch.from_numpy(array.astype(np.int64))


class CheckerboardGrid(Dataset):
    """A checkerboard of ``squares x squares`` on an ``N x N`` grid (``N = cells``): two tokens, the
    column ``i`` and the row ``j``, each of ``N`` levels. A grid cell lies in square
    ``(i * squares // N, j * squares // N)``, dark when the two indices add up to an even number;
    every dark cell is equally likely (the continuous ``checkerboard`` quantised to the grid)."""

    @attrs.define(frozen=True)
    class Params:
        cells: int = param(
            32, doc="Grid cells per side: the vocabulary of each token.", validator=attrs.validators.ge(2)
        )
        squares: int = param(
            4, doc="Squares per side of the board (at least 2).", validator=attrs.validators.ge(2)
        )

    def __init__(self, params: Params | None = None) -> None:
        super().__init__(params)
        cells, squares = self.params.cells, self.params.squares
        if squares > cells:
            raise FlowkitError(
                f"dataset 'checkerboard-grid': squares = {squares} exceeds cells = {cells}; each square "
                "needs at least one grid cell per side"
            )
        self.vocabulary = cells
        grid = torch.cartesian_prod(torch.arange(cells), torch.arange(cells))
        self.dark_cells = grid[self.is_dark(grid)]

    @property
    def shape(self) -> tuple[int, ...]:
        return (2,)

    def is_dark(self, tokens: Tensor) -> Tensor:
        """Boolean ``(n,)``: whether each cell ``(i, j)`` of ``tokens (n, 2)`` lies on a dark square
        (cells off the grid are not)."""
        cells = tokens.round().long() if tokens.is_floating_point() else tokens.long()
        inside = ((cells >= 0) & (cells < self.params.cells)).all(dim=1)
        square = cells * self.params.squares // self.params.cells
        return inside & (square.sum(dim=1) % 2 == 0)

    def sample(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | None = None
    ) -> Tensor:
        """``n`` dark cells drawn uniformly, ``(n, 2)`` int64."""
        target = torch.device(device) if device is not None else torch.device("cpu")
        rows = torch.randint(0, self.dark_cells.shape[0], (n,), generator=generator, device=target)
        return self.dark_cells.to(target).index_select(0, rows)


class DigitTokens(TokenArray):
    """scikit-learn's bundled 8x8 handwritten digits as 64 tokens of 17 grey levels (the pixels'
    own values 0..16), 1,797 of them in 10 classes. The tokens keep the image's layout ``(1, 8, 8)``,
    so the image metrics (the reference classifier's class accuracy and Fréchet distance) read them.
    The data ships inside the scikit-learn wheel (nothing is downloaded):
    ``pip install "flowkit[images]"``."""

    @attrs.define(frozen=True)
    class Params:
        held_out: float = held_out_field("sequences")
        split_seed: int = split_seed_field("sequences")

    def __init__(self, params: Params | None = None) -> None:
        params = params if params is not None else self.Params()
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise FlowkitError(
                "dataset 'digits-tokens' needs scikit-learn (its 8x8 digits ship inside the wheel); "
                'install the images extra: pip install "flowkit[images]"'
            ) from None
        bunch = load_digits()
        tokens = torch.from_numpy(np.asarray(bunch.images, dtype=np.int64))[:, None]
        labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
        super().__init__(params, tokens, labels, 17, "dataset 'digits-tokens'")
