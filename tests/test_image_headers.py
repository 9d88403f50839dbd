"""image_io trusts no header: every value that sizes an allocation or a budget is checked for type and range
(header_int), and whatever a decoder library raises on a file's bytes is a UserError naming the file, while
a bug of our own still shows as itself. The files are the corpus's (tests/fuzz, made by make_seeds.py)."""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import TiffImagePlugin

import image_io
from runtime import UserError

FUZZ = Path(__file__).resolve().parent / "fuzz"
SEEDS = sorted((FUZZ / "seeds").glob("*"))
IMAGE_SEEDS = [p for p in SEEDS if p.suffix != ".pth"]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's notes on the damaged files


def regression(name):
    return (FUZZ / "regressions" / "decode" / name).read_bytes()


@pytest.mark.parametrize(
    "value", [0, -1, 2**31, "999", b"16", 16.0, (16,), [16], True, TiffImagePlugin.IFDRational(1, 3)]
)
def test_header_int_refuses_anything_but_a_whole_number_in_range(value):
    with pytest.raises(UserError, match=r"^x\.tif: its header gives the tile width as .*corrupt or forged"):
        image_io.header_int(value, "the tile width", "x.tif")


def test_header_int_gives_back_plain_ints():
    assert (
        image_io.header_int(np.uint16(16), "w", "x") == 16 and type(image_io.header_int(np.uint16(16), "w", "x")) is int
    )
    assert image_io.header_int(32, "bits", "x", high=32) == 32


def test_a_text_tile_width_is_refused_before_anything_is_sized():
    """The issue's 344-byte TIFF: TileWidth as text made the demo's budget a string repeated a billion times."""
    data = regression("tiff_text_tile_width.tif")
    with pytest.raises(UserError, match="^t.tif: its header gives the tile width as '999'"):
        image_io.image_header(data, "t.tif")
    from demo.app import check_upload_header

    with pytest.raises(UserError, match="^t.tif: its header gives the tile width"):  # the demo answers 422
        check_upload_header(data, "t.tif", 40e6)


def test_a_forged_bit_depth_gives_no_budget_and_one_user_error():
    seed = (FUZZ / "seeds" / "grey16.png").read_bytes()
    ihdr = bytearray(seed[12:29])  # type and data: the CRC covers both
    ihdr[12] = 255  # bit depth
    forged = seed[:12] + bytes(ihdr) + struct.pack(">I", zlib.crc32(ihdr)) + seed[33:]
    assert image_io.image_header(forged, "f.png") is None
    with pytest.raises(UserError, match="^f.png: not a readable image"):
        image_io.decode_image(forged, "f.png")


def test_tiles_and_bit_depth_size_the_budget():
    header = image_io.image_header((FUZZ / "seeds" / "tiled.tif").read_bytes())
    assert header == ("TIFF", 24, 16, (24 * 16 + 16 * 16) * 4)
    assert image_io.image_header((FUZZ / "seeds" / "grey16.png").read_bytes()).decoded_bytes == 24 * 16 * 4 * 2


@pytest.mark.parametrize(
    "name, message",
    [
        ("jpeg_junk_before_sof.jpg", "corrupt or truncated JPEG .ValueError: Corrupt JPEG data: 8 extraneous bytes"),
        ("bmp_4x2000000.bmp", "corrupt or truncated BMP file"),
        ("tiff_text_tile_width.tif", "its header gives the tile width as '999'"),
    ],
)
def test_decoder_failures_are_user_errors_naming_the_file(name, message):
    with pytest.raises(UserError, match=f"^{name}: {message}"):
        image_io.decode_image(regression(name), name)


def test_only_the_decoder_calls_are_mapped_a_bug_of_ours_still_shows(monkeypatch):
    jpeg = (FUZZ / "seeds" / "rgb.jpg").read_bytes()

    def decoder_bug(*args, **kwargs):
        raise struct.error("unpack requires a buffer of 4 bytes")

    monkeypatch.setattr(image_io.simplejpeg, "decode_jpeg_header", decoder_bug)
    with pytest.raises(UserError, match=r"^a.jpg: corrupt or truncated JPEG \(error: unpack requires"):
        image_io.decode_image(jpeg, "a.jpg")
    monkeypatch.undo()

    def our_bug(*args, **kwargs):
        raise KeyError("ours")

    monkeypatch.setattr(image_io, "check_jpeg_size", our_bug)
    with pytest.raises(KeyError):
        image_io.decode_image(jpeg, "a.jpg")


def test_running_out_of_memory_is_not_blamed_on_the_file(monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(image_io, "decode_with_pil", out_of_memory)
    with pytest.raises(MemoryError):
        image_io.decode_image((FUZZ / "seeds" / "animated.gif").read_bytes(), "a.gif")


def decoded_or_refused(data):
    try:
        image, info = image_io.decode_image(data, "h.bin", max_pixels=4_000_000)
    except UserError as e:
        assert str(e).startswith("h.bin: ") and "\n" not in str(e)
        return
    assert image.dtype in (np.uint8, np.uint16) and image.ndim in (2, 3) and image.shape[0] * image.shape[1] > 0
    assert info["orientation"] in range(1, 9)


@settings(
    max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.sampled_from(IMAGE_SEEDS), st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), max_size=8))
