"""flowkit: composable flow matching and diffusion models.

The core defines interfaces (:mod:`flowkit.interfaces`), the plugin contract
(:mod:`flowkit.hookspecs`) and the registry (:mod:`flowkit.registry`); every concrete component is a
plugin. Importing flowkit loads no plugin.
"""

from flowkit.hookspecs import hookimpl, hookspec

__version__ = "0.1.0"

__all__ = ["__version__", "hookimpl", "hookspec"]
