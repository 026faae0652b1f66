"""Write scikit-learn's 8x8 digits as a folder of 16x16 PNG files, one subfolder per class: the data
of examples/image-folder.toml, and a stand-in for your own images.

    python examples/make_digits_folder.py            # writes examples/digits-16/0/0000.png ...
    python examples/make_digits_folder.py --size 32 --out /tmp/digits-32

Each digit (pixels 0..16) is scaled to 0..255 and upscaled bilinearly by Pillow. The same 1,797 files
are written on every machine; an existing folder is left as it is.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def make_digits_folder(out: Path, size: int = 16) -> Path:
    """Write the digits under ``out/<class>/<index>.png`` at ``size`` x ``size``; returns ``out``."""
    from PIL import Image
    from sklearn.datasets import load_digits

    if out.is_dir() and any(out.iterdir()):
        return out
    bunch = load_digits()
    pixels = np.rint(np.asarray(bunch.images) * (255.0 / 16.0)).astype(np.uint8)
    for index, (image, label) in enumerate(zip(pixels, bunch.target, strict=True)):
        folder = out / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        # a uint8 (8, 8) array is a grey (mode "L") image
        big = Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR)
        big.save(folder / f"{index:04d}.png")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "digits-16", help="the folder to write")
    parser.add_argument("--size", type=int, default=16, help="the side of each image in pixels")
    args = parser.parse_args()
    print(make_digits_folder(args.out, args.size))


if __name__ == "__main__":
    main()
