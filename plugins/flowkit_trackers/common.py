"""What the trackers share: the ``enabled`` switch that checks its package, the resolved pipeline of
a run, scalars fit to log, and a tracker's id kept in the run directory."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from flowkit import files
from flowkit.params import param

if TYPE_CHECKING:
    from flowkit.interfaces import Run

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def installed(package: str) -> bool:
    """Whether ``package`` can be imported (found, not imported: importing wandb or mlflow is slow)."""
    return importlib.util.find_spec(package) is not None


def enabled_field(package: str, extra: str) -> Any:
    """The ``enabled`` switch of a tracker's table: off by default; on, its package must be installed,
    so a missing one is a one-line error when the pipeline is built, before anything runs."""

    def check(instance: Any, attribute: attrs.Attribute, value: bool) -> None:
        if value and not installed(package):
            raise ValueError(f"needs the {package} package: pip install 'flowkit[{extra}]'")

    return param(False, doc=f"Log to {package} (pip install 'flowkit[{extra}]').", validator=check)


def resolved_pipeline(run: Run) -> tuple[str, dict[str, Any]]:
    """The run's resolved ``pipeline.toml``: its text and its tables (written before any hook runs)."""
    text = files.read_text(run.directory / "pipeline.toml", "resolved pipeline") or ""
    return text, tomllib.loads(text)


def flatten(tables: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-3}}`` as ``{"train.lr": 1e-3}``; lists and scalars are leaves."""
    flat: dict[str, Any] = {}
    for key, value in tables.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers among ``metrics`` (not booleans, strings or ``None``), as floats."""
    return {
        key: float(value)
        for key, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def final_step(run: Run) -> int:
    """The step the final metrics are logged at: the last training step (0 without training)."""
    train = run.table("train")
    trainable = getattr(run.model, "trainable", True)
    return int(train.steps) if train is not None and trainable else 0


def stored_id(run: Run, name: str) -> str | None:
    """The id a tracker kept in ``RUN_DIR/name`` when the run started (``None``: a fresh run)."""
    text = files.read_text(run.directory / name, f"{name} (the tracker's run id)")
    if text is None or not text.strip():
        return None
    return text.strip()


def store_id(directory: Path, name: str, value: str) -> None:
    """Keep a tracker's run id in the run directory, so that ``flowkit resume`` finds the same run."""
    data = (value + "\n").encode("utf-8")
    files.write_atomic(directory / name, lambda handle: handle.write(data))
