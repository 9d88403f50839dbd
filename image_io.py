"""Image files in and out: finding them, decoding them robustly (format from the content, EXIF orientation,
grey, palette, alpha, 16 bits, HEIC/AVIF, pixel limits from the header, corrupt data refused), encoding
them with the input's metadata (EXIF, ICC profile, XMP), and writing any file atomically (a temporary
file beside it, then a rename). Used by test.py, the video script, the web demo, evaluate.py, the
training Dataset and train.py's checkpoints.

Libraries: OpenCV encodes and decodes the classic formats (the fast path), simplejpeg decodes JPEG
(libjpeg-turbo, as fast as OpenCV, but it raises on libjpeg's "Corrupt JPEG data" warnings where OpenCV
only prints them), Pillow reads the headers and metadata, decodes what OpenCV declines and writes
WebP/TIFF/AVIF with metadata, and pillow-heif adds HEIC/HEIF to Pillow.

Nothing is dropped silently:
- Multi-frame images (GIF, APNG, animated WebP, multi-page TIFF): read_image(all_frames=True) returns every
  frame (info["animation"]: the other frames, every frame's duration in ms, the loop count) and write_image
  writes them back with their durations and loop count (Pillow: save_all). Such frames are decoded by Pillow
  as 8-bit RGB, RGBA or grey (16-bit pages are rounded to 8 bits). Without all_frames (the demo, thumbnails,
  evaluation, training) the first frame is read. HEIF/AVIF image
  sequences are read as their primary image. Pillow's GIF and APNG writers merge consecutive identical
  frames into one longer frame (the animation looks the same, the count differs).
- CMYK images (print JPEGs) are converted to sRGB through their ICC profile (ImageCms), without one by
  Pillow's formula; an ICC profile is carried only onto pixels of its colour space (an RGB profile onto
  RGB, a grey one onto grey): any other (CMYK, Lab, grey on RGB) is dropped, and info["notes"] says so in
  a line the scripts print."""

import collections
import contextlib
import io
import numbers
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pillow_heif
import simplejpeg
from PIL import ExifTags, Image, ImageCms, ImageOps, ImageSequence, UnidentifiedImageError, features

from runtime import UserError, atomic_output

pillow_heif.register_heif_opener()  # HEIC/HEIF for Image.open and Image.save (AVIF is Pillow's own)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".heic", ".heif", ".avif")


def walk_files(root, loops=None):
    """Every file under the folder `root` (sorted, recursively), following links to folders; a link back
    into a folder already being walked (a loop) is not followed but appended to `loops` as
    (link, the folder it leads back to)."""
    files = []

    def walk(folder, ancestors):
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):  # as rglob: no folder, no files
            return
        for entry in entries:
            path = Path(entry.path)
            if entry.is_dir():  # follows links
                real = path.resolve()
                if real in ancestors:
                    if loops is not None:
                        loops.append((path, real))
                    continue
                walk(path, ancestors | {real})
            elif entry.is_file():
                files.append(path)

    walk(Path(root), {Path(root).resolve()})
    return files


def find_images(path, extensions=IMAGE_EXTENSIONS):
    """Image files under a folder (recursively, sorted, through linked folders), or [path] for a single file."""
    path = Path(path)
    if path.is_file():
        return [path]
    return [p for p in walk_files(path) if p.suffix.lower() in extensions]


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
EXIF_HEADER = b"Exif\x00\x00"
# Formats whose files may hold several frames that are all the picture (APNG, animated WebP, GIF, multi-page
# TIFF); an MPO's second image is a preview or a depth map, a HEIF's are other pictures: their first is read.
MULTI_FRAME_FORMATS = ("GIF", "PNG", "WEBP", "TIFF")
# Output extensions whose formats hold several frames, and Pillow's names for them.
MULTI_FRAME_WRITERS = {".gif": "GIF", ".png": "PNG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF"}
ICC_COLOUR_SPACE = slice(16, 20)  # the data colour space signature in an ICC profile's 128-byte header
# Pillow's format names for the extensions it writes (OpenCV writes the others, and these without metadata).
PILLOW_FORMATS = {
    ".gif": "GIF",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".heic": "HEIF",
    ".heif": "HEIF",
    ".avif": "AVIF",
}
FALLBACK_EXTENSION = ".jpg"  # for a format this installation cannot write (HEIC without an HEVC encoder, ...)


