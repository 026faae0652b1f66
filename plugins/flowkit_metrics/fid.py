"""FID and KID: distances between image sets in the features of a network, Inception-v3 by default.

Each image set ``(N, C, H, W)`` in [-1, 1] goes through :func:`features`: for Inception, grey images
are repeated to three channels and every image is resized to 299 x 299 (bilinear, ``align_corners =
False``, as pytorch-fid and torchmetrics do), then the 2048 pool features are taken. ``fid`` is the
Fréchet distance between Gaussians fitted to the two feature sets (docs/math.md, "FID and KID");
``kid`` the unbiased squared MMD with the cubic polynomial kernel, averaged over random subsets.

The reference set's features are cached per dataset and feature network (a hash of the reference
images, the network and its weights file) under ``$FLOWKIT_CACHE/fid`` or ``~/.cache/flowkit/fid``,
so a run, its noise floor and every later ``flowkit evaluate`` compute them once. What the reference
was (split, count, resize, features) is stated in metrics.json by :func:`reference_metrics`.

``features = "pixels"`` replaces the network by the flattened pixels (no resize): a stand-in that
needs no weights file, used by the tests (through the same code path) and where no weights exist.
"""

from __future__ import annotations

import abc
import hashlib
import os
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowkit.errors import FlowkitError
from flowkit.interfaces import BuildContext, Metric
from flowkit.params import param

#: Feature networks by name; "inception" needs a weights file.
FEATURES = ("inception", "pixels")


class Pixels(nn.Module):
    """The stand-in feature network: the flattened pixels, ``(B, *D) -> (B, prod(D))``."""

    input_size = 0  # no resize

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


def cache_dir() -> Path:
    """``$FLOWKIT_CACHE/fid``, else ``$XDG_CACHE_HOME/flowkit/fid`` (``~/.cache/flowkit/fid``)."""
    if os.environ.get("FLOWKIT_CACHE"):
        return Path(os.environ["FLOWKIT_CACHE"]) / "fid"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "flowkit" / "fid"


def features_field() -> str:
    return param(
        "inception",
        doc="The feature network: 'inception' (FID's Inception-v3 pool, 2048 features) or 'pixels' (the "
        "flattened pixels: a stand-in that needs no weights).",
        validator=attrs.validators.in_(FEATURES),
    )


def weights_field() -> str:
    return param(
        "",
        doc="pytorch-fid's pt_inception-2015-12-05-6726825d.pth, relative to the pipeline file (empty: "
        "$FLOWKIT_INCEPTION_WEIGHTS).",
    )


def batch_field() -> int:
    return param(50, doc="Images per forward pass of the feature network.", validator=attrs.validators.ge(1))


class FeatureDistance(Metric):
    """A distance between two image sets in a feature network's space; the reference's features cached."""

    #: What the metric is called in messages and metrics.json ("fid", "kid").
    label = ""

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self._network: nn.Module | None = None
        #: What the last reference was (count, features, cache file); see :func:`reference_metrics`.
        self.last_reference: dict[str, Any] | None = None

    @classmethod
    def from_params(cls, params: Any, context: BuildContext) -> FeatureDistance:
        """Build, resolving a relative ``weights`` file against the folder of ``context.source``."""
        source = Path(context.source)
        if params.weights and source.is_file() and not Path(params.weights).expanduser().is_absolute():
            params = attrs.evolve(params, weights=str((source.parent / params.weights).resolve()))
        if params.features == "inception":
            from flowkit_metrics.inception import weights_file

            weights_file(params.weights)  # a missing file is refused before training, not after it
        return cls(params)

    def network(self) -> nn.Module:
        """The feature network, loaded on first use (a missing weights file fails here, not at build)."""
        if self._network is None:
            if self.params.features == "pixels":
                self._network = Pixels()
            else:
                from flowkit_metrics.inception import load_inception, weights_file

                self._network = load_inception(weights_file(self.params.weights))
        return self._network

    def describe(self) -> str:
        """The features and the resize, as metrics.json states them."""
        if self.params.features == "pixels":
            return "pixels (flattened, no resize; a stand-in for Inception)"
        return "inception-v3 pool (2048; pytorch-fid weights), grey -> 3 channels, bilinear resize to 299x299"

    def features(self, images: Tensor) -> Tensor:
        """``(N, F)`` float64 features of ``images (N, C, H, W)`` in [-1, 1], in batches."""
        if images.dim() != 4:
            raise FlowkitError(
                f"metric '{self.label}' measures images (N, C, H, W); got samples of shape "
                f"{tuple(images.shape)}"
            )
        network = self.network()
        size = getattr(network, "input_size", 0)
        if size and images.shape[1] not in (1, 3):
            raise FlowkitError(
                f"metric '{self.label}' with Inception features needs 1 or 3 channels; got {images.shape[1]}"
            )
        out = []
        with torch.no_grad():
            for start in range(0, images.shape[0], self.params.batch):
                x = images[start : start + self.params.batch].float().cpu()
                if size:
                    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
                    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
                out.append(network(x).double())
        return torch.cat(out) if out else torch.zeros(0, 0, dtype=torch.float64)

    def reference_features(self, reference: Tensor) -> Tensor:
        """The reference's features, from the cache when these images met this network before."""
        digest = hashlib.sha256(
            repr((self.describe(), tuple(reference.shape), str(reference.dtype))).encode()
        )
        if self.params.features == "inception":
            from flowkit_metrics.inception import weights_file

            weights = weights_file(self.params.weights)
            digest.update(repr((weights.resolve(), weights.stat().st_size)).encode())
        digest.update(reference.detach().float().cpu().contiguous().numpy().tobytes())
        file = cache_dir() / f"{digest.hexdigest()[:24]}.npy"
        self.last_reference = {
            "count": int(reference.shape[0]),
            "features": self.describe(),
            "cache": str(file),
        }
        if file.is_file():
            try:
                return torch.from_numpy(np.load(file, allow_pickle=False))
            except (ValueError, OSError, EOFError):  # a corrupt cache file: compute again
                pass
        computed = self.features(reference)
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_name(f"{file.stem}.{os.getpid()}.tmp.npy")
            np.save(tmp, computed.numpy())
            os.replace(tmp, file)
        except OSError:  # a read-only cache: computed again next time, nothing else changes
            pass
        return computed

    def __call__(self, samples: Tensor, reference: Tensor) -> float:
        return self.distance(self.features(samples), self.reference_features(reference))

    @abc.abstractmethod
    def distance(self, a: Tensor, b: Tensor) -> float:
        """The distance between feature sets ``a (N, F)`` and ``b (M, F)``."""


