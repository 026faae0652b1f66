"""U-Net training from an image folder: flowkit's training stage against a raw loop of the same U-Net
fed by a plain torch ``DataLoader``, at 16x16 and 32x32 and several batch sizes.

Run from the repository root::

    python benchmarks/bench_image_loader.py            # the table (a few minutes on 2 cores)
    python benchmarks/bench_image_loader.py --quick    # tiny sizes, to check that it runs

The data are scikit-learn's digits written as a folder of PNG files at each resolution (no class
folders: an unconditional model), made once in a temporary directory.

* **flowkit**: ``[data] kind = "image-folder"`` (decoded once at build time, drawn by the data
  generator), the U-Net and CFM from a pipeline through the registry, timed inside
  ``flowkit.engine.train.train`` by a ``flowkit_train_step`` hook (steady state, EMA off, constant lr).
* **flowkit-mmap**: the same images as one ``.npy`` file, ``kind = "images"`` with ``mmap = true`` and
  ``workers = 1``: every batch read from the memory-mapped file by one worker process.
* **raw**: a copy of flowkit's U-Net (same architecture and initial weights), AdamW, the OT-path CFM loss
  written out, fed by ``DataLoader(TensorDataset(images), batch_size=B, sampler=RandomSampler(...,
  replacement=True), num_workers=0)`` over the same decoded images.

Each repetition runs raw, flowkit, flowkit-mmap, raw again (a sandwich); the ratio of a contender is
the median over repetitions of (mean of the two raw blocks) / (its block), on the wall clock, so that
1.0 is parity and above 1 is faster than raw; and the same on the timing thread's CPU time
(``cpu_ratio_to_raw``), which other processes' load does not stretch (it leaves out the worker's reads
of flowkit-mmap, which the wall clock counts). One intra-op thread (``torch.set_num_threads(1)``).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.clocks import Timing, stamp
from harness.machine import machine_description
from workloads import make_manager, make_run, train_stage, write_pipeline

from flowkit import hookimpl

UNET = {"kind": "unet", "channels": 16, "channel_mults": [1, 2], "blocks": 1, "attention": []}


def make_folder(root: Path, size: int) -> np.ndarray:
    """The 1,797 digits as ``root/<index>.png`` at size x size; returned as uint8 ``(N, 1, S, S)``."""
    from PIL import Image
    from sklearn.datasets import load_digits

    pixels = np.rint(load_digits().images * (255.0 / 16.0)).astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for index, image in enumerate(pixels):
        big = Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR)
        big.save(root / f"{index:04d}.png")
        out.append(np.asarray(big))
    return np.stack(out)[:, None]


class StepClock:
    """Reads the clocks when ``flowkit_train_step`` reports the chosen steps."""

    def __init__(self) -> None:
        self.marks: dict[int, Timing | None] = {}

    @hookimpl
    def flowkit_train_step(self, run: Any, step: int, loss: Any) -> None:
        if step in self.marks:
            self.marks[step] = stamp()


class Flowkit:
    def __init__(self, data: dict[str, Any], batch: int, warm: int, workdir: Path, name: str) -> None:
        from flowkit.engine import build_pipeline

        self.clock = StepClock()
        manager, _ = make_manager([("bench-clock", self.clock)])
        tables = {
            "run": {"seed": 0, "device": "cpu"},
            "data": {**data, "held_out": 0.0},
            "path": {"kind": "gaussian", "schedule": {"kind": "ot", "sigma_min": 0.0}},
            "model": UNET,
            "loss": {"kind": "cfm"},
            "train": {
                "steps": warm + 1,
                "batch_size": batch,
                "lr": 1e-3,
                "ema_decay": 0.0,
                "log_every": 10**6,
            },
        }
        self.pipeline = build_pipeline(write_pipeline(workdir, name, tables), manager=manager)
        self.run = make_run(self.pipeline, manager, workdir / name)
        self.warm = warm

    def block(self, k: int) -> Timing:
        import attrs

        first, last = self.warm, self.warm + k
        self.pipeline.train = attrs.evolve(self.pipeline.train, steps=last)
        self.clock.marks = dict.fromkeys((first, last))
        train_stage(self.run)
        start, end = self.clock.marks[first], self.clock.marks[last]
        assert start is not None and end is not None
        return end - start


class Raw:
    def __init__(self, network: torch.nn.Module, images: torch.Tensor, batch: int, warm: int) -> None:
        from torch.utils.data import DataLoader, RandomSampler, TensorDataset

        self.net = copy.deepcopy(network)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=1e-3)
        sampler = RandomSampler(TensorDataset(images), replacement=True, num_samples=10**8)
        self.batches = iter(
            DataLoader(TensorDataset(images), batch_size=batch, sampler=sampler, num_workers=0)
        )
        self.noise = torch.Generator().manual_seed(1)
        self.warm = warm

    def step(self) -> None:
        (z,) = next(self.batches)
        x0 = torch.randn(z.shape, generator=self.noise)
        t = torch.rand(z.shape[0], generator=self.noise)
        tc = t[:, None, None, None]
        loss = (self.net((1 - tc) * x0 + tc * z, t) - (z - x0)).square().mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def block(self, k: int) -> Timing:
        for _ in range(self.warm):
            self.step()
        start = stamp()
        for _ in range(k):
            self.step()
        return stamp() - start


def bench(size: int, batch: int, steps: int, warm: int, reps: int, workdir: Path) -> dict[str, Any]:
    folder = workdir / f"digits-{size}"
    pixels = make_folder(folder, size) if not folder.is_dir() else None
    npy = workdir / f"digits-{size}.npy"
    if pixels is not None:
        np.save(npy, pixels)
    name = f"{size}-{batch}"
    flowkit = Flowkit({"kind": "image-folder", "root": str(folder)}, batch, warm, workdir, f"folder-{name}")
    mapped = Flowkit(
        {"kind": "images", "path": str(npy), "mmap": True, "workers": 1}, batch, warm, workdir, f"mmap-{name}"
    )
    raw = Raw(flowkit.pipeline.model, flowkit.pipeline.dataset.images, batch, warm)
    times: dict[str, list[Timing]] = {"raw": [], "flowkit": [], "flowkit-mmap": []}
    ratios: dict[str, list[float]] = {"flowkit": [], "flowkit-mmap": []}
    cpu_ratios: dict[str, list[float]] = {"flowkit": [], "flowkit-mmap": []}
    for _ in range(reps):
        before = raw.block(steps)
        mine = {"flowkit": flowkit.block(steps), "flowkit-mmap": mapped.block(steps)}
        after = raw.block(steps)
        times["raw"] += [before, after]
        for key, seconds in mine.items():
            times[key].append(seconds)
            ratios[key].append((before.wall + after.wall) / 2 / seconds.wall)
            cpu_ratios[key].append((before.cpu + after.cpu) / 2 / seconds.cpu)
    return {
        "size": size,
        "batch": batch,
        "ms_per_step": {k: 1e3 * statistics.median(t.wall for t in v) / steps for k, v in times.items()},
        "ratio_to_raw": {key: statistics.median(v) for key, v in ratios.items()},
        "ratios": ratios,
        "cpu_ms_per_step": {k: 1e3 * statistics.median(t.cpu for t in v) / steps for k, v in times.items()},
        "cpu_ratio_to_raw": {key: statistics.median(v) for key, v in cpu_ratios.items()},
        "cpu_ratios": cpu_ratios,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| resolution | batch | raw ms/step | flowkit ms/step | ratio | flowkit-mmap (1 worker) ms/step "
        "| ratio | CPU ratio flowkit | CPU ratio flowkit-mmap |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ms, ratio, cpu = r["ms_per_step"], r["ratio_to_raw"], r["cpu_ratio_to_raw"]
        lines.append(
            f"| {r['size']}x{r['size']} | {r['batch']} | {ms['raw']:.1f} | {ms['flowkit']:.1f} | "
            f"{ratio['flowkit']:.3f} | {ms['flowkit-mmap']:.1f} | {ratio['flowkit-mmap']:.3f} | "
            f"{cpu['flowkit']:.3f} | {cpu['flowkit-mmap']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check that it runs")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per block")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (sandwiches) per row")
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32], help="image sides in pixels")
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 128], help="batch sizes")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes, batches = ([16], [8]) if args.quick else (args.sizes, args.batches)
    steps, reps = (3, 1) if args.quick else (args.steps, args.reps)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            for batch in batches:
                rows.append(bench(size, batch, steps, 2, reps, Path(tmp)))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    if args.out is not None:
        record = {
            "machine": machine_description(1, torch.device("cpu")),
            "steps": steps,
            "reps": reps,
            "rows": rows,
        }
        args.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
