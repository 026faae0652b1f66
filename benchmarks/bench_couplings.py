"""Training speed with couplings: OT-CFM and Sinkhorn pairing against the raw independent loop and torchcfm.

Run from the repository root::

    python benchmarks/bench_couplings.py             # a few minutes on 2 CPU cores
    python benchmarks/bench_couplings.py --quick     # tiny sizes, to check that it runs

The contenders train the benchmark pipeline of ``bench_speed.py`` (moons, OT path, CFM, MLP 3×256,
AdamW, no EMA), interleaved in one process, rotating their order per repetition; each rate is a block of
steps, and each ratio is to the raw loop's rate *in the same repetition* (``common.summarize``):

* ``raw``: the hand-written independent CFM loop of ``bench_speed.py`` (the reference);
* ``flowkit``: flowkit's training loop, ``coupling = "independent"``;
* ``flowkit exact-ot``: ``coupling = "exact-ot"`` (POT's ``emd`` where installed, see
  ``plugins/flowkit_couplings/couplings.py``), paired a step ahead on the training loop's worker
  thread (the default; ``docs/design.md``, "Pairing a step ahead");
* ``flowkit exact-ot in-step``: the same, with ``TrainLoop.ahead = False``: each batch paired on the
  training thread inside its own step (as flowkit did before; the bitwise-same training);
* ``flowkit sinkhorn``: ``coupling = { kind = "sinkhorn", epsilon = 0.05 }``;
* ``torchcfm ot-cfm``: torchcfm's ``ExactOptimalTransportConditionalFlowMatcher(sigma=0)`` on the
  hand-written loop (POT's ``emd`` and sampling pairs from the plan with ``numpy``).

Also the time of one coupling call on its own (median of ``--coupling-reps``), per batch size.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_speed import RawTrainer, SpeedConfig, _HandWrittenTrainer, _StepClock
from common import (
    RESULTS,
    Timing,
    format_table,
    machine_description,
    make_manager,
    make_run,
    median,
    moons_tables,
    optional_import,
    rotate,
    summarize,
    write_pipeline,
)

#: The couplings flowkit is timed with (``[loss] coupling`` values) and whether the loop pairs ahead.
COUPLINGS: dict[str, tuple[Any, bool]] = {
    "flowkit": ("independent", True),
    "flowkit exact-ot": ("exact-ot", True),
    "flowkit exact-ot in-step": ("exact-ot", False),
    "flowkit sinkhorn": ({"kind": "sinkhorn", "epsilon": 0.05}, True),
}


@dataclass
class CouplingSpeedConfig:
    """What to run."""

    threads: int = 1
    batches: list[int] = field(default_factory=lambda: [256, 4096])
    block_steps: list[int] = field(default_factory=lambda: [40, 2])
    reps: int = 5
    coupling_reps: int = 5
    peers: bool = True
    seed: int = 0


class CoupledFlowkitTrainer:
    """``flowkit.engine.train.train`` on the benchmark pipeline with ``[loss] coupling``; ``ahead =
    False`` pairs each batch inside its own step (``TrainLoop.ahead``)."""

    def __init__(
        self, batch: int, coupling: Any, seed: int, workdir: Path, name: str, ahead: bool = True
    ) -> None:
        import attrs

        from flowkit.engine import build_pipeline

        self.device = torch.device("cpu")
        self.clock = _StepClock(self.device)
        manager, _ = make_manager([("bench-clock", self.clock)])
        tables = moons_tables("cpu", batch, seed=seed)
        tables["loss"] = {"kind": "cfm", "coupling": coupling}
        slug = name.replace(" ", "-")
        self.pipeline = build_pipeline(write_pipeline(workdir, f"{slug}-{batch}", tables), manager=manager)
        self.run = make_run(self.pipeline, manager, workdir / f"{slug}-{batch}")
        self.section = self.pipeline.train
        self.evolve = attrs.evolve
        self.ahead = ahead

    def block(self, k: int) -> Timing:
        from flowkit.engine.loop import TrainLoop
        from flowkit.engine.train import train_with

        first, last = 2, 2 + k
        self.pipeline.train = self.evolve(self.section, steps=last)
        loop = TrainLoop(self.pipeline)
        loop.ahead = loop.ahead and self.ahead
        self.clock.arm(first, last)
        train_with(self.run, loop)
        return self.clock.elapsed(first, last)


class TorchCFMOTTrainer(_HandWrittenTrainer):
    """torchcfm's OT-CFM (``ExactOptimalTransportConditionalFlowMatcher(sigma=0)``)."""

    def __init__(self, batch: int, cfg: SpeedConfig) -> None:
        super().__init__(batch, cfg)
        from torchcfm.conditional_flow_matching import ExactOptimalTransportConditionalFlowMatcher

        self.matcher = ExactOptimalTransportConditionalFlowMatcher(sigma=0.0)

    def loss(self, z: Tensor) -> Tensor:
        x0 = torch.randn(z.shape, generator=self.noise_gen)
        t, xt, ut = self.matcher.sample_location_and_conditional_flow(x0, z)
        return torch.mean((self.net(xt, t) - ut) ** 2)


