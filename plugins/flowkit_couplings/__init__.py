"""Couplings of noise and data (``independent``, ``exact-ot``, ``sinkhorn``) and Schrödinger-bridge
CFM (the ``brownian-bridge`` path, the ``sb-cfm`` loss and its two-headed model ``velocity-score``);
``docs/math.md``, "Couplings"."""

from flowkit import hookimpl


@hookimpl
def flowkit_register(registry):
    """Register the couplings, the Brownian-bridge path, the SB-CFM loss and the two-headed model."""
    from flowkit_couplings.bridge import BrownianBridgePath, SBCFMLoss
    from flowkit_couplings.couplings import ExactOT, Independent, Sinkhorn
    from flowkit_couplings.heads import VelocityScore

    registry.add("coupling", "independent", Independent)
    registry.add("coupling", "exact-ot", ExactOT)
    registry.add("coupling", "sinkhorn", Sinkhorn)
    registry.add("path", "brownian-bridge", BrownianBridgePath)
    registry.add("loss", "sb-cfm", SBCFMLoss)
    registry.add("model", "velocity-score", VelocityScore)