def can_write(ext):
    """Whether this installation can write the format the extension names."""
    if ext in (".heic", ".heif"):
        return bool(pillow_heif.libheif_info().get("HEIF"))  # the wheel's HEVC encoder (x265)
    if ext == ".avif":
        return bool(features.check("avif"))
    return ext in IMAGE_EXTENSIONS


def output_extension(src, output_format="same"):
    """The extension of src's output: `output_format` (jpg, png, ...) or, for "same", src's own (as it is
    spelt: IMG_1.JPG stays IMG_1.JPG) when this installation can write it, else FALLBACK_EXTENSION."""
    ext = Path(src).suffix if output_format == "same" else "." + output_format.lower().lstrip(".")
    if output_format == "same" and not can_write(ext.lower()):
        return FALLBACK_EXTENSION
    if not can_write(ext.lower()):
        raise UserError(f"this installation cannot write {ext} files; choose another --output_format")
    return ext


TIFF_BITS_PER_SAMPLE, TIFF_TILE_WIDTH, TIFF_TILE_LENGTH = 258, 322, 323
PNG_BIT_DEPTH_OFFSET = 24  # signature (8), IHDR length and type (8), width and height (8)
MAX_HEADER_SIDE = 2**31 - 1  # the most a PNG may declare (TIFF and BMP headers may say more; nothing decodes it)
MAX_BITS_PER_SAMPLE = 32  # 32-bit float TIFFs are read (and then refused); no image format here holds more


def header_int(value, what, name, low=1, high=MAX_HEADER_SIDE):
    """A number read from a file's header (a size, a tile size, a bit depth), checked before it sizes any
    allocation or budget: a forged file may give it as text, a fraction, a list or far out of range, where
    arithmetic on it would build a 1 GB string or a negative budget. Returns it as an int; anything but a
    whole number from `low` to `high` is a UserError naming the file."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and low <= value <= high:
        return int(value)
    shown = repr(value)[:40]
    raise UserError(
        f"{name}: its header gives {what} as {shown}, not a whole number from {low} to {high} (corrupt or forged)"
    )


def first_line(e, limit=200):
    """An exception as one short line: its type and the first line of its message."""
    message = (str(e).strip().splitlines() or [""])[0][:limit]
    return f"{type(e).__name__}: {message}" if message else type(e).__name__


@contextlib.contextmanager
def decoder_errors(name, what, hint=""):
    """Around a call into a decoder library (Pillow, OpenCV, simplejpeg, libheif) on a file's bytes: whatever
    the library raises there (cv2.error, ValueError, OSError, struct.error, zlib.error, SyntaxError, EOFError,
    IndexError, ... its parsers are not written to raise only one type) is the file's fault, a UserError
    naming it. Only decoder calls go inside, so a bug in our own code still shows as itself. MemoryError
    is not the file's to fix: it goes through, to the caller's containment."""
    try:
        yield
    except (UserError, MemoryError):
        raise
    except UnidentifiedImageError:  # Pillow's message would only repeat the name (or print a BytesIO)
        raise UserError(f"{name}: not a readable image (no image format recognised)") from None
    except Image.DecompressionBombError as e:  # Pillow's own limit (Image.MAX_IMAGE_PIXELS), when below ours
        raise UserError(f"{name}: {e}") from None
    except Exception as e:  # noqa: BLE001  (see above: the decoder's exception types are not a closed set)
        raise UserError(f"{name}: {what} ({first_line(e)}){hint}") from None


def exif_orientation(im):
    """The EXIF orientation (1..8) of an opened, not yet decoded, PIL image; 1 when there is none."""
    if im.format == "PNG" and "exif" not in im.info:
        return 1  # PIL would decode the whole PNG looking for a late eXIf chunk; upright by far most often
    try:
        orientation = im.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block must not make a good photo unreadable
        return 1
    # A forged one may be text, a fraction or a list (unhashable): only the eight defined values count.
    is_defined = isinstance(orientation, int) and not isinstance(orientation, bool)
    return orientation if is_defined and orientation in ORIENTATION_TRANSFORMS else 1


def carried_exif(im, orientation):
    """The EXIF block (TIFF bytes, without the 'Exif' header) for the output, or None: unchanged when it
    can be, rewritten by Pillow when the pixels were turned upright (orientation set to 1) or when it
    holds a thumbnail (of the dark original: dropped). TIFF inputs' tags describe their own pixel
    layout, so none is carried from them."""
    raw = im.info.get("exif")
    if not raw or im.format == "TIFF":
        return None
    raw = raw[len(EXIF_HEADER) :] if raw.startswith(EXIF_HEADER) else raw
    try:
        exif = im.getexif()
        if exif.get(EXIF_ORIENTATION, 1) == 1 and orientation == 1 and not exif.get_ifd(ExifTags.IFD.IFD1):
            return raw
        if EXIF_ORIENTATION in exif:
            exif[EXIF_ORIENTATION] = 1
        return exif.tobytes()[len(EXIF_HEADER) :]  # Pillow writes no IFD1: the thumbnail goes
    except Exception:  # a damaged EXIF block is left behind rather than failing the photo
        return None


def carried_metadata(im, orientation):
    """What the output keeps of an opened image's metadata: {"exif", "icc_profile", "xmp"} (bytes; absent
    keys: nothing). The ICC profile and XMP go unchanged: SGZ works on the encoded values, as the
    paper's code does, so the profile still says how to show them."""
    metadata = {
        "exif": carried_exif(im, orientation),
        "icc_profile": im.info.get("icc_profile"),
        "xmp": im.info.get("xmp"),
    }
    if isinstance(metadata["xmp"], str):
        metadata["xmp"] = metadata["xmp"].encode()
    return {key: value for key, value in metadata.items() if value}


