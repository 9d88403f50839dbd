"""The training Dataset: low-light images as square float tensors (files are read by image_io)."""

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.utils.data as data
from PIL import Image

from image_io import DEFAULT_MAX_PIXELS, find_images, header_size, load_rgb
from runtime import UserError, input_failure


def header_is_readable(path, max_pixels=DEFAULT_MAX_PIXELS):
    """True when Pillow recognises the file from its header and it declares no more pixels than the
    reader accepts (a PNG that claims 100000x100000 is a decompression bomb, not a training image)."""
    try:
        size = header_size(path, path)
    except UserError:  # a forged size
        return False
    return size is not None and size[0] * size[1] <= max_pixels


class LowLightDataset(data.Dataset):
    """Training images resized to `size` x `size` (Lanczos), as (3, size, size) float tensors in [0, 1].

    Files whose header cannot be read or declares too many pixels are dropped at construction
    (`self.skipped` lists them); a file that fails to decode later (truncated, corrupt) is replaced
    by the next image with a warning (runtime.input_failure's line), so one bad file never stops a long run:
    any Exception while one image is read, decoded or resized, MemoryError included, is that image's.
    """

    def __init__(self, root, size=512):
        self.root, self.size = Path(root), size
        self.paths, self.skipped = [], []
        for p in find_images(root):
            (self.paths if header_is_readable(p) else self.skipped).append(p)

    def __len__(self):
        return len(self.paths)

    def load(self, index):
        im = load_rgb(self.paths[index]).resize((self.size, self.size), Image.LANCZOS)
        return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()

    def __getitem__(self, index):
        for attempt in range(len(self.paths)):
            i = (index + attempt) % len(self.paths)
            try:
                return self.load(i)
            except Exception as e:
                warnings.warn(f"skipping training image {input_failure(self.paths[i], e)}", stacklevel=2)
        raise RuntimeError("no readable training image left")