def test_any_mutation_of_a_real_image_decodes_or_is_one_user_error(seed, changes):
    data = bytearray(seed.read_bytes())
    for at, value in changes:
        data[at % len(data)] = value
    decoded_or_refused(bytes(data))


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(st.sampled_from(IMAGE_SEEDS), st.integers(0, 4096))
def test_any_truncation_of_a_real_image_decodes_or_is_one_user_error(seed, length):
    decoded_or_refused(seed.read_bytes()[:length])


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_decode_or_are_one_user_error(data):
    decoded_or_refused(data)


def test_header_size_reads_paths_and_bytes_and_gives_none_for_whatever_pillow_raises(monkeypatch):
    tiled = FUZZ / "seeds" / "tiled.tif"
    assert image_io.header_size(tiled) == image_io.header_size(tiled.read_bytes()) == (24, 16)
    assert image_io.header_size(b"not an image") is None

    def parser_bug(*args, **kwargs):
        raise struct.error("unpack requires a buffer of 8 bytes")  # not one of the types callers used to list

    monkeypatch.setattr(image_io.Image, "open", parser_bug)
    assert image_io.header_size(tiled) is None and image_io.image_header(tiled.read_bytes()) is None
    import dataloader
    import test as tester

    assert not dataloader.header_is_readable(tiled)
    assert tester.estimated_output_bytes(tiled, Path("out.png")) == 3 * tiled.stat().st_size


def test_opencv_is_never_handed_a_png_whose_chunks_claim_more_than_the_file(monkeypatch):
    """Fuzz-found: OpenCV allocated a chunk's declared length (3.5 GB) for a 189-byte PNG; Pillow reads what is."""
    forged = (FUZZ / "regressions" / "decode" / "png_chunk_claims_3gb.png").read_bytes()
    assert not image_io.png_chunks_fit(forged) and not image_io.png_chunks_fit(forged[:-12])
    iend_with_a_byte = (FUZZ / "regressions" / "decode" / "png_iend_not_empty_then_4gb.png").read_bytes()
    assert not image_io.png_chunks_fit(iend_with_a_byte)  # OpenCV read on past it, into a 4 GB chunk
    assert all(image_io.png_chunks_fit(p.read_bytes()) for p in IMAGE_SEEDS if p.suffix == ".png")

    def out_of_memory(*args, **kwargs):
        raise AssertionError("OpenCV handed a PNG it would allocate gigabytes for")

    monkeypatch.setattr(image_io.cv2, "imdecode", out_of_memory)
    with pytest.raises(UserError, match="^f.png: corrupt or truncated PNG file"):
        image_io.decode_image(forged, "f.png")


def test_a_tile_larger_than_the_pixel_limit_is_refused_before_decoding():
    import io

    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((16, 24, 3), np.uint8), tile=(64, 64), photometric="rgb")
    assert image_io.decode_image(buffer.getvalue(), "t.tif", max_pixels=4096)[0].shape == (16, 24, 3)
    with pytest.raises(UserError, match="^t.tif: its header declares tiles of 4,096 pixels, above the limit of 4,095"):
        image_io.decode_image(buffer.getvalue(), "t.tif", max_pixels=4095)


def test_a_profile_too_large_for_a_jpeg_is_left_behind_not_a_crash():
    """An ICC profile is a count of 64 KB chunks in one byte: a TIFF's tag can hold a larger one."""
    big = {"icc_profile": bytes(256 * 65519), "xmp": b"<x/>"}
    segments = image_io.jpeg_segments(big)
    assert b"ICC_PROFILE" not in segments and b"<x/>" in segments
    assert image_io.jpeg_segments({"icc_profile": bytes(255 * 65519)}).count(b"ICC_PROFILE\x00") == 255


def test_every_frame_counts_towards_the_pixel_limit_before_it_is_decoded():
    """Fuzz-found: a GIF whose canvas grows after its first frame (16 rows, then 271): the limit checked from
    the first header alone would let a later frame declare 65535x65535."""
    gif = (FUZZ / "regressions" / "decode" / "gif_canvas_grows_after_frame_1.gif").read_bytes()
    image, info = image_io.decode_image(gif, "g.gif", max_pixels=13_392, all_frames=True)
    assert [f.shape[0] for f in [image, *info["animation"]["frames"]]] == [16, 271, 271]
    with pytest.raises(UserError, match="^g.gif: its frames are over 0 megapixels together"):
        image_io.decode_image(gif, "g.gif", max_pixels=13_391, all_frames=True)
