"""Data-parallel training under torchrun: the global batch, per-rank streams, DDP, failures, resume.

The fast tests check the build-time refusals, the seeds and the launcher in this process. The slow
ones start real gloo process groups on 127.0.0.1 (``flowkit run --nproc 2``, ``torchrun`` with a
failure injected by ``tests/ddp_worker.py``, and two one-process "nodes" through the c10d
rendezvous) and compare them with a one-process computation of the same global batch.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY

from flowkit.engine import TrainLoop, build_pipeline, resume_run, run_pipeline
from flowkit.engine import distributed as dist
from flowkit.engine.checkpoints import load_checkpoint
from flowkit.engine.distributed import World, failure_message, launcher_command, rank_seed
from flowkit.engine.rundir import read_status
from flowkit.engine.seeds import stage_seed
from flowkit.errors import ConfigError, FlowkitError
from flowkit.interfaces import LossValue
from flowkit.registry import PluginManager
from flowkit.testing import make_manager

TESTS = Path(__file__).parent
#: Steps of the multi-process runs: three log lines, checkpoints at 20 and 40 (all kept); no plots
#: (nothing here looks at them, and drawing them cost every launch seconds).
SETTINGS = [
    "train.steps=60",
    "train.log_every=20",
    "train.checkpoint_every=20",
    "train.keep_checkpoints=0",
    "report.plots=false",
]
#: The losses and weights of 2 gloo ranks against one process computing the same global batch: the
#: same sums in the same order give bitwise-equal floats on the CPU; the bound leaves room for a
#: different reduction order (a torch or gloo version) without hiding a wrong batch or seed.
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def manager() -> PluginManager:
    return make_manager(warn=False)


@pytest.fixture
def world(monkeypatch):
    """Set this process's :class:`World` (no process group: the code paths of a rank, alone)."""

    def set_world(rank: int, size: int) -> None:
        monkeypatch.setattr(dist, "_world", World(rank, size))

    return set_world


def _pipeline_file(root: Path) -> Path:
    path = root / "tiny.toml"
    path.write_text(TINY.format(out=(root / "runs" / "{name}").as_posix()))
    return path


# ---------------------------------------------------------------------------------------------------
# In this process
# ---------------------------------------------------------------------------------------------------


