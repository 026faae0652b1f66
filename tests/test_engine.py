"""The refactored engine (issue 9): what the contract promises, each test breaking on a planted bug.

prepare_module and capture planning, plugin tables, stage hooks, randomness of third-party paths, the
Python API, the purity of the contract modules, blocked plugins and the fixed-step simulator base.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any, ClassVar

import attrs
import numpy as np
import pytest
import torch
from conftest import TINY
from flowkit_devices.backends import CPUBackend
from torch import Tensor, nn

import flowkit
from flowkit import hookimpl
from flowkit.docs import describe_section, generate_reference
from flowkit.engine import build_pipeline, run_pipeline
from flowkit.engine.evaluate import measure
from flowkit.errors import ConfigError, FlowkitError, PluginError
from flowkit.interfaces import ODE, SDE, ProbabilityPath, Samples, Simulator
from flowkit.params import param
from flowkit.solvers import counted
from flowkit.testing import build_component, make_manager

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def _plugin(name: str, **hooks: Any) -> tuple[str, Any]:
    """A ``(name, plugin)`` pair of hook functions (each marked ``@hookimpl``)."""
    return name, type(f"Plugin_{name}", (), {k: staticmethod(hookimpl(v)) for k, v in hooks.items()})()


def _registering(name: str, *entries: tuple[str, str, type]) -> tuple[str, Any]:
    def flowkit_register(registry):
        for kind, component, cls in entries:
            registry.add(kind, component, cls)

    return _plugin(name, flowkit_register=flowkit_register)


def _tiny(
    tmp_path,
    extra: str = "",
    name: str = "tiny.toml",
    replace: dict[str, str] | None = None,
    plots: bool = False,
):
    """The tiny pipeline file, with ``replace`` substitutions of its text and ``extra`` tables appended;
    without plots unless asked (matplotlib takes longer than the whole run)."""
    text = TINY.format(out=(tmp_path / "runs" / "{name}").as_posix())
    if not plots:
        text += "\n[report]\nplots = false\n"
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text + textwrap.dedent(extra))
    return path


def _run(path, manager, out, *overrides):
    return run_pipeline(build_pipeline(path, overrides, manager), manager, out=str(out), quiet=True)


# ---------------------------------------------------------------------------------------------------
# 1. prepare_module is wired
# ---------------------------------------------------------------------------------------------------


class CountingModule(nn.Module):
    """Calls the module it wraps and counts the forward calls."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return self.inner(x, t)


class CountingBackend(CPUBackend):
    """The CPU, with every prepared module wrapped in a :class:`CountingModule`."""

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self.prepared: list[CountingModule] = []

    def prepare_module(self, module: nn.Module) -> nn.Module:
        wrapper = CountingModule(super().prepare_module(module))
        self.prepared.append(wrapper)
        return wrapper


def test_the_prepared_module_is_what_training_and_sampling_call(tmp_path):
    calls_at: dict[str, int] = {}

    def flowkit_stage(run, stage, state):
        calls_at[f"{stage}:{state}"] = run.pipeline.network.calls

    manager = make_manager(
        plugins=[
            _registering("counting", ("device", "counting", CountingBackend)),
            _plugin("watch", flowkit_stage=flowkit_stage),
        ]
    )
    path = _tiny(tmp_path, replace={"seed = 3": 'seed = 3\ndevice = { kind = "counting" }'})
    pipeline = build_pipeline(path, (), manager)
    backend = pipeline.device
    assert isinstance(backend, CountingBackend)
    assert len(backend.prepared) == 1
    wrapper = backend.prepared[0]
    assert pipeline.network is wrapper
    assert wrapper.inner is pipeline.model  # it shares the model's parameters
    assert wrapper.calls == 0  # building calls no forward pass
    run_pipeline(pipeline, manager, out=str(tmp_path / "run"), quiet=True)
    steps = pipeline.train.steps
    trained = calls_at["train:end"] - calls_at["train:start"]
    sampled = calls_at["sample:end"] - calls_at["sample:start"]
    assert trained >= steps
    # euler: one evaluation per step for the samples and again for the recorded trajectories
    assert sampled >= pipeline.sample.steps
    assert wrapper.calls == calls_at["evaluate:end"]


