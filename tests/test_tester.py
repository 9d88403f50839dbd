"""test.py: the Tester computes what the network computes (to 1/255) in bands and from a few rows, on
every kind of image; reading and writing images; the command line's files, messages and exit codes."""
import os
import runpy
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import dataloader
import model
import test as sgz_test  # the project's test.py (by module, so pytest does not collect Tester)
from conftest import ROOT
from option import get_test_parser

SAMPLES = sorted(runpy.run_path(str(ROOT / "data" / "make_samples.py"))["SAMPLES"])  # the shipped dark photos


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A random network whose last layer is scaled up so that its curve map spans [-1, 1]: every
    branch of the curve is exercised (the official weights are tested where ../shared is present)."""
    torch.manual_seed(0)
    net = model.EnhanceNet()
    with torch.no_grad():
        net.e_conv7.point_conv.weight.mul_(30)
    path = tmp_path_factory.mktemp("weights") / "strong.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def tester(weights):
    return sgz_test.Tester(weights, device="cpu")


def dark_image(shape, dtype=np.uint8, seed=0):
    top = np.iinfo(dtype).max
    smooth = cv2.resize(np.random.default_rng(seed).random((8, 8, 3)), (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    image = np.clip(smooth ** 3 * 0.4 * top, 0, top).astype(dtype)
    return image if len(shape) == 3 else image[..., 0]


@torch.inference_mode()
def reference(weights, image, scale_factor=12):
    """The straightforward fp32 computation: model.EnhanceNet on the whole image, rounded like save_image."""
    top = np.iinfo(image.dtype).max
    net = model.load_enhance_net(weights, scale_factor=scale_factor).eval()
    x = torch.from_numpy(image.astype(np.float32) / top).permute(2, 0, 1)[None]
    return (net(x)[0][0].permute(1, 2, 0) * top + 0.5).clamp(0, top).numpy().astype(image.dtype)


def max_abs_diff(a, b):
    return np.abs(a.astype(np.int64) - b.astype(np.int64)).max()


# ---------------------------------------------------------------------------------------------
# The computation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(240, 360, 3), (241, 359, 3), (100, 37, 3), (13, 11, 3), (1, 1, 3), (700, 20, 3)])
def test_enhance_array_equals_the_whole_image_computation(weights, tester, shape):
    image = dark_image(shape)
    out = tester.enhance_array(image)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert max_abs_diff(out, reference(weights, image)) <= 1  # 1/255: only rounding ties may differ


@pytest.mark.parametrize("scale_factor", [1, 5])
def test_other_scale_factors(weights, scale_factor):
    image = dark_image((60, 84, 3))
    out = sgz_test.Tester(weights, scale_factor=scale_factor, device="cpu").enhance_array(image)
    assert max_abs_diff(out, reference(weights, image, scale_factor)) <= 1


def test_official_weights_reproduce_the_official_outputs(shared, official_weights):
    parity = np.load(shared / "reference" / "parity.npz")
    tester = sgz_test.Tester(official_weights, device="cpu")
    for i in range(4):
        expected = (parity[f"out_s12_{i}"].transpose(1, 2, 0) * 255 + 0.5).clip(0, 255).astype(np.uint8)
        assert max_abs_diff(tester.enhance_array(parity[f"in{i}"]), expected) <= 1


def test_bands_of_rows_equal_the_whole_upsample():
    low = torch.rand(7, 9 * 3) * 2 - 1  # (h, W * 3): the curve map after the column resize
    whole = F.interpolate(low.view(1, 7, 27, 1).permute(0, 3, 1, 2), size=(50, 27), mode="bilinear",
                          align_corners=True)[0, 0]
    fill = sgz_test.row_upsampler(low, 50)
    for bounds in ([0, 50], [0, 1, 2, 50], [0, 13, 17, 31, 49, 50]):
        bands = [fill(a, b, out=torch.empty(b - a, 27)) for a, b in zip(bounds, bounds[1:])]
        torch.testing.assert_close(torch.cat(bands), whole, rtol=0, atol=1e-6)


@pytest.mark.parametrize("sizes", [(360, 480, 30, 40), (361, 479, 30, 40), (100, 37, 8, 3), (7, 5, 1, 1)])
def test_resizing_from_a_few_rows_equals_f_interpolate(sizes):
    height, width, h, w = sizes
    image = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8)
    whole = F.interpolate(image.permute(2, 0, 1)[None].float(), size=(h, w), mode="bilinear", align_corners=False)
    ours = sgz_test.resize_axis(sgz_test.resize_axis(image, 0, h, False), 1, w, False)
    torch.testing.assert_close(ours, whole[0].permute(1, 2, 0), rtol=0, atol=1e-4)  # 0..255 scale


def test_in_place_curve_equals_the_model_curve():
    g = torch.Generator().manual_seed(0)
    x, r = torch.rand(64, 5, 3, generator=g), torch.rand(64, 5, 3, generator=g) * 2 - 1
    scratch = (torch.empty_like(x), torch.empty_like(x))
    ours = sgz_test.apply_curve_(x.clone(), r, scratch, scale=255.0)
    # the two forms round differently over 8 fp32 steps: ~2e-3 of a 0-255 level at most, far below one level
    torch.testing.assert_close(ours, model.apply_curve(x, r) * 255 + 0.5, rtol=0, atol=4e-3)


def test_band_size_does_not_change_the_result(weights):
    image = dark_image((97, 61, 3))
    small_bands = sgz_test.Tester(weights, device="cpu")
    small_bands.band_elements = 1  # one row per band
    assert max_abs_diff(small_bands.enhance_array(image), sgz_test.Tester(weights, device="cpu").enhance_array(image)) == 0


def test_grey_rgba_and_16_bit(weights, tester):
    rgb = dark_image((50, 70, 3))
    grey = tester.enhance_array(rgb[..., 1].copy())
    assert grey.shape == (50, 70) and grey.dtype == np.uint8
    rgba = np.dstack([rgb, np.arange(50 * 70).reshape(50, 70) % 256]).astype(np.uint8)
    out = tester.enhance_array(rgba)
    assert out.shape == rgba.shape
    np.testing.assert_array_equal(out[..., 3], rgba[..., 3])
    assert max_abs_diff(out[..., :3], tester.enhance_array(rgb)) == 0
    deep = dark_image((50, 70, 3), np.uint16)
    out16 = tester.enhance_array(deep)
    assert out16.dtype == np.uint16 and max_abs_diff(out16, reference(weights, deep)) <= 2  # of 65535


def test_strength_and_map_filter(tester):
    image = dark_image((40, 60, 3))
    np.testing.assert_array_equal(tester.enhance_array(image, strength=0.0), image)  # r = 0: the identity
    seen = []

    def zero_map(curve_map):
        seen.append(tuple(curve_map.shape))
        return torch.zeros_like(curve_map)

    np.testing.assert_array_equal(tester.enhance_array(image, map_filter=zero_map), image)
    assert seen == [(1, 3, 3, 5)]  # the 1/12 map of 40x60
    gentle, full = (tester.enhance_array(image, strength=s).astype(int).mean() for s in (0.5, 1.0))
    assert image.mean() < gentle < full or image.mean() > gentle > full


def test_bf16_is_within_2_of_255_of_fp32(shared, official_weights):
    image = dataloader.read_image(shared / "data" / "test_data" / "real" / "101_0_.png")[0]
    fp32 = sgz_test.Tester(official_weights, device="cpu").enhance_array(image)
    bf16 = sgz_test.Tester(official_weights, device="cpu", precision="bf16").enhance_array(image)
    assert max_abs_diff(fp32, bf16) <= 2


def test_bad_arguments(weights, tester):
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        sgz_test.Tester(weights, device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="uint8 or uint16"):
        tester.enhance_array(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(model.CheckpointError, match="nothere.pth"):
        sgz_test.Tester("nothere.pth", device="cpu")


# ---------------------------------------------------------------------------------------------
# Reading and writing images
# ---------------------------------------------------------------------------------------------
def test_read_write_round_trips_keep_mode_depth_and_alpha(tmp_path):
    rgb = dark_image((30, 40, 3))
    cases = {
        "rgb.png": rgb, "rgb.bmp": rgb, "rgb.tif": rgb, "rgb.webp": rgb,
        "grey.png": rgb[..., 0].copy(),
        "rgba.png": np.dstack([rgb, rgb[..., :1] * 0 + 77]), "rgba.webp": np.dstack([rgb, rgb[..., :1] * 0 + 77]),
        "deep.png": dark_image((30, 40, 3), np.uint16), "deep.tif": dark_image((30, 40, 3), np.uint16),
        "deep_grey.png": dark_image((30, 40), np.uint16),
    }
    for name, image in cases.items():
        dataloader.write_image(tmp_path / name, image)
        back, info = dataloader.read_image(tmp_path / name)
        assert back.dtype == image.dtype and back.shape == image.shape, name
        np.testing.assert_array_equal(back, image, err_msg=name)
    assert oct((tmp_path / "rgb.png").stat().st_mode & 0o777) == oct(0o666 & ~dataloader.UMASK)  # not mkstemp's 0600
    # Formats that cannot hold it: 16 bits are rounded to 8, alpha is dropped from JPEG.
    dataloader.write_image(tmp_path / "deep.jpg", cases["deep.png"])
    assert dataloader.read_image(tmp_path / "deep.jpg")[0].dtype == np.uint8
    dataloader.write_image(tmp_path / "rgba.jpg", cases["rgba.png"])
    assert dataloader.read_image(tmp_path / "rgba.jpg")[0].shape == (30, 40, 3)


def test_palette_images_and_lying_extensions(tmp_path):
    rgb = dark_image((30, 40, 3))
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    palette = Image.fromarray(rgb).convert("P")
    palette.info["transparency"] = 0
    palette.save(tmp_path / "palette_alpha.png", transparency=0)
    assert dataloader.read_image(tmp_path / "palette.png")[0].shape == (30, 40, 3)
    assert dataloader.read_image(tmp_path / "palette_alpha.png")[0].shape == (30, 40, 4)
    Image.fromarray(rgb).save(tmp_path / "really_a_jpeg.png", format="JPEG")
    image, info = dataloader.read_image(tmp_path / "really_a_jpeg.png")
    assert info["format"] == "JPEG" and image.shape == (30, 40, 3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_pillow(tmp_path, orientation):
    from PIL import ImageOps
    rgb = dark_image((30, 40, 3))
    rgb[:5, :10] = 255  # something asymmetric
    exif = Image.Exif()
    exif[dataloader.EXIF_ORIENTATION] = orientation
    for name in ("o.png", "o.tif"):  # lossless, so the pixels can be compared exactly
        Image.fromarray(rgb).save(tmp_path / name, exif=exif.tobytes())
        expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / name)).convert("RGB"))
        image, info = dataloader.read_image(tmp_path / name)
        assert info["orientation"] == orientation
        np.testing.assert_array_equal(image, expected, err_msg=name)


def test_broken_files_raise_one_clear_error(tmp_path, capfd):
    rgb = dark_image((60, 80, 3))
    for name, fmt in (("t.png", "PNG"), ("t.jpg", "JPEG")):
        Image.fromarray(rgb).save(tmp_path / name, format=fmt)
        data = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(data[:len(data) // 2])
    (tmp_path / "notes.jpg").write_text("not an image")
    for name in ("t.png", "t.jpg", "notes.jpg"):
        with pytest.raises(dataloader.ImageReadError, match=name):
            dataloader.read_image(tmp_path / name)
    assert capfd.readouterr().err == ""  # no libpng/libjpeg chatter either
    Image.fromarray(rgb).save(tmp_path / "big.png")
    with pytest.raises(dataloader.ImageReadError, match="above the limit"):
        dataloader.read_image(tmp_path / "big.png", max_pixels=1000)


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------
def run_main(argv, monkeypatch):
    """test.main as `python test.py argv` runs it: returns the exit code (0 when it returns)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # main changes it: restore after
    try:
        sgz_test.main(get_test_parser().parse_args([str(a) for a in argv]))
    except SystemExit as e:
        if isinstance(e.code, str):  # what Python prints for sys.exit("message"), with exit code 1
            print(e.code, file=sys.stderr)
            return 1
        return e.code or 0
    return 0


