"""evaluate.py and niqe.py: metric values, file matching, outputs and one-line errors."""

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

import evaluate
import niqe
from image_io import IMAGE_EXTENSIONS
from option import get_evaluate_parser
from runtime import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pristine():
    try:
        return niqe.pristine_model()
    except niqe.NIQEUnavailable as e:
        pytest.skip(f"NIQE's pristine model is not installed ({e})")


def save(path, rgb01):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(rgb01 * 255).astype(np.uint8)).save(path)


def run(argv, failed=None):
    return evaluate.evaluate(get_evaluate_parser().parse_args(argv), failed)


# ---------------------------------------------------------------------------------------------
# NIQE
# ---------------------------------------------------------------------------------------------
def test_imresize_is_matlab_bicubic_with_antialiasing():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (96, 144))
    half = niqe.imresize_matlab(x, 0.5)
    assert half.shape == (48, 72)
    # Pillow's bicubic is the same kernel (a = -0.5, widened when shrinking) but truncates at the borders
    # where MATLAB mirrors: the interiors agree (to Pillow's float32).
    pil = np.asarray(Image.fromarray(x.astype(np.float32), "F").resize((72, 48), Image.BICUBIC), dtype=np.float64)
    np.testing.assert_allclose(half[4:-4, 4:-4], pil[4:-4, 4:-4], atol=1e-3)
    np.testing.assert_allclose(niqe.imresize_matlab(np.full((96, 96), 7.0), 0.5), 7.0, atol=1e-12)
    ramp = np.tile(np.arange(96.0), (96, 1))
    np.testing.assert_allclose(niqe.imresize_matlab(ramp, 0.5)[:, 4:-4], ramp[:48, 8:-8:2] + 0.5, atol=1e-9)


@pytest.mark.parametrize("sampler, shape", [("normal", 2.0), ("laplace", 1.0)])
def test_aggd_fit_recovers_known_shapes(sampler, shape):
    rng = np.random.default_rng(1)
    x = getattr(rng, sampler)(0.0, 0.5, size=(4, 200_000))
    alpha, left, right = niqe.aggd_fit(x)
    np.testing.assert_allclose(alpha, shape, atol=0.05)
    scale = 0.5 * np.sqrt(2) if sampler == "normal" else 0.5  # N(0, s^2): beta = s*sqrt(2); Laplace(b): beta = b
    np.testing.assert_allclose(left, scale, rtol=0.03)
    np.testing.assert_allclose(right, scale, rtol=0.03)


def test_nearest_shape_is_matlab_argmin():
    ratios = np.concatenate([np.linspace(0, 0.8, 5001), niqe.AGGD_RATIOS[::7], [np.nan]])
    by_search = niqe.nearest_shape(ratios)
    by_argmin = niqe.AGGD_SHAPES[np.nanargmin((niqe.AGGD_RATIOS[None] - ratios[:-1, None]) ** 2, axis=1)]
    np.testing.assert_array_equal(by_search[:-1], by_argmin)
    assert by_search[-1] == 0.2  # MATLAB's min over NaNs returns the first index


def niqe_of(rgb):
    return niqe.niqe(niqe.rgb_to_matlab_gray(rgb))


def test_niqe_reference_value_and_behaviour(pristine):
    astronaut = skimage.data.astronaut() / 255.0
    # This implementation gives the MATLAB release's 3.65492152353770 for TID2013 I04 (pyiqa's calibration
    # image) to 4e-13; this value pins it on an image that ships with scikit-image.
    assert niqe_of(astronaut) == pytest.approx(3.0652209216274944, abs=1e-9)
    noisy = np.clip(astronaut + np.random.default_rng(0).normal(0, 0.08, astronaut.shape), 0, 1)
    blurred = cv2.GaussianBlur(astronaut, (0, 0), 3)
    assert niqe_of(noisy) > niqe_of(astronaut) + 3
    assert niqe_of(blurred) > niqe_of(astronaut) + 3
    flat = astronaut.copy()
    flat[:200] = 0  # black regions (common in low-light inputs) must give a number, not NaN
    assert np.isfinite(niqe_of(flat))
    assert np.isnan(niqe_of(astronaut[:95, :300]))  # fewer than two 96x96 blocks


