"""Built-in metrics: exact W2, sliced W2 and the energy distance between sample sets; for labelled
images, class accuracy and a Fréchet distance in a reference classifier's features (:mod:`.images`);
FID and KID in Inception-v3 features (:mod:`.fid`, :mod:`.inception`)."""

from flowkit import hookimpl


@hookimpl
def flowkit_register(registry):
    """Register the metrics ``w2``, ``sliced-w2``, ``energy``, ``fid`` and ``kid``."""
    from flowkit_metrics.distances import W2, Energy, SlicedW2
    from flowkit_metrics.fid import FID, KID

    registry.add("metric", "w2", W2)
    registry.add("metric", "sliced-w2", SlicedW2)
    registry.add("metric", "energy", Energy)
    registry.add("metric", "fid", FID)
    registry.add("metric", "kid", KID)


@hookimpl
def flowkit_evaluate_metrics(run, samples, reference):
    """Image metrics of a labelled image dataset with a held-out split; and where ``[evaluate] metric``
    is ``fid`` or ``kid``, what its reference was (split, count, features and resize, cache file) and
    the same distance from the held-out images to that reference. ``None`` where neither applies."""
    from flowkit_metrics.fid import reference_metrics
    from flowkit_metrics.images import image_metrics

    seed = run.table("run").seed if run.table("run") is not None else 0
    found = image_metrics(run.dataset, samples.samples, samples.y, seed) or {}
    evaluate = run.table("evaluate")
    if evaluate is not None:
        found.update(reference_metrics(evaluate.metric, run.dataset, reference) or {})
    return found or None
