"""Training objectives: conditional flow matching (``cfm``) and denoising score matching (``dsm``)."""

from flowkit import hookimpl


@hookimpl
def flowkit_register(registry):
    """Register the CFM and DSM losses."""
    from flowkit_losses.cfm import CFMLoss
    from flowkit_losses.dsm import DSMLoss

    registry.add("loss", "cfm", CFMLoss)
    registry.add("loss", "dsm", DSMLoss)
