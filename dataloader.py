"""Everything between files and tensors: finding images, reading them, writing files atomically,
and the training Dataset."""
import contextlib
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.utils.data as data
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def find_images(path, extensions=IMAGE_EXTENSIONS):
    """Image files under a folder (recursively, sorted), or [path] for a single file."""
    path = Path(path)
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in extensions)


@contextlib.contextmanager
def atomic_output(path):
    """Yield a temporary path beside `path`; on success it replaces `path` in one step, on failure
    it is removed. A reader never sees a half-written file and an old file survives a crash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def load_rgb(path):
    """An image file as an 8-bit RGB PIL image, EXIF orientation applied (grey, palette, alpha and
    16-bit inputs are converted)."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            im = Image.fromarray((np.asarray(im, dtype=np.float64) / 257.0).round().clip(0, 255).astype(np.uint8))
        return im.convert("RGB")


class LowLightDataset(data.Dataset):
    """Training images resized to `size` x `size` (Lanczos), as (3, size, size) float tensors in [0, 1].

    Files PIL cannot identify are dropped at construction (`self.skipped` lists them); a file that
    fails to decode later is replaced by the next image with a warning, so one bad file never
    stops a long run.
    """

    def __init__(self, root, size=512):
        self.size = size
        self.paths, self.skipped = [], []
        for p in find_images(root):
            try:
                with Image.open(p):
                    pass
                self.paths.append(p)
            except (UnidentifiedImageError, OSError):
                self.skipped.append(p)

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
            except (OSError, ValueError, SyntaxError) as e:
                warnings.warn(f"skipping unreadable training image {self.paths[i]}: {e}", stacklevel=2)
        raise RuntimeError("no readable training image left")
