"""U-Net training from an image folder at image scale: flowkit's training step through its engine
beside a raw PyTorch loop fed by a plain ``DataLoader``, torchcfm's and flow_matching's step on the same
network; how much of a step waits for data, and how step time grows with batch and resolution.

Run from the repository root::

    python benchmarks/bench_unet_images.py             # a few minutes on one thread
    python benchmarks/bench_unet_images.py --quick     # tiny sizes, to check that it runs

The data are scikit-learn's 1,797 digits written as a folder of PNG files at each resolution (bilinear
upscaling, as ``examples/make_digits_folder.py`` does; no class folders: an unconditional U-Net), made
once in a temporary directory, and the same pixels as one ``.npy`` file.

* **flowkit**: ``[data] kind = "image-folder"`` (decoded once at build time), the ``unet`` and CFM from
  a pipeline through the registry, timed inside ``flowkit.engine.train.train`` by a
  ``flowkit_train_step`` hook (steady state, EMA off, constant learning rate).
* **flowkit-mmap**: ``kind = "images"``, ``mmap = true``, ``workers = N``: each batch's rows read from
  the memory-mapped file by N worker processes.
* **raw**, **raw (fused AdamW)**, **torchcfm**, **flow_matching**: a copy of flowkit's network (same
  initial weights), AdamW (its default implementation; its fused kernel, as flowkit's loop has, in the
  second), batches from ``DataLoader(TensorDataset(images), RandomSampler(replacement=True))``; the
  loss written out, or through torchcfm's ``ConditionalFlowMatcher(sigma=0)``, or flow_matching's
  ``AffineProbPath(CondOTScheduler())`` (see ``unet_contenders.py``).

The contenders run in lockstep (``harness.schedules``): at once, one thread each, taking turns at every
call of the network, so that each contender's steps and the raw loop's see the same moments of a loaded
machine; each block's clocks count a thread's own turns. The ratio of a contender is the median over
repetitions of (its steps per second) / (the raw loop's, in the same repetition), on the thread's CPU
time (the headline: robust to other processes' load) and on the wall clock (which also counts the
waits for worker processes); above 1 is faster than raw. The data wait is the seconds of a block spent
fetching batches (``dataset.sample`` in flowkit, ``next(iter(DataLoader))`` in the loops).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_image_loader import make_folder
from harness.clocks import Timing, stamp
from harness.machine import machine_description, optional_import, pinned, steady_malloc
from harness.report import RESULTS, format_table, write_atomically, write_json
from harness.schedules import repetitions
from harness.stats import off_thread, summarize_clocks
from unet_contenders import PEERS, FlowkitUNet, RawUNet, flowkit_data_tables


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 32], help="image sides in pixels")
    p.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128], help="the scaling table's")
    p.add_argument("--headline-batch", type=int, default=64, help="the batch every contender runs at")
    p.add_argument("--steps", type=int, default=4, help="timed steps per block")
    p.add_argument("--warm", type=int, default=1, help="untimed steps before each block's")
    p.add_argument("--reps", type=int, default=6, help="repetitions at the headline batch")
    p.add_argument("--scale-reps", type=int, default=4, help="repetitions of the other batches")
    p.add_argument("--workers", type=int, default=1, help="flowkit-mmap's loader worker processes")
    p.add_argument("--probe-workers", type=int, nargs="+", default=[0, 1, 2], help="loader settings probed")
    p.add_argument("--probe-reads", type=int, default=20, help="batches read per probed setting")
    p.add_argument("--no-pin", action="store_true", help="do not pin the run to the last CPU")
    p.add_argument("--quick", action="store_true", help="tiny sizes: check that it runs")
    p.add_argument("--out", type=Path, default=RESULTS / "unet-images.json")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.batches, args.headline_batch = [8], [4, 8], 8
        args.steps, args.reps, args.scale_reps, args.probe_reads = 2, 2, 1, 2
    return args


def contenders_for(
    size: int, batch: int, everyone: bool, args: argparse.Namespace, workdir: Path
) -> tuple[dict[str, Any], dict[str, str]]:
    """The contenders of one workload (all of them at the headline batch, flowkit and raw otherwise),
    and why each missing peer is missing."""
    folder, npy = workdir / f"digits-{size}", workdir / f"digits-{size}.npy"
    name = f"{size}-{batch}"
    decoded = flowkit_data_tables("folder", folder, npy, 0)
    flowkit = FlowkitUNet(decoded, batch, args.warm, workdir, f"f{name}")
    network, images = flowkit.network, flowkit.pipeline.dataset.images
    contenders: dict[str, Any] = {"raw": RawUNet(network, images, batch, args.warm), "flowkit": flowkit}
    missing: dict[str, str] = {}
    if not everyone:
        return contenders, missing
    contenders["raw (fused AdamW)"] = RawUNet(network, images, batch, args.warm, fused=True)
    mapped = flowkit_data_tables("mmap", folder, npy, args.workers)
    contenders[f"flowkit-mmap ({args.workers} workers)"] = FlowkitUNet(
        mapped, batch, args.warm, workdir, f"m{name}"
    )
    for peer, module, cls in PEERS:
        if optional_import(module) is None:
            missing[peer] = f"not installed ({module} does not import)"
        else:
            contenders[peer] = cls(network, images, batch, args.warm)
    return contenders, missing


def workload(
    size: int, batch: int, reps: int, everyone: bool, args: argparse.Namespace, workdir: Path, log: Any
) -> dict[str, Any]:
    """One (resolution, batch): every contender's blocks in lockstep, ratios to the raw loop's."""
    contenders, missing = contenders_for(size, batch, everyone, args, workdir)
    waits: dict[str, list[Timing]] = {name: [] for name in contenders}
    names = {id(c): name for name, c in contenders.items()}
    log(f"{size}x{size}, batch {batch}: {reps} repetitions of {args.steps} steps ({', '.join(contenders)})")
    for contender in contenders.values():  # warm-up: first calls, worker processes started
        contender.block(1)

    def work(contender: Any) -> Timing:
        timing, waited = contender.block(args.steps)
        waits[names[id(contender)]].append(waited)
        return timing

    timings, paired = repetitions(
        contenders, [c.network for c in contenders.values()], "lockstep", torch.device("cpu"), reps, work, log
    )
    entry: dict[str, Any] = {"size": size, "batch": batch, "steps": args.steps, "contenders": {}}
    for name, blocks in timings.items():
        rates = summarize_clocks(blocks, paired.get(name), args.steps)
        entry["contenders"][name] = {
            "status": "ok",
            "ms_per_step_cpu": 1e3 * statistics.median(t.cpu for t in blocks) / args.steps,
            "ms_per_step_wall": 1e3 * statistics.median(t.wall for t in blocks) / args.steps,
            "steps_per_cpu_s": rates["cpu"],
            "steps_per_s": rates["wall"],
            "data_wait_ms_per_step": 1e3 * statistics.median(w.wall for w in waits[name]) / args.steps,
            "data_wait_cpu_ms_per_step": 1e3 * statistics.median(w.cpu for w in waits[name]) / args.steps,
            "data_wait_share": statistics.median(
                w.wall / t.wall for w, t in zip(waits[name], blocks, strict=True)
            ),
            "off_thread": off_thread(blocks),
        }
    for name, why in missing.items():
        entry["contenders"][name] = {"status": why}
    return entry


def loader_probe(size: int, batch: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Wall milliseconds per batch read by flowkit's memory-mapped loader with each probed number of
    worker processes (reads alone, no training between them)."""
    folder, npy = workdir / f"digits-{size}", workdir / f"digits-{size}.npy"
    out: dict[str, Any] = {}
    for workers in args.probe_workers:
        tables = flowkit_data_tables("mmap", folder, npy, workers)
        flowkit = FlowkitUNet(tables, batch, args.warm, workdir, f"probe-{size}-{batch}-{workers}")
        dataset, generator = flowkit.pipeline.dataset, torch.Generator().manual_seed(0)
        dataset.sample(batch, generator=generator)  # the workers started
        times = []
        for _ in range(args.probe_reads):
            start = stamp()
            dataset.sample(batch, generator=generator)
            times.append((stamp() - start).wall)
        out[str(workers)] = {"ms_per_batch": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times)}
        del flowkit, dataset  # the worker processes end with their loader
    return out


