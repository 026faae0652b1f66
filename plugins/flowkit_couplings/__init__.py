"""Couplings of noise and data (``independent``, ``exact-ot``, ``sinkhorn``) and Schrödinger-bridge
CFM (the ``brownian-bridge`` path, the ``sb-cfm`` loss and its two-headed model ``velocity-score``);
data to data (the ``data-to-data`` path, whose source is a dataset); ``docs/math.md``, "Couplings" and
"Data to data"."""

from flowkit import hookimpl


@hookimpl
def flowkit_register(registry):
    """Register the couplings, the Brownian-bridge and data-to-data paths, the SB-CFM loss and the
    two-headed model."""
    from flowkit_couplings.bridge import BrownianBridgePath, SBCFMLoss
    from flowkit_couplings.couplings import ExactOT, Independent, Sinkhorn
    from flowkit_couplings.heads import VelocityScore
    from flowkit_couplings.source import DataToDataPath

    registry.add("coupling", "independent", Independent)
    registry.add("coupling", "exact-ot", ExactOT)
    registry.add("coupling", "sinkhorn", Sinkhorn)
    registry.add("path", "brownian-bridge", BrownianBridgePath)
    registry.add("path", "data-to-data", DataToDataPath)
    registry.add("loss", "sb-cfm", SBCFMLoss)
    registry.add("model", "velocity-score", VelocityScore)
