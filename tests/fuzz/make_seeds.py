"""Writes the fuzzers' seed corpus, tests/fuzz/seeds/: small real files of every kind the targets read
(each format and its variants: grey, alpha, palette, 16 bits, tiles, EXIF orientation, ICC/XMP, progressive,
CMYK, frames; tiny videos in four containers; and tiny PyTorch checkpoints), a few hundred bytes to a few KB
each. Also writes the issue's known crashers into tests/fuzz/regressions/. The outputs are committed; run this
again only to change them:

    python tests/fuzz/make_seeds.py
"""

import io
import struct
import sys
from pathlib import Path

import av
import numpy as np
import pillow_heif
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

import model  # noqa: E402

pillow_heif.register_heif_opener()


def photo(width=24, height=16, channels=3, dtype=np.uint8, seed=0):
    top = np.iinfo(dtype).max
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = (x / width + y / height)[..., None] * np.linspace(0.2, 0.5, channels)
    return np.clip((base + rng.random((height, width, channels)) * 0.05) * top, 0, top).astype(dtype)


def save(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def srgb_profile():
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exif(orientation):
    e = Image.Exif()
    e[0x0112] = orientation
    e[0x010F] = "SGZ"
    return e.tobytes()


def images():
    rgb = Image.fromarray(photo())
    grey = Image.fromarray(photo(channels=1)[..., 0])
    rgba = Image.fromarray(photo(channels=4))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'
    grey16 = Image.fromarray(photo(channels=1, dtype=np.uint16)[..., 0])
    frames = [Image.fromarray(photo(seed=i)) for i in range(3)]
    cmyk = rgb.convert("CMYK")

    yield "rgb.jpg", save(rgb, "JPEG", quality=80)
    yield "grey.jpg", save(grey, "JPEG")
    yield "progressive.jpg", save(rgb, "JPEG", progressive=True)
    yield "orientation6_icc_xmp.jpg", save(rgb, "JPEG", exif=exif(6), icc_profile=srgb_profile(), xmp=xmp)
    yield "cmyk.jpg", save(cmyk, "JPEG")
    yield "rgb.png", save(rgb, "PNG")
    yield "grey.png", save(grey, "PNG")
    yield "rgba.png", save(rgba, "PNG")
    yield "palette_transparent.png", save(palette, "PNG", transparency=0)
    yield "grey16.png", save(grey16, "PNG")
    yield "rgb16.png", rgb16_png()
    yield "exif_icc.png", save(rgb, "PNG", exif=exif(3), icc_profile=srgb_profile())
    yield "animated.png", save(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=50)
    yield "rgb.bmp", save(rgb.resize((8, 6)), "BMP")
    yield "palette.bmp", save(palette.resize((8, 6)), "BMP")
    yield "rgb.tif", save(rgb, "TIFF", compression="tiff_deflate")
    yield "grey16.tif", save(grey16, "TIFF")
    yield "tiled.tif", tiled_tiff(photo())
    yield "orientation8.tif", save(rgb, "TIFF", tiffinfo={0x0112: 8})
    yield "pages.tif", save(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    yield "cmyk.tif", save(cmyk, "TIFF")
    yield "lossy.webp", save(rgb, "WEBP", quality=60)
    yield "lossless_alpha.webp", save(rgba, "WEBP", lossless=True, exif=exif(6))
    yield "animated.webp", save(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50)
    yield "animated.gif", save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    yield "rgb.heic", save(rgb, "HEIF", quality=50)
    yield "rgb.avif", save(rgb, "AVIF", quality=50)


def tiled_tiff(pixels):
    """A TIFF in 16x16 tiles (Pillow writes only strips): through tifffile, which scikit-image brings."""
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pixels, tile=(16, 16), photometric="rgb", compression="zlib")
    return buffer.getvalue()


def rgb16_png():
    """A 16-bit colour PNG (Pillow writes none): through OpenCV."""
    import cv2

    ok, encoded = cv2.imencode(".png", photo(8, 6, dtype=np.uint16))
    assert ok
    return encoded.tobytes()


def checkpoints():
    torch.manual_seed(0)
    tiny = {"e_conv1.depth_conv.weight": torch.zeros(2, 1, 1, 1), "e_conv1.depth_conv.bias": torch.ones(2)}
    yield "tiny_state_dict.pth", save_torch(tiny)
    yield "tiny_state_dict_legacy.pth", save_torch(tiny, _use_new_zipfile_serialization=False)
    yield "tiny_training_checkpoint.pth", save_torch({"model": tiny, "optimizer": {}, "epoch": 1, "step": 2})
    net = model.EnhanceNet()  # the real architecture, half of its 10 layers (a full one is 50 KB)
    half = dict(list(net.state_dict().items())[:6])
    yield "partial_enhance_net.pth", save_torch(half)


def videos():
    """Three-frame clips: H.264 with AAC in MP4, MPEG-4 in AVI, VP9 in WebM, 10-bit H.264 in Matroska."""
    kinds = [
        ("h264_aac.mp4", "mp4", "libx264", "yuv420p", "aac"),
        ("mpeg4.avi", "avi", "mpeg4", "yuv420p", None),
        ("vp9.webm", "webm", "libvpx-vp9", "yuv420p", None),
        ("h264_10bit.mkv", "matroska", "libx264", "yuv420p10le", None),
    ]
    for name, container, codec, pix_fmt, audio in kinds:
        buffer = io.BytesIO()
        with av.open(buffer, "w", format=container) as out:
            video = out.add_stream(codec, rate=10)
            video.width, video.height, video.pix_fmt = 32, 16, pix_fmt
            sound = out.add_stream(audio, rate=8000, layout="mono") if audio else None
            for i in range(3):
                frame = av.VideoFrame.from_ndarray(photo(32, 16, seed=i), format="rgb24").reformat(format=pix_fmt)
                frame.pts = i
                out.mux(video.encode(frame))
            out.mux(video.encode(None))
            if sound:
                samples = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
                samples.sample_rate, samples.pts = 8000, 0
                out.mux(sound.encode(samples))
                out.mux(sound.encode(None))
        yield name, buffer.getvalue()


def save_torch(obj, **options):
    buffer = io.BytesIO()
    torch.save(obj, buffer, **options)
    return buffer.getvalue()


def known_crashers():
    """The crashers issue 19 names, as (target, name, bytes)."""
    tiled = tiled_tiff(photo(8, 8))
    # TileWidth as text: tags.get(322) * tags.get(323) became string repetition (1 GB) in the demo.
    text_tile = tiled.replace(struct.pack("<HHII", 322, 4, 1, 16), struct.pack("<HHI4s", 322, 2, 4, b"999\x00"))
    assert text_tile != tiled
    jpeg = save(Image.fromarray(photo()), "JPEG")
    sof = jpeg.index(b"\xff\xc0")
    junk_before_sof = jpeg[:sof] + b"\x00" * 8 + jpeg[sof:]  # simplejpeg.decode_jpeg_header: ValueError
    bmp = bytearray(save(Image.fromarray(photo(4, 2)), "BMP"))
    struct.pack_into("<i", bmp, 22, 2_000_000)  # 4 x 2,000,000 pixels in a 118-byte BMP: cv2.error
    for target in ("decode", "header", "demo"):
        yield target, "tiff_text_tile_width.tif", text_tile
        yield target, "jpeg_junk_before_sof.jpg", junk_before_sof
        yield target, "bmp_4x2000000.bmp", bytes(bmp)


def main():
    seeds = HERE / "seeds"
    seeds.mkdir(exist_ok=True)
    total = 0
    for name, data in [*images(), *videos(), *checkpoints()]:
        (seeds / name).write_bytes(data)
        total += len(data)
        print(f"{name:32} {len(data):6} bytes")
    for target, name, data in known_crashers():
        folder = HERE / "regressions" / target
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    print(f"seeds: {total} bytes")


if __name__ == "__main__":
    main()
