"""test.py: the command line's files, messages and exit codes."""

import io
import os
import runpy
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, dark_image, wait_until_paused
from PIL import Image, ImageFile

import image_io
import runtime
import test as sgz_test  # the project's test.py (by module, so pytest does not collect Tester)
from option import get_test_parser
from runtime import run_script

SAMPLES = sorted(runpy.run_path(str(ROOT / "data" / "make_samples.py"))["SAMPLES"])  # the shipped dark photos


@pytest.fixture(scope="module")
def weights(strong_weights):
    return strong_weights


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------
def run_main(argv, monkeypatch):
    """`python test.py argv` in this process: returns the exit status."""
    # Process-wide settings the script makes: put back after the test.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", ImageFile.LOAD_TRUNCATED_IMAGES)  # --allow_corrupt
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
    (src / "sub" / "truncated.png").write_bytes(data[: len(data) // 2])
    return src


def test_folder_run_mirrors_the_tree_and_reports_bad_files(weights, photo_tree, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    code = run_main(["--input_dir", photo_tree, "--test_dir", out, "--weight_dir", weights], monkeypatch)
    err = capsys.readouterr().err
    assert code == 1  # one truncated file
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert written == [
        "a.png",
        "d_rgba16.png",
        "e_grey.bmp",
        "sub",
        "sub/b.jpg",
        "sub/c_really_jpeg.png",
        "sub/f_rotated.jpg",
    ]  # no temporary file left behind, nothing for the bad ones
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


def test_strength_1_is_the_default_and_less_is_darker(weights, tmp_path, monkeypatch, capsys):
    src = tmp_path / "in.png"
    Image.fromarray(dark_image((40, 60, 3))).save(src)
    outputs = {}
    for strength in (None, "1.0", "0.5"):
        out = tmp_path / f"out_{strength}"
        extra = ["--strength", strength] if strength else []
        assert run_main(["--input_dir", src, "--test_dir", out, "--weight_dir", weights, *extra], monkeypatch) == 0
        outputs[strength] = image_io.read_image(out / "in.png")[0].astype(int)
    assert "1 image," in capsys.readouterr().out  # one image, not "1 images"
    np.testing.assert_array_equal(outputs["1.0"], outputs[None])
    source = np.asarray(Image.open(src), dtype=int)
    assert source.mean() < outputs["0.5"].mean() < outputs[None].mean() - 5


@pytest.mark.parametrize("value", ["nan", "inf", "-0.5", "2.5", "bright"])
def test_strength_out_of_range_is_one_line(weights, value, tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exited:
        run_main(["--test_dir", tmp_path / "out", "--weight_dir", weights, "--strength", value], monkeypatch)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--strength" in err[0] and "in [0, 2]" in err[0]
    assert not (tmp_path / "out").exists()


def test_low_precision_note_where_the_cpu_only_emulates_bfloat16(weights, tmp_path, monkeypatch, capsys):
    import torch

    for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, check, lambda: False, raising=False)
    src = tmp_path / "in.png"
    Image.fromarray(dark_image((24, 36, 3))).save(src)
    argv = ["--input_dir", src, "--test_dir", tmp_path / "out", "--weight_dir", weights, "--device", "cpu"]
    assert run_main([*argv, "--precision", "bf16"], monkeypatch) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "fp32 is faster here" in notes[0] and "AVX512-BF16" in notes[0]
    assert run_main([*argv, "--precision", "fp32", "--test_dir", tmp_path / "out32"], monkeypatch) == 0
    assert "note:" not in capsys.readouterr().err
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)  # AMX: native, no note
    assert run_main([*argv, "--precision", "bf16", "--test_dir", tmp_path / "amx"], monkeypatch) == 0
    assert "note:" not in capsys.readouterr().err


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
    code = run_main(
        [
            "--input_dir",
            tmp_path / "photos",
            "--test_dir",
            tmp_path / "out",
            "--weight_dir",
            weights,
            "--max_mpix",
            "0.0001",
        ],
        monkeypatch,
    )
    assert code == 1 and "above the limit" in capsys.readouterr().err


def test_one_file_in_and_output_inside_the_input_folder(weights, tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(dark_image((20, 30, 3))).save(photos / "p.png")
    assert (
        run_main(
            ["--input_dir", photos / "p.png", "--test_dir", tmp_path / "one", "--weight_dir", weights], monkeypatch
        )
        == 0
    )
    assert (tmp_path / "one" / "p.png").is_file()
    # Results written inside the input folder are not taken as inputs on the next run.
    for _ in range(2):
        assert (
            run_main(["--input_dir", photos, "--test_dir", photos / "enhanced", "--weight_dir", weights], monkeypatch)
            == 0
        )
    assert sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*.png")) == ["enhanced/p.png", "p.png"]


def test_torchrun_ranks_take_disjoint_shares(weights, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(5):
        Image.fromarray(dark_image((20, 30, 3), seed=i)).save(src / f"{i}.png")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "test.py"),
                "--input_dir",
                str(src),
                "--test_dir",
                str(tmp_path / f"out{rank}"),
                "--weight_dir",
                str(weights),
            ],
            env={**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    shares = [sorted(p.name for p in (tmp_path / f"out{rank}").iterdir()) for rank in (0, 1)]
    order = [job[0].name for job in sgz_test.largest_first([(p, None) for p in sorted(src.iterdir())])]
    assert shares == [sorted(order[0::2]), sorted(order[1::2])]
    assert sorted(shares[0] + shares[1]) == [f"{i}.png" for i in range(5)]
    assert "[rank 1/2] 2 images" in outputs[1][0]


def test_the_largest_images_are_started_first(weights, tmp_path, monkeypatch):
    """So that two threads run out of work together: no big image is left to run alone at the end."""
    src = tmp_path / "in"
    src.mkdir()
    for name, side in [("a_small.png", 8), ("b_large.png", 90), ("c_medium.png", 40), ("d_tiny.png", 2)]:
        Image.fromarray(dark_image((side, side, 3))).save(src / name)
    started = []
    monkeypatch.setattr(sgz_test.Tester, "enhance_file", lambda self, source, dst: started.append(source.name) or 1)
    sgz_test.Tester(weights).run(src, tmp_path / "out", workers=1, progress=False)
    assert started == ["b_large.png", "c_medium.png", "a_small.png", "d_tiny.png"]


# ---------------------------------------------------------------------------------------------
# Files as people have them, and output folders that cannot take the results
# ---------------------------------------------------------------------------------------------
def tree_bytes(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_long_names_linked_folders_and_cut_jpegs(weights, tmp_path, monkeypatch, capsys):
    src, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    src.mkdir()
    elsewhere.mkdir()
    rgb = dark_image((40, 60, 3))
    long_name = "n" * 241 + ".jpg"  # 245 characters: the old temporary name pushed it past 255
    Image.fromarray(rgb).save(src / long_name, quality=95)
    Image.fromarray(rgb).save(elsewhere / "linked.png")
    (src / "album").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "loop").symlink_to(src, target_is_directory=True)  # in/album/loop -> in: must not recurse
    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(1).random((90, 120, 3)) * 255).astype(np.uint8)).save(buffer, "JPEG")
    (src / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) * 4 // 10] + b"\xff\xd9")
    before = tree_bytes(src)
    out = tmp_path / "out"
    code = run_main(["--input_dir", src, "--test_dir", out, "--weight_dir", weights], monkeypatch)
    err = capsys.readouterr().err
    assert code == 1
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "album/linked.png",
        long_name,
    ]
    assert "cut.jpg: corrupt or truncated JPEG" in err and "a loop" in err
    assert tree_bytes(src) == before  # inputs untouched
    # --allow_corrupt enhances it anyway
    assert (
        run_main(
            ["--input_dir", src / "cut.jpg", "--test_dir", out, "--weight_dir", weights, "--allow_corrupt"], monkeypatch
        )
        == 0
    )
    assert image_io.read_image(out / "cut.jpg")[0].shape == (90, 120, 3)


