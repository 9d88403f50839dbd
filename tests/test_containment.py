"""Containment (one bad input never costs another) and nothing dropped silently: test.py over a folder of good
and bad files, the demo on the same uploads, its Host allow-list and samples, multi-frame images and CMYK."""

import io
import os
import re
import socket
import struct
import threading

import numpy as np
import pytest
from conftest import dark_image
from PIL import Image, ImageCms, ImageFile, ImageSequence

import image_io
import test as sgz_test  # the project's test.py
from enhance import Enhancer
from option import get_demo_parser, get_test_parser
from runtime import EXIT_INTERRUPTED, EXIT_SOME_INPUTS_FAILED, input_failure, run_script

pytest.importorskip("flask", reason="the web demo needs Flask: pip install -r requirements.txt")
from demo.app import create_app, serve  # noqa: E402  (after the skip: it imports Flask)

BAD = ("junk_before_sof.jpg", "tall.bmp", "truncated.png", "random.jpg")
OUT_OF_MEMORY_SHAPE = (40, 40)  # the good photo whose enhancement raises MemoryError


@pytest.fixture(scope="module")
def weights(strong_weights):
    return strong_weights


def jpeg_bytes(rgb, **options):
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, "JPEG", quality=90, **options)
    return out.getvalue()


def bad_uploads():
    """{name: bytes} of files that no decoder takes, each through another path."""
    jpeg = jpeg_bytes(dark_image((48, 64, 3)))
    sof = jpeg.index(b"\xff\xc0")
    w, h = 4, 2_000_000  # 118 bytes that declare 8 MP (OpenCV's reader refuses the height)
    bmp = b"BM" + struct.pack("<IHHI", 118, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 0, 0, 0, 0)
    png = io.BytesIO()
    Image.fromarray(dark_image((64, 64, 3))).save(png, "PNG")
    return {
        "junk_before_sof.jpg": jpeg[:sof] + b"\x00" * 8 + jpeg[sof:],  # simplejpeg's header reader: ValueError
        "tall.bmp": bmp + bytes(118 - len(bmp)),  # cv2.error
        "truncated.png": png.getvalue()[: len(png.getvalue()) // 2],
        "random.jpg": np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes(),
    }


@pytest.fixture
def mixed_folder(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(dark_image((45, 70, 3))).save(src / "good_a.png")
    (src / "good_b.jpg").write_bytes(jpeg_bytes(dark_image((45, 70, 3), seed=1)))
    Image.fromarray(dark_image(OUT_OF_MEMORY_SHAPE + (3,), seed=2)).save(src / "good_but_oom.png")
    Image.fromarray(dark_image((30, 50, 3), seed=3)).save(src / "good_c.webp", lossless=True)
    for name, data in bad_uploads().items():
        (src / name).write_bytes(data)
    return src


def raise_memory_error_for_one_shape(monkeypatch):
    enhance_array = Enhancer.enhance_array

    def enhance_or_run_out(self, image, *args, **kwargs):
        if image.shape[:2] == OUT_OF_MEMORY_SHAPE:
            raise MemoryError
        return enhance_array(self, image, *args, **kwargs)

    monkeypatch.setattr(Enhancer, "enhance_array", enhance_or_run_out)


def run_test_py(argv, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", ImageFile.LOAD_TRUNCATED_IMAGES)
    return run_script(sgz_test.main, get_test_parser(), [str(a) for a in argv])


# ---------------------------------------------------------------------------------------------
# test.py
# ---------------------------------------------------------------------------------------------
def test_every_failure_is_one_line_and_the_good_photos_are_all_enhanced(
    weights, mixed_folder, tmp_path, monkeypatch, capsys
):
    raise_memory_error_for_one_shape(monkeypatch)
    monkeypatch.delenv("SGZ_DEBUG", raising=False)
    out = tmp_path / "out"
    code = run_test_py(["--input_dir", mixed_folder, "--test_dir", out, "--weight_dir", weights], monkeypatch)
    err = capsys.readouterr().err
    assert code == EXIT_SOME_INPUTS_FAILED
    assert "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["good_a.png", "good_b.jpg", "good_c.webp"]
    for name in ("good_a.png", "good_b.jpg", "good_c.webp"):
        assert image_io.read_image(out / name)[0].mean() > image_io.read_image(mixed_folder / name)[0].mean() + 10
    error_lines = [line for line in err.splitlines() if line.startswith("error: ") and "images failed" not in line]
    for name in (*BAD, "good_but_oom.png"):
        assert sum(name in line for line in error_lines) == 1, name
    assert len(error_lines) == len(BAD) + 1
    assert any("good_but_oom.png: MemoryError" in line for line in error_lines)
    assert any("junk_before_sof.jpg" in line and "ValueError" in line for line in error_lines)
    assert any("tall.bmp" in line and "error:" in line for line in error_lines)  # cv2.error, on one line


def test_the_debug_switch_shows_the_traceback(weights, mixed_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SGZ_DEBUG", "1")
    code = run_test_py(
        ["--input_dir", mixed_folder / "random.jpg", "--test_dir", tmp_path / "out", "--weight_dir", weights],
        monkeypatch,
    )
    err = capsys.readouterr().err
    assert code == EXIT_SOME_INPUTS_FAILED and "Traceback" in err and "random.jpg" in err


def test_ctrl_c_is_never_contained(weights, mixed_folder, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Enhancer, "enhance_array", interrupted)
    code = run_test_py(
        ["--input_dir", mixed_folder / "good_a.png", "--test_dir", tmp_path / "out", "--weight_dir", weights],
        monkeypatch,
    )
    assert code == EXIT_INTERRUPTED


def test_input_failure_is_one_line_with_the_type_and_message():
    import cv2

    try:
        cv2.imdecode(np.frombuffer(bad_uploads()["tall.bmp"], np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        line = input_failure("tall.bmp", e)
    assert line.startswith("tall.bmp: error: ") and "\n" not in line
    assert input_failure("x.png", MemoryError()) == "x.png: MemoryError: out of memory"
    with pytest.raises(KeyboardInterrupt):
        from runtime import contained

        with contained("x", print):
            raise KeyboardInterrupt


# ---------------------------------------------------------------------------------------------
# The demo
# ---------------------------------------------------------------------------------------------
def make_client(weights, *argv):
    args = get_demo_parser().parse_args(["--weight_dir", str(weights), "--device", "cpu", *argv])
    return create_app(args).test_client()


@pytest.fixture(scope="module")
def client(weights, tmp_path_factory):
    return make_client(weights, "--samples_dir", str(tmp_path_factory.mktemp("no_samples")))


def enhance(client, data, **kwargs):
    return client.post("/api/enhance", data=data, content_type="application/octet-stream", **kwargs)


@pytest.mark.parametrize("name", BAD)
def test_the_demo_answers_4xx_with_a_generic_body_for_what_it_cannot_decode(client, name):
    response = enhance(client, bad_uploads()[name], query_string={"name": f"/home/someone/{name}"})
    assert response.status_code in (400, 413, 415, 422)
    body = response.get_data(as_text=True)
    assert "/home" not in body and os.sep + "tmp" not in body
    assert not re.search(r"Error|error:|OpenCV|simplejpeg|Traceback", response.get_json()["error"])
    assert enhance(client, jpeg_bytes(dark_image((48, 64, 3)))).status_code == 200


def test_a_fault_of_the_demo_is_500_with_a_generic_body(client, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("/secret/path exploded")

    monkeypatch.setattr(Enhancer, "enhance_array", broken)
    response = enhance(client, jpeg_bytes(dark_image((48, 64, 3))))
    assert response.status_code == 500 and "/secret" not in response.get_data(as_text=True)


@pytest.mark.parametrize(
    "bound, allowed, host, ok",
    [
        ("127.0.0.1", "", "localhost:7860", True),
        ("127.0.0.1", "", "127.0.0.1:7860", True),
        ("127.0.0.1", "", "[::1]:7860", True),
        ("127.0.0.1", "", "attacker.example:7860", False),  # DNS rebinding
        ("127.0.0.1", "photos.example", "photos.example", True),  # a reverse proxy's public name
        ("127.0.0.1", "", "192.168.1.5", False),
        ("0.0.0.0", "", "192.168.1.5:7860", True),  # an address cannot be rebound
        ("0.0.0.0", "", "photos.example", False),
        ("0.0.0.0", "photos.example,other.example", "photos.example:80", True),
        ("0.0.0.0", "*", "anything.example", True),
    ],
)
def test_host_allow_list(weights, tmp_path, bound, allowed, host, ok):
    client = make_client(weights, "--samples_dir", str(tmp_path), "--host", bound, "--allowed_hosts", allowed)
    response = client.get("/", headers={"Host": host})
    assert response.status_code == (200 if ok else 421)


def test_folder_samples_work_from_any_working_directory_without_duplicates(weights, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --samples_dir, data/test_data, is the project's
    client = make_client(weights)
    samples = client.application.config["SAMPLES"]
    response = client.get("/api/samples/file0")
    assert response.status_code == 200 and len(response.data) > 1000
    folder_labels = [label for sample_id, (label, *_) in samples.items() if sample_id.startswith("file")]
    assert folder_labels and not {"coffee.jpg", "astronaut.png", "chelsea.jpg"} & set(folder_labels)


def test_waitresss_own_error_pages_carry_the_security_headers(weights, tmp_path):
    args = get_demo_parser().parse_args(
        ["--weight_dir", str(weights), "--device", "cpu", "--samples_dir", str(tmp_path), "--port", "0"]
    )
    sock = socket.create_server(("127.0.0.1", 0))
    server = serve(create_app(args), sock, args)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        with socket.create_connection(sock.getsockname(), timeout=10) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nContent-Length: nonsense\r\n\r\n")
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
    finally:
        server.close()
    head = answer.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("HTTP/1.1 400")
    assert "Content-Security-Policy:" in head and "X-Content-Type-Options: nosniff" in head


# ---------------------------------------------------------------------------------------------
# Nothing dropped silently: multi-frame images, CMYK
# ---------------------------------------------------------------------------------------------
def animation(tmp_path, name, pil_format, count, **options):
    frames = [Image.fromarray(dark_image((36, 48, 3), seed=i)) for i in range(count)]
    path = tmp_path / "in" / name
    path.parent.mkdir(exist_ok=True)
    frames[0].save(path, pil_format, save_all=True, append_images=frames[1:], **options)
    return path


def frames_of(path):
    with Image.open(path) as im:
        out = []
        for frame in ImageSequence.Iterator(im):
            frame.load()
            out.append((np.asarray(frame.convert("RGB")), frame.info.get("duration")))
        return out, im.info.get("loop")


@pytest.mark.parametrize(
    "name, pil_format, count, options",
    [
        ("anim.webp", "WEBP", 4, {"duration": [40, 80, 120, 60], "loop": 0, "lossless": True}),
        ("anim.png", "PNG", 3, {"duration": [50, 100, 150], "loop": 2}),
        ("anim.gif", "GIF", 3, {"duration": [60, 90, 120], "loop": 0}),
        ("pages3.tif", "TIFF", 3, {}),
        ("pages5.tiff", "TIFF", 5, {}),
    ],
)
def test_every_frame_is_enhanced_with_its_duration_and_the_loop_count(
    weights, tmp_path, name, pil_format, count, options
):
    src = animation(tmp_path, name, pil_format, count, **options)
    summary = sgz_test.Tester(weights).run(src, tmp_path / "out", progress=False)
    assert summary.images == 1 and not summary.failed
    before, loop_before = frames_of(src)
    after, loop_after = frames_of(tmp_path / "out" / name)
    assert len(after) == count and loop_after == loop_before
    for (old, old_duration), (new, new_duration) in zip(before, after, strict=True):
        assert new.shape == old.shape
        assert new.mean() > old.mean() + 10  # this frame enhanced, not a copy of the first
        if old_duration is not None:
            assert abs(new_duration - old_duration) <= 10
    assert not np.array_equal(after[0][0], after[1][0])


def test_a_cmyk_profile_is_not_carried_onto_rgb_output(weights, tmp_path, capsys):
    """No CMYK profile can be made here (ImageCms creates sRGB, Lab and XYZ ones, and none is installed), so
    this one is sRGB's with its colour space field set to CMYK: ImageCms refuses it, the JPEG is converted
    without it, and the run says so. A real CMYK profile takes ImageCms.profileToProfile (cmyk_to_rgb)."""
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    cmyk_profile = srgb[:16] + b"CMYK" + srgb[20:]
    src = tmp_path / "in" / "print.jpg"
    src.parent.mkdir()
    cmyk = Image.fromarray(
        np.dstack([dark_image((32, 40, 3))[..., ::-1] // 2 + 120] + [np.full((32, 40), 200)]).astype(np.uint8), "CMYK"
    )
    cmyk.save(src, "JPEG", icc_profile=cmyk_profile)
    summary = sgz_test.Tester(weights).run(src, tmp_path / "out", progress=False)
    assert summary.images == 1
    with Image.open(tmp_path / "out" / "print.jpg") as out:
        assert out.mode == "RGB" and "icc_profile" not in out.info
    assert "print.jpg: its CMYK ICC profile could not be used" in capsys.readouterr().err


def test_a_profile_of_another_colour_space_is_not_carried(tmp_path):
    lab = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    data = io.BytesIO()
    Image.fromarray(dark_image((16, 16, 3))).save(data, "PNG", icc_profile=lab)
    image, info = image_io.decode_image(data.getvalue(), "lab.png")
    assert image.shape == (16, 16, 3) and "icc_profile" not in info["metadata"]
    assert info["notes"] == ["its ICC profile is for Lab colours, not RGB: not carried to the output"]
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = io.BytesIO()
    Image.fromarray(dark_image((16, 16, 3))).save(data, "PNG", icc_profile=srgb)
    assert image_io.decode_image(data.getvalue(), "srgb.png")[1]["metadata"]["icc_profile"] == srgb


# ---------------------------------------------------------------------------------------------
# The training Dataset and the video script
# ---------------------------------------------------------------------------------------------
def test_the_training_dataset_replaces_an_image_that_fails_in_any_way(tmp_path, monkeypatch):
    import dataloader

    for name, seed in (("a.png", 0), ("b.png", 1)):
        Image.fromarray(dark_image((20, 30, 3), seed=seed)).save(tmp_path / name)
    dataset = dataloader.LowLightDataset(tmp_path, size=16)
    load_rgb = dataloader.load_rgb

    def out_of_memory_for_a(path):
        if path.name == "a.png":
            raise MemoryError
        return load_rgb(path)

    monkeypatch.setattr(dataloader, "load_rgb", out_of_memory_for_a)
    with pytest.warns(UserWarning, match=r"a\.png: MemoryError"):
        tensor = dataset[0]
    assert tensor.shape == (3, 16, 16)


def test_a_video_that_fails_inside_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    make_video = pytest.importorskip("demo.make_video")
    from option import get_video_parser

    def broken(*args, **kwargs):
        raise ValueError("a decoder's surprise")

    monkeypatch.setattr(make_video, "run_choice", broken)
    code = run_script(make_video.main, get_video_parser(), ["--video_path", str(tmp_path / "clip.mp4")])
    err = capsys.readouterr().err
    assert code == EXIT_SOME_INPUTS_FAILED and "Traceback" not in err
    assert err.strip() == f"error: {tmp_path / 'clip.mp4'}: ValueError: a decoder's surprise"