# ---------------------------------------------------------------------------------------------------
# 2. Capture planning
# ---------------------------------------------------------------------------------------------------


class CapturingBackend(CPUBackend):
    """The CPU, claiming to capture samplers; records what it is asked to compile."""

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self.compiled: list[tuple[int, ...]] = []

    @property
    def captures_samplers(self) -> bool:
        return True

    def compile_sampler(self, fn, example):
        self.compiled.append(tuple(example.shape))
        return fn


class AdaptiveEuler(Simulator):
    """Euler with step doubling: a step is accepted when a full step and two half steps agree."""

    adaptive = True
    capturable = False
    #: ``ts.numel()`` of every call, by method.
    seen: ClassVar[dict[str, list[int]]] = {}

    def _integrate(self, dynamics: ODE, x: Tensor, t0: float, t1: float, tol: float = 1e-2) -> Tensor:
        h, t, nfe = (t1 - t0) / 4, t0, 0
        while t1 - t > 1e-9:
            h = min(h, t1 - t)
            tb = torch.full((x.shape[0],), t, dtype=x.dtype)
            k = dynamics.drift(x, tb)
            full = x + h * k
            half = x + 0.5 * h * k
            two = half + 0.5 * h * dynamics.drift(half, tb + 0.5 * h)
            nfe += 2
            if float((two - full).abs().max()) < tol or h < 1e-4:
                x, t, h = two, t + h, 1.5 * h
            else:
                h = 0.5 * h
        self.last_nfe += nfe
        return x

    def simulate(self, dynamics, x, ts, generator=None, progress=None):
        self.seen.setdefault("simulate", []).append(ts.numel())
        self.check(dynamics)
        self.last_nfe = 0
        x = self._integrate(dynamics, x, float(ts[0]), float(ts[-1]))
        if progress is not None:
            progress(1000, 1000)
        return x

    def simulate_trajectory(self, dynamics, x, ts, generator=None):
        self.seen.setdefault("simulate_trajectory", []).append(ts.numel())
        self.last_nfe = 0
        states = [x]
        for a, b in zip(ts[:-1].tolist(), ts[1:].tolist(), strict=True):
            states.append(self._integrate(dynamics, states[-1], a, b))
        return torch.stack(states)


@pytest.fixture
def capture_manager():
    return make_manager(
        plugins=[
            _registering(
                "capture",
                ("device", "capturing", CapturingBackend),
                ("simulator", "adaptive-euler", AdaptiveEuler),
            )
        ]
    )


def _capture_file(tmp_path, simulator: str):
    return _tiny(
        tmp_path,
        name=f"{simulator}.toml",
        replace={
            "seed = 3": 'seed = 3\ndevice = { kind = "capturing" }',
            'simulator = "euler"': f'simulator = "{simulator}"',
            "steps = 60": "steps = 20",
        },
    )


def test_a_fixed_step_simulator_is_captured_once(tmp_path, capture_manager):
    pipeline = build_pipeline(_capture_file(tmp_path, "euler"), (), capture_manager)
    assert pipeline.capture is True  # planned when built, before any training
    assert pipeline.device.compiled == []
    run = run_pipeline(pipeline, capture_manager, out=str(tmp_path / "run"), quiet=True)
    assert pipeline.device.compiled == [(pipeline.sample.n, 2)]
    assert run.metrics["sampler_captured"] is True
    saved = json.loads((run.directory / "metrics.json").read_text())
    assert saved["sampler_captured"] is True


