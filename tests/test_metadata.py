"""image_io.py with the files phones and cameras make: EXIF/ICC/XMP carried into the outputs, HEIC and AVIF,
grey with alpha, and corrupt or forged files refused. Every file is made here, at test time."""

import io
import struct

import numpy as np
import pytest
from conftest import dark_image
from PIL import ExifTags, Image, ImageCms

import image_io
from runtime import UserError

ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()  # an RGB profile, as PNG requires
XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/><!-- sgz test --></x:xmpmeta>'


def camera_exif(orientation=1, thumbnail=False):
    """EXIF as a camera writes it: make, model, date, GPS, orientation and (optionally) a thumbnail (IFD1)."""
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[image_io.EXIF_ORIENTATION] = "Canon", "EOS R5", orientation
    exif.get_ifd(ExifTags.IFD.Exif)[0x9003] = "2024:07:14 21:30:05"  # DateTimeOriginal
    exif.get_ifd(ExifTags.IFD.GPSInfo).update({1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0)})
    data = exif.tobytes()
    if thumbnail:  # an IFD1 after IFD0, as cameras write it (Pillow writes none itself)
        data = add_ifd1(data)
    return data


def add_ifd1(exif_bytes):
    """Point IFD0's next-IFD offset at an appended IFD1 with one tag (JPEGInterchangeFormatLength)."""
    tiff = bytearray(exif_bytes[6:])
    big = tiff[:2] == b"MM"
    order = ">" if big else "<"
    ifd0 = struct.unpack(order + "I", tiff[4:8])[0]
    count = struct.unpack(order + "H", tiff[ifd0 : ifd0 + 2])[0]
    next_at = ifd0 + 2 + 12 * count
    offset = len(tiff)
    tiff[next_at : next_at + 4] = struct.pack(order + "I", offset)
    tiff += struct.pack(order + "H", 1) + struct.pack(order + "HHII", 0x0202, 4, 1, 1234) + struct.pack(order + "I", 0)
    return b"Exif\x00\x00" + bytes(tiff)


def save(image, fmt, **options):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt, **options)
    return buffer.getvalue()


def round_trip(data, name, ext):
    """decode_image -> encode_image (as test.py does, without the network) -> the output opened by Pillow."""
    image, info = image_io.decode_image(data, name)
    out = Image.open(io.BytesIO(image_io.encode_image(image, ext, 95, info["metadata"]).tobytes()))
    return image, out


def assert_camera_exif_kept(exif):
    assert exif[0x010F] == "Canon" and exif[0x0110] == "EOS R5"
    assert exif.get_ifd(ExifTags.IFD.Exif)[0x9003] == "2024:07:14 21:30:05"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    assert gps[1] == "N" and tuple(map(float, gps[2])) == (48.0, 51.0, 29.0) and gps[3] == "E"


def test_jpeg_keeps_exif_icc_and_xmp():
    data = save(dark_image((60, 80, 3)), "JPEG", exif=camera_exif(), icc_profile=ICC, xmp=XMP, quality=95)
    _, out = round_trip(data, "photo.jpg", ".jpg")
    assert out.format == "JPEG" and out.size == (80, 60)
    assert_camera_exif_kept(out.getexif())
    assert out.info["icc_profile"] == ICC and out.info["xmp"] == XMP


def test_exif_rotated_photo_comes_out_upright_with_its_exif_and_no_stale_thumbnail():
    stored = dark_image((60, 80, 3))
    stored[:10, :20] = 255  # a mark in the stored top-left corner
    data = save(stored, "JPEG", exif=camera_exif(orientation=6, thumbnail=True), quality=95)
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(ExifTags.IFD.IFD1)  # the input has a thumbnail
    image, out = round_trip(data, "portrait.jpg", ".jpg")
    assert image.shape == (80, 60, 3) and out.size == (60, 80)  # portrait, as a viewer shows the input
    assert image[:20, -10:].mean() > 200  # orientation 6: the stored top-left is now top-right
    exif = out.getexif()
    assert exif[image_io.EXIF_ORIENTATION] == 1  # pixels already upright: a viewer must not turn them again
    assert not exif.get_ifd(ExifTags.IFD.IFD1)  # the dark original's thumbnail is not carried
    assert_camera_exif_kept(exif)


def test_exif_without_changes_is_carried_byte_for_byte():
    exif = camera_exif()
    data = save(dark_image((30, 40, 3)), "JPEG", exif=exif)
    image, info = image_io.decode_image(data, "p.jpg")
    assert image_io.EXIF_HEADER + info["metadata"]["exif"] == exif


def test_png_keeps_icc_exif_and_xmp():
    data = save(dark_image((30, 40, 3)), "PNG", icc_profile=ICC, exif=camera_exif())
    image, out = round_trip(data, "p.png", ".png")
    assert out.info["icc_profile"] == ICC
    assert_camera_exif_kept(out.getexif())
    # XMP: Pillow writes none into PNG, so a PNG with our iTXt chunk is the input of a second round
    _, again = round_trip(
        image_io.encode_image(image, ".png", 95, {"xmp": XMP, "icc_profile": ICC}).tobytes(), "x.png", ".png"
    )
    assert again.info["xmp"] == XMP and again.info["icc_profile"] == ICC
    np.testing.assert_array_equal(np.asarray(again), image)  # the chunks change no pixel