# ---------------------------------------------------------------------------------------------
# Full-reference metrics
# ---------------------------------------------------------------------------------------------
def test_psnr_ssim_values():
    gt = skimage.data.astronaut()[:128, :128] / 255.0
    shifted = np.clip(gt + 0.05, 0, 1)
    mse = np.mean((shifted - gt) ** 2)
    psnr, ssim = evaluate.psnr_ssim(shifted, gt)
    assert psnr == pytest.approx(10 * np.log10(1 / mse))
    assert 0.9 < ssim < 1
    assert evaluate.psnr_ssim(gt, gt)[1] == pytest.approx(1.0)


def test_lpips_is_skipped_in_one_line_when_weights_are_absent(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    assert evaluate.load_lpips("cpu") is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "LPIPS skipped" in err[0]


@pytest.mark.filterwarnings("ignore::UserWarning")  # lpips's own loading uses torchvision's deprecated `pretrained=`
def test_lpips_runs_with_local_weights(tmp_path, monkeypatch):
    pytest.importorskip("lpips")
    import torchvision

    (tmp_path / "checkpoints").mkdir()
    torch.save(torchvision.models.alexnet().state_dict(), tmp_path / "checkpoints" / evaluate.ALEXNET)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    distance = evaluate.load_lpips("cpu")
    gt = skimage.data.astronaut()[:64, :64] / 255.0
    pred = np.clip(gt * 1.5, 0, 1)
    assert distance(gt, gt) == pytest.approx(0.0, abs=1e-6)
    # lpips's own loading (torchvision reads the same cached file) gives the same number
    import lpips

    reference = lpips.LPIPS(net="alex", verbose=False)
    with torch.inference_mode():
        expected = float(
            reference(
                torch.from_numpy(pred).permute(2, 0, 1)[None].float() * 2 - 1,
                torch.from_numpy(gt).permute(2, 0, 1)[None].float() * 2 - 1,
            )
        )
    assert distance(pred, gt) == pytest.approx(expected, rel=1e-5) and expected > 0


# ---------------------------------------------------------------------------------------------
# The command: matching, outputs, pictures
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def folders(tmp_path):
    """input (png), two methods (jpg and png) and ground truth, in two subfolders, 192x128 images."""
    rng = np.random.default_rng(0)
    for sub, name in [("A", "x"), ("A", "y"), ("B", "z")]:
        gt = rng.uniform(0.2, 1, (128, 192, 3))
        save(tmp_path / "gt" / sub / f"{name}.png", gt)
        save(tmp_path / "input" / sub / f"{name}.png", gt * 0.2)
        save(tmp_path / "m1" / sub / f"{name}.jpg", gt * 0.9)
        save(tmp_path / "m2" / sub / f"{name}.png", gt * 0.6)
    return tmp_path


def test_evaluate_writes_tables_and_pictures(folders, capsys):
    out = folders / "eval"
    run(
        [
            "--pred_dir",
            str(folders / "m1"),
            str(folders / "m2"),
            "--labels",
            "ours",
            "other",
            "--gt_dir",
            str(folders / "gt"),
            "--input_dir",
            str(folders / "input"),
            "--out_dir",
            str(out),
            "--grid",
            "--grid_height",
            "64",
            "--no-lpips",
        ]
    )
    stdout = capsys.readouterr().out
    assert "| ours | A | 2 |" in stdout and "| other | all | 3 |" in stdout
    assert stdout == (out / "summary.md").read_text()

    with open(out / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 4  # images x (input, ours, other, ground truth)
    ours = {r["image"]: r for r in rows if r["method"] == "ours"}
    assert set(ours) == {"A/x", "A/y", "B/z"}
    assert ours["A/x"]["file"].endswith("A/x.jpg") and ours["A/x"]["width"] == "192"
    assert all(r["psnr"] == "" for r in rows if r["method"] == "ground truth")

    table = {(e["method"], e["folder"]): e for e in json.loads((out / "summary.json").read_text())["summary"]}
    assert table[("ours", "all")]["psnr"] > table[("other", "all")]["psnr"] > table[("input", "all")]["psnr"]
    mean_brightness = np.mean([float(r["brightness"]) for r in rows if r["method"] == "other"])
    assert table[("other", "all")]["brightness"] == pytest.approx(mean_brightness)
    assert table[("input", "A")]["images"] == 2

    grid = np.asarray(Image.open(out / "grid" / "A" / "x.jpg"))
    assert grid.shape[0] > 64 and grid.shape[1] >= 4 * 96  # a caption bar above four 96x64 tiles
    assert (out / "brightness_histogram.png").stat().st_size > 10_000


def test_crop_compares_the_common_top_left_region(folders):
    for path in (folders / "m1").rglob("*.jpg"):  # as the official script: cropped to multiples of 12
        save(path.with_suffix(".png"), np.asarray(Image.open(path))[:120, :180] / 255.0)
        path.unlink()
    argv = [
        "--pred_dir",
        str(folders / "m1"),
        "--gt_dir",
        str(folders / "gt"),
        "--out_dir",
        str(folders / "eval"),
        "--no-niqe",
        "--no-lpips",
    ]
    failed = []
    run(argv, failed)  # each image of other sizes is one line, the others are scored
    assert failed and all(re.search("is 192x128 but .* is 180x120; pass --crop", line) for line in failed)
    run(argv + ["--crop"])
    with open(folders / "eval" / "per_image.csv") as f:
        assert {(r["width"], r["height"]) for r in csv.DictReader(f)} == {("180", "120")}


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty", "no images in"),
        ("no_match", "no file name is in every folder"),
        ("out_inside", "lies inside"),
        ("labels", "--labels gives 2 names for 1"),
    ],
)
def test_bad_input_is_one_clear_error(folders, case, message):
    argv = [
        "--pred_dir",
        str(folders / "m1"),
        "--gt_dir",
        str(folders / "gt"),
        "--out_dir",
        str(folders / "eval"),
        "--no-niqe",
    ]
    if case == "empty":
        (folders / "empty").mkdir()
        argv[1] = str(folders / "empty")
    elif case == "no_match":
        for path in (folders / "gt").rglob("*.png"):
            path.rename(path.with_name("gt_" + path.name))
    elif case == "out_inside":
        argv[-2] = str(folders / "m1" / "eval")
    elif case == "labels":
        argv += ["--labels", "a", "b"]
    with pytest.raises(UserError, match=message) as error:
        run(argv)
    assert "\n" not in str(error.value)


