"""What ``bench_speed.py`` prints and ``--compare`` reads from its JSON: the markdown tables of one
result, every paired ratio of a result by row, and two results' ratios side by side."""

from __future__ import annotations

from typing import Any

from harness.report import format_table

#: The rate keys of each section, by clock.
RATE_KEYS = {
    "train": {"wall": "steps_per_s", "cpu": "steps_per_cpu_s"},
    "sample": {"wall": "samples_per_s", "cpu": "samples_per_cpu_s"},
}


def _rate(c: dict[str, Any], section: str, clock: str) -> dict[str, Any] | None:
    return c.get(RATE_KEYS[section][clock])


def tables(result: dict[str, Any]) -> str:
    """The markdown tables: per contender the rate and the paired ratio to raw with its IQR, on the
    thread's CPU time (the headline on the CPU) and on the wall-clock beside it."""

    def ratio_cells(c: dict[str, Any], section: str) -> list[Any]:
        cells: list[Any] = []
        for clock in ("cpu", "wall"):
            s = _rate(c, section, clock)
            if s is None:  # a result written before the CPU clock was read
                cells += [None, None]
            else:
                cells += [s.get("ratio", 1.0), _iqr(s)]
        return cells

    def off(c: dict[str, Any]) -> str | None:
        share = c.get("off_thread")
        return None if share is None else f"{100 * share:.1f}%"

    rows = []
    for batch, entry in result["train"].items():
        for name, c in entry["contenders"].items():
            if c["status"] != "ok":
                rows.append([batch, name, c["status"], *[None] * 7])
                continue
            cpu = _rate(c, "train", "cpu")
            rows.append(
                [
                    batch,
                    name,
                    cpu["median"] if cpu else None,
                    c["steps_per_s"]["median"],
                    *ratio_cells(c, "train"),
                    c.get("peak_mib"),
                    off(c),
                ]
            )
    train = format_table(
        [
            "batch",
            "contender",
            "steps per CPU s (median)",
            "steps per wall s (median)",
            "× raw, CPU (paired median)",
            "IQR, CPU",
            "× raw, wall (paired median)",
            "IQR, wall",
            "peak MiB",
            "CPU off thread (max)",
        ],
        rows,
    )
    rows = []
    for simulator, entry in result["sample"].items():
        for name, c in entry["contenders"].items():
            label = f"{simulator} ({entry['steps']} steps)"
            if c["status"] != "ok":
                rows.append([label, name, c["status"], *[None] * 9])
                continue
            cpu = c.get("cpu_seconds")
            rows.append(
                [
                    label,
                    name,
                    cpu["median"] if cpu else None,
                    c["seconds"]["median"],
                    c["network_evals"],
                    *ratio_cells(c, "sample"),
                    c.get("peak_mib"),
                    f"{c['max_abs_diff_vs_raw']:.1e}",
                    off(c),
                ]
            )
    n = next(iter(result["sample"].values()))["n"] if result["sample"] else 0
    sample = format_table(
        [
            "simulator",
            "contender",
            f"CPU s for {n} samples (median)",
            "wall s (median)",
            "network evals",
            "speed × raw, CPU (paired median)",
            "IQR, CPU",
            "speed × raw, wall (paired median)",
            "IQR, wall",
            "peak MiB",
            "max |x - x_raw|",
            "CPU off thread (max)",
        ],
        rows,
    )
    machine = result.get("machine", {})
    load = machine.get("load_average_1_5_15"), machine.get("load_average_after")
    text = ""
    if all(load):
        text += (
            f"Load average (1, 5, 15 min) at the start {', '.join(f'{v:.2f}' for v in load[0])}; "
            f"at the end {', '.join(f'{v:.2f}' for v in load[1])}. Headline clock: "
            f"{result.get('clock', 'wall')}.\n\n"
        )
    if result.get("complete") is False:
        text += "Stopped before the end: the tables hold the repetitions measured so far.\n\n"
    text += f"### Training (CFM, OT path, MLP 3×256)\n\n{train}\n\n### Sampling\n\n{sample}\n"
    for batch, levels in result.get("ablation", {}).items():
        text += f"\n### Where flowkit's training overhead comes from, batch {batch}\n\n"
        text += (
            format_table(
                ["variant", "steps/s (median)", "× raw (paired median)", "IQR"],
                [[name, v["median"], v.get("ratio", 1.0), _iqr(v)] for name, v in levels.items()],
            )
            + "\n"
        )
    if "breakdown" in result:
        for batch, pieces in result["breakdown"].items():
            text += f"\n### flowkit training step, batch {batch}: µs per call\n\n"
            text += format_table(["piece", "µs"], [[k, v] for k, v in pieces.items()]) + "\n"
    return text


def _iqr(summary: dict[str, Any]) -> str | None:
    iqr = summary.get("ratio_iqr")
    return f"{iqr[0]:.3f}–{iqr[1]:.3f}" if iqr else None


def ratios(result: dict[str, Any], clock: str = "cpu") -> dict[str, float]:
    """Every paired-median ratio of a result on ``clock`` ("cpu" or "wall"), by row:
    ``"train 256 flowkit"``, ``"sample euler flowkit"``. A result without CPU figures has none."""
    out = {}
    for section in ("train", "sample"):
        for row, entry in result.get(section, {}).items():
            for name, c in entry["contenders"].items():
                s = _rate(c, section, clock) if c["status"] == "ok" else None
                if s is not None and "ratio" in s:
                    out[f"{section} {row} {name}"] = s["ratio"]
    return out


def compare(first: dict[str, Any], second: dict[str, Any], tolerance: float = 0.03) -> str:
    """Markdown: each ratio of two runs side by side and their relative difference, on the thread's
    CPU time and on the wall-clock (the stability check), then the largest difference per clock and
    how many rows differ by more than ``tolerance``."""
    rows, worst = [], {}
    cpu = ratios(first, "cpu"), ratios(second, "cpu")
    wall = ratios(first, "wall"), ratios(second, "wall")
    for row in wall[0]:
        if row not in wall[1]:
            continue
        cells: list[Any] = [row]
        for clock, (a, b) in (("cpu", cpu), ("wall", wall)):
            if row in a and row in b:
                diff = b[row] / a[row] - 1
                worst.setdefault(clock, []).append((abs(diff), row))
                cells += [a[row], b[row], f"{100 * diff:+.1f}%"]
            else:
                cells += [None, None, None]
        rows.append(cells)
    headers = ["row", "run 1 × raw, CPU", "run 2 × raw, CPU", "difference, CPU"]
    headers += ["run 1 × raw, wall", "run 2 × raw, wall", "difference, wall"]
    text = format_table(headers, rows) + "\n"
    for clock, diffs in worst.items():
        largest, row = max(diffs)
        over = sum(d > tolerance for d, _ in diffs)
        text += (
            f"\n{clock}: largest difference {100 * largest:.1f}% ({row}); "
            f"{over} of {len(diffs)} rows differ by more than {100 * tolerance:g}%"
        )
    return text + "\n"
