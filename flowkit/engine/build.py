"""Build the components a pipeline describes, refusing impossible combinations before any work starts.

:func:`build_pipeline` validates the whole pipeline (a file or a dict) and builds every component:
this is all that ``flowkit validate`` does. It also plans what the run will do that depends on more
than one component: the module the device backend prepared for the forward passes, and whether the
sampler is captured (a backend that captures, and a simulator that declares itself ``capturable``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from flowkit.config import Location, Structurer, apply_overrides, load_source
from flowkit.engine.alongside import build_alongside
from flowkit.engine.distributed import check_world
from flowkit.engine.ends import check_finite_dynamics
from flowkit.engine.guidance import build_guidance, check_conditioning
from flowkit.engine.guide_model import load_guide
from flowkit.engine.limits import check_sizes
from flowkit.engine.manifest import check_resolved
from flowkit.engine.records import Pipeline
from flowkit.engine.sections import (
    REQUIRED,
    TABLES,
    EvaluateSection,
    FlowkitSection,
    RunSection,
    SampleSection,
    TrainSection,
)
from flowkit.engine.seeds import stage_seed
from flowkit.errors import CapabilityError, ConfigError, PluginError, suggest
from flowkit.interfaces import (
    AnalyticModel,
    BuildContext,
    Dataset,
    Loss,
    Model,
    ProbabilityPath,
    check_pair,
)
from flowkit.registry import PluginManager


def build_pipeline(
    source: str | Path | Mapping[str, Any],
    overrides: Sequence[str] = (),
    manager: PluginManager | None = None,
) -> Pipeline:
    """Read (a file) or take (a dict), validate and build a pipeline with ``--set`` overrides.

    Trains nothing. Every error names the file (``<dict>`` for a dict), the table and the key.
    """
    manager = manager or PluginManager()
    if not isinstance(source, Mapping):  # a run's resolved pipeline.toml is checked against its digest
        check_resolved(Path(source))
    raw, name = load_source(source)
    raw, overridden = apply_overrides(raw, overrides, name)
    plugin_tables = _plugin_tables(manager)
    known = [*TABLES, *plugin_tables]
    for table in raw:
        if table not in known:
            raise ConfigError(
                f"{name}: unknown table [{table}].{suggest(table, known)} "
                f"Valid tables: {', '.join(known)}{manager.registry.blocked_hint('declare')}"
            )
    for table in REQUIRED:
        if table not in raw:
            kind = str(TABLES[table])
            names = manager.registry.names(kind)
            raise ConfigError(
                f"{name}: missing table [{table}]; add one naming a registered {kind}, e.g. "
                f'[{table}] kind = "{names[0] if names else "NAME"}" (known: {", ".join(names)})'
            )
    top = Location(name, (), overridden)
    context = BuildContext(source=name)
    build = Structurer(manager.registry, context)
    # The sections' own tables are validated before anything is built, so a typo fails fast.
    run = build.structure(RunSection, raw.get("run", {}), top.child("run"))
    build.structure(FlowkitSection, raw.get("flowkit", {}), top.child("flowkit"))
    context.device = run.device
    dataset = context.dataset = cast(Dataset, build.build("dataset", raw["data"], top.child("data")))
    path = context.path = cast(ProbabilityPath, build.build("path", raw["path"], top.child("path")))
    # The loss before the model: a network's output shape is the loss's (context.output_shape).
    loss = context.loss = (
        cast(Loss, build.build("loss", raw["loss"], top.child("loss"))) if "loss" in raw else None
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stage_seed(run.seed, "init"))  # the initial weights depend on the seed only
        model = context.model = cast(Model, build.build("model", raw["model"], top.child("model")))
    network = run.device.prepare_module(model)
    train, alongside = None, None
    if model.trainable:
        if loss is None:
            raise ConfigError(
                f"{name}: missing table [loss]; model '{model.registered_name}' is trained, so "
                f"name a loss (known: {', '.join(manager.registry.names('loss'))})"
            )
        _located(lambda: loss.check(path), name, "[loss]")
        _located(lambda: check_source(loss, path, dataset), name, "[loss]")
        train = build.structure(TrainSection, raw.get("train", {}), top.child("train"))
        roles: dict[str, nn.Module] = {}
        _located(lambda: roles.update(loss.roles(network, path)), name, "[loss]")
        context.roles = roles
        alongside = build_alongside(build, raw["model"], run, train, loss, path, top)
    else:
        for table in ("loss", "train"):
            if table in raw:
                raise ConfigError(
                    f"{name}: [{table}] is set, but model '{model.registered_name}' is exact "
                    f"and is not trained; remove [{table}]"
                )
        assert isinstance(model, AnalyticModel)  # Model has two kinds: trainable or analytic
        context.roles = dict(model.roles())
    sample = build.structure(SampleSection, raw.get("sample", {}), top.child("sample"))
    _located(lambda: check_pair(sample.simulator, sample.dynamics), name, "[sample]")
    evaluate = build.structure(EvaluateSection, raw.get("evaluate", {}), top.child("evaluate"))
    if evaluate.likelihood is not None:
        from flowkit.engine.likelihood import check_settings

        settings = evaluate.likelihood
        _located(lambda: check_settings(settings, path, dataset.shape), name, "[evaluate] likelihood")
    if evaluate.n > sample.n:
        raise (
            top.child("evaluate")
            .child("n")
            .error(
                f"{evaluate.n} held-out points need as many samples, but [sample] n = {sample.n}; "
                f"raise [sample] n or lower [evaluate] n"
            )
        )
    # A plugin's table the file does not have stays None: run.table(name) says it is absent.
    tables = {
        table: build.structure(cls, raw[table], top.child(table)) if table in raw else None
        for table, cls in plugin_tables.items()
    }
    capture = run.device.captures_samplers and type(sample.simulator).capturable
    pipeline = Pipeline(
        name, run, dataset, path, model, network, loss, train, sample, evaluate, tables, context, capture
    )
    pipeline.alongside = alongside
    pipeline.manager = manager  # a teacher run it opens is built with the same plugins
    check_sizes(pipeline)
    check_conditioning(pipeline)
    guide_model = load_guide(pipeline, lambda resolved: build_pipeline(resolved, (), manager))
    pipeline.guidance = build_guidance(pipeline, guide_model)
    _located(lambda: check_finite_dynamics(pipeline), name, "[sample]")
    check_world(name, train.batch_size if train is not None else None, run.distributed)
    return pipeline


def _plugin_tables(manager: PluginManager) -> dict[str, type]:
    """The tables plugins declared; one that takes a name of flowkit's own tables is refused."""
    tables = {}
    for entry in manager.registry.tables():
        if entry.name in TABLES:
            raise PluginError(
                f"{entry.plugin.describe()} declares table [{entry.name}], which is one of flowkit's own "
                f"({', '.join(TABLES)}); rename it, or block the plugin with -p no:{entry.plugin.name}"
            )
        tables[entry.name] = entry.cls
    return tables


