"""A guide trained alongside the model (``[train] guide``, guided with ``guide = "alongside"``).

The model of a run with a guide alongside is the model of the run without it, bit for bit (the guide
draws nothing from the model's streams); the guide's state is saved beside each checkpoint and a
resumed run trains the same guide as the uninterrupted one; weight 0 samples the plain model; the
guided field is ``D + w (D - D_guide)`` with the guide's saved weights; bad settings are one line.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from flowkit import hookimpl
from flowkit.api import load_pipeline, open_run
from flowkit.engine import build_pipeline, resume_run, sample_run
from flowkit.engine.build import build_pipeline as build
from flowkit.engine.checkpoints import list_checkpoints
from flowkit.engine.interrupts import Interrupted
from flowkit.engine.sample import draw_samples
from flowkit.errors import ConfigError, FlowkitError
from flowkit.interfaces import classifier_free
from flowkit.testing import make_manager

MOONS: dict[str, Any] = {
    "run": {"seed": 3},
    "data": {"kind": "moons"},
    "path": {"kind": "gaussian", "schedule": {"kind": "ot"}},
    "model": {"kind": "mlp", "hidden": [16, 16]},
    "loss": {"kind": "cfm"},
    "train": {"steps": 12, "batch_size": 16, "checkpoint_every": 4, "keep_checkpoints": 2, "log_every": 2},
    "sample": {"simulator": "heun", "steps": 4, "n": 32, "trajectories": 0},
    "evaluate": {"n": 32},
}
GUIDE = {"model": {"hidden": [8]}, "steps": 7, "ema_decay": 0.5}


def _spec(guide: dict[str, Any] | None = GUIDE, guidance: dict[str, Any] | None = None) -> dict[str, Any]:
    train = {**MOONS["train"], **({"guide": guide} if guide is not None else {})}
    sample = {**MOONS["sample"], **({"guidance": guidance} if guidance is not None else {})}
    return {**MOONS, "train": train, "sample": sample}


AUTO = {"kind": "auto", "scale": 1.5, "guide": "alongside"}


@pytest.fixture(scope="module")
def manager():
    return make_manager(warn=False)


@pytest.fixture(scope="module")
def guided_run(manager, tmp_path_factory) -> Path:
    """A run with a guide alongside, sampled with autoguidance by it."""
    return (
        load_pipeline(_spec(guidance=AUTO), manager=manager)
        .run(out=tmp_path_factory.mktemp("g") / "run")
        .directory
    )


def _tensors(file: Path, part: str = "model") -> dict[str, torch.Tensor]:
    return torch.load(file, weights_only=True)[part]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_model_trains_bitwise_as_without_a_guide(manager, tmp_path):
    plain = load_pipeline(_spec(guide=None), manager=manager).run(out=tmp_path / "plain").directory
    beside = load_pipeline(_spec(), manager=manager).run(out=tmp_path / "beside").directory
    for part in ("model", "raw"):
        assert _same(_tensors(plain / "model.pt", part), _tensors(beside / "model.pt", part))
    assert (plain / "samples.npy").read_bytes() == (beside / "samples.npy").read_bytes()
    # the guide: its own smaller network, trained its 7 steps, its files beside the model's
    guide = torch.load(beside / "guide.pt", weights_only=True)
    assert guide["step"] == 7 and guide["model"]["net.0.weight"].shape == (8, 3)
    assert not _same(guide["model"], guide["raw"])  # the average of its weights, and the raw ones
    steps = [step for step, _ in list_checkpoints(beside)]
    assert steps == [8, 12]
    assert sorted(p.name for p in beside.glob("guide-checkpoint-*.pt")) == [
        "guide-checkpoint-0000008.pt",
        "guide-checkpoint-0000012.pt",
    ]
    recorded = json.loads((beside / "manifest.json").read_text())["files"]
    assert {"guide.pt", "guide-checkpoint-0000008.pt", "guide-checkpoint-0000012.pt"} <= recorded.keys()
    assert "guide-checkpoint-0000004.pt" not in recorded  # pruned with its checkpoint
    # its loss is logged while it trains, and not after
    logged = [json.loads(line) for line in (beside / "metrics.jsonl").read_text().splitlines()]
    assert [("loss/guide" in row) for row in logged] == [True, True, True, True, False, False]


def _signal_at(step: int) -> tuple[str, Any]:
    def flowkit_train_step(run, step: int, loss) -> None:
        if step == _signal_at.target and run.resumed_from is None:  # type: ignore[attr-defined]
            os.kill(os.getpid(), signal.SIGINT)

    _signal_at.target = step  # type: ignore[attr-defined]
    hooks = {"flowkit_train_step": staticmethod(hookimpl(flowkit_train_step))}
    return "signaller", type("Signaller", (), hooks)()


@pytest.mark.parametrize("stop", [5, 10])  # while the guide trains, and after it stopped (step 7)
def test_a_resumed_run_trains_the_same_guide_as_the_uninterrupted_one(manager, guided_run, tmp_path, stop):
    stopping = make_manager(warn=False, plugins=[_signal_at(stop)])
    out = tmp_path / "stopped"
    with pytest.raises(Interrupted):
        load_pipeline(_spec(guidance=AUTO), manager=stopping).run(out=out)
    assert (out / f"guide-checkpoint-{stop:07d}.pt").is_file() and not (out / "guide.pt").exists()
    resume_run(out, stopping, quiet=True, command="test")
    for file, part in [("guide.pt", "model"), ("guide.pt", "raw"), ("model.pt", "model")]:
        assert _same(_tensors(guided_run / file, part), _tensors(out / file, part)), file
    assert (guided_run / "samples.npy").read_bytes() == (out / "samples.npy").read_bytes()
    assert (guided_run / "metrics.jsonl").read_text() == (out / "metrics.jsonl").read_text()


def test_a_checkpoint_whose_guide_file_is_damaged_is_skipped_for_an_older_one(manager, tmp_path):
    stopping = make_manager(warn=False, plugins=[_signal_at(10)])
    out = tmp_path / "stopped"
    with pytest.raises(Interrupted):
        load_pipeline(_spec(), manager=stopping).run(out=out)
    damaged = out / "guide-checkpoint-0000010.pt"
    damaged.write_bytes(damaged.read_bytes()[:-7])
    warned: list[str] = []
    run = resume_run(out, stopping, quiet=True, command="test", warn=warned.append)
    assert run.metrics["resumed_from_step"] == 8
    assert len(warned) == 1 and warned[0].startswith(f"skipped {out / 'checkpoint-0000010.pt'}: its guide's")
    assert str(damaged) in warned[0] and "\n" not in warned[0]


def test_weight_zero_samples_the_plain_model_bitwise(manager, guided_run):
    zero = build(_spec(guidance={**AUTO, "scale": 0.0}), (), manager)
    plain = build(_spec(), (), manager)
    for pipeline in (zero, plain):
        open_weights(pipeline, guided_run)
    assert torch.equal(draw_samples(zero, 32)[1], draw_samples(plain, 32)[1])


def open_weights(pipeline, run: Path) -> None:
    from flowkit.engine.checkpoints import load_weights

    load_weights(run / "model.pt", pipeline.model)
    load_weights(run / "guide.pt", pipeline.alongside.model)
    pipeline.model.eval()
    pipeline.alongside.model.eval()


def test_the_guided_field_is_the_model_plus_w_times_its_lead_over_the_guide(manager, guided_run):
    finished = open_run(guided_run, manager)
    pipeline = finished.pipeline.pipeline
    guide = build_pipeline({**MOONS, "model": {"kind": "mlp", "hidden": [8]}}, (), manager).model
    guide.load_state_dict(_tensors(guided_run / "guide.pt"))
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    t = torch.rand(64, generator=torch.Generator().manual_seed(1))
    pipeline.guidance.field.labels = None
    with torch.no_grad():
        guided = pipeline.guidance.field(x, t)
        expected = classifier_free(pipeline.network(x, t), guide.eval()(x, t), AUTO["scale"])
    assert torch.equal(guided, expected)
    # sampling the run directory again loads guide.pt: the run's own samples, bitwise
    file, _ = sample_run(guided_run, manager, n=32)
    assert file.read_bytes() == (guided_run / "samples.npy").read_bytes()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            _spec(guide=None, guidance=AUTO),
            '<dict>: [sample] guidance guide = "alongside": [train] has no guide to train alongside '
            "the model; add one, e.g. [train] guide = { model = { hidden = [32, 32] }, steps = 500 }",
        ),
        (
            _spec(guide={"steps": 13}),
            "<dict>: [train.guide] key 'steps': the guide trains 13 steps, beyond [train] steps = 12; "
            "it trains on the run's batches, so at most as many",
        ),
        (
            _spec(guide={"model": {"hiden": [8]}}),
            "<dict>: [train.guide.model] key 'hiden': unknown key.",
        ),
        (_spec(guide={"steps": 0}), "<dict>: [train.guide] key 'steps': invalid value 0"),
        (_spec(guide={"lr": -1.0}), "<dict>: [train.guide] key 'lr': invalid value -1.0"),
        (
            {
                **_spec(guide={"model": {"class_conditional": True}}),
                "data": {"kind": "digits"},
            },
            "<dict>: [train.guide] key 'model': the guide is conditioned on 10 classes, the model on none",
        ),
    ],
)
def test_bad_guide_settings_are_one_clear_error(manager, spec, message):
    with pytest.raises(FlowkitError) as caught:
        build(spec, (), manager)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_resume_keeps_the_guide(manager, guided_run):
    with pytest.raises(ConfigError) as caught:
        resume_run(guided_run, manager, ["train.guide.steps=3"], quiet=True)
    assert str(caught.value).startswith("--set train.guide.steps=3: a resumed run keeps its [train] guide")


def test_sampling_an_unfinished_run_guides_with_the_guide_of_its_newest_checkpoint(manager, tmp_path):
    from flowkit.engine.reuse import load_trained

    stopping = make_manager(warn=False, plugins=[_signal_at(10)])
    out = tmp_path / "stopped"
    with pytest.raises(Interrupted):
        load_pipeline(_spec(guidance=AUTO), manager=stopping).run(out=out)
    pipeline, origin = load_trained(out, manager)
    assert origin.endswith("(step 10: training has not finished)")
    saved = _tensors(out / "guide-checkpoint-0000010.pt")
    assert _same(saved, pipeline.alongside.model.state_dict())
    assert not pipeline.alongside.model.training


def test_a_guide_alongside_is_refused_in_a_run_of_several_processes(manager):
    """Under torchrun each rank would train its own guide on its own shard: one line says what to do
    instead (checked where the training loop sets up the guide, with the world a rank of two sees)."""
    from flowkit.engine.alongside import GuideTrainer
    from flowkit.engine.distributed import World

    pipeline = build(_spec(), (), manager)
    assert GuideTrainer(pipeline, World()).trained == 0  # one process: accepted
    with pytest.raises(ConfigError) as caught:
        GuideTrainer(pipeline, World(rank=1, size=2, backend="gloo"))
    assert str(caught.value) == (
        "<dict>: [train] guide: a guide trained alongside trains in one process; run without torchrun, "
        'or train the guide as a run of its own and name it (guide = "runs/NAME")'
    )