def test_an_adaptive_simulator_is_not_captured_and_gets_the_end_points(tmp_path, capture_manager):
    AdaptiveEuler.seen.clear()
    pipeline = build_pipeline(_capture_file(tmp_path, "adaptive-euler"), (), capture_manager)
    assert pipeline.capture is False
    run = run_pipeline(pipeline, capture_manager, out=str(tmp_path / "run"), quiet=True)
    assert pipeline.device.compiled == []
    assert run.metrics["sampler_captured"] is False
    assert AdaptiveEuler.seen["simulate"] == [2]  # ts[[0, -1]] only
    assert AdaptiveEuler.seen["simulate_trajectory"] == [pipeline.sample.steps + 1]  # the whole grid
    assert run.metrics["nfe"] > 0
    samples = np.load(run.directory / "samples.npy")
    assert samples.shape == (pipeline.sample.n, 2) and np.isfinite(samples).all()


# ---------------------------------------------------------------------------------------------------
# 3. Plugin config tables
# ---------------------------------------------------------------------------------------------------


@attrs.frozen
class MyReportSettings:
    """``[myreport]``: how often my reporter reports."""

    every: int = param(5, doc="Report every this many training steps.", validator=attrs.validators.gt(0))


class MyReporter:
    """A plugin with its own table, reading it in a lifecycle hook."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    @hookimpl
    def flowkit_register(self, registry):
        registry.add_table("myreport", MyReportSettings)

    @hookimpl
    def flowkit_run_start(self, run):
        self.seen.append(run.table("myreport"))

    @hookimpl
    def flowkit_train(self, run):  # keep the run short: no training, sample the initial weights
        return True


def _table_manager(*plugins):
    return make_manager(plugins=[("myreport", MyReporter()), *plugins], warn=False)


def test_a_plugin_table_reaches_the_plugins_hooks(tmp_path):
    manager = _table_manager()
    reporter = manager.pm.get_plugin("myreport")
    path = _tiny(tmp_path, "[myreport]\nevery = 3\n")
    pipeline = build_pipeline(path, (), manager)
    assert pipeline.table("myreport") == MyReportSettings(every=3)
    run_pipeline(pipeline, manager, out=str(tmp_path / "run"), quiet=True)
    assert [s.every for s in reporter.seen] == [3]
    resolved = tomllib.loads((tmp_path / "run" / "pipeline.toml").read_text())
    assert resolved["myreport"] == {"every": 3}


def test_a_plugin_table_without_keys_gives_its_defaults_and_an_absent_one_none(tmp_path):
    pipeline = build_pipeline(_tiny(tmp_path, "[myreport]\n"), (), _table_manager())
    assert pipeline.table("myreport") == MyReportSettings()
    assert pipeline.table("myreport").every == 5
    assert build_pipeline(_tiny(tmp_path), (), _table_manager()).table("myreport") is None


def test_a_misspelled_key_of_a_plugin_table_is_named(tmp_path):
    path = _tiny(tmp_path, "[myreport]\nevry = 3\n")
    with pytest.raises(ConfigError) as err:
        build_pipeline(path, (), _table_manager())
    message = str(err.value)
    assert message.startswith(f"{path}: [myreport] key 'evry': unknown key.")
    assert "Did you mean 'every'?" in message


def test_a_plugin_tables_validator_names_the_key(tmp_path):
    path = _tiny(tmp_path, "[myreport]\nevery = 0\n")
    with pytest.raises(ConfigError, match=r"\[myreport\] key 'every': invalid value 0: 'every' must be > 0"):
        build_pipeline(path, (), _table_manager())
    with pytest.raises(ConfigError, match=r"\[myreport\] key 'every': expected an integer"):
        build_pipeline(_tiny(tmp_path, '[myreport]\nevery = "3"\n', name="s.toml"), (), _table_manager())


def test_a_plugin_table_is_described_and_in_the_reference():
    manager = _table_manager()
    text = describe_section("myreport", manager.registry)
    assert text.startswith("[myreport]: ")
    assert "every" in text and "Report every this many training steps." in text
    assert "declared by plugin 'myreport'" in text
    reference = generate_reference(manager)
    assert "### `[myreport]`" in reference
    assert "`every`" in reference.split("### `[myreport]`", 1)[1].split("###", 1)[0]


def test_two_plugins_declaring_one_table_is_a_problem_naming_both():
    def flowkit_register(registry):
        registry.add_table("myreport", MyReportSettings)

    manager = _table_manager(_plugin("copycat", flowkit_register=flowkit_register))
    messages = [p.message for p in manager.problems]
    assert len(messages) == 1, messages
    assert "duplicate table [myreport]" in messages[0]
    assert "plugin 'myreport'" in messages[0] and "plugin 'copycat'" in messages[0]
    assert manager.problems[0].plugin.name == "copycat"
    assert [e.plugin.name for e in manager.registry.tables() if e.name == "myreport"] == ["myreport"]


def test_a_plugin_declaring_a_flowkit_table_fails_the_build_naming_it(tmp_path):
    def flowkit_register(registry):
        registry.add_table("train", MyReportSettings)

    manager = make_manager(plugins=[_plugin("usurper", flowkit_register=flowkit_register)], warn=False)
    with pytest.raises(PluginError, match=r"plugin 'usurper' .*declares table \[train\].*-p no:usurper"):
        build_pipeline(_tiny(tmp_path), (), manager)


def test_the_report_table_belongs_to_the_report_plugin(tmp_path):
    path = _tiny(tmp_path)
    entry = {e.name: e for e in make_manager().registry.tables()}["report"]
    assert entry.plugin.name == "report"
    assert build_pipeline(path, (), make_manager()).table("report").plots is False
    with pytest.raises(
        ConfigError,
        match=r"unknown table \[report\]\..* Blocked plugins, which may declare it: 'report' "
        r"\(by -p no:NAME or FLOWKIT_DISABLE_PLUGINS\)$",
    ):
        build_pipeline(path, (), make_manager(blocked=["report"]))


# ---------------------------------------------------------------------------------------------------
# 4. Stage hooks
# ---------------------------------------------------------------------------------------------------


def _skip_training(run):
    return True


def test_a_sample_hook_replaces_the_engines_sampling(tmp_path):
    fixed = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    ready: list[Tensor] = []

    def flowkit_sample(run):
        return Samples(fixed, None, 7)

    def flowkit_samples_ready(run, samples, reference, trajectory):
        ready.append(samples)

    manager = make_manager(
        plugins=[
            _plugin(
                "sampler",
                flowkit_train=_skip_training,
                flowkit_sample=flowkit_sample,
                flowkit_samples_ready=flowkit_samples_ready,
            )
        ]
    )
    pipeline = build_pipeline(_tiny(tmp_path), (), manager)
    run = run_pipeline(pipeline, manager, out=str(tmp_path / "run"), quiet=True)
    assert not (run.directory / "samples.npy").exists()  # the plugin's to write; it wrote none
    assert "nfe" not in run.metrics and "sampler_captured" not in run.metrics
    assert run.metrics["distance"] == measure(pipeline, fixed)[0]["distance"]
    assert len(ready) == 1 and ready[0] is fixed


def test_a_train_hook_replaces_the_engines_training(tmp_path):
    steps: list[int] = []

    def flowkit_train_step(run, step, loss):
        steps.append(step)

    manager = make_manager(
        plugins=[_plugin("trainer", flowkit_train=_skip_training, flowkit_train_step=flowkit_train_step)]
    )
    pipeline = build_pipeline(_tiny(tmp_path), (), manager)
    before = {k: v.clone() for k, v in pipeline.model.state_dict().items()}
    run = run_pipeline(pipeline, manager, out=str(tmp_path / "run"), quiet=True)
    assert steps == []
    assert not (run.directory / "model.pt").exists()
    assert "train_steps" not in run.metrics and "final_loss" not in run.metrics
    assert all(torch.equal(before[k], v) for k, v in pipeline.model.state_dict().items())
    assert (run.directory / "samples.npy").exists()  # the other stages still run


def test_a_train_hook_returning_none_leaves_training_to_the_engine(tmp_path):
    manager = make_manager(plugins=[_plugin("bystander", flowkit_train=lambda run: None)])
    run = _run(_tiny(tmp_path), manager, tmp_path / "run", "train.steps=5", "train.log_every=5")
    assert run.metrics["train_steps"] == 5
    assert (run.directory / "model.pt").exists()


def test_extra_metrics_end_up_in_metrics_json(tmp_path):
    offered: list[tuple[int, int]] = []

    def flowkit_evaluate_metrics(run, samples, reference):
        offered.append((len(samples.samples), len(reference)))
        return {"my_metric": 1.5}

    manager = make_manager(
        plugins=[
            _plugin("extra", flowkit_train=_skip_training, flowkit_evaluate_metrics=flowkit_evaluate_metrics)
        ]
    )
    run = _run(_tiny(tmp_path), manager, tmp_path / "run")
    saved = json.loads((run.directory / "metrics.json").read_text())
    assert saved["my_metric"] == 1.5
    assert "distance" in saved
    assert offered == [(200, 200)]


def test_an_extra_metric_that_is_already_set_names_the_plugin(tmp_path):
    def flowkit_evaluate_metrics(run, samples, reference):
        return {"distance": 0.0}

    manager = make_manager(
        plugins=[
            _plugin("cheat", flowkit_train=_skip_training, flowkit_evaluate_metrics=flowkit_evaluate_metrics)
        ]
    )
    with pytest.raises(PluginError, match=r"plugin 'cheat' returns metrics distance .*already set"):
        _run(_tiny(tmp_path), manager, tmp_path / "run")


# ---------------------------------------------------------------------------------------------------
# 5. Randomness of a third-party path, and torch's global generator
# ---------------------------------------------------------------------------------------------------


class StochasticInterpolant(ProbabilityPath):
    """``x = (1 - t) x0 + t z + gamma(t) w`` with ``gamma(t) = scale t (1 - t)`` and ``w ~ N(0, I)``."""

    @attrs.define(frozen=True)
    class Params:
        scale: float = param(0.5, doc="Amplitude of the latent noise gamma.")

    def sample_prior(self, shape, generator=None, device=None):
        return torch.randn(shape, generator=generator, device=device)

    def _draw(self, z, t, noise, generator):
        x0 = noise if noise is not None else torch.randn(z.shape, generator=generator, dtype=z.dtype)
        w = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        tb = t.reshape(-1, *([1] * (z.dim() - 1)))
        gamma, d_gamma = self.params.scale * tb * (1 - tb), self.params.scale * (1 - 2 * tb)
        return (1 - tb) * x0 + tb * z + gamma * w, z - x0 + d_gamma * w

    def sample(self, z, t, noise=None, generator=None):
        return self._draw(z, t, noise, generator)[0]

    def sample_with_target(self, z, t, noise=None, generator=None):
        return self._draw(z, t, noise, generator)

    def target_velocity(self, x, z, t):
        tb = t.reshape(-1, *([1] * (z.dim() - 1)))
        return (z - x) / (1 - tb).clamp_min(1e-3)


def test_a_path_with_extra_randomness_draws_it_from_the_runs_generators(tmp_path):
    manager = make_manager(
        plugins=[_registering("interpolant", ("path", "interpolant", StochasticInterpolant))]
    )
    path = _tiny(tmp_path, replace={'kind = "gaussian"\nschedule = { kind = "ot" }': 'kind = "interpolant"'})
    torch.manual_seed(1)  # the global generator differs between the runs: it must not matter
    a = _run(path, manager, tmp_path / "a")
    torch.manual_seed(2)
    b = _run(path, manager, tmp_path / "b")
    c = _run(path, manager, tmp_path / "c", "run.seed=4")
    first, second, other = (np.load(r.directory / "samples.npy") for r in (a, b, c))
    assert isinstance(a.pipeline.path, StochasticInterpolant)
    assert np.isfinite(first).all()
    assert np.array_equal(first, second)
    assert not np.array_equal(first, other)


def test_a_run_leaves_torchs_global_generator_alone(tmp_path):
    manager = make_manager()
    torch.manual_seed(11)
    before = torch.get_rng_state()
    # The reporters run too (progress bars: quiet=False); plots are left out for time (3 s a run).
    pipeline = build_pipeline(_tiny(tmp_path), (), manager)
    assert torch.equal(before, torch.get_rng_state()), "building the pipeline consumed the global RNG"
    run_pipeline(pipeline, manager, out=str(tmp_path / "run"), quiet=False)
    assert torch.equal(before, torch.get_rng_state()), "the run consumed the global RNG"


# ---------------------------------------------------------------------------------------------------
# 6. The Python API
# ---------------------------------------------------------------------------------------------------


def test_load_train_sample_evaluate(tiny_pipeline):
    pipe = flowkit.load_pipeline(tiny_pipeline, overrides=["train.steps=30"], manager=make_manager())
    assert pipe.pipeline.train.steps == 30
    losses = pipe.train()
    assert [step for step, _ in losses] == [20, 30]
    assert all(isinstance(loss, float) and np.isfinite(loss) for _, loss in losses)
    metrics = pipe.evaluate()  # a fresh [sample] n
    assert {"distance", "noise_floor"} <= set(metrics)
    assert metrics["distance"] > 0 and metrics["noise_floor"] > 0
    x = pipe.sample(50)
    assert isinstance(x, Tensor) and x.shape == (50, 2) and x.dtype == torch.float32


def test_load_pipeline_from_a_dict(tiny_pipeline):
    tables = tomllib.loads(tiny_pipeline.read_text())
    pipe = flowkit.load_pipeline(tables, overrides=["train.steps=5"], manager=make_manager())
    assert pipe.pipeline.source == "<dict>"
    assert pipe.pipeline.train.steps == 5
    assert len(pipe.train()) == 1
    assert pipe.sample(10).shape == (10, 2)
    assert tables["train"]["steps"] == 60  # the caller's dict is not modified
    wrong = {**tables, "train": {"stpes": 5}}
    with pytest.raises(ConfigError) as err:
        flowkit.load_pipeline(wrong, manager=make_manager())
    message = str(err.value)
    assert message.startswith("<dict>: [train] key 'stpes': unknown key. Did you mean 'steps'?"), message


def test_a_run_directory_opens_again(tmp_path):
    manager = make_manager()
    done = flowkit.load_pipeline(_tiny(tmp_path), manager=manager).run(out=tmp_path / "run")
    assert done.directory == tmp_path / "run"
    opened = flowkit.open_run(done.directory, manager=manager)
    assert opened.metrics == json.loads((done.directory / "metrics.json").read_text())
    assert opened.metrics["distance"] == done.metrics["distance"]
    assert opened.sample(20).shape == (20, 2)
    n = opened.pipeline.pipeline.sample.n
    saved = np.load(done.directory / "samples.npy")
    assert np.array_equal(opened.sample(n).numpy(), saved)  # EMA weights, the same sampling seed
    assert np.array_equal(opened.samples.numpy(), saved)
    assert opened.labels is None and opened.pipeline.labels(5) is None  # unconditional
    with pytest.raises(FlowkitError, match=r"labels\(n\): n must be positive, got 0"):
        opened.pipeline.labels(0)


def test_open_run_refuses_what_is_not_a_run(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FlowkitError, match=rf"{missing}: no such run directory"):
        flowkit.open_run(missing)
    half = tmp_path / "half"
    half.mkdir()
    (half / "pipeline.toml").write_text("")
    with pytest.raises(FlowkitError, match=rf"{half}: not a finished run directory \(no metrics.json\)"):
        flowkit.open_run(half)


# ---------------------------------------------------------------------------------------------------
# 7. Contract purity and start-up
# ---------------------------------------------------------------------------------------------------


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=False
    )


def test_the_contract_modules_import_no_engine():
    result = _python("""
        import sys
        import flowkit.interfaces, flowkit.hookspecs
        banned = ["flowkit.engine", "flowkit.config", "flowkit.registry", "flowkit.cli", "flowkit.api"]
        print([m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in banned)])
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_import_flowkit_loads_neither_torch_nor_the_engine():
    result = _python("""
        import sys
        import flowkit
        loaded = [m for m in sys.modules if m == "torch" or m.startswith(("flowkit.engine", "flowkit.api"))]
        print(sorted(loaded))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_help_needs_no_torch():
    result = _python("""
        import sys
        from flowkit.cli import main
        main(["--help"], standalone_mode=False)
        print("torch loaded:", "torch" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    assert result.stdout.strip().endswith("torch loaded: False")
    cli = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "flowkit", "--help"], capture_output=True, text=True
    )
    assert cli.returncode == 0, cli.stderr
    assert "Usage:" in cli.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in cli.stderr.splitlines() if "|" in line}
    assert "flowkit.cli" in imported and "torch" not in imported