def test_metadata_and_formats_through_the_command_line(weights, tmp_path, monkeypatch):
    from test_metadata import ICC, assert_camera_exif_kept, camera_exif

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(dark_image((40, 60, 3))).save(src / "a.jpg", exif=camera_exif(orientation=8), icc_profile=ICC)
    Image.fromarray(dark_image((40, 60, 3))).save(src / "b.heic", exif=camera_exif(), quality=90)
    assert run_main(["--input_dir", src, "--test_dir", tmp_path / "same", "--weight_dir", weights], monkeypatch) == 0
    a, b = Image.open(tmp_path / "same" / "a.jpg"), Image.open(tmp_path / "same" / "b.heic")
    assert a.size == (40, 60) and a.info["icc_profile"] == ICC and a.getexif()[image_io.EXIF_ORIENTATION] == 1
    assert_camera_exif_kept(a.getexif())
    assert b.format == "HEIF" and b.size == (60, 40)
    assert_camera_exif_kept(b.getexif())
    assert (
        run_main(
            ["--input_dir", src, "--test_dir", tmp_path / "png", "--weight_dir", weights, "--output_format", "png"],
            monkeypatch,
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["a.png", "b.png"]
    assert Image.open(tmp_path / "png" / "a.png").info["icc_profile"] == ICC
    small = tmp_path / "q"
    assert (
        run_main(
            ["--input_dir", src / "a.jpg", "--test_dir", small, "--weight_dir", weights, "--quality", "20"], monkeypatch
        )
        == 0
    )
    assert (small / "a.jpg").stat().st_size < (tmp_path / "same" / "a.jpg").stat().st_size


def test_output_folders_that_cannot_take_the_results_fail_before_computing(weights, tmp_path, monkeypatch, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(dark_image((40, 60, 3))).save(src / "p.png")
    Image.fromarray(dark_image((40, 60, 3))).save(src / "p.jpg")
    base = ["--input_dir", src, "--weight_dir", weights]
    monkeypatch.setattr(sgz_test.Tester, "enhance_file", lambda *a: pytest.fail("computed before checking"))

    (tmp_path / "a_file").write_text("x")
    assert run_main(base + ["--test_dir", tmp_path / "a_file"], monkeypatch) == 2
    assert "cannot write into the output folder" in capsys.readouterr().err

    read_only = tmp_path / "read_only"  # tests may run as root, which chmod does not stop: the OS's answer, simulated
    read_only.mkdir()
    real_open = os.open

    def refusing_open(path, *args, **kwargs):
        if str(path).startswith(str(read_only)):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(os, "open", refusing_open)
        assert run_main(base + ["--test_dir", read_only], monkeypatch) == 2
    assert "Permission denied" in capsys.readouterr().err

    with monkeypatch.context() as m:  # a full disk
        m.setattr(sgz_test.shutil, "disk_usage", lambda path: shutil_usage(free=1000))
        assert run_main(base + ["--test_dir", tmp_path / "full"], monkeypatch) == 2
    assert "MB free" in capsys.readouterr().err

    assert run_main(base + ["--test_dir", tmp_path / "same", "--output_format", "png"], monkeypatch) == 2
    assert "would both be written to" in capsys.readouterr().err  # p.png and p.jpg -> p.png

    with monkeypatch.context() as m:  # a file system with short names (FAT-like limits, network shares)
        m.setattr(sgz_test.os, "pathconf", lambda path, name: 4)
        assert run_main(base + ["--test_dir", tmp_path / "short"], monkeypatch) == 2
    assert "more than the 4 the output folder's file system allows" in capsys.readouterr().err
    assert not any(p.is_file() for p in tmp_path.rglob("*") if "in" not in p.parts and p.name != "a_file")


def shutil_usage(free):
    import shutil

    return shutil._ntuple_diskusage(10**12, 10**12 - free, free)


def test_nan_weights_and_bad_option_values(tmp_path, monkeypatch, capsys):
    import torch

    import model

    net = model.EnhanceNet()
    with torch.no_grad():
        net.e_conv7.point_conv.weight.fill_(float("nan"))
    torch.save(net.state_dict(), tmp_path / "nan.pth")
    Image.fromarray(dark_image((20, 30, 3))).save(tmp_path / "p.png")
    out = tmp_path / "out"
    assert (
        run_main(
            ["--input_dir", tmp_path / "p.png", "--test_dir", out, "--weight_dir", tmp_path / "nan.pth"], monkeypatch
        )
        == 2
    )
    assert "NaN or infinite weights" in capsys.readouterr().err and not out.exists()
    for flag, value in (("--max_mpix", "nan"), ("--max_mpix", "-1"), ("--workers", "-2"), ("--quality", "101")):
        with pytest.raises(SystemExit) as exit_info:
            get_test_parser().parse_args([flag, value])
        assert exit_info.value.code == 2


def test_non_finite_network_output_is_an_error(weights, tmp_path, monkeypatch, capsys):
    """Finite weights can still overflow (fp16, extreme inputs): every such image is named, none is written."""
    from enhance import Enhancer

    real = Enhancer.curve_map_rows

    def poisoned(self, rgb, *args, **kwargs):
        return real(self, rgb * float("inf"), *args, **kwargs)

    monkeypatch.setattr(Enhancer, "curve_map_rows", poisoned)
    Image.fromarray(dark_image((20, 30, 3))).save(tmp_path / "p.png")
    assert (
        run_main(
            ["--input_dir", tmp_path / "p.png", "--test_dir", tmp_path / "out", "--weight_dir", weights], monkeypatch
        )
        == 1
    )
    assert "not finite" in capsys.readouterr().err and not (tmp_path / "out" / "p.png").exists()


def test_stale_temporaries_are_cleaned_and_sigterm_leaves_none(weights, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    for i in range(12):
        Image.fromarray(dark_image((200, 300, 3), seed=i)).save(src / f"{i:02d}.png")
    dead = out / ".sgz-4194999-0badc0de.tmp.png"  # above Linux's largest pid: its writer is surely gone
    alive = out / f".sgz-{os.getpid()}-00c0ffee.tmp.png"  # a writer still at work
    dead.write_bytes(b"half")
    alive.write_bytes(b"half")
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "test.py"),
            "--input_dir",
            str(src),
            "--test_dir",
            str(out),
            "--weight_dir",
            str(weights),
            "--workers",
            "2",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, runtime.PAUSE_VARIABLE: "3"},  # the 4th image waits for the signal
    )
    said = wait_until_paused(proc)
    proc.terminate()  # SIGTERM
    err = said + proc.communicate(timeout=60)[1]
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert not dead.exists() and alive.exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".sgz-")] == [alive.name]
    written = [p for p in out.iterdir() if not p.name.startswith(".")]
    # the 3 done and the 2 waiting finish, the rest are never started
    assert 0 < len(written) < 12 and all(image_io.read_image(p)[0].shape == (200, 300, 3) for p in written)


def test_a_disk_that_fills_up_during_the_run_is_named_plainly(weights, tmp_path, monkeypatch, capsys):
    import errno

    Image.fromarray(dark_image((20, 30, 3))).save(tmp_path / "p.png")

    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(image_io.Path, "write_bytes", full)
    assert (
        run_main(
            ["--input_dir", tmp_path / "p.png", "--test_dir", tmp_path / "out", "--weight_dir", weights], monkeypatch
        )
        == 1
    )
    err = capsys.readouterr().err
    assert f"cannot write {tmp_path / 'out' / 'p.png'}: No space left on device" in err, err
    assert not (tmp_path / "out" / "p.png").exists() and not list((tmp_path / "out").iterdir())  # no temporary left
