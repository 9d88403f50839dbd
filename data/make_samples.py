"""Make the dark sample photos in data/test_data/ (what `python test.py` enhances out of the box) from
scikit-image's sample images, all public domain or CC0 (see each function's docstring in skimage.data):
astronaut (NASA), coffee (Rachel Michetti), chelsea (Stefan van der Walt), rocket (SpaceX), camera (Lav Varshney).

    python data/make_samples.py            # rewrites data/test_data/*

A photo is darkened as an underexposed one looks: intensities scaled and pushed down by a gamma, so
shadows go darker than highlights.
"""
import sys
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's modules, from any working directory
from runtime import atomic_output  # noqa: E402

OUT = Path(__file__).resolve().parent / "test_data"
SAMPLES = {  # file name -> skimage.data function; the extension picks the format
    "astronaut.png": "astronaut",
    "coffee.jpg": "coffee",
    "chelsea.jpg": "chelsea",
    "rocket.jpg": "rocket",
    "camera_grey.png": "camera",
}


def darken(image, exposure=0.3, gamma=1.8):
    """exposure * x^gamma on [0, 1]: a mean of about 0.1, like the paper's low-light test photos."""
    x = image.astype(np.float64) / 255
    return np.round(exposure * x ** gamma * 255).astype(np.uint8)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for name, source in SAMPLES.items():
        image = Image.fromarray(darken(getattr(skimage.data, source)()))
        with atomic_output(OUT / name) as tmp:
            image.save(tmp, **({"quality": 92} if name.endswith(".jpg") else {"optimize": True}))
        print(f"{OUT / name}: {image.width}x{image.height} {image.mode}, {(OUT / name).stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
