"""Built-in networks: the ``mlp`` backbone for 2D and tabular data, the ``unet`` for images."""

from flowkit import hookimpl


@hookimpl
def flowkit_register(registry):
    """Register the models ``mlp`` and ``unet``."""
    from flowkit_nets.mlp import MLP
    from flowkit_nets.unet import UNet

    registry.add("model", "mlp", MLP)
    registry.add("model", "unet", UNet)