def run(
    args: argparse.Namespace, log: Callable[[str], None], partial: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    torch.set_num_threads(1)
    result: dict[str, Any] = {
        "machine": machine_description(1, torch.device("cpu")),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "complete": False,
        "workloads": [],
        "loader_probe": {},
    }
    result["machine"]["steady_malloc"] = steady_malloc()
    with (
        tempfile.TemporaryDirectory(prefix="flowkit-unet-") as tmp,
        contextlib.nullcontext(None) if args.no_pin else pinned(1) as cpus,
    ):
        result["machine"]["pinned_cpus"] = cpus
        workdir = Path(tmp)
        for size in args.sizes:
            np.save(workdir / f"digits-{size}.npy", make_folder(workdir / f"digits-{size}", size))
        order = sorted(args.batches, key=lambda b: b != args.headline_batch)  # the headline first
        for size in args.sizes:
            for batch in order:
                everyone = batch == args.headline_batch
                reps = args.reps if everyone else args.scale_reps
                result["workloads"].append(workload(size, batch, reps, everyone, args, workdir, log))
                partial(result)
        for size in args.sizes:
            log(f"loader probe, {size}x{size}, batch {args.headline_batch}: workers {args.probe_workers}")
            result["loader_probe"][str(size)] = loader_probe(size, args.headline_batch, args, workdir)
    result["machine"]["load_average_after"] = list(os.getloadavg())
    result["complete"] = True
    return result


def tables(result: dict[str, Any]) -> str:
    """The markdown tables: every contender at the headline batch, the scaling of flowkit's step, and
    the loader probe."""
    head = result["config"]["headline_batch"]
    rows = []
    for w in result["workloads"]:
        if w["batch"] != head:
            continue
        for name, c in w["contenders"].items():
            if c["status"] != "ok":
                rows.append([f"{w['size']}x{w['size']}", name, c["status"], *[None] * 6])
                continue
            cpu, wall = c["steps_per_cpu_s"], c["steps_per_s"]
            spread = cpu.get("ratio_iqr")
            rows.append(
                [
                    f"{w['size']}x{w['size']}",
                    name,
                    f"{c['ms_per_step_cpu']:.1f}",
                    f"{cpu['ratio']:.3f}" if "ratio" in cpu else "1",
                    f"{spread[0]:.3f}–{spread[1]:.3f}" if spread else None,
                    f"{c['ms_per_step_wall']:.1f}",
                    f"{wall['ratio']:.3f}" if "ratio" in wall else "1",
                    f"{c['data_wait_ms_per_step']:.2f} ({100 * c['data_wait_share']:.1f}%)",
                    f"{c['data_wait_cpu_ms_per_step']:.2f}" if "data_wait_cpu_ms_per_step" in c else None,
                ]
            )
    first = format_table(
        [
            "resolution",
            f"contender (batch {head})",
            "ms/step (CPU)",
            "ratio to raw (CPU)",
            "ratio IQR",
            "ms/step (wall)",
            "ratio (wall)",
            "data wait ms/step (share), wall",
            "data wait ms/step, CPU",
        ],
        rows,
    )
    scale = []
    base = None
    for w in sorted(result["workloads"], key=lambda w: (w["size"], w["batch"])):
        mine, raw = w["contenders"]["flowkit"], w["contenders"]["raw"]
        base = base or mine["ms_per_step_cpu"]
        scale.append(
            [
                f"{w['size']}x{w['size']}",
                w["batch"],
                f"{mine['ms_per_step_cpu']:.1f}",
                f"{1e3 * mine['ms_per_step_cpu'] / w['batch']:.0f}",
                f"{mine['ms_per_step_cpu'] / base:.2f}",
                f"{raw['ms_per_step_cpu']:.1f}",
                f"{mine['steps_per_cpu_s']['ratio']:.3f}",
            ]
        )
    second = format_table(
        ["resolution", "batch", "flowkit ms/step", "µs per image", "× smallest", "raw ms/step", "ratio"],
        scale,
    )
    probe = [
        [f"{size}x{size}", workers, f"{p['ms_per_batch']:.2f}", f"{p['min_ms']:.2f}"]
        for size, by in result["loader_probe"].items()
        for workers, p in by.items()
    ]
    third = format_table(["resolution", "workers", f"ms per batch of {head} (median)", "min"], probe)
    return f"{first}\n\n{second}\n\n{third}\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)

    def write(result: dict[str, Any]) -> None:
        result["machine"]["load_average_now"] = list(os.getloadavg())
        write_json(args.out, result)
        if result["workloads"]:
            write_atomically(args.out.with_suffix(".md"), tables(result))

    result = run(args, lambda m: print(m, flush=True), write)
    write(result)
    print("\n" + tables(result))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return result


if __name__ == "__main__":
    main()
