"""Built-in metrics: exact W2, sliced W2 and the energy distance between sample sets."""

from flowkit import hookimpl


@hookimpl
def flowkit_register(registry):
    """Register the metrics ``w2``, ``sliced-w2`` and ``energy``."""
    from flowkit_metrics.distances import W2, Energy, SlicedW2

    registry.add("metric", "w2", W2)
    registry.add("metric", "sliced-w2", SlicedW2)
    registry.add("metric", "energy", Energy)