def png_chunks_fit(data):
    """Whether a PNG is a whole chain of chunks, each within the file, up to its end chunk (IEND, empty).
    OpenCV's reader allocates a chunk's declared length before reading it: a 189-byte PNG whose last chunk
    claims 3.5 GB took 4 GB of memory, and so did one whose IEND held a byte (OpenCV read on past it); a PNG
    cut short makes libpng print a message."""
    at = 8  # the signature
    while at + 12 <= len(data):  # length, type, ..., CRC
        length, kind = struct.unpack_from(">I4s", data, at)
        at += 12 + length
        if kind == b"IEND":
            return length == 0 and at <= len(data)
    return False


def opencv_decodes_cleanly(image_format, orientation, data, mode, info):
    """False where OpenCV would misbehave: a PNG whose chunks do not fit in the file (png_chunks_fit), a
    TIFF with an orientation tag (its TIFF reader applies the flips itself and fails on the rotations),
    grey images with alpha or a transparent colour (it drops the alpha), and formats it cannot read."""
    if image_format not in ("PNG", "BMP", "TIFF", "WEBP"):
        return False
    if mode in ("LA", "La") or (mode in ("L", "I", "I;16", "I;16B") and "transparency" in info):
        return False
    if image_format == "PNG":
        return png_chunks_fit(data)
    return image_format != "TIFF" or orientation == 1


