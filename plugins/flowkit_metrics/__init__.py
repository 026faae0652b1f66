"""Built-in metrics: exact W2, sliced W2 and the energy distance between sample sets; for labelled
images, class accuracy and a Fréchet distance in a reference classifier's features (:mod:`.images`)."""

from flowkit import hookimpl


@hookimpl
def flowkit_register(registry):
    """Register the metrics ``w2``, ``sliced-w2`` and ``energy``."""
    from flowkit_metrics.distances import W2, Energy, SlicedW2

    registry.add("metric", "w2", W2)
    registry.add("metric", "sliced-w2", SlicedW2)
    registry.add("metric", "energy", Energy)


@hookimpl
def flowkit_evaluate_metrics(run, samples, reference):
    """Image metrics of a labelled image dataset with a held-out split (``None`` otherwise)."""
    from flowkit_metrics.images import image_metrics

    seed = run.table("run").seed if run.table("run") is not None else 0
    return image_metrics(run.dataset, samples.samples, samples.y, seed)