def frechet_from_moments(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))``, as pytorch-fid computes it (a small ridge
    where the product is singular; the imaginary rounding residue dropped)."""
    import warnings

    from scipy import linalg

    diff = mu1 - mu2
    with warnings.catch_warnings():  # a singular product is handled below, as pytorch-fid does
        warnings.simplefilter("ignore")
        root = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(root).all():
            offset = np.eye(s1.shape[0]) * 1e-6
            root = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    root = root.real if np.iscomplexobj(root) else root
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(root))


class FID(FeatureDistance):
    """Fréchet Inception Distance between the samples and the reference (lower is closer)."""

    label = "fid"

    @attrs.define(frozen=True)
    class Params:
        features: str = features_field()
        weights: str = weights_field()
        batch: int = batch_field()

    def distance(self, a: Tensor, b: Tensor) -> float:
        if a.shape[0] < 2 or b.shape[0] < 2:
            raise FlowkitError("metric 'fid' needs at least 2 samples and 2 reference images")
        a64, b64 = a.numpy(), b.numpy()
        return frechet_from_moments(
            a64.mean(0), np.cov(a64, rowvar=False), b64.mean(0), np.cov(b64, rowvar=False)
        )


def polynomial_mmd(a: Tensor, b: Tensor) -> float:
    """Unbiased squared MMD of ``a (m, F)`` and ``b (m, F)`` with ``k(x, y) = (x.y / F + 1)^3``."""
    m, dim = a.shape
    kxx = (a @ a.T / dim + 1) ** 3
    kyy = (b @ b.T / dim + 1) ** 3
    kxy = (a @ b.T / dim + 1) ** 3
    same = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(same - 2 * kxy.mean())


class KID(FeatureDistance):
    """Kernel Inception Distance: the unbiased squared MMD (cubic polynomial kernel) of the feature
    sets, averaged over ``subsets`` random subsets of ``subset_size`` of each (drawn with ``seed``)."""

    label = "kid"

    @attrs.define(frozen=True)
    class Params:
        features: str = features_field()
        weights: str = weights_field()
        batch: int = batch_field()
        subsets: int = param(100, doc="Random subsets averaged over.", validator=attrs.validators.ge(1))
        subset_size: int = param(
            1000,
            doc="Images per subset (at most the smaller set's size).",
            validator=attrs.validators.ge(2),
        )
        seed: int = param(0, doc="Seed of the subsets' draws.")

    def distance(self, a: Tensor, b: Tensor) -> float:
        size = min(self.params.subset_size, a.shape[0], b.shape[0])
        if size < 2:
            raise FlowkitError("metric 'kid' needs at least 2 samples and 2 reference images")
        generator = torch.Generator().manual_seed(self.params.seed)
        values = []
        for _ in range(self.params.subsets):
            rows_a = torch.randperm(a.shape[0], generator=generator)[:size]
            rows_b = torch.randperm(b.shape[0], generator=generator)[:size]
            values.append(polynomial_mmd(a[rows_a], b[rows_b]))
        return float(np.mean(values))


def reference_metrics(metric: Metric, dataset: Any, reference: Tensor) -> dict[str, Any] | None:
    """For a ``fid``/``kid`` metric that measured: ``<name>_reference`` (what the reference statistics
    are: split, count, features and resize, cache file) and ``<name>_held_out``, the distance from the
    dataset's held-out images (as many as the reference, at most) to the same reference: the floor a
    model that reproduced the data would score. ``None`` for any other metric."""
    if not isinstance(metric, FeatureDistance) or metric.last_reference is None:
        return None
    name = metric.registered_name or metric.label
    record = {"split": "train (drawn with replacement, [evaluate] n)", **metric.last_reference}
    out: dict[str, Any] = {f"{name}_reference": record}
    held = dataset.held_out() if hasattr(dataset, "held_out") else None
    if held is not None and held[0].shape[0] >= 2:
        images = held[0][: reference.shape[0]]
        out[f"{name}_held_out"] = metric(images, reference)
        out[f"{name}_held_out_count"] = int(images.shape[0])
    return out
