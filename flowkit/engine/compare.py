"""Comparing finished runs: one table of mean ± std over seeds per cell, as markdown or CSV, and a plot.

A *cell* is what the runs were asked to differ in: the keys of their resolved ``pipeline.toml`` whose
values are not the same in all of them, less the seed (``run.seed``), the run directory (``run.out``)
and flowkit's own record (``[flowkit]``: versions, command, history). Runs with the same values of
those keys are one cell, and their metrics are averaged over the cell's runs (its seeds).
``flowkit compare RUN_DIR...`` and ``flowkit sweep`` print the same table.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from flowkit.config import read_toml
from flowkit.errors import FlowkitError

#: Keys of the resolved pipeline that never make a cell: the seed is what a cell averages over.
NOT_A_CELL = ("run.seed", "run.out")
#: The columns averaged over a cell's runs: (metrics.json key, column title, decimals).
COLUMNS = (
    ("distance", "distance", 4),
    ("ratio_to_floor", "ratio to floor", 3),
    ("final_loss", "final loss", 4),
)


@attrs.define(frozen=True)
class FinishedRecord:
    """A finished run: its directory, its resolved pipeline (flattened: ``{"train.lr": 0.002}``) and
    its ``metrics.json``."""

    directory: Path
    settings: dict[str, Any]
    metrics: dict[str, Any]


@attrs.define(frozen=True)
class Cell:
    """The runs of one cell: the values of the cell's keys, and its runs (one per seed)."""

    values: tuple[str, ...]
    runs: tuple[FinishedRecord, ...]

    def column(self, key: str) -> list[float]:
        found = [r.metrics.get(key) for r in self.runs]
        return [float(v) for v in found if isinstance(v, (int, float)) and math.isfinite(float(v))]


def flatten(tables: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-3}}`` as ``{"train.lr": 1e-3}``; lists and scalars are leaves."""
    flat: dict[str, Any] = {}
    for key, value in tables.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def load_finished(directory: str | Path) -> FinishedRecord:
    """The finished run in ``directory``; one line naming it when it is not one."""
    root = Path(directory)
    if not (root / "metrics.json").is_file() or not (root / "pipeline.toml").is_file():
        raise FlowkitError(f"{root}: not a finished run directory (no metrics.json and pipeline.toml)")
    tables = read_toml(root / "pipeline.toml")
    tables.pop("flowkit", None)
    metrics = json.loads((root / "metrics.json").read_text(encoding="utf-8"))
    return FinishedRecord(root, flatten(tables), metrics)


def cell_keys(records: Sequence[FinishedRecord]) -> list[str]:
    """The keys whose values differ between ``records`` (in the order of the first pipeline). A key
    some runs lack because a component's ``kind`` differs (its parameters differ with it) is left
    out: the ``kind`` names the cell."""
    seen: dict[str, None] = {}
    for record in records:
        seen.update(dict.fromkeys(record.settings))
    differing = [
        key for key in seen if key not in NOT_A_CELL and len({_text(r.settings, key) for r in records}) > 1
    ]
    kinds = {key[: -len("kind")] for key in differing if key.endswith(".kind") or key == "kind"}
    return [
        key
        for key in differing
        if key.endswith("kind")
        or all(key in r.settings for r in records)
        or not any(key.startswith(prefix) for prefix in kinds)
    ]


def _text(settings: dict[str, Any], key: str) -> str:
    """A setting as the table shows it: a string as it is, other values as JSON, "—" where absent."""
    if key not in settings:
        return "—"
    value = settings[key]
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def group(records: Sequence[FinishedRecord]) -> tuple[list[str], list[Cell]]:
    """The cell keys and the cells, in the order their first run was given."""
    keys = cell_keys(records)
    cells: dict[tuple[str, ...], list[FinishedRecord]] = {}
    for record in records:
        values = tuple(_text(record.settings, k) for k in keys)
        cells.setdefault(values, []).append(record)
    return keys, [Cell(values, tuple(runs)) for values, runs in cells.items()]


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """The mean and the sample standard deviation (``None`` with fewer than 2 values)."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _cell_text(values: list[float], decimals: int) -> str:
    mean, std = mean_std(values)
    if mean is None:
        return "—"
    return f"{mean:.{decimals}f}" + (f" ± {std:.{decimals}f}" if std is not None else "")


def _metric_name(records: Sequence[FinishedRecord]) -> str:
    names = {str(r.metrics.get("metric", "distance")) for r in records}
    return names.pop() if len(names) == 1 else "distance"


def markdown_table(records: Sequence[FinishedRecord]) -> str:
    """The comparison as a markdown table: the cell keys, the runs per cell, then each column as
    mean ± sample standard deviation over the cell's runs, and the mean training time."""
    keys, cells = group(records)
    titles = [_metric_name(records) if key == "distance" else title for key, title, _ in COLUMNS]
    header = ["cell" if not keys else k for k in keys or ["cell"]] + ["runs", *titles, "train s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cell in cells:
        values = list(cell.values) or ["all"]
        numbers = [_cell_text(cell.column(key), decimals) for key, _, decimals in COLUMNS]
        train = mean_std(cell.column("train_seconds"))[0]
        lines.append(
            "| "
            + " | ".join([*values, str(len(cell.runs)), *numbers, "—" if train is None else f"{train:.1f}"])
            + " |"
        )
    return "\n".join(lines) + "\n"


def csv_table(records: Sequence[FinishedRecord]) -> str:
    """The comparison as CSV: per cell, the key values, the number of runs, and each column's mean
    and sample standard deviation (empty where undefined), and the mean training time."""
    keys, cells = group(records)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    names = [name for key, _, _ in COLUMNS for name in (f"{key}_mean", f"{key}_std")]
    writer.writerow([*keys, "runs", *names, "train_seconds_mean"])
    for cell in cells:
        row: list[Any] = [*cell.values, len(cell.runs)]
        for key, _, _ in COLUMNS:
            row += ["" if v is None else repr(v) for v in mean_std(cell.column(key))]
        train = mean_std(cell.column("train_seconds"))[0]
        writer.writerow([*row, "" if train is None else repr(train)])
    return out.getvalue()


def plot(path: Path, records: Sequence[FinishedRecord]) -> Path:
    """The distance of every run per cell (dots) with each cell's mean ± std (bars), as a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    keys, cells = group(records)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(cells) + 1.5), 4.0))
    for i, cell in enumerate(cells):
        values = cell.column("distance")
        mean, std = mean_std(values)
        ax.scatter([i] * len(values), values, color="tab:blue", s=14, alpha=0.6, zorder=3)
        if mean is not None:
            ax.errorbar([i], [mean], yerr=[std or 0.0], color="black", capsize=6, marker="_", ms=18)
    labels = ["\n".join(f"{k}={v}" for k, v in zip(keys, c.values, strict=True)) or "all" for c in cells]
    ax.set_xticks(range(len(cells)), labels, fontsize=7)
    ax.set_ylabel(_metric_name(records))
    ax.set_title(f"{len(records)} runs: {_metric_name(records)} per cell (mean ± std over seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