@pytest.mark.parametrize("ext", [".webp", ".tif"])
def test_other_formats_keep_what_they_can_hold(ext):
    fmt = {".webp": "WEBP", ".tif": "TIFF"}[ext]
    image = dark_image((30, 40, 3))
    data = save(image, fmt, icc_profile=ICC, **({"exif": camera_exif(), "lossless": True} if ext == ".webp" else {}))
    back, out = round_trip(data, "p" + ext, ext)
    assert out.info["icc_profile"] == ICC
    np.testing.assert_array_equal(np.asarray(out), image)  # still lossless
    if ext == ".webp":
        assert_camera_exif_kept(out.getexif())


def test_heic_with_exif_and_avif_are_read_and_written_at_their_size():
    image = dark_image((64, 96, 3))
    heic = save(image, "HEIF", exif=camera_exif(), icc_profile=ICC, quality=95)
    decoded, out = round_trip(heic, "IMG_0001.HEIC", ".heic")
    assert decoded.shape == (64, 96, 3) and out.format == "HEIF" and out.size == (96, 64)
    assert np.abs(decoded.astype(int) - image).mean() < 3  # lossy, but the same picture
    assert_camera_exif_kept(out.getexif())
    assert out.info["icc_profile"] == ICC
    avif = save(image, "AVIF", exif=camera_exif(), quality=95)
    decoded, out = round_trip(avif, "web.avif", ".avif")
    assert decoded.shape == (64, 96, 3) and out.format == "AVIF" and out.size == (96, 64)
    assert_camera_exif_kept(out.getexif())


def test_output_extension_keeps_the_format_or_falls_back(monkeypatch):
    assert image_io.output_extension("a.HEIC") == ".HEIC" and image_io.output_extension("a.avif") == ".avif"
    assert image_io.output_extension("a.jpeg") == ".jpeg" and image_io.output_extension("a.heic", "png") == ".png"
    assert image_io.output_extension("IMG_0001.JPG") == ".JPG"  # as the camera spelt it
    monkeypatch.setattr(image_io.pillow_heif, "libheif_info", lambda: {"HEIF": ""})  # a wheel without an encoder
    assert image_io.output_extension("a.heic") == image_io.FALLBACK_EXTENSION
    with pytest.raises(UserError, match="cannot write .heic"):
        image_io.output_extension("a.jpg", "heic")


def test_grey_with_alpha_keeps_its_alpha():
    grey = dark_image((20, 30))
    alpha = np.tile(np.arange(30, dtype=np.uint8) * 8, (20, 1))
    for fmt in ("TIFF", "PNG"):
        image, _ = image_io.decode_image(save(np.dstack([grey, alpha]), fmt), f"la.{fmt}")
        assert image.shape == (20, 30, 4), fmt
        np.testing.assert_array_equal(image[..., 3], alpha)
        np.testing.assert_array_equal(image[..., 0], grey)
    deep = dark_image((20, 30), np.uint16)
    deep[0, :5] = 4321
    buffer = io.BytesIO()
    Image.fromarray(deep).save(buffer, "PNG", transparency=4321)
    image, _ = image_io.decode_image(buffer.getvalue(), "grey16_trns.png")
    assert image.dtype == np.uint16 and image.shape == (20, 30, 4)
    np.testing.assert_array_equal(image[..., 3], np.where(deep == 4321, 0, 65535))
    np.testing.assert_array_equal(image[..., 0], deep)


def test_jpeg_cut_short_is_an_error_unless_allowed(capfd):
    data = save((np.random.default_rng(0).random((120, 160, 3)) * 255).astype(np.uint8), "JPEG", quality=95)
    cut = data[: int(len(data) * 0.4)] + b"\xff\xd9"  # cut to 40% and closed with an end marker
    for broken in (cut, data[: int(len(data) * 0.4)]):
        with pytest.raises(UserError, match=r"cut\.jpg: corrupt or truncated JPEG .*--allow_corrupt"):
            image_io.decode_image(broken, "cut.jpg")
    image, _ = image_io.decode_image(cut, "cut.jpg", strict=False)
    assert image.shape == (120, 160, 3)
    assert "Corrupt JPEG" not in capfd.readouterr().err  # the error says it, not an unnamed libjpeg line


def test_tiny_jpeg_declaring_a_huge_size_is_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # as the scripts run
    data = bytearray(save(np.zeros((16, 16, 3), np.uint8), "JPEG"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = (14000).to_bytes(2, "big") * 2  # height, width
    assert len(data) < 1000
    with pytest.raises(UserError, match=r"bomb\.jpg: its \d+ bytes cannot hold the 14000x14000 pixels"):
        image_io.decode_image(bytes(data), "bomb.jpg")
