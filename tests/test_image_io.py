"""image_io.py: reading and writing images of every kind, atomically, with one clear error for bad files."""

import os

import numpy as np
import pytest
from conftest import dark_image
from PIL import Image

import image_io
from runtime import UserError


# ---------------------------------------------------------------------------------------------
# Reading and writing images
# ---------------------------------------------------------------------------------------------
def test_read_write_round_trips_keep_mode_depth_and_alpha(tmp_path):
    rgb = dark_image((30, 40, 3))
    cases = {
        "rgb.png": rgb,
        "rgb.bmp": rgb,
        "rgb.tif": rgb,
        "rgb.webp": rgb,
        "grey.png": rgb[..., 0].copy(),
        "rgba.png": np.dstack([rgb, rgb[..., :1] * 0 + 77]),
        "rgba.webp": np.dstack([rgb, rgb[..., :1] * 0 + 77]),
        "deep.png": dark_image((30, 40, 3), np.uint16),
        "deep.tif": dark_image((30, 40, 3), np.uint16),
        "deep_grey.png": dark_image((30, 40), np.uint16),
    }
    for name, image in cases.items():
        image_io.write_image(tmp_path / name, image)
        back, info = image_io.read_image(tmp_path / name)
        assert back.dtype == image.dtype and back.shape == image.shape, name
        np.testing.assert_array_equal(back, image, err_msg=name)
    assert oct((tmp_path / "rgb.png").stat().st_mode & 0o777) == oct(0o666 & ~current_umask())  # not mkstemp's 0600
    # Formats that cannot hold it: 16 bits are rounded to 8, alpha is dropped from JPEG.
    image_io.write_image(tmp_path / "deep.jpg", cases["deep.png"])
    assert image_io.read_image(tmp_path / "deep.jpg")[0].dtype == np.uint8
    image_io.write_image(tmp_path / "rgba.jpg", cases["rgba.png"])
    assert image_io.read_image(tmp_path / "rgba.jpg")[0].shape == (30, 40, 3)


def test_bgr_order_is_rgb_reversed_through_every_decoder_and_encoder(tmp_path):
    """order="BGR" (test.py's): the same pixels and the same files, channels reversed, whichever library
    decodes (OpenCV, simplejpeg, Pillow) or encodes (OpenCV, Pillow with metadata)."""
    rgb = dark_image((30, 40, 3))
    rgba = np.dstack([rgb, rgb[..., :1] * 0 + 77])
    Image.fromarray(rgb).save(tmp_path / "simplejpeg.jpg")
    Image.fromarray(rgba).save(tmp_path / "opencv.png")
    Image.fromarray(rgb).save(tmp_path / "pillow.gif")  # a format OpenCV declines
    for path in sorted(tmp_path.iterdir()):
        image = image_io.read_image(path)[0]
        bgr = image_io.read_image(path, order="BGR")[0]
        assert image.ndim == 3, path.name
        np.testing.assert_array_equal(bgr, image[..., [2, 1, 0, 3][: image.shape[2]]], err_msg=path.name)
    metadata = {"icc_profile": b"not really a profile"}
    for ext, image, meta in [(".png", rgba, None), (".jpg", rgb, metadata), (".webp", rgba, metadata)]:
        bgr = np.ascontiguousarray(image[..., [2, 1, 0, 3][: image.shape[2]]])
        expected = image_io.encode_image(image, ext, 90, meta)
        np.testing.assert_array_equal(image_io.encode_image(bgr, ext, 90, meta, order="BGR"), expected, err_msg=ext)


def test_palette_images_and_lying_extensions(tmp_path):
    rgb = dark_image((30, 40, 3))
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    palette = Image.fromarray(rgb).convert("P")
    palette.info["transparency"] = 0
    palette.save(tmp_path / "palette_alpha.png", transparency=0)
    assert image_io.read_image(tmp_path / "palette.png")[0].shape == (30, 40, 3)
    assert image_io.read_image(tmp_path / "palette_alpha.png")[0].shape == (30, 40, 4)
    Image.fromarray(rgb).save(tmp_path / "really_a_jpeg.png", format="JPEG")
    image, info = image_io.read_image(tmp_path / "really_a_jpeg.png")
    assert info["format"] == "JPEG" and image.shape == (30, 40, 3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_pillow(tmp_path, orientation):
    from PIL import ImageOps

    rgb = dark_image((30, 40, 3))
    rgb[:5, :10] = 255  # something asymmetric
    exif = Image.Exif()
    exif[image_io.EXIF_ORIENTATION] = orientation
    for name in ("o.png", "o.tif"):  # lossless, so the pixels can be compared exactly
        Image.fromarray(rgb).save(tmp_path / name, exif=exif.tobytes())
        expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / name)).convert("RGB"))
        image, info = image_io.read_image(tmp_path / name)
        assert info["orientation"] == orientation
        np.testing.assert_array_equal(image, expected, err_msg=name)


def test_broken_files_raise_one_clear_error(tmp_path, capfd):
    rgb = dark_image((60, 80, 3))
    for name, fmt in (("t.png", "PNG"), ("t.jpg", "JPEG")):
        Image.fromarray(rgb).save(tmp_path / name, format=fmt)
        data = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.jpg").write_text("not an image")
    for name in ("t.png", "t.jpg", "notes.jpg"):
        with pytest.raises(UserError, match=name):
            image_io.read_image(tmp_path / name)
    assert capfd.readouterr().err == ""  # no libpng/libjpeg chatter either
    Image.fromarray(rgb).save(tmp_path / "big.png")
    with pytest.raises(UserError, match="above the limit"):
        image_io.read_image(tmp_path / "big.png", max_pixels=1000)


def current_umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
