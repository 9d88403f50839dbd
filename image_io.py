"""Image files in and out: finding them, decoding them robustly (format from the content, EXIF orientation,
grey, palette, alpha, 16 bits, pixel limits from the header), encoding them, and writing any file
atomically (a temporary file beside it, then a rename). Used by test.py, the video script, the web demo,
evaluate.py, the training Dataset and train.py's checkpoints."""
import collections
import contextlib
import io
import os
import secrets
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from option import UserError

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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
            try:  # 0o666 less the umask: the mode of any new file (mkstemp's would be private, 0o600)
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                break
            except FileExistsError:
                continue
    except OSError as e:  # a read-only or missing folder, a file where a folder should be: the user's to fix
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def load_rgb(source):
    """An image file (a path, or a binary file object) as an 8-bit RGB PIL image, read by
    `decode_image` (content-sniffed, EXIF orientation applied); grey is replicated, alpha dropped,
    16-bit rounded to 8 bits."""
    if hasattr(source, "read"):
        image, _ = decode_image(source.read(), getattr(source, "name", "image"))
    else:
        image, _ = read_image(source)
    if image.dtype == np.uint16:
        image = (image / 257.0).round().astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(image[:, :, :3]))


DEFAULT_MAX_PIXELS = 200_000_000
EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the view of the stored pixels that shows them upright (as PIL's exif_transpose).
ORIENTATION_TRANSFORMS = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: a.swapaxes(0, 1)[:, ::-1],
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: a.swapaxes(0, 1)[::-1],
}
FORMATS_WITH_16_BITS = (".png", ".tif", ".tiff")
FORMATS_WITHOUT_ALPHA = (".jpg", ".jpeg")
TIFF_BITS_PER_SAMPLE, TIFF_TILE_WIDTH, TIFF_TILE_LENGTH = 258, 322, 323
PNG_BIT_DEPTH_OFFSET = 24  # signature (8), IHDR length and type (8), width and height (8)


def exif_orientation(im):
    """The EXIF orientation (1..8) of an opened, not yet decoded, PIL image; 1 when there is none."""
    if im.format == "PNG" and "exif" not in im.info:
        return 1  # PIL would decode the whole PNG looking for a late eXIf chunk; upright by far most often
    try:
        orientation = im.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block must not make a good photo unreadable
        return 1
    return orientation if orientation in ORIENTATION_TRANSFORMS else 1


def opencv_decodes_cleanly(image_format, orientation, data):
    """False where OpenCV would misbehave: a PNG without its end chunk or a JPEG without an end marker
    after its last scan (it prints a libpng/libjpeg message and, for JPEG, returns a half-grey picture
    without an error), and a TIFF with an orientation tag (its TIFF reader applies the flips itself and
    fails on the rotations)."""
    if image_format == "PNG":
        return data.rfind(b"IEND") != -1
    if image_format in ("JPEG", "MPO"):
        return data.rfind(b"\xff\xd9") > data.rfind(b"\xff\xda")
    return image_format != "TIFF" or orientation == 1


def decode_with_pil(data):
    """Pillow's decoder, for what OpenCV declines: its error messages are clear and it reads more variants.
    Returns an RGB(A)/grey array, uint8 or, for 16-bit grey, uint16, turned upright by its EXIF orientation."""
    with Image.open(io.BytesIO(data)) as im:
        im = ImageOps.exif_transpose(im)  # Pillow's TIFF reader may already have applied it: let Pillow decide
        if im.mode.startswith("I"):  # 16-bit grey ("I;16*", or "I" from older Pillow)
            return np.asarray(im).clip(0, 65535).astype(np.uint16)
        if im.mode == "F":
            raise UserError(f"floating-point {im.format} images are not supported")
        has_alpha = "A" in im.mode or "transparency" in im.info
        mode = "RGBA" if has_alpha else "L" if im.mode in ("1", "L") else "RGB"
        return np.asarray(im.convert(mode))


