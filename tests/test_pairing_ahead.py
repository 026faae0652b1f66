"""Pairing a step ahead: the batch producer pairs noise and data for the loss; the exact-OT solve of
batch k + 1 runs on a worker thread while step k trains.

What must hold whatever the threads' timing: the pairs are the synchronous pairing of the same draws
(bitwise), the same seed gives the same weights and samples, an interrupted and resumed run is the
uninterrupted one, a solver error reaches the training thread with its message, the worker is gone on
every way out, and the independent coupling starts no thread. No test here measures time; the
solver is slowed down by varying amounts instead, so the training thread sometimes waits and
sometimes does not.
"""

from __future__ import annotations

import copy
import os
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import TINY
from flowkit_couplings.couplings import ExactOT, squared_distances
from scipy.optimize import linear_sum_assignment

from flowkit import hookimpl
from flowkit.engine import build_pipeline, resume_run, run_pipeline
from flowkit.engine.distributed import rank_seed
from flowkit.engine.interrupts import Interrupted
from flowkit.engine.loop import PAIRING_THREAD, PairingError, TrainLoop
from flowkit.errors import FlowkitError
from flowkit.registry import PluginManager
from flowkit.testing import make_manager

PIPELINE = {
    "run": {"seed": 0},
    "data": {"kind": "moons"},
    "path": {"kind": "gaussian"},
    "model": {"kind": "mlp", "hidden": [32, 32]},
    "loss": {"kind": "cfm", "coupling": "exact-ot"},
    "train": {"steps": 12, "batch_size": 32, "ema_decay": 0.9, "log_every": 4},
    "sample": {"simulator": "euler", "steps": 2, "n": 50},
    "evaluate": {"n": 50},
}
#: Brownian bridge with sigma > 0: the path draws noise of its own after the pairing.
BRIDGE = {"kind": "brownian-bridge", "sigma": 0.2}


@pytest.fixture(scope="module")
def manager():
    return make_manager(warn=False)


def pipeline(**tables: Any) -> dict[str, Any]:
    spec = copy.deepcopy(PIPELINE)
    spec.update(tables)
    return spec


def pairing_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(PAIRING_THREAD)]


def weights(loop: TrainLoop) -> dict[str, Any]:
    """The EMA and the raw weights."""
    state = loop.weights(loop.current_step)
    return {which: {k: v.clone() for k, v in state[which].items()} for which in ("model", "raw")}


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    differ = [k for k in fa if not torch.equal(fa[k], fb[k])]
    assert not differ, f"differ: {differ}"


def slow_solver(loop: TrainLoop, delays: list[float]) -> list[int]:
    """Make the coupling's solve sleep ``delays[i % len]`` seconds on call ``i`` (on the worker);
    returns the list of thread idents that ran it."""
    coupling = loop.loss_fn.params.coupling
    solve, ran = coupling.solve, []

    def slowed(x0, x1, y=None):
        ran.append(threading.get_ident())
        threading.Event().wait(delays[len(ran) % len(delays)])  # a pause, never a clock read
        return solve(x0, x1, y)

    coupling.solve = slowed  # an instance attribute: this pipeline's coupling only
    return ran


def trained(manager, spec: dict[str, Any], steps: int, delays: list[float] | None = None) -> TrainLoop:
    loop = TrainLoop(build_pipeline(spec, (), manager))
    if delays:
        slow_solver(loop, delays)
    for _ in loop.run(steps):
        pass
    return loop


# ---------------------------------------------------------------------------------------------------
# The contract: a loss declares its coupling and receives the paired noise as x0
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("coupling", ["exact-ot", "sinkhorn", "independent"])
def test_cfm_declares_its_coupling_and_the_loop_solves_ahead_only_where_it_is_background(manager, coupling):
    pipe = build_pipeline(pipeline(loss={"kind": "cfm", "coupling": coupling}), (), manager)
    declared = pipe.loss.coupling
    if coupling == "independent":
        assert declared is None
    else:
        assert declared is pipe.loss.params.coupling and declared.registered_name == coupling
    loop = TrainLoop(pipe)
    assert loop.ahead is (coupling == "exact-ot")
    assert (loop.noise_gen is None) is (coupling == "independent")


