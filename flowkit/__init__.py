"""flowkit: composable flow matching and diffusion models.

The contract is :mod:`flowkit.interfaces` (abstract interfaces) and :mod:`flowkit.hookspecs` (the
plugin hooks); :mod:`flowkit.registry` loads plugins, :mod:`flowkit.engine` builds and runs
pipelines. Every concrete component is a plugin. Importing flowkit loads no plugin and not torch: the
Python API is loaded when first used::

    import flowkit

    pipe = flowkit.load_pipeline("examples/moons.toml", overrides=["train.steps=500"])
    pipe.train()
    x = pipe.sample(1000)          # (1000, 2) tensor
    print(pipe.evaluate())         # {"distance": ..., "noise_floor": ..., ...}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flowkit.hookspecs import hookimpl, hookspec
from flowkit.version import __version__

if TYPE_CHECKING:
    from flowkit.api import load_pipeline, open_run

__all__ = ["__version__", "hookimpl", "hookspec", "load_pipeline", "open_run"]

_API = {"load_pipeline", "open_run"}


def __getattr__(name: str) -> Any:
    if name in _API:  # the API pulls in torch and the engine: only when asked for
        from flowkit import api

        return getattr(api, name)
    raise AttributeError(f"module 'flowkit' has no attribute {name!r}")
