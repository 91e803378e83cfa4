"""Feature extraction speed of a pretrained backbone (jclust.features) on this machine.

  python benchmarks/feature_speed.py --source=fashion_mnist --images=512
  python benchmarks/feature_speed.py --source=photos --images=512     # synthetic 640x480 JPEGs

Runs the extraction twice, on ``--batch`` images (compilation and one batch) and on ``--images``
images, and prints both times and the steady rate (images/s) from their difference, so the
compilation is not counted. ``photos`` writes ``--images`` JPEG files of 640x480 (smooth
random colour fields) to a temporary folder and reads them as a ``folder:`` source (decoding and
the ImageNet centre crop on the host, in threads); any other source is loaded into memory at its
own size and resized on the devices.
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jclust import data as jdata  # noqa: E402
from jclust import features  # noqa: E402


def _photos(folder: str, count: int) -> list[str]:
    from PIL import Image
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        coarse = rng.integers(0, 256, (6, 8, 3)).astype(np.uint8)
        image = Image.fromarray(coarse).resize((640, 480), Image.Resampling.BICUBIC)
        path = os.path.join(folder, f"{i:05d}.jpg")
        image.save(path, quality=90)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="fashion_mnist")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--layers", default="pooled", help="comma-separated")
    args = parser.parse_args()
    spec = features.Spec("efficientnet_lite0", layers=tuple(args.layers.split(",")),
                         image_size=args.image_size, batch_size=args.batch)
    with tempfile.TemporaryDirectory() as folder:
        if args.source == "photos":
            paths = _photos(folder, args.images)
            shape = (args.image_size, args.image_size, 3)
            readers = {n: jdata.FolderImages(paths[:n], shape, "crop")
                       for n in (args.batch, args.images)}
        else:
            images = jdata.load(args.source).inputs[:args.images]
            readers = {n: jdata.ArrayImages(images[:n]) for n in (args.batch, args.images)}
        times = {}
        for count, reader in readers.items():
            start = time.perf_counter()
            out = features.extract(reader, spec, say=lambda _: None)
            times[count] = time.perf_counter() - start
            assert out.kept.size == count
        steady = (args.images - args.batch) / (times[args.images] - times[args.batch])
        print(f"{args.source}: {args.images} images at {args.image_size}x{args.image_size}, "
              f"batch {args.batch}, layers {args.layers}: {times[args.batch]:.1f} s for the first "
              f"{args.batch} (compilation included), {times[args.images]:.1f} s for all; steady "
              f"{steady:.1f} images/s ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