def test_dsm_declares_no_coupling_and_sb_cfm_declares_its_plan(manager):
    dsm = build_pipeline(pipeline(loss={"kind": "dsm"}), (), manager)
    assert dsm.loss.coupling is None
    sb = build_pipeline(
        pipeline(path=BRIDGE, model={"kind": "velocity-score"}, loss={"kind": "sb-cfm"}), (), manager
    )
    assert sb.loss.coupling is not None and sb.loss.coupling.params.epsilon == pytest.approx(0.08)


@pytest.mark.parametrize("conditional", [False, True])
def test_cfm_given_x0_uses_it_as_the_noise_and_draws_only_the_times(manager, conditional):
    """With ``x0`` the loss is ``loss_at`` on that noise: the pairing is the loop's, not the loss's."""
    pipe = build_pipeline(pipeline(), (), manager)
    loss, role, path = pipe.loss, pipe.context.roles["velocity"], pipe.path
    z, x0 = torch.randn(24, 2) + 1.0, torch.randn(24, 2)
    y = torch.arange(24) % 3 if conditional else None
    model: Any = role
    if conditional:  # a stand-in conditional network: the labels shift the output
        net = role.network

        def model(x, t, y):  # a role: the labels come by keyword
            return net(x, t) + y[:, None].float()

    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    kwargs = {"y": y} if conditional else {}
    given = loss(model, path, z, generator=g1, x0=x0, **kwargs)
    t = loss.sample_times(24, path, g2)
    assert torch.equal(given, loss.loss_at(model, path, z, t, x0, g2, **kwargs))
    assert torch.equal(g1.get_state(), g2.get_state())


def test_exact_ot_solve_is_the_permutation_and_pair_applies_it():
    g = torch.Generator().manual_seed(2)
    x0, x1 = torch.randn(40, 2, generator=g), torch.randn(40, 2, generator=g) + 1
    ot = ExactOT()
    perm = ot.solve(x0, x1)
    assert perm.dtype == torch.int64 and sorted(perm.tolist()) == list(range(40))
    assert torch.equal(ot.pair(perm, x0, x1)[0], ot(x0, x1)[0])
    assert torch.equal(ot.pair(perm, x0, x1)[0], x0[ot.permutation(x0, x1)])


# ---------------------------------------------------------------------------------------------------
# The loop: the same pairs, the same weights, whatever the timing
# ---------------------------------------------------------------------------------------------------


def test_the_loop_trains_on_the_synchronous_pairing_of_the_same_draws(manager):
    """Replays the data, noise and loss streams one step at a time and pairs each batch with scipy's
    assignment: every step's pairs must be exactly what the loss was given."""
    loop = TrainLoop(build_pipeline(pipeline(), (), manager))
    assert loop.ahead
    slow_solver(loop, [0.0, 0.02, 0.0, 0.005])  # the training thread waits at some steps only
    given: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    loss_at = loop.loss_fn.loss_at

    def recording(model, path, z, t, noise, generator=None, y=None):
        given.append((z.clone(), t.clone(), noise.clone()))
        return loss_at(model, path, z, t, noise, generator)

    loop.loss_fn.loss_at = recording
    for _ in loop.run(12):
        pass
    pipe, seed = loop.pipeline, loop.pipeline.run.seed
    data_gen = pipe.device.generator(rank_seed(seed, "data", 0))  # the streams, from the start
    noise_gen = pipe.device.generator(rank_seed(seed, "noise", 0))
    loss_gen = pipe.device.generator(rank_seed(seed, "loss", 0))
    assert len(given) == 12
    for step, (z, t, noise) in enumerate(given, start=1):
        data = pipe.dataset.sample(32, generator=data_gen)
        drawn = pipe.path.sample_prior((32, 2), generator=noise_gen)
        times = loop.loss_fn.sample_times(32, pipe.path, loss_gen)
        cost = squared_distances(data.double(), drawn.double()).numpy()
        _, cols = linear_sum_assignment(cost)
        assert torch.equal(z, data) and torch.equal(t, times), f"step {step}: other draws"
        assert torch.equal(noise, drawn[torch.from_numpy(cols)]), f"step {step}: other pairs"


