"""Image metrics: a reference classifier of the dataset, class accuracy of samples and a Fréchet distance.

For a labelled image dataset with a held-out split (``Dataset.held_out``) the evaluation adds to
``metrics.json``:

* ``classifier_accuracy``: the reference classifier's accuracy on the held-out images (how much to trust it);
* ``class_accuracy``: the share of samples asked for a class (not the null class) it reads as that class;
* ``frechet``: the Fréchet distance between Gaussians fitted to the classifier's features of the samples
  and of the held-out images, ``|mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))`` (FID's formula in
  this classifier's feature space); ``frechet_floor``: the same distance from as many training images
  to the held-out ones (what a perfect model would score at this sample size); ``frechet_ratio``.

The classifier is an MLP ``prod(D) -> 256 -> 128 -> K`` (features: the 128 units), trained with a fixed
seed on labelled draws of the training split; it is cached per dataset (a hash of its held-out images,
shape and classes) under ``$FLOWKIT_CACHE`` or the user cache directory (``~/.cache/flowkit``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from flowkit.interfaces import Dataset

#: Training of the reference classifier: labelled draws, steps, batch, learning rate, widths, seed
#: (part of the cache key: changing them trains a new one).
CLASSIFIER: tuple[int, int, int, float, tuple[int, int], int] = (16384, 1500, 256, 2e-3, (256, 128), 0)
DRAWS, STEPS, BATCH, LR, HIDDEN, SEED = CLASSIFIER


class ReferenceClassifier(nn.Module):
    """``features(x (B, *D)) -> (B, 128)`` and ``forward(x) -> logits (B, K)``."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        h1, h2 = HIDDEN
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(dim, h1), nn.SiLU(), nn.Linear(h1, h2), nn.SiLU())
        self.head = nn.Linear(h2, classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def cache_dir() -> Path:
    """Where reference classifiers are cached: ``$FLOWKIT_CACHE``, else ``$XDG_CACHE_HOME/flowkit``."""
    if os.environ.get("FLOWKIT_CACHE"):
        return Path(os.environ["FLOWKIT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "flowkit"


def dataset_key(dataset: Dataset, held_x: Tensor) -> str:
    """A name for the dataset's classifier: its kind, shape, classes, held-out images and the recipe."""
    digest = hashlib.sha256()
    digest.update(
        repr((dataset.registered_name, tuple(dataset.shape), dataset.num_classes, CLASSIFIER)).encode()
    )
    digest.update(held_x.contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


@torch.enable_grad()  # the evaluation stage runs under no_grad
def train_classifier(dataset: Dataset) -> ReferenceClassifier:
    """Train the reference classifier on labelled draws of the training split (seeded: reproducible)."""
    generator = torch.Generator().manual_seed(SEED)
    x, y = dataset.sample_labelled(DRAWS, generator=generator)
    with torch.random.fork_rng(devices=[]):  # the initial weights, without touching the global generator
        torch.manual_seed(SEED)
        model = ReferenceClassifier(int(np.prod(dataset.shape)), dataset.num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    for _ in range(STEPS):
        rows = torch.randint(0, x.shape[0], (BATCH,), generator=generator)
        # small Gaussian jitter: the classifier must also read samples that are not exactly on the data
        noisy = x[rows] + 0.05 * torch.randn(x[rows].shape, generator=generator)
        loss = nn.functional.cross_entropy(model(noisy), y[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


def reference_classifier(dataset: Dataset, held_x: Tensor) -> ReferenceClassifier:
    """The dataset's classifier from the cache; trained (and cached, where writable) if absent."""
    file = cache_dir() / "classifiers" / f"{dataset_key(dataset, held_x)}.pt"
    if file.is_file():
        with torch.random.fork_rng(devices=[]):  # its initial weights are overwritten: leave torch's alone
            model = ReferenceClassifier(int(np.prod(dataset.shape)), dataset.num_classes)
        try:
            model.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
            return model.eval()
        except Exception:  # a corrupt or foreign cache file: train again
            pass
    model = train_classifier(dataset)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".{os.getpid()}.tmp")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, file)
    except OSError:  # a read-only home: the classifier is retrained next time, nothing else changes
        pass
    return model


def frechet(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a (N, F)`` and ``b (M, F)`` (float64)."""
    from scipy import linalg

    a64, b64 = a.double().numpy(), b.double().numpy()
    mu = a64.mean(0) - b64.mean(0)
    s1, s2 = np.cov(a64, rowvar=False), np.cov(b64, rowvar=False)
    root = linalg.sqrtm(s1 @ s2)
    root = root.real if np.iscomplexobj(root) else root
    return float(mu @ mu + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(root))


@torch.no_grad()
def image_metrics(
    dataset: Dataset, samples: Tensor, labels: Tensor | None, seed: int
) -> dict[str, Any] | None:
    """The metrics above for ``samples (N, C, H, W)`` asked for ``labels (N,)``; ``None`` where the dataset
    is not labelled images with a held-out split."""
    held = dataset.held_out()
    if held is None or dataset.num_classes == 0 or len(dataset.shape) != 3 or held[1] is None:
        return None
    held_x, held_y = held[0].float(), held[1]  # categorical data holds int64 tokens: read as values
    model = reference_classifier(dataset, held_x)
    out: dict[str, Any] = {
        "classifier_accuracy": float((model(held_x).argmax(1) == held_y).double().mean()),
        "reference_classifier": "mlp-256-128 (features: 128)",
    }
    samples = samples.float()
    if labels is not None:
        asked = labels != dataset.num_classes
        if bool(asked.any()):
            predicted = model(samples[asked]).argmax(1)
            out["class_accuracy"] = float((predicted == labels[asked]).double().mean())
    generator = torch.Generator().manual_seed(seed)
    training = dataset.sample(samples.shape[0], generator=generator).float()
    ref = model.features(held_x)
    distance = frechet(model.features(samples), ref)
    floor = frechet(model.features(training), ref)
    out.update(
        {
            "frechet": distance,
            "frechet_floor": floor,
            "frechet_ratio": distance / floor if floor > 0 else None,
        }
    )
    return out
