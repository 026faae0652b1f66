"""Gaussian conditional paths: schedules OT, VP, VE and cosine; score <-> velocity conversion; the
Gaussian-mixture dataset and its exact oracle (``docs/math.md``, "Gaussian paths" and "A ground truth")."""

from flowkit import hookimpl


@hookimpl
def flowkit_register(registry):
    """Register the schedules, the Gaussian path, the mixture dataset and the mixture oracle."""
    from flowkit_gaussian.mixture import GaussianMixture, MixtureOracle
    from flowkit_gaussian.path import GaussianPath
    from flowkit_gaussian.schedules import CosineSchedule, OTSchedule, VESchedule, VPSchedule

    registry.add("schedule", "ot", OTSchedule)
    registry.add("schedule", "vp", VPSchedule)
    registry.add("schedule", "ve", VESchedule)
    registry.add("schedule", "cosine", CosineSchedule)
    registry.add("path", "gaussian", GaussianPath)
    registry.add("dataset", "gaussian-mixture", GaussianMixture)
    registry.add("model", "mixture-oracle", MixtureOracle)
