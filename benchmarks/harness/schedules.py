"""How a workload's repetitions are scheduled and paired with the reference contender's (the raw loop):

* :func:`interleave` — one block per contender a repetition, the order rotated;
* :func:`sandwich` — every block between two reference blocks, paired with their mean;
* :func:`lockstep` — every contender at once, in turns (:class:`lockstep.Lockstep`), paired within
  the repetition;
* :func:`repetitions` — the configured one of the last two, as the speed benchmarks call it.

Each calls ``log`` with one human line per repetition, and ``each(timings, paired)`` with what is
measured so far, so a script can write its results after every repetition.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from harness.clocks import Timing
from harness.lockstep import Lockstep

#: What is measured so far: ``(timings, paired)`` as :func:`sandwich` returns them.
Progress = Callable[[dict[str, list[Timing]], dict[str, list[Timing]]], None]


def rotate(items: Sequence[Any], by: int) -> list[Any]:
    """``items`` rotated left by ``by`` (each repetition starts with a different contender)."""
    if not items:
        return []
    by %= len(items)
    return [*items[by:], *items[:by]]


def interleave(
    contenders: dict[str, Any],
    reps: int,
    work: Callable[[Any], Timing],
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, list[Timing]]:
    """Per-contender lists of ``work(contender)``, one per repetition, each repetition starting with
    another contender (:func:`rotate`): the paired-repetition loop every benchmark shares."""
    names = list(contenders)
    out: dict[str, list[Timing]] = {name: [] for name in names}
    for rep in range(reps):
        for name in rotate(names, rep):
            out[name].append(work(contenders[name]))
        log(
            f"  rep {rep + 1}/{reps} (cpu s / wall s): "
            + ", ".join(f"{n} {out[n][-1].cpu:.4g}/{out[n][-1].wall:.4g}" for n in names)
        )
    return out


def sandwich(
    contenders: dict[str, Any],
    reference: str,
    reps: int,
    work: Callable[[Any], Timing],
    log: Callable[[str], None] = lambda message: None,
    each: Progress | None = None,
) -> tuple[dict[str, list[Timing]], dict[str, list[Timing]]]:
    """Like :func:`interleave`, but every other contender's block runs between two blocks of
    ``reference``: one repetition is ``ref, A, ref, B, ref, C, ref`` (``A, B, C`` rotated from one
    repetition to the next), and each block is paired with the mean of the reference blocks just
    before and after it. Load that drifts over a repetition (other processes start and stop within
    seconds) then cancels to first order in the paired ratio, where with one reference block per
    repetition it was compared with a block run several blocks earlier or later. The last reference
    block of a repetition is the first of the next.

    Returns ``(timings, paired)``: ``timings[name]`` one :class:`Timing` per repetition
    (``reps * (len(contenders) - 1) + 1`` for ``reference``), ``paired[name]`` the reference's
    timing paired with each (none for ``reference`` itself). ``each`` is called after every
    repetition with them as they stand.
    """
    others = [name for name in contenders if name != reference]
    timings: dict[str, list[Timing]] = {name: [] for name in contenders}
    paired: dict[str, list[Timing]] = {name: [] for name in others}
    before = None
    for rep in range(reps):
        if before is None:  # the first; then the block after one repetition starts the next
            before = work(contenders[reference])
            timings[reference].append(before)
        for name in rotate(others, rep):
            timings[name].append(work(contenders[name]))
            after = work(contenders[reference])
            timings[reference].append(after)
            paired[name].append((before + after).scaled(0.5))
            before = after
        log(_paired_line(rep, reps, f"{reference}: mean of the blocks around each", timings, paired))
        if each is not None:
            each(timings, paired)
    return timings, paired


def _paired_line(
    rep: int, reps: int, pairing: str, timings: dict[str, list[Timing]], paired: dict[str, list[Timing]]
) -> str:
    """The log line of one paired repetition: each contender's last CPU and wall seconds, and its
    reference's in brackets."""
    blocks = [(n, timings[n][-1], paired[n][-1]) for n in paired]
    return f"  rep {rep + 1}/{reps} (cpu s / wall s; {pairing}): " + ", ".join(
        f"{n} {t.cpu:.4g}/{t.wall:.4g} ({r.cpu:.4g}/{r.wall:.4g})" for n, t, r in blocks
    )


def lockstep(
    contenders: dict[str, Any],
    reference: str,
    reps: int,
    work: Callable[[Any], Timing],
    steps: Lockstep,
    log: Callable[[str], None] = lambda message: None,
    each: Progress | None = None,
) -> tuple[dict[str, list[Timing]], dict[str, list[Timing]]]:
    """:func:`sandwich`'s results from repetitions in which every contender runs at once, in turns
    (``steps``, a :class:`Lockstep` attached to every contender's network): each contender's timing
    is paired with ``reference``'s in the same repetition. The order of turns is rotated from one
    repetition to the next (:func:`rotate`), so no contender always follows the same one."""
    names = list(contenders)
    others = [name for name in names if name != reference]
    timings: dict[str, list[Timing]] = {name: [] for name in names}
    paired: dict[str, list[Timing]] = {name: [] for name in others}
    for rep in range(reps):
        order = rotate(names, rep)
        out = steps.run({name: (lambda c=contenders[name]: work(c)) for name in order})
        for name in names:
            timings[name].append(out[name])
        for name in others:
            paired[name].append(out[reference])
        log(_paired_line(rep, reps, f"{reference}: the same repetition, in turns", timings, paired))
        if each is not None:
            each(timings, paired)
    return timings, paired


#: How the repetitions of a workload are scheduled (see :func:`repetitions`).
SCHEDULES = ("lockstep", "sandwich")


def repetitions(
    contenders: dict[str, Any],
    networks: list[torch.nn.Module],
    schedule: str,
    device: torch.device,
    reps: int,
    work: Callable[[Any], Timing],
    log: Callable[[str], None],
    each: Progress | None = None,
) -> tuple[dict[str, list[Timing]], dict[str, list[Timing]]]:
    """``reps`` repetitions of ``work`` for every contender, each paired with the raw loop's, on the
    ``schedule``: :func:`lockstep` on the CPU (turns at every call of ``networks``), :func:`sandwich`
    on a GPU or when ``schedule`` says so. Returns ``(timings, paired)``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")
    if schedule == "sandwich" or device.type != "cpu":
        return sandwich(contenders, "raw", reps, work, log, each)
    steps = Lockstep()
    handles = [steps.attach(network) for network in {id(n): n for n in networks}.values()]
    try:
        timings, paired = lockstep(contenders, "raw", reps, work, steps, log, each)
    finally:
        for handle in handles:
            handle.remove()
    if len(set(steps.turns.values())) > 1:  # the segments did not line up: say so, never hide it
        log(f"  note: the contenders took unequal turns (network calls): {steps.turns}")
    return timings, paired