def coupling_call_ms(batch: int, reps: int, seed: int) -> dict[str, float]:
    """Median milliseconds of one coupling call on moons data and Gaussian noise, ``(batch, 2)``."""
    from flowkit_couplings.couplings import ExactOT, Sinkhorn, have_pot
    from flowkit_data.toy import Moons

    g = torch.Generator().manual_seed(seed)
    data = Moons()
    candidates: dict[str, Callable[[Tensor, Tensor], Any]] = {
        "exact-ot scipy": ExactOT(ExactOT.Params(method="scipy")),
        "sinkhorn eps=0.05": Sinkhorn(Sinkhorn.Params(epsilon=0.05)),
    }
    if have_pot():
        candidates["exact-ot emd"] = ExactOT(ExactOT.Params(method="emd"))
    if batch > 1024:
        candidates.pop("exact-ot scipy")  # about a minute per call at 4096 (measured once: 56 s)
    out = {}
    for name, fn in candidates.items():
        times = []
        fn(torch.randn(batch, 2, generator=g), data.sample(batch, generator=g))  # warm-up (imports)
        for _ in range(reps):
            x0, x1 = torch.randn(batch, 2, generator=g), data.sample(batch, generator=g)
            start = time.perf_counter()
            fn(x0, x1)
            times.append(time.perf_counter() - start)
        out[name] = 1e3 * float(median(times) or 0.0)
    return out


def run(cfg: CouplingSpeedConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the benchmark; returns what the JSON holds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        result: dict[str, Any] = {
            "machine": machine_description(cfg.threads, torch.device("cpu")),
            "config": asdict(cfg),
            "train": {},
            "coupling_ms": {},
        }
        speed_cfg = SpeedConfig(threads=cfg.threads, seed=cfg.seed)
        with tempfile.TemporaryDirectory(prefix="flowkit-bench-couplings-") as tmp:
            for batch, k in zip(cfg.batches, cfg.block_steps, strict=True):
                log(f"train, batch {batch}: {cfg.reps} blocks of {k} steps per contender")
                contenders: dict[str, Any] = {"raw": RawTrainer(batch, speed_cfg)}
                for name, (coupling, ahead) in COUPLINGS.items():
                    contenders[name] = CoupledFlowkitTrainer(
                        batch, coupling, cfg.seed, Path(tmp), name, ahead
                    )
                missing = {}
                if cfg.peers and optional_import("torchcfm") is not None:
                    contenders["torchcfm ot-cfm"] = TorchCFMOTTrainer(batch, speed_cfg)
                elif cfg.peers:
                    missing["torchcfm ot-cfm"] = "not installed"
                for contender in contenders.values():  # warm-up
                    contender.block(1)
                rates: dict[str, list[float]] = {name: [] for name in contenders}
                for rep in range(cfg.reps):
                    for name in rotate(list(contenders), rep):
                        # wall-clock: pairing ahead runs the solve on another thread, which the
                        # training thread's CPU time would not see
                        rates[name].append(k / contenders[name].block(k).wall)
                    log(
                        f"  rep {rep + 1}/{cfg.reps}: "
                        + ", ".join(f"{n} {v[-1]:.4g}" for n, v in rates.items())
                    )
                entry = {
                    name: {
                        "status": "ok",
                        "steps_per_s": summarize(v, None if name == "raw" else rates["raw"]),
                    }
                    for name, v in rates.items()
                }
                entry.update({name: {"status": why} for name, why in missing.items()})
                result["train"][str(batch)] = {"block_steps": k, "contenders": entry}
                result["coupling_ms"][str(batch)] = coupling_call_ms(batch, cfg.coupling_reps, cfg.seed)
                log(f"  one coupling call (ms): {result['coupling_ms'][str(batch)]}")
        result["machine"]["load_average_after"] = list(os.getloadavg())
        return result
    finally:
        torch.set_num_threads(threads)


def table(result: dict[str, Any]) -> str:
    """Markdown: steps/s and the ratio to the raw independent loop, per batch; coupling call times."""
    rows = []
    for batch, entry in result["train"].items():
        for name, c in entry["contenders"].items():
            if c["status"] != "ok":
                rows.append([batch, name, None, None, c["status"]])
                continue
            s = c["steps_per_s"]
            rows.append([batch, name, s["median"], s.get("ratio", 1.0), f"{s['min']:.3g}–{s['max']:.3g}"])
    out = format_table(["batch", "contender", "steps/s (median)", "× raw", "range"], rows)
    calls = [[b, n, ms] for b, entry in result["coupling_ms"].items() for n, ms in entry.items()]
    return out + "\n\n" + format_table(["batch", "coupling call", "ms (median)"], calls)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads (flowkit's default on 2 cores: 1)")
    p.add_argument("--batches", type=int, nargs="+", default=[256, 4096])
    p.add_argument("--block-steps", type=int, nargs="+", default=[40, 2])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS / "couplings-speed.json")
    args = p.parse_args(argv)
    cfg = CouplingSpeedConfig(args.threads, args.batches, args.block_steps, args.reps)
    if args.quick:
        cfg.batches, cfg.block_steps, cfg.reps, cfg.coupling_reps = [32], [2], 2, 2
    result = run(cfg)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(table(result))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
