"""A run's trained weights used again: sample and evaluate without training (``flowkit sample``,
``flowkit evaluate``).

The run directory's resolved ``pipeline.toml`` is rebuilt with ``--set`` overrides of the tables that
do not change what was trained (``[sample]``, ``[evaluate]``, ``[run] device``, plugin tables); the
sampling weights come from ``model.pt``, or from the newest checkpoint of a run whose training has not
finished. Results go into new files (``samples-<simulator>-<steps>.npy``, ``metrics-<n>.json``) or
to ``--out``; nothing existing is overwritten.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flowkit.config import parse_override
from flowkit.engine.build import build_pipeline
from flowkit.engine.checkpoint_fields import check_fields
from flowkit.engine.checkpoints import list_checkpoints, load_weights, load_weights_from, newest_checkpoint
from flowkit.engine.components import set_up
from flowkit.engine.evaluate import measure, plugin_metrics
from flowkit.engine.guidance import sample_labels
from flowkit.engine.guide_files import load_guide_weights
from flowkit.engine.records import Pipeline
from flowkit.engine.rundir import claim_file, refuse_existing, unused_file, write_array, write_json
from flowkit.engine.sample import draw_samples
from flowkit.errors import ConfigError, FlowkitError
from flowkit.interfaces import Samples
from flowkit.registry import PluginManager


def load_trained(
    directory: str | Path,
    manager: PluginManager,
    overrides: Sequence[str] = (),
    command: str = "sample",
    note: Callable[[str], None] | None = None,
) -> tuple[Pipeline, str]:
    """The pipeline of the run in ``directory`` (with ``overrides``) and its sampling weights loaded;
    returns it and a description of where the weights came from."""
    root = Path(directory)
    if not root.is_dir():
        raise FlowkitError(f"{root}: no such run directory")
    resolved = root / "pipeline.toml"
    if not resolved.is_file() or resolved.stat().st_size == 0:
        raise FlowkitError(f"{root}: not a run directory (no resolved pipeline.toml)")
    plugin_tables = {entry.name for entry in manager.registry.tables()}
    for text in overrides:
        parts, _ = parse_override(text)
        if parts[0] not in ("sample", "evaluate", *plugin_tables) and parts[:2] != ("run", "device"):
            raise ConfigError(
                f"--set {text}: `flowkit {command}` uses the trained model as it is, so only [sample], "
                "[evaluate], [run] device and plugin tables can change; train anew with `flowkit run` "
                "or continue training with `flowkit resume`"
            )
    pipeline = build_pipeline(resolved, overrides, manager)
    if not pipeline.model.trainable:
        return pipeline, "the exact model"
    weights = root / "model.pt"
    if weights.is_file():
        step = load_weights(weights, pipeline.model)
        origin = f"{weights} (step {step})"
        load_guide_weights(pipeline, root)  # a guide trained alongside: guide.pt
    else:
        step, path = _newest_usable_checkpoint(root, pipeline, note)
        origin = f"{path} (step {step}: training has not finished)"
        if note is not None:
            note(f"training of {root} has not finished: using the checkpoint at step {step}")
        load_guide_weights(pipeline, root, step)
    pipeline.model.eval()
    return pipeline, origin


def _newest_usable_checkpoint(
    root: Path, pipeline: Pipeline, note: Callable[[str], None] | None
) -> tuple[int, Path]:
    """Load the sampling weights of the newest checkpoint of an unfinished run that passes its digest
    and every field check (as resume does), saying which newer ones were skipped and why."""
    if not list_checkpoints(root):
        raise FlowkitError(
            f"{root}: no trained weights yet (training stopped before its first checkpoint); "
            f"continue it with: flowkit resume {root}"
        )
    state, path, skipped = newest_checkpoint(root, lambda state, file: check_fields(state, file, pipeline))
    for line in skipped:
        if note is not None:
            note(f"skipped {line}")
    if state is None or path is None:
        raise FlowkitError(
            f"{root}: no usable checkpoint: all {len(skipped)} failed their checks (the newest: "
            f"{skipped[0]}); train anew with `flowkit run`"
        )
    load_weights_from(state, path, pipeline.model)
    return int(state["step"]), path


def sample_run(
    directory: str | Path,
    manager: PluginManager,
    n: int | None = None,
    overrides: Sequence[str] = (),
    out: str | Path | None = None,
    note: Callable[[str], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Draw ``n`` (default ``[sample] n``) samples from the run's trained weights with the
    ``[sample]`` settings (and ``overrides``); write them to ``out`` or a new file of the run directory.

    Returns the file and a record: ``n``, ``nfe``, ``simulator``, ``steps``, ``weights`` (and, for a
    conditional model, ``labels``: the file ``<samples>-labels.npy`` of the class of each sample).
    """
    root = Path(directory)
    if n is not None and n <= 0:
        raise ConfigError(f"--n: the number of samples must be positive, got {n}")
    if out is not None and Path(out).suffix != ".npy":
        raise ConfigError(f"--out {out}: samples are written as a .npy file; name one ending in .npy")
    if out is not None:  # before sampling, which may take minutes; claimed atomically afterwards
        refuse_existing(Path(out))
    pipeline, origin = load_trained(root, manager, overrides, "sample", note)
    cfg = pipeline.sample
    count = cfg.n if n is None else n
    labels = sample_labels(pipeline, count)
    if out is not None and labels is not None:
        refuse_existing(Path(out).with_name(f"{Path(out).stem}-labels.npy"))
    set_up(pipeline, "sample", root)
    _, samples = draw_samples(pipeline, count)
    nfe = cfg.simulator.last_nfe
    adaptive = cfg.simulator.adaptive  # it chooses its own steps: [sample] steps is not one of them
    stem = f"samples-{cfg.simulator.registered_name}-{'adaptive' if adaptive else cfg.steps}"
    target = claim_file(Path(out)) if out is not None else unused_file(root, stem, ".npy")
    write_array(target, samples.float().cpu().numpy())
    record = {
        "n": count,
        "nfe": nfe,
        "simulator": cfg.simulator.registered_name,
        "steps": None if adaptive else cfg.steps,
        "stepping": _stepping(cfg.simulator) if adaptive else f"{cfg.steps} steps",
        "weights": origin,
    }
    if labels is not None:  # a conditional model: the class of each sample, beside the samples
        labels_file = claim_file(target.with_name(f"{target.stem}-labels.npy"))
        write_array(labels_file, labels.numpy())
        record["labels"] = str(labels_file)
    return target, record