def check_source(loss: Loss, path: ProbabilityPath, dataset: Dataset) -> None:
    """Refuse a loss that draws its own Gaussian noise (its call takes no ``x0``) on a path whose source
    is a dataset (``ProbabilityPath.source``): the training loop passes the source points as ``x0``.
    Where both ends are labelled and the coupling pairs by their labels, they must have the same classes."""
    source = path.source
    if source is None:
        return
    if "x0" not in inspect.signature(loss.__call__).parameters:
        raise CapabilityError(
            f"loss '{loss.display_name}' draws its own Gaussian noise (it takes no x0), but path "
            f"'{path.display_name}' starts from the dataset '{source.display_name}'; use a loss that "
            'takes the source points, e.g. [loss] kind = "cfm"'
        )
    coupling = loss.coupling
    labelled = source.num_classes > 0 and dataset.num_classes > 0
    matched = coupling is not None and coupling.matches_source_labels and labelled
    if matched and source.num_classes != dataset.num_classes:
        assert coupling is not None
        raise CapabilityError(
            f"coupling '{coupling.display_name}' pairs each data point with source points of its "
            f"class, but the source dataset '{source.display_name}' has {source.num_classes} classes "
            f"and [data] '{dataset.display_name}' has {dataset.num_classes}; give both the same classes"
        )


def _located(check: Callable[[], None], source: str, table: str) -> None:
    try:
        check()
    except CapabilityError as exc:
        raise CapabilityError(f"{source}: {table}: {exc}") from exc