def test_an_unreadable_image_is_one_line_and_the_others_are_scored(folders):
    (folders / "m1" / "A" / "x.jpg").write_text("not an image")
    (folders / "gt" / "A" / "x.png").write_bytes((folders / "gt" / "A").glob("*.png").__next__().read_bytes())
    argv = ["--pred_dir", str(folders / "m1"), "--gt_dir", str(folders / "gt"), "--out_dir", str(folders / "eval")]
    failed = []
    summary = run(argv + ["--no-niqe", "--no-lpips"], failed)
    assert len(failed) == 1 and "x.jpg" in failed[0] and "not a readable image" in failed[0]
    with open(folders / "eval" / "per_image.csv") as f:
        scored = {r["image"] for r in csv.DictReader(f)}
    assert scored and not any(Path(key).name == "x" for key in scored)
    assert {e["method"] for e in summary} == {"m1", "ground truth"}


def test_images_smaller_than_ssims_window_are_scored_without_ssim(tmp_path):
    rng = np.random.default_rng(0)
    for folder in ("pred", "gt"):
        save(tmp_path / folder / "tiny.png", rng.random((5, 5, 3)))
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "evaluate.py"),
            "--pred_dir",
            str(tmp_path / "pred"),
            "--gt_dir",
            str(tmp_path / "gt"),
            "--out_dir",
            str(tmp_path / "eval"),
            "--no-niqe",
            "--no-lpips",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert "SSIM is undefined" in result.stderr
    with open(tmp_path / "eval" / "per_image.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["method"] == "pred")
    assert float(row["psnr"]) > 0 and row["ssim"] in ("", "nan")


def test_command_line_error_is_one_line_and_nonzero(tmp_path):
    (tmp_path / "empty").mkdir()
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "evaluate.py"),
            "--pred_dir",
            str(tmp_path / "empty"),
            "--out_dir",
            str(tmp_path / "eval"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2  # the command cannot run
    assert result.stderr.strip().splitlines() == [
        f"error: no images in {tmp_path / 'empty'} (looked for {' '.join(IMAGE_EXTENSIONS)}, recursively)"
    ]
    assert not (tmp_path / "eval").exists()