def read_image(path, max_pixels=DEFAULT_MAX_PIXELS):
    """An image file as a numpy array: HxW (grey), HxWx3 (RGB) or HxWx4 (RGBA), uint8 or uint16, turned
    upright by its EXIF orientation. The format comes from the content, not the extension. Returns
    (array, info) with info = {"format": "PNG", "orientation": 1}.

    Raises UserError (one line naming the file) for a file that is not an image, is truncated or
    corrupt, or has more than `max_pixels` pixels (checked from the header, before any decoding)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    return decode_image(data, path, max_pixels)


ImageHeader = collections.namedtuple("ImageHeader", "format width height decoded_bytes")


def image_header(data):
    """What the header of an image file in memory says, before anything is decoded: its format, size and
    the most bytes that decoding it can take: the image at up to 4 samples of the header's bit depth, plus
    a tiled TIFF's tile buffer (a tile may be declared far larger than the image). The web demo budgets its
    memory with it. None where Pillow finds no image (decode_image says why)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            image_format, (width, height) = im.format, im.size
            tags = getattr(im, "tag_v2", {})
            bits = tags.get(TIFF_BITS_PER_SAMPLE, 8)
            tile_pixels = tags.get(TIFF_TILE_WIDTH, 0) * tags.get(TIFF_TILE_LENGTH, 0)
    except (Image.DecompressionBombError, UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None
    if image_format == "PNG":
        bits = data[PNG_BIT_DEPTH_OFFSET]  # Pillow opens 16-bit colour PNGs as 8-bit modes; OpenCV keeps 16 bits
    bits = max(bits) if isinstance(bits, tuple) else bits
    return ImageHeader(image_format, width, height, (width * height + tile_pixels) * 4 * max(1, -(-bits // 8)))


def decode_image(data, name, max_pixels=DEFAULT_MAX_PIXELS):
    """read_image for the bytes of an image file already in memory (the web demo's uploads); `name` is
    what the error messages call it."""
    try:
        with Image.open(io.BytesIO(data)) as im:  # header only: format, size, EXIF
            image_format, (w, h), orientation = im.format, im.size, exif_orientation(im)
    except Image.DecompressionBombError as e:  # Pillow's own limit (Image.MAX_IMAGE_PIXELS), when below ours
        raise UserError(f"{name}: {e}") from None
    except UnidentifiedImageError:  # Pillow's message would only repeat the name (or print a BytesIO)
        raise UserError(f"{name}: not a readable image (no image format recognised)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{name}: not a readable image ({e})") from None
    if w * h > max_pixels:
        raise UserError(f"{name}: {w}x{h} is {w * h / 1e6:.0f} megapixels, above the limit of "
                             f"{max_pixels / 1e6:.0f} (a decompression bomb?); raise --max_mpix if the image is genuine")
    image = None
    if opencv_decodes_cleanly(image_format, orientation, data):
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # 1.3-4x faster than Pillow
    if image is not None:
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB if image.shape[2] == 3 else cv2.COLOR_BGRA2RGBA, dst=image)
        if orientation != 1:  # IMREAD_UNCHANGED leaves it to us
            image = np.ascontiguousarray(ORIENTATION_TRANSFORMS[orientation](image))
    else:
        try:
            image = decode_with_pil(data)
        except (OSError, SyntaxError, ValueError) as e:
            raise UserError(f"{name}: corrupt or truncated {image_format} file ({e})") from None
    if image.dtype not in (np.uint8, np.uint16):
        raise UserError(f"{name}: {image.dtype} samples are not supported (8- and 16-bit images are)")
    return image, {"format": image_format, "orientation": orientation}


def write_image(path, image, jpeg_quality=95):
    """Write an array as read_image returns it, atomically, in the format the extension names."""
    path = Path(path)
    encoded = encode_image(image, path.suffix.lower(), jpeg_quality)
    try:
        with atomic_output(path) as tmp:
            encoded.tofile(tmp)
    except OSError as e:  # no space, no permission, a name too long: the user's to fix, named here
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None


def encoder_params(ext, jpeg_quality):
    if ext in (".jpg", ".jpeg"):
        return [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]
    if ext == ".png" and hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV >= 4.11
        # On photos the "up" filter encodes 11% faster than OpenCV's default ("sub") and 16% smaller.
        return [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
    return []


def encode_image(image, ext, jpeg_quality=95):
    """An array as read_image returns it -> the encoded file (a uint8 numpy buffer) in the format `ext`
    names (".png", ...). 16 bits are kept in PNG and TIFF (elsewhere rounded to 8), alpha everywhere but JPEG."""
    if image.dtype == np.uint16 and ext not in FORMATS_WITH_16_BITS:
        image = ((image.astype(np.float32) + 128.5) / 257).astype(np.uint8)  # round(x / 257)
    if image.ndim == 3 and image.shape[2] == 4 and ext in FORMATS_WITHOUT_ALPHA:
        image = image[..., :3]
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR if image.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    ok, encoded = cv2.imencode(ext, image, encoder_params(ext, jpeg_quality))
    if not ok:
        raise OSError(f"OpenCV could not encode a {image.shape} {image.dtype} image as {ext}")
    return encoded