def check_jpeg_size(data, width, height, name):
    """A JPEG's Huffman-coded scans spend at least one bit on every 8x8 block of its luma: a file far too
    small for the size its header declares is truncated or forged (libjpeg would fill it with grey)."""
    blocks = -(-width // 8) * -(-height // 8)
    if len(data) * 8 < blocks:
        raise UserError(
            f"{name}: its {len(data)} bytes cannot hold the {width}x{height} pixels its header "
            "declares (truncated or forged); not decoded"
        )


def decode_jpeg(data, name, strict, order="RGB"):
    """A JPEG's pixels (colour in `order`, or grey) with libjpeg-turbo through simplejpeg, which (strict)
    turns libjpeg's warnings about corrupt data into an error. None for CMYK/YCCK, which Pillow converts."""
    hint = " (test.py --allow_corrupt enhances it anyway)" if strict else ""
    with decoder_errors(name, "corrupt or truncated JPEG", hint):
        colorspace = simplejpeg.decode_jpeg_header(data)[2]
        if colorspace not in ("Gray", "YCbCr", "RGB"):
            return None
        image = simplejpeg.decode_jpeg(data, "GRAY" if colorspace == "Gray" else order, strict=strict)
    return image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image


def decode_with_pil(data, notes):
    """Pillow's decoder, for what OpenCV declines: its error messages are clear and it reads more variants.
    Returns pil_array of its (first) frame."""
    with Image.open(io.BytesIO(data)) as im:
        return pil_array(im, notes)


def cmyk_to_rgb(im, notes):
    """A CMYK image in sRGB: through its ICC profile where it has a usable one (ImageCms), else by Pillow's
    formula (with a note in `notes`)."""
    icc = im.info.get("icc_profile")
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as e:
            notes.append(f"its CMYK ICC profile could not be used ({e}); converted to RGB without it")
    return im.convert("RGB")


def pil_array(im, notes):
    """An opened PIL image (or frame) as an RGB(A)/grey array, uint8 or, for 16-bit grey, uint16, turned
    upright by its EXIF orientation. Grey with alpha comes back as RGBA (the enhancer's alpha layout),
    16-bit grey with a transparent value as 16-bit RGBA, CMYK as sRGB (cmyk_to_rgb)."""
    im = ImageOps.exif_transpose(im)  # Pillow's TIFF reader may already have applied it: let Pillow decide
    if im.mode.startswith("I"):  # 16-bit grey ("I;16*", or "I" from older Pillow)
        grey = np.asarray(im).clip(0, 65535).astype(np.uint16)
        transparent = im.info.get("transparency")
        if not isinstance(transparent, int):
            return grey
        alpha = np.where(grey == transparent, 0, 65535).astype(np.uint16)
        return np.dstack([grey, grey, grey, alpha])
    if im.mode == "F":
        raise UserError(f"floating-point {im.format} images are not supported")
    if im.mode == "CMYK":
        return np.array(cmyk_to_rgb(im, notes))
    has_alpha = "A" in im.mode or "transparency" in im.info
    mode = "RGBA" if has_alpha else "L" if im.mode in ("1", "L") else "RGB"
    return np.array(im.convert(mode))  # a writable array, as OpenCV's (asarray's would be read-only)


def swap_red_and_blue(image, dst=None):
    """RGB(A) <-> BGR(A), into dst (image itself: in place) or a new array; grey comes back as it is."""
    if image.ndim == 2:
        return image
    return cv2.cvtColor(image, cv2.COLOR_RGB2BGR if image.shape[2] == 3 else cv2.COLOR_RGBA2BGRA, dst=dst)


def read_image(path, max_pixels=DEFAULT_MAX_PIXELS, strict=True, all_frames=False, order="RGB"):
    """An image file as a numpy array: HxW (grey), HxWx3 (RGB) or HxWx4 (RGBA), uint8 or uint16, turned
    upright by its EXIF orientation. order="BGR": colour comes as BGR(A), OpenCV's own layout (every frame),
    which saves its decoder (and write_image's encoder) a conversion. The format comes from the content, not
    the extension. Returns
    (array, info) with info = {"format": "PNG", "orientation": 1, "metadata": {...}, "frames": 1 (read), "notes": []}
    (metadata: see carried_metadata; write_image takes it back; notes: one-line remarks for the user, as a
    profile not carried). For a multi-frame image the array is its first frame; with all_frames,
    info["animation"] = {"frames": the other frames' arrays, "durations": every frame's in ms (None where
    the format has none), "loop": the loop count (None: play once)}, which write_image takes back.

    Raises UserError (one line naming the file) for a file that is not an image, is truncated or
    corrupt (libjpeg's warnings count, unless strict=False), or has more than `max_pixels` pixels
    (checked from the header, before any decoding; all frames together with all_frames)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    return decode_image(data, path, max_pixels, strict, all_frames, order)


ImageHeader = collections.namedtuple("ImageHeader", "format width height decoded_bytes")


def header_size(source, name="image"):
    """(width, height) from the header of an image file (a path, or its bytes), nothing decoded: None where
    Pillow finds no image (read_image says why); a UserError naming the file (`name`) where the header's
    size is no number in range (header_int)."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            width, height = im.size
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001  (whatever Pillow's parsers raise: no header; read_image says why)
        return None
    return header_int(width, "the width", name), header_int(height, "the height", name)


def tiff_tile_pixels(tags, name):
    """The pixels of one tile of a tiled TIFF (its TIFF tags as a dict), 0 for strips: the decoder's buffer
    for one tile, which the header may declare far larger than the image."""
    if TIFF_TILE_WIDTH not in tags and TIFF_TILE_LENGTH not in tags:
        return 0
    width = header_int(tags.get(TIFF_TILE_WIDTH), "the tile width", name)
    return width * header_int(tags.get(TIFF_TILE_LENGTH), "the tile length", name)


def image_header(data, name="image"):
    """What the header of an image file in memory says, before anything is decoded: its format, size and
    the most bytes that decoding it can take: the image at up to 4 samples of the header's bit depth, plus
    a tiled TIFF's tile buffer (a tile may be declared far larger than the image). The web demo budgets its
    memory with it. None where Pillow finds no image (decode_image says why); a UserError naming the file
    (`name`) where a value the budget rests on is not a number in range (see header_int)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            image_format, (width, height) = im.format, im.size
            tags = dict(getattr(im, "tag_v2", {}))
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001  (whatever Pillow's parsers raise: no header; decode_image says why)
        return None
    width, height = header_int(width, "the width", name), header_int(height, "the height", name)
    if image_format == "PNG":  # Pillow opens 16-bit colour PNGs as 8-bit modes; OpenCV keeps 16 bits
        samples = [data[PNG_BIT_DEPTH_OFFSET]]
    else:
        samples = tags.get(TIFF_BITS_PER_SAMPLE, 8)
        samples = list(samples) if isinstance(samples, tuple) and samples else [samples]
    bits = max(header_int(b, "the bits per sample", name, high=MAX_BITS_PER_SAMPLE) for b in samples)
    tile_pixels = tiff_tile_pixels(tags, name)
    return ImageHeader(image_format, width, height, (width * height + tile_pixels) * 4 * max(1, -(-bits // 8)))


def frame_count(im):
    """The frames of an opened image that are all the picture (see MULTI_FRAME_FORMATS); 1 for a still,
    known without decoding (is_animated reads at most the second frame's header)."""
    if im.format not in MULTI_FRAME_FORMATS or not getattr(im, "is_animated", False):
        return 1
    return im.n_frames


def profile_matches(icc, image):
    """Whether an ICC profile describes pixels like `image`'s: an RGB profile RGB(A) pixels, a grey one grey."""
    space = icc[ICC_COLOUR_SPACE] if len(icc) >= 128 else b""
    return space == (b"GRAY" if image.ndim == 2 else b"RGB ")


def drop_foreign_profile(metadata, image, was_cmyk, notes):
    """The metadata without an ICC profile that does not describe the decoded pixels (a CMYK profile on
    pixels now sRGB, a Lab or grey profile on RGB), with a note saying so (none for CMYK converted through
    it: the output is plain sRGB)."""
    icc = metadata.get("icc_profile")
    if not icc or profile_matches(icc, image):
        return metadata
    if not was_cmyk:
        space = icc[ICC_COLOUR_SPACE].decode("latin-1").strip() if len(icc) >= 128 else "unknown"
        kind = "grey" if image.ndim == 2 else "RGB"
        notes.append(f"its ICC profile is for {space or 'unknown'} colours, not {kind}: not carried to the output")
    return {key: value for key, value in metadata.items() if key != "icc_profile"}


def uniform_frames(frames):
    """Frames decoded one by one (a GIF's first is a palette image, the others RGB(A); TIFF pages each have
    their own mode) made one layout: 8 bits, grey only if all are, alpha for all if any has it."""
    frames = [((f.astype(np.float32) + 128.5) / 257).astype(np.uint8) if f.dtype == np.uint16 else f for f in frames]
    if all(f.ndim == 2 for f in frames):
        return frames
    frames = [np.dstack([f, f, f]) if f.ndim == 2 else f for f in frames]
    if any(f.shape[2] == 4 for f in frames):
        frames = [f if f.shape[2] == 4 else np.dstack([f, np.full(f.shape[:2], 255, np.uint8)]) for f in frames]
    return frames


def decode_frames(data, notes, name="image", max_pixels=DEFAULT_MAX_PIXELS):
    """Every frame of a multi-frame image (Pillow): (frames, durations in ms or None each, loop count or None).
    Each frame's size is read from its own header (a GIF's canvas may grow at any frame, to 65535x65535):
    all frames together may have at most `max_pixels`, checked before each is decoded."""
    frames, durations, pixels = [], [], 0
    with Image.open(io.BytesIO(data)) as im:
        loop = im.info.get("loop")
        for frame in ImageSequence.Iterator(im):
            pixels += header_int(frame.width, "a frame's width", name) * header_int(frame.height, "its height", name)
            if pixels > max_pixels:
                raise UserError(
                    f"{name}: its frames are over {max_pixels / 1e6:.0f} megapixels together (a frame larger than "
                    "the first, corrupt or forged?); raise --max_mpix if the image is genuine"
                )
            frame.load()  # WebP's reader sets a frame's duration when it decodes it
            durations.append(frame.info.get("duration"))
            frames.append(pil_array(frame, notes))
    return uniform_frames(frames), durations, loop


def decode_image(data, name, max_pixels=DEFAULT_MAX_PIXELS, strict=True, all_frames=False, order="RGB"):
    """read_image for the bytes of an image file already in memory (the web demo's uploads); `name` is
    what the error messages call it."""
    with decoder_errors(name, "not a readable image"), Image.open(io.BytesIO(data)) as im:  # header only
        image_format, (w, h), orientation = im.format, im.size, exif_orientation(im)
        mode, info, metadata = im.mode, dict(im.info), carried_metadata(im, orientation)
        tags = dict(getattr(im, "tag_v2", {}))
        frames = frame_count(im) if all_frames else 1  # the header of the next frame at most, if asked
    w, h = header_int(w, "the width", name), header_int(h, "the height", name)
    frames = header_int(frames, "the frame count", name)
    if w * h > max_pixels:
        raise UserError(
            f"{name}: {w}x{h} is {w * h / 1e6:.0f} megapixels, above the limit of "
            f"{max_pixels / 1e6:.0f} (a decompression bomb?); raise --max_mpix if the image is genuine"
        )
    tile_pixels = tiff_tile_pixels(tags, name)
    if tile_pixels > max_pixels:  # the decoder allocates a whole tile, whatever the image's size
        raise UserError(
            f"{name}: its header declares tiles of {tile_pixels:,} pixels, above the limit of "
            f"{max_pixels:,.0f} (corrupt or forged)"
        )
    if all_frames and w * h * frames > max_pixels:
        raise UserError(
            f"{name}: {frames} frames of {w}x{h} are {w * h * frames / 1e6:.0f} megapixels, above the limit of "
            f"{max_pixels / 1e6:.0f}; raise --max_mpix if the image is genuine"
        )
    notes = []
    if all_frames and frames > 1:
        with decoder_errors(name, f"corrupt or truncated {image_format} file"):
            images, durations, loop = decode_frames(data, notes, name, max_pixels)
        metadata = drop_foreign_profile(metadata, images[0], mode == "CMYK", notes)
        if order == "BGR":
            images = [swap_red_and_blue(f, dst=f) for f in images]
        animation = {"frames": images[1:], "durations": durations, "loop": loop}
        return images[0], {
            "format": image_format,
            "orientation": orientation,
            "metadata": metadata,
            "frames": frames,
            "notes": notes,
            "animation": animation,
        }
    image = None
    if image_format in ("JPEG", "MPO"):
        if strict:
            check_jpeg_size(data, w, h, name)
        image = decode_jpeg(data, name, strict, order)
        if image is not None and orientation != 1:
            image = np.ascontiguousarray(ORIENTATION_TRANSFORMS[orientation](image))
    elif opencv_decodes_cleanly(image_format, orientation, data, mode, info):
        try:
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # 1.3-4x faster than Pillow
        except cv2.error:  # OpenCV's own limits (a side over 2^20, ...) or a file it misreads: Pillow decides
            image = None
        if image is not None:
            if order == "RGB":
                image = swap_red_and_blue(image, dst=image)
            if orientation != 1:  # IMREAD_UNCHANGED leaves it to us
                image = np.ascontiguousarray(ORIENTATION_TRANSFORMS[orientation](image))
    if image is None:
        with decoder_errors(name, f"corrupt or truncated {image_format} file"):
            image = decode_with_pil(data, notes)
        if order == "BGR":
            image = swap_red_and_blue(image, dst=image)
    if image.dtype not in (np.uint8, np.uint16):
        raise UserError(f"{name}: {image.dtype} samples are not supported (8- and 16-bit images are)")
    metadata = drop_foreign_profile(metadata, image, mode == "CMYK", notes)
    return image, {
        "format": image_format,
        "orientation": orientation,
        "metadata": metadata,
        "frames": frames,
        "notes": notes,
    }


def write_image(path, image, jpeg_quality=95, metadata=None, animation=None, order="RGB"):
    """Write an array as read_image returns it, atomically, in the format the extension names, with
    `metadata` (read_image's info["metadata"]) where the format holds it; with `animation` (read_image's
    info["animation"], its frames replaced) every frame, their durations and loop count (encode_frames).
    order: the arrays', as read_image's."""
    path = Path(path)
    if animation and animation["frames"]:
        frames = [image, *animation["frames"]]
        if order == "BGR":  # Pillow writes them: RGB
            frames = [swap_red_and_blue(f) for f in frames]
        encoded = encode_frames(path, frames, animation, jpeg_quality, metadata or {})
    else:
        encoded = encode_image(image, path.suffix.lower(), jpeg_quality, metadata, order)
    try:
        with atomic_output(path) as tmp:
            Path(tmp).write_bytes(encoded)  # numpy's tofile would report a full disk as "N requested and M written"
    except OSError as e:  # no space, no permission, a name too long: the user's to fix, named here
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None


def encode_frames(path, frames, animation, quality, metadata):
    """Several frames -> one GIF, APNG, animated WebP (lossless) or multi-page TIFF (Pillow's save_all),
    each frame with its duration, and the loop count. Another format holds one frame: UserError."""
    ext = path.suffix.lower()
    if ext not in MULTI_FRAME_WRITERS:
        raise UserError(
            f"{path}: {len(frames)} frames, and {ext} holds one; choose --output_format gif, png, webp or tif"
        )
    pil_format = MULTI_FRAME_WRITERS[ext]
    options = pillow_metadata(pil_format, metadata)
    durations, loop = animation.get("durations"), animation.get("loop")
    if durations and all(d is not None for d in durations):
        options["duration"] = [round(d) for d in durations]
    if loop is not None:
        options["loop"] = loop
    if pil_format == "WEBP":
        options["lossless"] = True
    if pil_format == "GIF" and frames[0].ndim == 3 and frames[0].shape[2] == 4:
        options["disposal"] = 2  # transparent frames replace, not overlay, the one before
    first, *rest = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
    buffer = io.BytesIO()
    first.save(buffer, pil_format, save_all=True, append_images=rest, **options)
    return np.frombuffer(buffer.getvalue(), np.uint8)


def pillow_metadata(pil_format, metadata):
    """The save() options that carry `metadata` in a Pillow format: TIFF holds the ICC profile of the three
    (its own tags describe its pixels), GIF none."""
    if pil_format == "GIF":
        return {}
    options = {key: value for key, value in metadata.items() if pil_format != "TIFF" or key == "icc_profile"}
    if "exif" in options:
        options["exif"] = EXIF_HEADER + options["exif"]
    return options


def encoder_params(ext, jpeg_quality):
    if ext in (".jpg", ".jpeg"):
        return [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]
    if ext == ".png" and hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV >= 4.11
        # On photos the "up" filter encodes 11% faster than OpenCV's default ("sub") and 16% smaller.
        return [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
    return []


def jpeg_segments(metadata):
    """APP1 (EXIF, XMP) and APP2 (ICC profile, in chunks of at most 65519 bytes) segments."""

    def segment(marker, payload):
        return b"\xff" + marker + struct.pack(">H", len(payload) + 2) + payload if len(payload) <= 65533 else b""

    out = b""
    if "exif" in metadata:
        out += segment(b"\xe1", EXIF_HEADER + metadata["exif"])
    if "xmp" in metadata:
        out += segment(b"\xe1", b"http://ns.adobe.com/xap/1.0/\x00" + metadata["xmp"])
    if "icc_profile" in metadata:
        icc = metadata["icc_profile"]
        chunks = [icc[i : i + 65519] for i in range(0, len(icc), 65519)]
        # A JPEG numbers the chunks in one byte: a profile over 255 chunks (16.7 MB, only a TIFF's tag can hold
        # one) is left behind, as the segments too long for one are.
        for number, chunk in enumerate(chunks if len(chunks) <= 255 else [], 1):
            out += segment(b"\xe2", b"ICC_PROFILE\x00" + bytes([number, len(chunks)]) + chunk)
    return out


def png_chunks(metadata):
    """iCCP, eXIf and iTXt (XMP) chunks, as the PNG specification lays them out."""

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    out = b""
    if "icc_profile" in metadata:
        out += chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(metadata["icc_profile"]))
    if "exif" in metadata:
        out += chunk(b"eXIf", metadata["exif"])
    if "xmp" in metadata:
        out += chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + metadata["xmp"])
    return out


def with_metadata(encoded, ext, metadata):
    """OpenCV's JPEG or PNG bytes with the metadata segments inserted: after the JFIF header (JPEG), after
    IHDR (PNG), where the specifications want them. The pixels stay OpenCV's: no second encoding."""
    data = encoded.tobytes()
    if ext == ".png":
        at = 8 + 8 + struct.unpack(">I", data[8:12])[0] + 4  # signature, IHDR (length, type, data, CRC)
        extra = png_chunks(metadata)
    else:
        at = 4 + struct.unpack(">H", data[4:6])[0] if data[2:4] == b"\xff\xe0" else 2  # after SOI and APP0
        extra = jpeg_segments(metadata)
    return np.frombuffer(data[:at] + extra + data[at:], np.uint8)


def encode_with_pil(image, ext, quality, metadata):
    """Pillow's (or pillow-heif's) encoder: GIF, HEIC and AVIF always, WebP and TIFF when there is metadata to
    carry. WebP is lossless, as OpenCV writes it; TIFF holds only the ICC profile of the three."""
    pil_format = PILLOW_FORMATS[ext]
    options = pillow_metadata(pil_format, metadata)
    if pil_format == "WEBP":
        options["lossless"] = True
    elif pil_format != "GIF":
        options["quality"] = quality
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, pil_format, **options)
    return np.frombuffer(buffer.getvalue(), np.uint8)


def encode_image(image, ext, jpeg_quality=95, metadata=None, order="RGB"):
    """An array as read_image returns it -> the encoded file (a uint8 numpy buffer) in the format `ext`
    names (".png", ...), carrying `metadata` (read_image's info["metadata"]) where the format can.
    16 bits are kept in PNG and TIFF (elsewhere rounded to 8), alpha everywhere but JPEG. `jpeg_quality`
    is also HEIC's and AVIF's quality. order: "RGB" or "BGR", the layout of colour arrays (OpenCV encodes
    BGR as it is; Pillow gets a converted copy)."""
    metadata = metadata or {}
    if image.dtype == np.uint16 and ext not in FORMATS_WITH_16_BITS:
        image = ((image.astype(np.float32) + 128.5) / 257).astype(np.uint8)  # round(x / 257)
    if image.ndim == 3 and image.shape[2] == 4 and ext in FORMATS_WITHOUT_ALPHA:
        image = image[..., :3]
    pillow_can_hold = image.dtype == np.uint8 or image.ndim == 2  # Pillow has no 16-bit RGB(A) mode
    if ext in (".gif", ".heic", ".heif", ".avif") or (metadata and ext in PILLOW_FORMATS and pillow_can_hold):
        rgb = swap_red_and_blue(image) if order == "BGR" else image
        return encode_with_pil(np.ascontiguousarray(rgb), ext, jpeg_quality, metadata)
    if order == "RGB":
        image = swap_red_and_blue(image)
    ok, encoded = cv2.imencode(ext, image, encoder_params(ext, jpeg_quality))
    if not ok:
        raise OSError(f"OpenCV could not encode a {image.shape} {image.dtype} image as {ext}")
    if metadata and ext in (".jpg", ".jpeg", ".png"):
        encoded = with_metadata(encoded, ext, metadata)
    return encoded
