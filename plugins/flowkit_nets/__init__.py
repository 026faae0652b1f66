"""Built-in networks: the ``mlp`` backbone for 2D and tabular data."""

from flowkit import hookimpl


@hookimpl
def flowkit_register(registry):
    """Register the model ``mlp``."""
    from flowkit_nets.mlp import MLP

    registry.add("model", "mlp", MLP)