def test_the_pairing_runs_on_one_worker_thread(manager):
    loop = TrainLoop(build_pipeline(pipeline(), (), manager))
    ran = slow_solver(loop, [0.0])
    seen: list[list[str]] = []
    for _ in loop.run(6):
        seen.append(pairing_threads())
    main = threading.get_ident()
    # step 1's batch is paired on the training thread; steps 2-6 on one worker thread
    assert ran[0] == main and len(set(ran[1:])) == 1 and ran[1] != main
    assert all(len(names) == 1 for names in seen[:-1])
    assert pairing_threads() == []


@pytest.mark.parametrize("path", [None, BRIDGE], ids=["gaussian", "bridge"])
def test_same_seed_twice_gives_bitwise_weights_whatever_the_timing(manager, path):
    spec = pipeline(path=path) if path else pipeline()
    a = trained(manager, spec, 12, delays=[0.0, 0.03, 0.0])
    b = trained(manager, spec, 12, delays=[0.01, 0.0])
    assert_same(weights(a), weights(b))
    inline = TrainLoop(build_pipeline(spec, (), manager))
    inline.ahead = False  # each batch paired inside its step, no thread: the same training
    for _ in inline.run(12):
        assert pairing_threads() == []
    assert_same(weights(inline), weights(a))


def test_close_midway_puts_the_draws_back(manager):
    """A loop closed with a batch drawn ahead continues as if it had run one step at a time."""
    reference = trained(manager, pipeline(path=BRIDGE), 10)
    loop = TrainLoop(build_pipeline(pipeline(path=BRIDGE), (), manager))
    for _ in range(4):
        loop.step()
        loop.current_step += 1
    loop.close()
    assert pairing_threads() == []
    for _ in loop.run(10):
        pass
    assert_same(weights(loop), weights(reference))


@pytest.mark.parametrize("path", [None, BRIDGE], ids=["gaussian", "bridge"])
def test_resume_from_a_state_taken_with_a_batch_paired_ahead_is_bitwise(manager, path):
    spec = pipeline(path=path) if path else pipeline()
    reference = trained(manager, spec, 12)
    first = TrainLoop(build_pipeline(spec, (), manager))
    slow_solver(first, [0.02])
    states = []
    for step, _, _ in first.run(12):
        if step == 5:
            assert first.batches._next is not None  # the batch of step 6 is drawn and being paired
            states.append(first.state_dict())
            break
    assert pairing_threads() == []  # abandoning the iteration closed the worker
    state = states[0]
    assert set(state["generators"]) == {"data", "noise", "loss"}
    resumed = TrainLoop(build_pipeline(spec, (), manager))
    assert resumed.load_state_dict(state) == 5
    for _ in resumed.run(12):
        pass
    assert_same(weights(resumed), weights(reference))


# ---------------------------------------------------------------------------------------------------
# Whole runs: resume after a signal, errors, and the thread on every way out
# ---------------------------------------------------------------------------------------------------


def _plugin(name: str, **hooks: Any) -> tuple[str, Any]:
    return name, type(f"Plugin_{name}", (), {k: staticmethod(hookimpl(v)) for k, v in hooks.items()})()


def _tiny(tmp_path: Path, coupling: str = "exact-ot") -> Path:
    file = tmp_path / "tiny.toml"
    text = TINY.format(out=(tmp_path / "runs" / "{name}").as_posix())
    file.write_text(text.replace('kind = "cfm"', f'kind = "cfm"\ncoupling = "{coupling}"'))
    return file


OVERRIDES = ["train.steps=30", "train.checkpoint_every=10", "train.log_every=5"]


def _run(file: Path, manager: PluginManager, out: Path):
    pipe = build_pipeline(file, OVERRIDES, manager)
    return run_pipeline(pipe, manager, out=str(out), quiet=True, command="test")


