"""The trackers (plugins ``tensorboard``, ``wandb``, ``mlflow``): each off by default, each writes into
the run directory what the run logged (the loss and learning rate at every logged step, the final
metrics, the resolved pipeline), read back here with the tracker's own reader, and a resumed run
continues the same tracker run. A test skips when its tracker's package is not installed."""

from __future__ import annotations

import json
import struct
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import tiny_file

from flowkit import hookimpl
from flowkit.cli import main
from flowkit.engine import build_pipeline, resume_run, run_pipeline
from flowkit.testing import make_manager

STEPS = ["train.steps=60", "train.checkpoint_every=20", "train.log_every=10"]


class Failure(Exception):
    """Planted in a run to stop it after step 31: checkpoint at 20, steps 10 to 30 logged."""


def _failing_at(target: int) -> tuple[str, Any]:
    def flowkit_train_step(run, step: int, loss) -> None:
        if step == target and run.resumed_from is None:
            raise Failure(f"planted at step {step}")

    return "failing", type(
        "Failing", (), {"flowkit_train_step": staticmethod(hookimpl(flowkit_train_step))}
    )()


def _run(tmp_path: Path, out: Path, *overrides: str, plugins=()) -> Path:
    manager = make_manager(warn=False, plugins=plugins)
    pipe = build_pipeline(tiny_file(tmp_path), [*STEPS, *overrides], manager)
    return run_pipeline(pipe, manager, out=str(out), quiet=True, command="test").directory


def _stopped_and_resumed(tmp_path: Path, *overrides: str) -> Path:
    """A run stopped by a failure at step 31 (newest checkpoint: 20), then resumed to its end."""
    out = tmp_path / "resumed"
    with pytest.raises(Failure):
        _run(tmp_path, out, *overrides, plugins=[_failing_at(31)])
    resume_run(out, make_manager(warn=False), quiet=True, command="test")
    return out