def test_version():
    result = subprocess.run([sys.executable, "-m", "flowkit", "--version"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"flowkit, version {flowkit.__version__}"


# ---------------------------------------------------------------------------------------------------
# 8. Blocked plugins
# ---------------------------------------------------------------------------------------------------


def test_a_component_of_a_blocked_plugin_names_the_plugin(tmp_path):
    path = _tiny(tmp_path, replace={'simulator = "euler"': 'simulator = "heun"'})
    with pytest.raises(FlowkitError) as err:
        build_pipeline(path, (), make_manager(blocked=["simulators"], warn=False))
    message = str(err.value)
    assert "[sample] key 'simulator'" in message and "unknown simulator 'heun'" in message
    assert "Blocked plugins, which may provide it: 'simulators'" in message


# ---------------------------------------------------------------------------------------------------
# 9. FixedStepSimulator: the counting wrapper keeps the dynamics' type
# ---------------------------------------------------------------------------------------------------


class Decay(ODE):
    """``dX = -X dt``."""

    def drift(self, x, t):
        return -x


class NoisyDecay(SDE):
    """``dX = -X dt + 0.5 dW``."""

    def drift(self, x, t):
        return -x

    def diffusion(self, t):
        return torch.full_like(t, 0.5)


def test_counted_keeps_an_sde_an_sde():
    sde, ode = NoisyDecay(), Decay()
    assert isinstance(counted(sde), SDE)
    assert not isinstance(counted(ode), SDE) and isinstance(counted(ode), ODE)
    wrapped = counted(sde)
    t = torch.rand(4)
    assert torch.equal(wrapped.diffusion(t), sde.diffusion(t))
    wrapped.drift(torch.ones(4, 2), t)
    assert wrapped.count == 1


def test_euler_maruyama_draws_noise_through_simulate():
    manager = make_manager(builtins=["simulators"])
    em = build_component(manager, "simulator", "euler-maruyama")
    euler = build_component(manager, "simulator", "euler")
    heun = build_component(manager, "simulator", "heun")
    x0 = torch.ones(64, 2)
    ts = torch.linspace(0, 1, 11)
    deterministic = euler.simulate(Decay(), x0, ts)
    assert euler.last_nfe == 10
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    noisy = em.simulate(NoisyDecay(), x0, ts, generator=generator)
    assert em.last_nfe == 10
    assert not torch.equal(generator.get_state(), state)  # the noise came from the generator
    assert (noisy - deterministic).abs().mean() > 0.05
    again = em.simulate(NoisyDecay(), x0, ts, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again)
    assert torch.equal(em.simulate(Decay(), x0, ts), deterministic)  # an ODE: exactly Euler's, no noise
    trajectory = em.simulate_trajectory(NoisyDecay(), x0, ts, generator=torch.Generator().manual_seed(0))
    assert trajectory.shape == (11, 64, 2) and torch.equal(trajectory[-1], noisy)
    heun.simulate(Decay(), x0, ts)
    assert heun.last_nfe == 20
