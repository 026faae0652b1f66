"""Seeds per stage: every random draw of a run derives from ``[run] seed`` and the stage's name.

:func:`stage_seed` lives in the contract (:mod:`flowkit.records`), so that a component's ``setup``
(:class:`flowkit.interfaces.StageContext`) draws from streams of the same scheme; the engine imports
it from here.
"""

from __future__ import annotations

from flowkit.records import stage_seed

__all__ = ["stage_seed"]
