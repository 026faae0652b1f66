"""Built-in datasets: 2D toy distributions generated on the device, samples read from a file, and
labelled images (the 8x8 digits, image arrays from files, memory-mapped or not, folders of PNG/JPEG
files, Hugging Face datasets saved with save_to_disk)."""

from flowkit import hookimpl


@hookimpl
def flowkit_register(registry):
    """Register the datasets ``moons``, ``circles``, ``eight-gaussians``, ``checkerboard``, ``file``,
    ``digits``, ``images``, ``image-folder`` and ``hf-dataset``."""
    from flowkit_data.files import FileDataset
    from flowkit_data.folders import ImageFolder
    from flowkit_data.hf import HFDataset
    from flowkit_data.images import Digits, ImageFile
    from flowkit_data.toy import Checkerboard, Circles, EightGaussians, Moons

    registry.add("dataset", "moons", Moons)
    registry.add("dataset", "circles", Circles)
    registry.add("dataset", "eight-gaussians", EightGaussians)
    registry.add("dataset", "checkerboard", Checkerboard)
    registry.add("dataset", "file", FileDataset)
    registry.add("dataset", "digits", Digits)
    registry.add("dataset", "images", ImageFile)
    registry.add("dataset", "image-folder", ImageFolder)
    registry.add("dataset", "hf-dataset", HFDataset)
