"""The plugin guide's worked examples (``docs/plugin-guide.md``): a component of every kind, a kind of
its own (``statistic``) and the pipeline table that uses it (``[summary]``).

Register this module as a plugin, e.g. ``flowkit.testing.make_manager(plugins=[guide_examples])``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from flowkit import hookimpl
from flowkit.interfaces import Registrar, Run, Samples


@hookimpl
def flowkit_register(registry: Registrar) -> None:
    """One component of every kind, the kind ``statistic`` and the table ``[summary]``."""
    from guide_examples import (
        couplings,
        data,
        devices,
        dynamics,
        grids,
        guiders,
        interpolant,
        losses,
        metrics,
        networks,
        summary,
        times,
    )

    registry.add("dataset", "gaussian-ring", data.GaussianRing)
    registry.add("dataset", "csv-points", data.CSVPoints)
    registry.add("path", "scaled-linear", interpolant.ScaledLinearPath)
    registry.add("model", "residual-mlp", networks.ResidualMLP)
    registry.add("loss", "weighted-velocity", losses.WeightedVelocityLoss)
    registry.add("coupling", "sorted", couplings.SortedCoupling)
    registry.add("dynamics", "swirl", dynamics.SwirlFlow)
    registry.add("timegrid", "cosine", grids.CosineGrid)
    registry.add("time", "beta", times.BetaTime)
    registry.add("guider", "ramp", guiders.RampGuidance)
    registry.add("metric", "mean-gap", metrics.MeanGap)
    registry.add("device", "pinned-cpu", devices.PinnedCPU)
    registry.add_kind("statistic", summary.Statistic)  # before the first component of the kind
    registry.add("statistic", "mean-radius", summary.MeanRadius)
    registry.add_table("summary", summary.SummarySettings)


@hookimpl
def flowkit_evaluate_metrics(run: Run, samples: Samples, reference: Tensor) -> dict[str, Any] | None:
    """``metrics.json`` gets the ``[summary]`` statistic of the samples, when the pipeline has the table."""
    settings = run.table("summary")
    if settings is None:
        return None
    return {settings.key: settings.statistic(samples.samples)}
