"""The sampling stage, the engine's ``flowkit_sample``: ``[sample] n`` draws from ``p_init`` carried
to the data by the simulator.

A fixed-step simulator steps over the ``[sample] grid``; an adaptive one is given the grid's end points
and chooses its own steps. Where the pipeline was planned with ``capture`` (a backend that captures,
a ``capturable`` simulator), the whole sampler runs as one captured graph.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowkit.engine.guidance import guided_dynamics, sample_labels
from flowkit.engine.records import Pipeline, PipelineRun, sample_times
from flowkit.engine.returns import draw_prior, returned_tensor
from flowkit.engine.rundir import write_array
from flowkit.engine.seeds import stage_seed
from flowkit.hookspecs import hookimpl
from flowkit.interfaces import Progress, Samples

__all__ = ["clip_to_range", "draw_samples", "sample", "sample_times"]


@torch.no_grad()
def draw_samples(
    pipeline: Pipeline, n: int, seed_stage: str = "sample", progress: Progress | None = None
) -> tuple[Tensor, Tensor]:
    """``(x0, x1)``: ``n`` draws of ``p_init`` and the samples they become, each ``(n, *D)`` on the
    device, from the stage seed ``seed_stage``. Sets the simulator's ``last_nfe``;
    ``progress(done, total)`` is called as sampling advances.

    Public (``flowkit.engine.draw_samples``): what the sample stage, ``flowkit sample`` and
    ``open_run(dir).sample`` draw. ``x0`` is drawn first from the sampling generator, which then
    gives the simulator its own draws (an SDE's noise); a conditional model samples the classes of
    ``[sample] guidance`` (:func:`~flowkit.engine.guidance.sample_labels`), guided. The samples are
    clipped to the dataset's ``value_range``."""
    cfg, backend = pipeline.sample, pipeline.device
    device = backend.device
    ts = sample_times(pipeline, device)
    simulator = cfg.simulator
    span = ts[[0, -1]] if simulator.adaptive else ts
    generator = backend.generator(stage_seed(pipeline.run.seed, seed_stage))
    shape = (n, *pipeline.dataset.shape)
    x0 = draw_prior(pipeline.path, shape, generator, device)
    # A conditional model samples the labels of sample_labels, guided by [sample] guidance.
    labels = sample_labels(pipeline, n)
    dynamics = guided_dynamics(pipeline, None if labels is None else labels.to(device))
    if not pipeline.capture:
        samples = simulator.simulate(dynamics, x0, span, generator=generator, progress=progress)
        return x0, clip_to_range(pipeline, returned_tensor(samples, simulator, "simulate", shape, "samples"))

    def draw(x: Tensor) -> Tensor:
        return simulator.simulate(dynamics, x, span, generator=generator)

    # Per-step hooks cannot run inside a replayed graph: progress is reported once, at the end.
    samples = returned_tensor(backend.compile_sampler(draw, x0)(x0), simulator, "simulate", shape, "samples")
    if progress is not None:
        progress(cfg.steps, cfg.steps)
    return x0, clip_to_range(pipeline, samples)


def clip_to_range(pipeline: Pipeline, samples: Tensor) -> Tensor:
    """``samples (n, *D)`` clipped to the dataset's ``value_range`` (unchanged where it has none):
    guided samples overshoot the data's bounds (images: [-1, 1])."""
    bounds = pipeline.dataset.value_range
    return samples if bounds is None else samples.clamp(*bounds)


@hookimpl(trylast=True, specname="flowkit_sample")
@torch.no_grad()
def sample(run: PipelineRun) -> Samples:
    """The engine's sampling stage (``flowkit_sample``, ``trylast``: a plugin returning samples first
    samples instead): samples on the CPU (also written to ``samples.npy``), the trajectories of
    the first ``[sample] trajectories`` of them over the grid, and the function evaluations."""
    pipe = run.pipeline
    cfg = pipe.sample

    def progress(done: int, total: int) -> None:
        run.hook.flowkit_sampling_progress(run=run, done=done, total=total)

    x0, samples = draw_samples(pipe, cfg.n, progress=progress)
    nfe = cfg.simulator.last_nfe
    run.metrics["nfe"] = nfe
    run.metrics["sample_steps"] = cfg.steps
    run.metrics["sampler_captured"] = pipe.capture
    trajectory = None
    labels = sample_labels(pipe, cfg.n)
    if cfg.trajectories:
        traj_gen = pipe.device.generator(stage_seed(pipe.run.seed, "trajectory"))
        first = None if labels is None else labels[: cfg.trajectories].to(pipe.device.device)
        trajectory = cfg.simulator.simulate_trajectory(
            guided_dynamics(pipe, first), x0[: cfg.trajectories], sample_times(pipe), generator=traj_gen
        )
        points = (cfg.steps + 1, min(cfg.trajectories, cfg.n), *pipe.dataset.shape)
        trajectory = returned_tensor(
            trajectory,
            cfg.simulator,
            "simulate_trajectory",
            None if cfg.simulator.adaptive else points,
            "the states at every time of the grid",
        ).cpu()
    samples = samples.float().cpu()
    write_array(run.directory / "samples.npy", samples.numpy())
    if labels is not None:  # the class each sample was asked for (the null class: unconditional)
        write_array(run.directory / "labels.npy", labels.numpy())
    return Samples(samples, trajectory, nfe, labels, x0.float().cpu())