def _same_run(a: Path, b: Path) -> None:
    wa = torch.load(a / "model.pt", weights_only=True)
    wb = torch.load(b / "model.pt", weights_only=True)
    assert_same({"model": wa["model"], "raw": wa["raw"]}, {"model": wb["model"], "raw": wb["raw"]})
    assert (a / "samples.npy").read_bytes() == (b / "samples.npy").read_bytes()


def test_a_signal_then_resume_is_bitwise_the_uninterrupted_exact_ot_run(tmp_path):
    file = _tiny(tmp_path)
    seen: list[list[str]] = []

    def flowkit_train_step(run, step: int, loss) -> None:
        seen.append(pairing_threads())
        if step == 17 and run.resumed_from is None:
            os.kill(os.getpid(), signal.SIGINT)

    reference = _run(file, make_manager(warn=False), tmp_path / "ref").directory
    manager = make_manager(warn=False, plugins=[_plugin("sig", flowkit_train_step=flowkit_train_step)])
    out = tmp_path / "stopped"
    with pytest.raises(Interrupted, match="at training step 17 of 30"):
        _run(file, manager, out)
    assert pairing_threads() == []
    assert seen[0] == [PAIRING_THREAD + "_0"]  # the worker was there while it trained
    resume_run(out, manager, quiet=True, command="test")
    assert pairing_threads() == []
    _same_run(reference, out)
    twice = _run(file, make_manager(warn=False), tmp_path / "again").directory
    _same_run(reference, twice)  # the same seed, another run: the same weights and samples


def test_a_solver_error_reaches_the_training_thread_with_its_message(tmp_path, monkeypatch):
    file = _tiny(tmp_path)
    calls = {"n": 0}
    solve = ExactOT.solve

    def failing(self, x0, x1, y=None):
        calls["n"] += 1
        if calls["n"] == 4:
            raise ValueError("the simplex lost its way")
        return solve(self, x0, x1, y)

    monkeypatch.setattr(ExactOT, "solve", failing)
    with pytest.raises(PairingError) as err:
        _run(file, make_manager(warn=False), tmp_path / "failing")
    assert isinstance(err.value, FlowkitError)
    assert str(err.value) == (
        "training step 4: pairing noise and data failed (loss 'cfm'): ValueError: the simplex lost its way"
    )
    assert isinstance(err.value.__cause__, ValueError)
    assert pairing_threads() == []


def test_the_worker_is_gone_after_an_exception_in_a_hook_and_after_divergence(tmp_path, manager):
    file = _tiny(tmp_path)

    def flowkit_train_step(run, step: int, loss) -> None:
        if step == 7:
            raise RuntimeError("a hook failed")

    broken = make_manager(warn=False, plugins=[_plugin("boom", flowkit_train_step=flowkit_train_step)])
    with pytest.raises(RuntimeError, match="a hook failed") as err:
        _run(file, broken, tmp_path / "hook")
    assert pairing_threads() == []
    del err

    def poison(run, step: int, loss) -> None:
        if step == 12:
            with torch.no_grad():
                next(run.pipeline.model.parameters()).fill_(float("nan"))

    nan = make_manager(warn=False, plugins=[_plugin("nan", flowkit_train_step=poison)])
    with pytest.raises(FlowkitError, match="training diverged at step 13"):
        _run(file, nan, tmp_path / "nan")
    assert pairing_threads() == []


def test_the_independent_coupling_starts_no_thread_and_saves_what_it_did(tmp_path):
    file = _tiny(tmp_path, "independent")
    seen: list[list[str]] = []

    def flowkit_train_step(run, step: int, loss) -> None:
        seen.append(pairing_threads())

    manager = make_manager(warn=False, plugins=[_plugin("watch", flowkit_train_step=flowkit_train_step)])
    done = _run(file, manager, tmp_path / "independent")
    assert len(seen) == 30 and not any(seen)
    state = torch.load(done.directory / "checkpoint-0000030.pt", weights_only=True)
    assert set(state["generators"]) == {"data", "loss"}
    loop = TrainLoop(build_pipeline(file, OVERRIDES, manager))
    assert not loop.ahead and loop.noise_gen is None
    samples = np.load(done.directory / "samples.npy")
    assert np.isfinite(samples).all()