def test_a_global_batch_that_does_not_split_is_refused_at_build_time(tmp_path, manager, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    file = _pipeline_file(tmp_path)
    with pytest.raises(ConfigError) as info:
        build_pipeline(file, ["train.batch_size=64"], manager)
    assert str(info.value) == (
        f"{file}: [train] batch_size = 64 is the global batch and must split evenly across the 3 "
        "processes (WORLD_SIZE); use a multiple of 3, e.g. 63 or 66"
    )
    assert build_pipeline(file, ["train.batch_size=66"], manager).train.batch_size == 66


def test_distributed_off_refuses_torchrun_and_nccl_needs_cuda(tmp_path, manager, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    file = _pipeline_file(tmp_path)
    with pytest.raises(ConfigError, match=r'\[run\] distributed = "off", but torchrun started 2'):
        build_pipeline(file, ["run.distributed=off"], manager)
    with pytest.raises(ConfigError, match=r'distributed = "nccl" needs a CUDA device.*use "gloo" or "auto"'):
        dist.resolve_backend("nccl", torch.device("cpu"), str(file))
    assert dist.resolve_backend("auto", torch.device("cpu")) == "gloo"
    assert dist.resolve_backend("auto", torch.device("cuda", 0)) == "nccl"
    assert dist.resolve_backend("off", torch.device("cpu")) is None


def test_rank_zero_keeps_the_one_process_streams_and_other_ranks_get_their_own():
    assert rank_seed(7, "data", 0) == stage_seed(7, "data")
    seeds = {rank_seed(7, stage, rank) for stage in ("data", "loss") for rank in range(4)}
    assert len(seeds) == 8
    assert rank_seed(7, "data", 1, resumed_at=20) not in seeds
    assert rank_seed(7, "data", 1, resumed_at=20) != rank_seed(7, "data", 1, resumed_at=40)


def test_each_rank_draws_its_share_of_the_global_batch(tmp_path, manager, world):
    world(1, 4)
    loop = TrainLoop(build_pipeline(_pipeline_file(tmp_path), [], manager))
    assert loop.batch_size == 16  # 64 / 4
    expected = torch.Generator().manual_seed(rank_seed(3, "data", 1))
    assert torch.equal(loop.data_gen.get_state(), expected.get_state())


def test_resuming_with_another_world_size_continues_saved_ranks_and_rederives_the_rest(
    tmp_path, manager, world
):
    file = _pipeline_file(tmp_path)
    pipeline = build_pipeline(file, [], manager)
    saver = TrainLoop(pipeline)
    for _ in saver.run(5):
        pass
    state = saver.state_dict()
    assert state["world_size"] == 1 and len(state["rank_generators"]) == 1
    for rank in (0, 1):  # resumed as two processes: rank 0 continues, rank 1 starts a fresh stream
        world(rank, 2)
        loop = TrainLoop(build_pipeline(file, [], manager))
        assert loop.load_state_dict(state) == 5
        if rank == 0:
            expected = state["rank_generators"][0]["data"]
        else:
            expected = torch.Generator().manual_seed(rank_seed(3, "data", 1, resumed_at=5)).get_state()
        assert torch.equal(loop.data_gen.get_state(), expected)
    old = {key: value for key, value in state.items() if key not in ("rank_generators", "world_size")}
    world(0, 1)  # a checkpoint from before per-rank generators: its one set of generators
    loop = TrainLoop(build_pipeline(file, [], manager))
    loop.load_state_dict(old)
    assert torch.equal(loop.loss_gen.get_state(), state["generators"]["loss"])


def test_the_launcher_is_torchrun_standalone_without_nproc():
    from flowkit.engine.launch import strip_nproc as _strip_nproc

    args = _strip_nproc(["-p", "no:report", "run", "f.toml", "--nproc", "2", "--set", "a.b=1", "--nproc=3"])
    assert args == ["-p", "no:report", "run", "f.toml", "--set", "a.b=1"]
    assert launcher_command(2, args, python="py") == [
        "py",
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "flowkit",
        *args,
    ]


def test_nproc_inside_torchrun_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(FlowkitError, match=r"--nproc 2: this process was itself started by torchrun"):
        dist.launch(2, ["run", "f.toml"])


@pytest.mark.parametrize(
    "args", [["sample", "RUN"], ["evaluate", "RUN"], ["likelihood", "RUN", "--save", "ll.npy"]]
)
def test_one_process_commands_refuse_torchrun(tmp_path, monkeypatch, args):
    from click.testing import CliRunner

    from flowkit.cli import main

    monkeypatch.chdir(tmp_path)  # a real run directory is not needed: the refusal comes first
    for rank in (0, 1):
        env = {"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank)}
        result = CliRunner().invoke(main, args, env=env)
        assert result.exit_code == 1
        assert result.output == (
            f"Error: rank {rank} of 2: flowkit {args[0]} runs in one process, but torchrun started 2 "
            f"(WORLD_SIZE); run `flowkit {args[0]}` without torchrun\n"
        )
    assert not (tmp_path / "ll.npy").exists()
    one = CliRunner().invoke(main, args, env={"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"})
    assert "without torchrun" not in one.output  # torchrun with one process is one process
    assert "RUN" in one.output  # it went on, to the missing run directory


@pytest.mark.parametrize(
    ("argv", "code"), [(["--version"], 0), (["describe", "no-such-kind"], 1), (["no-such-command"], 2)]
)
def test_python_m_flowkit_ends_a_rank_of_a_group_with_os_exit_and_mains_status(monkeypatch, argv, code):
    import flowkit.cli as cli

    ended: list[int] = []

    def end(status: int) -> None:
        ended.append(status)
        raise SystemExit(-1)  # stands in for os._exit, which would end pytest

    monkeypatch.setattr(sys, "argv", ["flowkit", *argv])
    monkeypatch.setattr(dist, "end_process", end)
    with pytest.raises(SystemExit) as plain:  # not in a process group: main's own exit
        cli.launched_main()
    assert plain.value.code == code and ended == []
    monkeypatch.setattr(dist, "_joined", True)  # a rank that joined a group of several
    with pytest.raises(SystemExit):
        cli.launched_main()
    assert ended == [code]


def test_a_rank_names_itself_and_a_broken_collective():
    two = World(1, 2, 0, "gloo")
    assert failure_message(ValueError("bad batch"), two) == "rank 1 of 2: ValueError: bad batch"
    lost = failure_message(RuntimeError("[gloo] Connection closed by peer [127.0.0.1]:1234"), two)
    assert lost.startswith("rank 1 of 2: lost contact with another process")
    assert "Connection closed by peer" in lost


@pytest.fixture
def one_rank_group(monkeypatch):
    """Joins a real gloo process group of one rank in this process: every collective of the engine
    runs (DDP, the loss all-reduce, the generator gather, the broadcasts), with nobody to disagree."""
    import torch.distributed as torch_dist

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")

    def join() -> None:
        monkeypatch.setenv("MASTER_PORT", str(_free_port()))
        torch_dist.init_process_group("gloo", rank=0, world_size=1)
        monkeypatch.setattr(dist, "_world", World(0, 1, 0, "gloo"))

    yield join
    dist.stop()


def test_a_one_rank_process_group_is_bitwise_the_plain_run_and_resumes_under_it(
    tmp_path, manager, one_rank_group
):
    import torch.distributed as torch_dist

    file = _pipeline_file(tmp_path)
    one_rank_group()
    grouped = run_pipeline(
        build_pipeline(file, SETTINGS, manager), manager, out=str(tmp_path / "g"), quiet=True
    )
    # Every rank left the group together at the end of training; rank 0 sampled alone, still rank 0.
    assert not torch_dist.is_initialized() and dist.current_world() == World(0, 1, 0, "gloo")
    assert grouped.metrics["world_size"] == 1
    state = load_checkpoint(grouped.directory / "checkpoint-0000060.pt")
    assert state["world_size"] == 1 and len(state["rank_generators"]) == 1
    one_rank_group()
    longer = resume_run(grouped.directory, manager, ["train.steps=70"], out=str(tmp_path / "g70"), quiet=True)
    assert longer.metrics["resumed_from_step"] == 60 and not torch_dist.is_initialized()
    one_rank_group()
    with pytest.raises(FlowkitError, match=r"the run is done; nothing to resume"):
        resume_run(grouped.directory, manager, quiet=True)  # refused on rank 0, told to the others
    dist.stop()
    plain = run_pipeline(
        build_pipeline(file, SETTINGS, manager), manager, out=str(tmp_path / "p"), quiet=True
    )
    _assert_bitwise(grouped.directory, plain.directory)


# ---------------------------------------------------------------------------------------------------
# Real process groups (gloo on 127.0.0.1)
# ---------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS), **extra})
    return env


def _launch(args: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a command; a hang fails the test at ``timeout`` instead of blocking the suite."""
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=_env(**env))


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def one_process_reference(
    file: Path, ranks: int, manager: PluginManager, settings: list[str] = SETTINGS
) -> tuple[list[float], Any]:
    """One process computing what ``ranks`` DDP ranks compute: each step, rank r's share of the global
    batch from rank r's generators, the gradient of the mean of their losses, one update; returns the
    logged means (of the per-step mean losses) and the final weights."""
    pipe = build_pipeline(file, settings, manager)
    loop = TrainLoop(pipe)
    cfg, backend = pipe.train, pipe.device
    gens = [
        (
            backend.generator(rank_seed(pipe.run.seed, "data", r)),
            backend.generator(rank_seed(pipe.run.seed, "loss", r)),
            backend.generator(rank_seed(pipe.run.seed, "noise", r)),
        )
        for r in range(ranks)
    ]
    coupling = loop.loss_fn.coupling
    means: list[float] = []
    window: list[torch.Tensor] = []
    for step in range(1, cfg.steps + 1):
        loop.optimizer.zero_grad(set_to_none=True)
        losses = []
        for data_gen, loss_gen, noise_gen in gens:
            z = pipe.dataset.sample(cfg.batch_size // ranks, generator=data_gen, device=loop.device)
            paired = {}
            if coupling is not None:  # what the batch producer does: x0 from the noise stream, paired
                x0 = pipe.path.sample_prior(tuple(z.shape), generator=noise_gen, device=loop.device)
                x0, z, _ = coupling(x0, z, None, loss_gen)
                paired = {"x0": x0}
            loss = loop.loss_fn(loop.role, pipe.path, z, generator=loss_gen, **paired)
            if isinstance(loss, LossValue):  # a loss reporting extra scalars (meanflow, shortcut)
                loss = loss.loss
            (loss / ranks).backward()
            losses.append(loss.detach())
        loop.optimizer.step()
        if loop.scheduler is not None:
            loop.scheduler.step()
        if loop.ema is not None:
            loop.ema.update()
        window.append(torch.stack(losses).mean())
        if step % cfg.log_every == 0:
            means.append(float(torch.stack(window).mean()))
            window.clear()
    return means, loop.weights(cfg.steps)


def _losses(directory: Path) -> list[float]:
    lines = (directory / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def _model(directory: Path) -> dict[str, dict[str, torch.Tensor]]:
    state = torch.load(directory / "model.pt", weights_only=True)
    return {"model": state["model"], "raw": state["raw"]}


def _assert_bitwise(a: Path, b: Path) -> None:
    wa, wb = _model(a), _model(b)
    assert all(torch.equal(wa[w][k], wb[w][k]) for w in wa for k in wa[w]), f"{a} and {b} differ"
    assert (a / "samples.npy").read_bytes() == (b / "samples.npy").read_bytes()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[Path, Path]:
    """The uninterrupted two-rank run that the other multi-process tests compare with: two one-process
    "nodes", each its own torchrun, meeting through the c10d rendezvous on 127.0.0.1 as two machines
    would. Returns the pipeline file and the run directory. (``flowkit run --nproc 2``, the
    ``--standalone`` launch, is the SIGTERM test's; the crash test's resume is ``--standalone`` too and
    must be bitwise this run.)"""
    root = tmp_path_factory.mktemp("ddp")
    file = _pipeline_file(root)
    out = root / "runs" / "two"
    sets = [arg for setting in SETTINGS for arg in ("--set", setting)]
    port = str(_free_port())
    node = _torchrun(
        "--nnodes=2",
        "--nproc-per-node=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}",
        "--rdzv-id=flowkit-test",
        "-m",
        "flowkit",
        "run",
        str(file),
        *sets,
        "--out",
        str(out),
        "-q",
    )
    nodes = [
        subprocess.Popen(node, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        for _ in range(2)
    ]
    try:
        results = [proc.communicate(timeout=300) for proc in nodes]
    finally:
        for proc in nodes:
            if proc.poll() is None:
                proc.kill()
    assert [proc.returncode for proc in nodes] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    # Rank 0's node prints the run directory; the other rank prints nothing.
    assert sorted(stdout for stdout, _ in results) == ["", f"run directory: {out}\n"]
    return file, out


@pytest.mark.slow
def test_two_ranks_equal_one_process_with_the_same_global_batch(two_ranks, manager):
    file, out = two_ranks
    means, weights = one_process_reference(file, 2, manager)
    assert _losses(out) == pytest.approx(means, abs=TOLERANCE, rel=0)
    got = _model(out)
    for which in ("model", "raw"):  # the EMA (what samples) and the raw weights
        worst = max(float((got[which][k] - weights[which][k]).abs().max()) for k in weights[which])
        assert worst <= TOLERANCE, f"{which} weights differ by {worst}"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["train_steps"] == 60
    # Only rank 0 wrote: one run directory, one log line per log step, the status done.
    assert sorted(p.name for p in out.parent.iterdir()) == ["two"]
    assert len(_losses(out)) == 3
    assert read_status(out)["state"] == "done"
    state = load_checkpoint(out / "checkpoint-0000040.pt")
    assert state["world_size"] == 2 and len(state["rank_generators"]) == 2
    assert not torch.equal(state["rank_generators"][0]["data"], state["rank_generators"][1]["data"])


@pytest.mark.slow
def test_a_failure_on_one_rank_ends_both_and_a_resume_is_bitwise_the_uninterrupted_run(two_ranks, tmp_path):
    file, reference = two_ranks
    out = tmp_path / "crashed"
    sets = [arg for setting in [*SETTINGS, "run.distributed_timeout=60"] for arg in ("--set", setting)]
    port = str(_free_port())
    rdzv = ["--nnodes=1", "--nproc-per-node=2", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}"]
    worker = [str(TESTS / "ddp_worker.py"), "run", str(file), *sets, "--out", str(out), "-q"]
    # The subprocess timeout (well above the 60 s process-group timeout) turns a hang into a failure.
    crashed = _launch(_torchrun(*rdzv, "--max-restarts=0", *worker), FLOWKIT_TEST_FAIL="1:30")
    assert crashed.returncode != 0
    assert "Error: rank 1 of 2: RuntimeError: injected failure at step 30" in crashed.stderr
    status = read_status(out)
    assert status is not None and status["state"] in ("failed", "killed", "interrupted")
    assert sorted(p.name for p in out.glob("checkpoint-*.pt")) == ["checkpoint-0000020.pt"]
    # Resumed by two processes from the step-20 checkpoint: every rank continues its own streams.
    resumed = _launch(
        _torchrun("--standalone", "--nproc-per-node=2", "-m", "flowkit", "resume", str(out), "-q")
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_bitwise(out, reference)
    assert _losses(out) == _losses(reference)
    assert read_status(out)["state"] == "done"


@pytest.mark.slow
def test_a_rank_that_stops_answering_ends_the_run_after_the_process_group_timeout(two_ranks, tmp_path):
    file, _reference = two_ranks
    out = tmp_path / "hung"
    sets = [arg for setting in [*SETTINGS, "run.distributed_timeout=5"] for arg in ("--set", setting)]
    worker = [str(TESTS / "ddp_worker.py"), "run", str(file), *sets, "--out", str(out), "-q"]
    # Rank 1 sleeps for an hour at step 30: only the 5 s timeout can end rank 0 before the subprocess
    # timeout fails the test.
    hung = _launch(
        _torchrun("--standalone", "--nproc-per-node=2", *worker), timeout=240, FLOWKIT_TEST_HANG="1:30"
    )
    assert hung.returncode != 0
    assert "Error: rank 0 of 2: lost contact with another process" in hung.stderr
    assert "Timed out" in hung.stderr
    status = read_status(out)
    assert status is not None and status["state"] == "failed" and status["step"] == 20
    assert status["resume"] == f"flowkit resume {out}"


@pytest.mark.slow
def test_sigterm_to_flowkit_run_nproc_stops_every_rank_at_the_same_step_with_one_checkpoint(
    two_ranks, tmp_path
):
    import signal
    import threading

    file, _reference = two_ranks
    out = tmp_path / "stopped"
    sets = ["train.steps=100000", "train.checkpoint_every=100", "train.log_every=100", "report.plots=false"]
    args = [str(file), *(arg for setting in sets for arg in ("--set", setting)), "--out", str(out), "-q"]
    # `--nproc 2` replaces this process with `torchrun --standalone --nproc-per-node=2 -m flowkit run`:
    # the signal goes to the pid started here, which is torchrun by then.
    command = [sys.executable, "-m", "flowkit", "run", *args, "--nproc", "2"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        for _ in range(4800):  # poll every 50 ms, at most 4 minutes
            if (out / "checkpoint-0000100.pt").exists():
                break
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            threading.Event().wait(0.05)
        else:
            raise AssertionError("the first checkpoint never appeared")
        proc.send_signal(signal.SIGTERM)  # torchrun forwards it to both ranks, not at the same step
        _stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    status = read_status(out)
    assert status is not None and status["state"] == "interrupted"
    step = status["step"]
    for rank in (0, 1):
        assert (
            f"Interrupted: rank {rank} of 2: {file}: interrupted by SIGTERM at training step {step} "
            in stderr
        )
    state = load_checkpoint(out / status["checkpoint"])
    assert state["step"] == step and len(state["rank_generators"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stopped"]  # one run directory, by rank 0


@pytest.mark.slow
def test_a_two_rank_run_extends_in_one_process(two_ranks, tmp_path, manager):
    _file, reference = two_ranks
    copy = tmp_path / "copy"
    shutil.copytree(reference, copy)
    extended = resume_run(copy, manager, ["train.steps=80"], out=str(tmp_path / "longer"), quiet=True)
    assert extended.metrics["world_size"] == 1 and extended.metrics["resumed_from_step"] == 60
    state = load_checkpoint(extended.directory / "checkpoint-0000080.pt")
    assert state["world_size"] == 1 and len(state["rank_generators"]) == 1
    assert read_status(copy)["state"] == "done"  # a finished run is extended into a new directory


# ---------------------------------------------------------------------------------------------------
# OT-CFM paired a step ahead: each rank its own worker and its own plan
# ---------------------------------------------------------------------------------------------------

EXACT_OT = ["loss.coupling=exact-ot"]


def test_exact_ot_under_a_one_rank_process_group_is_bitwise_the_plain_run(tmp_path, manager, one_rank_group):
    file = _pipeline_file(tmp_path)
    grouped = run_pipeline(
        build_pipeline(file, [*SETTINGS, *EXACT_OT], manager), manager, out=str(tmp_path / "g"), quiet=True
    )
    state = load_checkpoint(grouped.directory / "checkpoint-0000060.pt")
    assert set(state["rank_generators"][0]) == {"data", "noise", "loss"}
    dist.stop()
    plain = run_pipeline(
        build_pipeline(file, [*SETTINGS, *EXACT_OT], manager), manager, out=str(tmp_path / "p"), quiet=True
    )
    _assert_bitwise(grouped.directory, plain.directory)


@pytest.mark.slow
def test_two_ranks_pair_ahead_each_its_own_batch_as_one_process_pairs_them(tmp_path, manager):
    """``--nproc 2`` with exact-ot: every rank pairs its share a step ahead; one process pairing each
    rank's share inside the step (``one_process_reference``) gets the same."""
    file = _pipeline_file(tmp_path)
    file.write_text(file.read_text().replace('kind = "cfm"', 'kind = "cfm"\ncoupling = "exact-ot"'))
    sets = [arg for setting in SETTINGS for arg in ("--set", setting)]
    out = tmp_path / "runs" / "two-ot"
    done = _launch(
        [sys.executable, "-m", "flowkit", "run", str(file), *sets, "--out", str(out), "-q", "--nproc", "2"]
    )
    assert done.returncode == 0, done.stderr[-3000:]
    means, weights = one_process_reference(file, 2, manager)
    assert TrainLoop(build_pipeline(file, SETTINGS, manager)).ahead
    assert _losses(out) == pytest.approx(means, abs=TOLERANCE, rel=0)
    got = _model(out)
    for which in ("model", "raw"):
        worst = max(float((got[which][k] - weights[which][k]).abs().max()) for k in weights[which])
        assert worst <= TOLERANCE, f"{which} weights differ by {worst}"
    state = load_checkpoint(out / "checkpoint-0000060.pt")
    assert [set(g) for g in state["rank_generators"]] == [{"data", "noise", "loss"}] * 2


@pytest.mark.slow
def test_a_forward_mode_ad_loss_trains_on_two_ranks_as_one_process_on_the_global_batch(tmp_path):
    """``jvp-flow`` (tests/contract_plugins.py, installed as a third-party distribution would be)
    calls ``torch.func.jvp``, which DDP's wrapper breaks: the loop gives it the plain network and
    averages the gradients itself, and the step is still that of the global batch."""
    import contract_plugins

    from flowkit.testing import make_manager

    site = tmp_path / "site"
    info = site / "contract_plugins-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: contract-plugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[flowkit]\ncontract = contract_plugins\n")
    file = _pipeline_file(tmp_path)
    settings = [*SETTINGS, "loss.kind=jvp-flow"]
    out = tmp_path / "runs" / "jvp"
    sets = [arg for setting in settings for arg in ("--set", setting)]
    command = _torchrun("--standalone", "--nproc-per-node=2", "-m", "flowkit", "run", str(file), *sets)
    done = _launch([*command, "--out", str(out), "-q"], PYTHONPATH=f"{TESTS}{os.pathsep}{site}")
    assert done.returncode == 0, done.stderr[-3000:]
    means, weights = one_process_reference(file, 2, make_manager([contract_plugins]), settings)
    assert _losses(out) == pytest.approx(means, abs=TOLERANCE, rel=0)
    got = _model(out)
    for which in ("model", "raw"):
        worst = max(float((got[which][k] - weights[which][k]).abs().max()) for k in weights[which])
        assert worst <= TOLERANCE, f"{which} weights differ by {worst}"
    assert json.loads((out / "metrics.json").read_text())["world_size"] == 2