@pytest.fixture
def photo_tree(tmp_path):
    """A folder like a user's: formats, a sub-folder, a readme, a truncated file, a JPEG named .png."""
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    rgb = dark_image((45, 70, 3))
    Image.fromarray(rgb).save(src / "a.png")
    Image.fromarray(rgb).save(src / "sub" / "b.jpg", quality=95)
    Image.fromarray(rgb).save(src / "sub" / "c_really_jpeg.png", format="JPEG")
    dataloader.write_image(src / "d_rgba16.png", np.dstack([dark_image((45, 70, 3), np.uint16)] * 2)[..., :4])
    Image.fromarray(rgb[..., 0]).save(src / "e_grey.bmp")
    exif = Image.Exif()
    exif[dataloader.EXIF_ORIENTATION] = 6  # stored landscape, shown portrait
    Image.fromarray(rgb).save(src / "sub" / "f_rotated.jpg", exif=exif.tobytes())
    (src / "readme.txt").write_text("delete me, said the official README")
    data = (src / "a.png").read_bytes()
    (src / "sub" / "truncated.png").write_bytes(data[:len(data) // 2])
    return src


def test_folder_run_mirrors_the_tree_and_reports_bad_files(weights, photo_tree, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    code = run_main(["--input_dir", photo_tree, "--test_dir", out, "--weight_dir", weights], monkeypatch)
    err = capsys.readouterr().err
    assert code == 1  # one truncated file
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert written == ["a.png", "d_rgba16.png", "e_grey.bmp", "sub", "sub/b.jpg", "sub/c_really_jpeg.png",
                       "sub/f_rotated.jpg"]  # no temporary file left behind, nothing for the bad ones
    assert err.count("readme.txt") == 1 and "not an image" in err
    assert sum("truncated.png" in line for line in err.splitlines()) == 2  # its error line and the summary
    assert "Traceback" not in err
    for name in ("a.png", "sub/b.jpg", "sub/c_really_jpeg.png"):
        assert dataloader.read_image(out / name)[0].shape == (45, 70, 3)
    deep = dataloader.read_image(out / "d_rgba16.png")[0]
    assert deep.dtype == np.uint16 and deep.shape == (45, 70, 4)
    np.testing.assert_array_equal(deep[..., 3], dataloader.read_image(photo_tree / "d_rgba16.png")[0][..., 3])
    assert dataloader.read_image(out / "e_grey.bmp")[0].shape == (45, 70)
    assert dataloader.read_image(out / "sub/f_rotated.jpg")[0].shape == (70, 45, 3)  # upright, no EXIF to apply
    assert Image.open(out / "sub/c_really_jpeg.png").format == "PNG"


def test_defaults_enhance_the_shipped_samples(weights, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert run_main(["--weight_dir", weights, "--test_dir", tmp_path / "out"], monkeypatch) == 0
    for name in SAMPLES:
        source, result = (dataloader.read_image(d / name)[0] for d in (ROOT / "data" / "test_data", tmp_path / "out"))
        assert result.shape == source.shape


def test_samples_are_small_and_dark():
    files = [ROOT / "data" / "test_data" / name for name in SAMPLES]
    assert len(files) >= 4 and sum(p.stat().st_size for p in files) < 1_000_000
    assert all(dataloader.read_image(p)[0].mean() < 0.15 * 255 for p in files)


def test_clear_errors_for_what_cannot_run(weights, tmp_path, monkeypatch, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "photos").mkdir()
    Image.fromarray(dark_image((20, 30, 3))).save(tmp_path / "photos" / "p.png")
    before = (tmp_path / "photos" / "p.png").read_bytes()
    cases = {
        "no images": ["--input_dir", tmp_path / "empty"],
        "input not found": ["--input_dir", tmp_path / "missing"],
        "would overwrite an input": ["--input_dir", tmp_path / "photos", "--test_dir", tmp_path / "photos"],
        "weights file not found": ["--input_dir", tmp_path / "photos", "--weight_dir", tmp_path / "none.pth"],
    }
    for message, argv in cases.items():
        argv = argv + (["--weight_dir", weights] if "--weight_dir" not in argv else [])
        assert run_main(argv + ["--test_dir", tmp_path / "out"] * ("--test_dir" not in argv), monkeypatch) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert (tmp_path / "photos" / "p.png").read_bytes() == before
    code = run_main(["--input_dir", tmp_path / "photos", "--test_dir", tmp_path / "out", "--weight_dir", weights,
                     "--max_mpix", "0.0001"], monkeypatch)
    assert code == 1 and "above the limit" in capsys.readouterr().err


def test_one_file_in_and_output_inside_the_input_folder(weights, tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(dark_image((20, 30, 3))).save(photos / "p.png")
    assert run_main(["--input_dir", photos / "p.png", "--test_dir", tmp_path / "one", "--weight_dir", weights],
                    monkeypatch) == 0
    assert (tmp_path / "one" / "p.png").is_file()
    # Results written inside the input folder are not taken as inputs on the next run.
    for _ in range(2):
        assert run_main(["--input_dir", photos, "--test_dir", photos / "enhanced", "--weight_dir", weights],
                        monkeypatch) == 0
    assert sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*.png")) == ["enhanced/p.png", "p.png"]


def test_torchrun_ranks_take_disjoint_shares(weights, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(5):
        Image.fromarray(dark_image((20, 30, 3), seed=i)).save(src / f"{i}.png")
    procs = [subprocess.Popen([sys.executable, str(ROOT / "test.py"), "--input_dir", str(src),
                               "--test_dir", str(tmp_path / f"out{rank}"), "--weight_dir", str(weights)],
                              env={**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                                   "LOCAL_WORLD_SIZE": "2"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    shares = [sorted(p.name for p in (tmp_path / f"out{rank}").iterdir()) for rank in (0, 1)]
    assert shares == [["0.png", "2.png", "4.png"], ["1.png", "3.png"]]
    assert "[rank 1/2] 2 images" in outputs[1][0]