def _logged(directory: Path) -> dict[str, dict[int, float]]:
    """``metrics.jsonl`` as ``{name: {step: value}}``."""
    found: dict[str, dict[int, float]] = {}
    for line in (directory / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        step = record.pop("step")
        for name, value in record.items():
            found.setdefault(name, {})[step] = value
    return found


def _final(directory: Path) -> dict[str, float]:
    metrics = json.loads((directory / "metrics.json").read_text())
    return {
        k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def test_every_tracker_is_off_by_default(tmp_path):
    out = _run(tmp_path, tmp_path / "plain")
    written = {p.name for p in out.iterdir()}
    assert not written & {"tensorboard", "wandb", "mlruns", "wandb-run-id", "mlflow-run-id"}


def test_a_tracker_without_its_package_is_one_line_naming_the_pip_install(tmp_path, monkeypatch):
    import flowkit_trackers.common

    monkeypatch.setattr(flowkit_trackers.common, "installed", lambda package: False)
    file = tiny_file(tmp_path)
    for table, package in (("tensorboard", "tensorboard"), ("wandb", "wandb"), ("mlflow", "mlflow")):
        result = CliRunner().invoke(main, ["validate", str(file), "--set", f"{table}.enabled=true"])
        assert result.exit_code == 1
        assert result.stderr == (
            f"Error: {file}: [{table}] key 'enabled' (from --set): invalid value True: needs the "
            f"{package} package: pip install 'flowkit[{table}]'\n"
        )


# --- TensorBoard -----------------------------------------------------------------------------------


def _events(directory: Path) -> Any:
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(
        str(directory / "tensorboard"), size_guidance={event_accumulator.SCALARS: 0}
    )
    return accumulator.Reload()


def _scalars(events: Any, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_tensorboard_event_files_hold_the_log_the_metrics_and_the_pipeline(tmp_path):
    pytest.importorskip("tensorboard")
    result = CliRunner().invoke(
        main,
        [
            "run",
            str(tiny_file(tmp_path)),
            "--out",
            str(tmp_path / "tb"),
            "-q",
            "--set",
            "tensorboard.enabled=true",
        ]
        + [a for s in STEPS for a in ("--set", s)],
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "tb"
    assert [p.name.startswith("events.out.tfevents.") for p in (out / "tensorboard").iterdir()] == [True]
    events = _events(out)
    logged = _logged(out)
    for name in ("loss", "lr"):  # TensorBoard keeps float32 scalars
        expected = [(step, float(np.float32(v))) for step, v in sorted(logged[name].items())]
        assert _scalars(events, f"train/{name}") == expected
    assert [step for step, _ in expected] == [10, 20, 30, 40, 50, 60]
    for name, value in _final(out).items():
        assert _scalars(events, f"metrics/{name}") == [(60, float(np.float32(value)))]
    assert "metrics/distance" in events.Tags()["scalars"]
    text = events.Tensors("pipeline/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text == "```toml\n" + (out / "pipeline.toml").read_text() + "\n```"


def test_a_resumed_run_appends_to_the_same_tensorboard_folder_each_step_once(tmp_path):
    pytest.importorskip("tensorboard")
    reference = _run(tmp_path, tmp_path / "reference", "tensorboard.enabled=true")
    resumed = _stopped_and_resumed(tmp_path, "tensorboard.enabled=true")
    assert len(list((resumed / "tensorboard").iterdir())) == 2  # the stopped run's file, the resumed one's
    # Step 30 was logged by the stopped run after its checkpoint (20) and again after the resume: the
    # resumed file's purge step hides the first, so each step shows once, as in the uninterrupted run.
    ref_events, events = _events(reference), _events(resumed)
    for tag in ("train/loss", "train/lr", "metrics/distance"):
        assert _scalars(events, tag) == _scalars(ref_events, tag)


# --- Weights & Biases (offline) --------------------------------------------------------------------


def _wandb_records(path: Path) -> list[Any]:
    """The records of an offline W&B run file (``run-<id>.wandb``): a 7-byte header, then 32 KiB blocks
    of chunks, each ``crc32 (4) | length (2) | type (1: whole, 2: first, 3: middle, 4: last) | data``."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, block, records, parts = 7, 32768, [], b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0 and length == 0:
            position += left
            continue
        parts += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            records.append(record)
            parts = b""
    return records


def _finished_records(path: Path, tries: int = 120) -> list[Any]:
    """The records of a finished offline run file. W&B's service process writes the file; on a loaded
    machine its blocks can land after ``finish()`` has returned in the run's process, so the file is
    read again, half a second apart, until its ``exit`` record is there (at most ``tries`` times; the
    asserts on what was read then say what is missing). Nothing is timed: the pause only waits."""
    records = _wandb_records(path)
    pause = threading.Event()
    for _ in range(tries):
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        pause.wait(0.5)
        records = _wandb_records(path)
    return records


def _wandb_history(path: Path) -> tuple[str, dict[str, Any], dict[str, dict[int, float]]]:
    """The run id, its config and its history ``{key: {step: value}}`` from an offline run file."""
    run_id, config, history = "", {}, {}
    for record in _finished_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_id = run_id or record.run.run_id
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "history":
            row = {
                item.key or "/".join(item.nested_key): json.loads(item.value_json)
                for item in record.history.item
            }
            for key, value in row.items():
                if not key.startswith("_"):
                    history.setdefault(key, {})[row["_step"]] = value
    return run_id, config, history


def _wandb_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("wandb/offline-run-*/run-*.wandb"))


@pytest.mark.slow
def test_an_offline_wandb_run_holds_the_log_and_a_resume_continues_the_same_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    reference = _run(tmp_path, tmp_path / "reference", "wandb.enabled=true")
    [file] = _wandb_files(reference)
    run_id, config, history = _wandb_history(file)
    assert run_id == (reference / "wandb-run-id").read_text().strip()
    assert config["train"]["lr"] == json.loads(json.dumps(_toml(reference)["train"]["lr"]))
    assert config["train"]["steps"] == 60
    logged = _logged(reference)
    assert history["train/loss"] == logged["loss"] and history["train/lr"] == logged["lr"]
    assert {k: history[f"metrics/{k}"] for k in ("distance", "nfe")} == {
        k: {60: _final(reference)[k]} for k in ("distance", "nfe")
    }
    resumed = _stopped_and_resumed(tmp_path, "wandb.enabled=true")
    first, second = _wandb_files(resumed)
    first_id, _, before = _wandb_history(first)
    second_id, _, after = _wandb_history(second)
    assert first_id == second_id == (resumed / "wandb-run-id").read_text().strip()
    assert sorted(before["train/loss"]) == [10, 20, 30]
    assert sorted(after["train/loss"]) == [30, 40, 50, 60]  # from the checkpoint at step 20 on
    assert after["train/loss"] == {s: v for s, v in logged["loss"].items() if s > 20}


def _toml(directory: Path) -> dict[str, Any]:
    import tomllib

    return tomllib.loads((directory / "pipeline.toml").read_text())


# --- MLflow (file store) ---------------------------------------------------------------------------


def _mlflow(directory: Path) -> tuple[Any, str]:
    from flowkit_trackers.mlflow_tracker import _file_store_allowed
    from mlflow.tracking import MlflowClient

    with _file_store_allowed():
        client = MlflowClient(tracking_uri=(directory / "mlruns").resolve().as_uri())
    return client, (directory / "mlflow-run-id").read_text().strip()


def _history(client: Any, run_id: str, key: str) -> dict[int, float]:
    """``{step: value}``, the latest value of each step (a resume logs some steps again)."""
    latest: dict[int, tuple[int, float]] = {}
    for metric in client.get_metric_history(run_id, key):
        if metric.step not in latest or metric.timestamp >= latest[metric.step][0]:
            latest[metric.step] = (metric.timestamp, metric.value)
    return {step: value for step, (_, value) in sorted(latest.items())}


@pytest.mark.slow
def test_an_mlflow_file_store_run_holds_the_log_and_a_resume_continues_the_same_run(tmp_path):
    pytest.importorskip("mlflow")
    reference = _run(tmp_path, tmp_path / "reference", "mlflow.enabled=true")
    client, run_id = _mlflow(reference)
    tracked = client.get_run(run_id)
    assert tracked.info.status == "FINISHED"
    assert tracked.data.params["train.steps"] == "60"
    assert tracked.data.params["train.lr"] == str(_toml(reference)["train"]["lr"])
    logged = _logged(reference)
    assert _history(client, run_id, "train/loss") == logged["loss"]
    assert _history(client, run_id, "train/lr") == logged["lr"]
    assert _history(client, run_id, "metrics/distance") == {60: _final(reference)["distance"]}
    stored = Path(client.download_artifacts(run_id, "pipeline.toml", str(tmp_path)))
    assert stored.read_text() == (reference / "pipeline.toml").read_text()

    resumed = _stopped_and_resumed(tmp_path, "mlflow.enabled=true")
    client, run_id = _mlflow(resumed)
    assert len(client.search_runs([client.get_experiment_by_name("flowkit").experiment_id])) == 1
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert sorted(steps) == [10, 20, 30, 30, 40, 50, 60]  # 30: before the stop and after the resume
    assert _history(client, run_id, "train/loss") == logged["loss"]
    stored = Path(client.download_artifacts(run_id, "pipeline.toml", str(tmp_path / "after")))
    assert stored.read_text() == (resumed / "pipeline.toml").read_text()  # with the resume's history
