"""Built-in guiders (the kind ``guider``, ``[sample] guidance``): ``cfg``, ``interval``, ``apg``,
``cfg-zero-star``, ``rescale`` (:mod:`.guiders`), ``cfg++`` (:mod:`.cfgpp`) and ``auto``
(autoguidance, :mod:`.auto`); docs/math.md, "Guidance"."""

from flowkit import hookimpl


@hookimpl
def flowkit_register(registry):
    """Register the guiders."""
    from flowkit_guidance.auto import AutoGuidance
    from flowkit_guidance.cfgpp import CFGPlusPlus
    from flowkit_guidance.guiders import (
        AdaptiveProjected,
        ClassifierFree,
        GuidanceInterval,
        RescaledGuidance,
        ZeroStar,
    )

    registry.add("guider", "cfg", ClassifierFree)
    registry.add("guider", "interval", GuidanceInterval)
    registry.add("guider", "apg", AdaptiveProjected)
    registry.add("guider", "cfg-zero-star", ZeroStar)
    registry.add("guider", "cfg++", CFGPlusPlus)
    registry.add("guider", "rescale", RescaledGuidance)
    registry.add("guider", "auto", AutoGuidance)
