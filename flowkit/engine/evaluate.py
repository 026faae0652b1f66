"""The evaluation stage, the engine's ``flowkit_evaluate``: the distance between samples and held-out
data, its noise floor, the likelihood of held-out data (where ``[evaluate] likelihood`` is set), and
plugins' metrics."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from flowkit.engine.records import Pipeline, PipelineRun
from flowkit.engine.rundir import write_json
from flowkit.engine.seeds import stage_seed
from flowkit.errors import FlowkitError, PluginError
from flowkit.hookspecs import hookimpl
from flowkit.interfaces import Samples


def measure(pipeline: Pipeline, samples: Tensor) -> tuple[dict[str, Any], Tensor]:
    """The ``[evaluate]`` metric between ``samples (N, *D)`` (CPU) and held-out data, and its noise
    floor: the mean distance of ``floor_repeats`` fresh draws of data to the same held-out set.

    Returns the metrics and the held-out data ``(n, *D)``. Non-finite samples give ``distance = None``
    and their count in ``non_finite_samples``, measuring nothing.
    """
    cfg = pipeline.evaluate
    generator = torch.Generator().manual_seed(stage_seed(pipeline.run.seed, "evaluate"))
    reference = pipeline.dataset.sample(cfg.n, generator=generator).float().cpu()
    fresh = [
        pipeline.dataset.sample(cfg.n, generator=generator).float().cpu() for _ in range(cfg.floor_repeats)
    ]
    metrics: dict[str, Any] = {
        "metric": cfg.metric.registered_name,
        "n_evaluated": cfg.n,
        "seed": pipeline.run.seed,
        # float reductions depend on the thread count: same seed and threads, same samples
        "torch_threads": torch.get_num_threads(),
    }
    finite = torch.isfinite(samples.flatten(1)).all(dim=1)
    if not bool(finite.all()):
        metrics.update({"distance": None, "noise_floor": None, "non_finite_samples": int((~finite).sum())})
        return metrics, reference
    distance = cfg.metric(samples[: cfg.n], reference)
    floors = torch.tensor([cfg.metric(data, reference) for data in fresh], dtype=torch.float64)
    floor = float(floors.mean())
    metrics.update(
        {
            "noise_floor_std": float(floors.std()) if len(floors) > 1 else 0.0,
            "noise_floor_repeats": len(floors),
            "distance": distance,
            "noise_floor": floor,
            "ratio_to_floor": distance / floor if floor > 0 else None,
        }
    )
    return metrics, reference


@hookimpl(trylast=True, specname="flowkit_evaluate")
def evaluate(run: PipelineRun, samples: Samples) -> dict[str, Any]:
    """The engine's evaluation stage (``flowkit_evaluate``, ``trylast``: a plugin returning metrics
    first evaluates instead): :func:`measure` into ``run.metrics``, then the metrics of
    ``flowkit_evaluate_metrics`` implementations, then ``flowkit_samples_ready``. Returns
    ``run.metrics``. Non-finite samples write ``metrics.json`` before the error, so the record of a
    failed run is kept."""
    pipe, result = run.pipeline, samples
    measured, reference = measure(pipe, result.samples)
    run.metrics.update(measured)
    bad = measured.get("non_finite_samples")
    if bad:
        write_json(run.directory / "metrics.json", run.metrics)
        raise FlowkitError(
            f"{pipe.source}: sampling produced {bad} non-finite samples of {len(result.samples)} "
            f"(saved in {run.directory / 'samples.npy'}); try more [sample] steps, a smaller "
            f"[sample] dynamics sigma, or check the training loss"
        )
    if pipe.evaluate.likelihood is not None:
        from flowkit.engine.likelihood import likelihood_metrics

        run.metrics.update(likelihood_metrics(pipe))
    plugin_metrics(run, result, reference)
    run.hook.flowkit_samples_ready(
        run=run, samples=result.samples, reference=reference, trajectory=result.trajectory
    )
    return run.metrics


def plugin_metrics(run: PipelineRun, result: Samples, reference: Tensor) -> None:
    """Merge what ``flowkit_evaluate_metrics`` implementations return; a key is claimed only once."""
    offered = {"run": run, "samples": result, "reference": reference}
    # Called one implementation at a time (in pluggy's order) so a clash names its plugin.
    for impl in reversed(run.hook.flowkit_evaluate_metrics.get_hookimpls()):
        extra = impl.function(*(offered[name] for name in impl.argnames))
        if not extra:
            continue
        taken = sorted(set(extra) & set(run.metrics))
        if taken:
            raise PluginError(
                f"plugin '{impl.plugin_name}' returns metrics {', '.join(taken)} from "
                f"flowkit_evaluate_metrics, which are already set; rename them"
            )
        run.metrics.update(extra)
