"""Built-in datasets: 2D toy distributions generated on the device, and samples read from a file."""

from flowkit import hookimpl


@hookimpl
def flowkit_register(registry):
    """Register the datasets ``moons``, ``circles``, ``eight-gaussians``, ``checkerboard`` and ``file``."""
    from flowkit_data.files import FileDataset
    from flowkit_data.toy import Checkerboard, Circles, EightGaussians, Moons

    registry.add("dataset", "moons", Moons)
    registry.add("dataset", "circles", Circles)
    registry.add("dataset", "eight-gaussians", EightGaussians)
    registry.add("dataset", "checkerboard", Checkerboard)
    registry.add("dataset", "file", FileDataset)
