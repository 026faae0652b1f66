"""The figures of a benchmark: medians, per-repetition paired ratios and their spread, rates on each
clock."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from harness.clocks import Timing


def median(values: Sequence[float]) -> float | None:
    """Median of ``values`` (``None`` when empty)."""
    return statistics.median(values) if values else None


def paired_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """Per-repetition ratios ``numerator[i] / denominator[i]`` (same repetition, so load drifts cancel)."""
    if len(numerator) != len(denominator):
        raise ValueError(f"paired ratios need as many values: {len(numerator)} vs {len(denominator)}")
    return [a / b for a, b in zip(numerator, denominator, strict=True) if b > 0]


def summarize(values: Sequence[float], reference: Sequence[float] | None) -> dict[str, Any]:
    """Median, spread and ratios to ``reference`` (both lists are per-repetition, higher is better).

    ``ratio``: median of the per-repetition ratios; ``ratio_of_medians``: ratio of the two medians.
    """
    values = list(values)
    out: dict[str, Any] = {
        "values": values,
        "median": median(values),
        "min": min(values) if values else None,
        "max": max(values) if values else None,
    }
    if reference is not None and values:
        ratios = paired_ratios(values, reference)
        ref_median = median(reference)
        out["ratio"] = median(ratios)
        out["ratio_of_medians"] = out["median"] / ref_median if ref_median else None
        out["ratios"] = ratios
        out["ratio_iqr"] = ratio_iqr(ratios)
    return out


def ratio_iqr(ratios: Sequence[float]) -> list[float] | None:
    """The interquartile range ``[q1, q3]`` of the paired ratios (``None`` for fewer than two): the
    spread of one run's figure, which two runs' medians should agree well within."""
    if len(ratios) < 2:
        return None
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return [q1, q3]


def off_thread(timings: Iterable[Timing]) -> float | None:
    """The largest share of a block's process CPU time that ran off the timing thread,
    ``max((process_cpu - cpu) / process_cpu)`` (``None`` without timings): near 0 where the thread
    clock sees all the work."""
    shares = [(t.process_cpu - t.cpu) / t.process_cpu for t in timings if t.process_cpu > 0]
    return max(shares) if shares else None


def summarize_clocks(
    timings: Sequence[Timing],
    reference: Sequence[Timing] | None,
    amount: float,
) -> dict[str, dict[str, Any]]:
    """:func:`summarize` of the rate ``amount / seconds`` on the wall-clock (``"wall"``) and on the
    thread's CPU time (``"cpu"``), paired with ``reference``'s rates repetition by repetition."""
    out = {}
    for clock in ("wall", "cpu"):
        rates = [amount / getattr(t, clock) for t in timings]
        ref = None if reference is None else [amount / getattr(t, clock) for t in reference]
        out[clock] = summarize(rates, ref)
        if ref is not None:
            out[clock]["reference_values"] = ref
    return out