def _stepping(simulator: Any) -> str:
    """How an adaptive simulator stepped: ``adaptive: 14 steps accepted, 2 rejected`` where it counts
    them, else ``adaptive steps``."""
    accepted, rejected = getattr(simulator, "last_accepted", None), getattr(simulator, "last_rejected", None)
    if accepted is None:
        return "adaptive steps"
    return f"adaptive: {accepted} steps accepted" + (f", {rejected} rejected" if rejected is not None else "")


def evaluate_run(
    directory: str | Path,
    manager: PluginManager,
    overrides: Sequence[str] = (),
    samples_file: str | Path | None = None,
    out: str | Path | None = None,
    note: Callable[[str], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """The ``[evaluate]`` metrics (with ``overrides``) of the run's samples: ``samples_file``, or the
    run's ``samples.npy``, or, when a ``sample.*`` override is given, fresh samples drawn with it.

    Writes them to ``out`` or ``metrics-evaluate.json`` (numbered when taken) in the run directory;
    returns the file and the metrics.
    """
    from flowkit.engine.records import PipelineRun

    root = Path(directory)
    if out is not None and Path(out).suffix != ".json":
        raise ConfigError(f"--out {out}: metrics are written as a .json file; name one ending in .json")
    if out is not None:  # before sampling and measuring; claimed atomically afterwards
        refuse_existing(Path(out))
    resample = any(parse_override(text)[0][0] == "sample" for text in overrides)
    if resample and samples_file is not None:
        raise ConfigError(
            "--samples and --set sample.KEY=VALUE: give one (fresh samples or a file), not both"
        )
    pipeline, origin = load_trained(root, manager, overrides, "evaluate", note)
    nfe = None
    if resample:
        set_up(pipeline, "sample", root)
        samples = draw_samples(pipeline, pipeline.sample.n)[1].float().cpu()
        nfe = pipeline.sample.simulator.last_nfe
        source = f"{pipeline.sample.n} fresh samples ({pipeline.sample.simulator.registered_name}, "
        source += f"{pipeline.sample.steps} steps)"
    else:
        file = Path(samples_file) if samples_file is not None else root / "samples.npy"
        if samples_file is None and not file.is_file():
            raise FlowkitError(
                f"{root}: no samples.npy (the run did not finish sampling); sample it with "
                f"`flowkit resume {root}`, or pass --set sample.KEY=VALUE to draw fresh samples"
            )
        samples = read_samples(file, pipeline)
        source = str(file)
    if samples.shape[0] < pipeline.evaluate.n:
        raise ConfigError(
            f"{source}: {samples.shape[0]} samples, but [evaluate] n = {pipeline.evaluate.n} needs as many; "
            f"pass --set evaluate.n={samples.shape[0]}"
        )
    set_up(pipeline, "evaluate", root)
    metrics, reference = measure(pipeline, samples)
    metrics["samples"] = source
    metrics["weights"] = origin
    if nfe is not None:
        metrics["nfe"] = nfe
    if metrics.get("distance") is not None:
        run = PipelineRun(pipeline, root, manager.hook, quiet=True, metrics=metrics)
        # the classes the samples were asked for: those of the run's own (or fresh) samples
        labels = sample_labels(pipeline, samples.shape[0]) if samples_file is None else None
        plugin_metrics(run, Samples(samples, None, nfe or 0, labels), reference)
    target = claim_file(Path(out)) if out is not None else unused_file(root, "metrics-evaluate", ".json")
    write_json(target, metrics)
    return target, metrics


def read_samples(file: Path, pipeline: Pipeline) -> Tensor:
    """A ``.npy`` file of samples ``(N, *D)`` for ``pipeline``'s dataset, float32 on the CPU; a wrong
    file, dtype or shape is a one-line error."""
    if not file.is_file():
        raise FlowkitError(f"{file}: no such samples file")
    try:
        array = np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise FlowkitError(f"{file}: not a readable .npy array ({str(exc) or type(exc).__name__})") from None
    if array.dtype.kind not in "fiu":
        raise FlowkitError(f"{file}: holds {array.dtype} values; expected numbers")
    shape = tuple(pipeline.dataset.shape)
    if array.ndim != 1 + len(shape) or tuple(array.shape[1:]) != shape:
        raise FlowkitError(
            f"{file}: samples of shape {tuple(array.shape)}; the run's data are "
            f"(N, {', '.join(map(str, shape))})"
        )
    if array.dtype.itemsize > 8:  # long double: torch has no such type
        raise FlowkitError(
            f"{file}: holds {array.dtype} values; convert them with array.astype(numpy.float32)"
        )
    # float32 in the machine's byte order: torch reads native arrays only (a big-endian file is common)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
