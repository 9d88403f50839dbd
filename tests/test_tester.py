"""test.py: the command line's files, messages and exit codes."""
import os
import runpy
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import image_io
import test as sgz_test  # the project's test.py (by module, so pytest does not collect Tester)
from conftest import ROOT, dark_image
from option import get_test_parser, run_script

SAMPLES = sorted(runpy.run_path(str(ROOT / "data" / "make_samples.py"))["SAMPLES"])  # the shipped dark photos


@pytest.fixture(scope="module")
def weights(strong_weights):
    return strong_weights


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------
def run_main(argv, monkeypatch):
    """`python test.py argv` in this process: returns the exit status."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # the script lifts it: restore after
    return run_script(sgz_test.main, get_test_parser(), [str(a) for a in argv])


@pytest.fixture
def photo_tree(tmp_path):
    """A folder like a user's: formats, a sub-folder, a readme, a truncated file, a JPEG named .png."""
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    rgb = dark_image((45, 70, 3))
    Image.fromarray(rgb).save(src / "a.png")
    Image.fromarray(rgb).save(src / "sub" / "b.jpg", quality=95)
    Image.fromarray(rgb).save(src / "sub" / "c_really_jpeg.png", format="JPEG")
    image_io.write_image(src / "d_rgba16.png", np.dstack([dark_image((45, 70, 3), np.uint16)] * 2)[..., :4])
    Image.fromarray(rgb[..., 0]).save(src / "e_grey.bmp")
    exif = Image.Exif()
    exif[image_io.EXIF_ORIENTATION] = 6  # stored landscape, shown portrait
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
        assert image_io.read_image(out / name)[0].shape == (45, 70, 3)
    deep = image_io.read_image(out / "d_rgba16.png")[0]
    assert deep.dtype == np.uint16 and deep.shape == (45, 70, 4)
    np.testing.assert_array_equal(deep[..., 3], image_io.read_image(photo_tree / "d_rgba16.png")[0][..., 3])
    assert image_io.read_image(out / "e_grey.bmp")[0].shape == (45, 70)
    assert image_io.read_image(out / "sub/f_rotated.jpg")[0].shape == (70, 45, 3)  # upright, no EXIF to apply
    assert Image.open(out / "sub/c_really_jpeg.png").format == "PNG"


def test_defaults_enhance_the_shipped_samples(weights, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert run_main(["--weight_dir", weights, "--test_dir", tmp_path / "out"], monkeypatch) == 0
    for name in SAMPLES:
        source, result = (image_io.read_image(d / name)[0] for d in (ROOT / "data" / "test_data", tmp_path / "out"))
        assert result.shape == source.shape


def test_samples_are_small_and_dark():
    files = [ROOT / "data" / "test_data" / name for name in SAMPLES]
    assert len(files) >= 4 and sum(p.stat().st_size for p in files) < 1_000_000
    assert all(image_io.read_image(p)[0].mean() < 0.15 * 255 for p in files)


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
        assert run_main(argv + ["--test_dir", tmp_path / "out"] * ("--test_dir" not in argv), monkeypatch) == 2
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
