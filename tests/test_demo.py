"""The web demo (demo/app.py): what a visitor sends and gets back, bad uploads, limits, privacy, and
an end-to-end run in headless Chromium against `python demo/app.py`. What the server refuses to protect
itself is in test_demo_limits.py."""

import contextlib
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from conftest import ROOT
from PIL import Image

from enhance import Enhancer
from image_io import encode_image, read_image, write_image
from model import EnhanceNet
from option import get_demo_parser

pytest.importorskip("flask", reason="the web demo needs Flask: pip install -r requirements.txt")
from demo.app import create_app, darken  # noqa: E402  (after the skip: it imports Flask)

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A checkpoint whose curve brightens every pixel alike (all weights 0, the last bias -1, so r = tanh(-1)):
    these tests are about the demo's plumbing; the network's numbers are tested in test_model.py."""
    net = EnhanceNet()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.e_conv7.point_conv.bias.fill_(-1.0)
    path = tmp_path_factory.mktemp("weights") / "brighten.pth"
    torch.save(net.state_dict(), path)
    return path


def make_client(weights, tmp_path, *argv):
    args = get_demo_parser().parse_args(
        ["--weight_dir", str(weights), "--device", "cpu", "--samples_dir", str(tmp_path / "no_samples"), *argv]
    )
    return create_app(args).test_client()


@pytest.fixture
def client(weights, tmp_path):
    return make_client(weights, tmp_path)


def dark_photo(size=None):
    """A real photo (scikit-image's cat, 451 x 300) made dark, as JPEG bytes; resized to `size` if given."""
    im = Image.fromarray(darken(skimage.data.chelsea()))
    if size:
        im = im.resize(size)
    out = io.BytesIO()
    im.save(out, "JPEG", quality=95)
    return out.getvalue()


def enhance(client, data, **params):
    return client.post("/api/enhance", query_string=params, data=data, content_type="application/octet-stream")


def as_array(data):
    return np.asarray(Image.open(io.BytesIO(data)))


def test_upload_comes_back_enhanced_at_full_size(client):
    photo = dark_photo()
    response = enhance(client, photo)
    assert response.status_code == 200 and response.mimetype == "image/png"
    result, original = as_array(response.data), as_array(photo)
    assert result.shape == original.shape == (300, 451, 3)
    assert result.mean() > original.mean() + 20


def test_result_is_exactly_what_test_py_writes(weights, tmp_path):
    """One code path: the page's PNG equals what test.py writes (read_image, Enhancer, write_image) for the
    same photo and options."""
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(dark_photo())
    image = read_image(photo)[0]
    write_image(tmp_path / "out.png", Enhancer(weights, device="cpu").enhance_array(image, scale_factor=4))
    response = enhance(make_client(weights, tmp_path), photo.read_bytes(), scale_factor=4)
    assert np.array_equal(as_array(response.data), np.asarray(Image.open(tmp_path / "out.png")))


@pytest.mark.parametrize(
    "shape, dtype", [((120, 160), np.uint8), ((120, 160, 4), np.uint8), ((120, 160, 3), np.uint16)]
)
def test_grey_alpha_and_16_bit_photos_keep_their_kind(client, shape, dtype):
    peak = np.iinfo(dtype).max
    image = (np.random.default_rng(2).random(shape) * 0.2 * peak).astype(dtype)
    if len(shape) == 3 and shape[2] == 4:
        image[..., 3] = np.arange(160, dtype=dtype)  # a gradient of transparency
    result = cv2.imdecode(
        np.frombuffer(enhance(client, encode_image(image, ".png").tobytes()).data, np.uint8), cv2.IMREAD_UNCHANGED
    )
    assert result.shape == image.shape and result.dtype == dtype
    if len(shape) == 3 and shape[2] == 4:
        assert np.array_equal(result[..., 3], image[..., 3])
    assert result.mean() > image.mean() * 1.5


def test_brightness_control_orders_the_results(client):
    photo = dark_photo()
    means = [as_array(enhance(client, photo, strength=s).data).mean() for s in (0, 0.5, 1, 2)]
    assert means == sorted(means) and means[0] < means[1] < means[3]
    assert abs(means[0] - as_array(photo).mean()) < 0.5  # strength 0 leaves the photo as it is


def truncated_jpeg():
    data = dark_photo()
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "data, params, status, message",
    [
        (b"", {}, 400, "No image received"),
        (b"%PDF-1.4 this is not a photo", {"name": "notes.pdf"}, 422, "could not be read as an image"),
        (truncated_jpeg(), {}, 422, "could not be read as an image"),
        (dark_photo(), {"scale_factor": 5}, 400, "scale_factor must be one of"),
        (dark_photo(), {"strength": "bright"}, 400, "strength must be a number"),
        (dark_photo(), {"strength": 3}, 400, "strength must be a number"),
    ],
)
def test_bad_request_gets_one_clear_message_and_the_server_keeps_serving(client, data, params, status, message):
    response = enhance(client, data, **params)
    assert response.status_code == status
    assert message in response.get_json()["error"]
    assert enhance(client, dark_photo()).status_code == 200


def test_a_failure_inside_the_enhancer_is_reported_and_the_server_goes_on(client, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("not enough memory")

    monkeypatch.setattr(Enhancer, "enhance_array", out_of_memory)
    response = enhance(client, dark_photo())
    assert response.status_code == 500 and "fault of its own" in response.get_json()["error"]
    assert "not enough memory" not in response.get_data(as_text=True)  # no exception text in a body
    monkeypatch.undo()
    assert enhance(client, dark_photo()).status_code == 200


def test_limits_on_bytes_pixels_and_network_size(weights, tmp_path):
    client = make_client(
        weights, tmp_path, "--max_upload_mb", "0.2", "--max_mpix", "0.1", "--max_network_megapixels", "0.01"
    )
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(noise, "PNG")
    response = enhance(client, noise.getvalue())  # 270 KB
    assert response.status_code == 413 and "0.2 MB" in response.get_json()["error"]
    chunked = client.post(
        "/api/enhance",
        input_stream=io.BytesIO(noise.getvalue()),  # a body with no Content-Length
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert chunked.status_code == 413
    response = enhance(client, dark_photo())  # 451 x 300 = 0.14 MP
    assert response.status_code == 413 and "451x300" in response.get_json()["error"]
    small = dark_photo((320, 240))  # 0.077 MP: at scale 1 the network would see 0.077 MP, at 4 only 0.005 MP
    response = enhance(client, small, scale_factor=1)
    assert response.status_code == 413 and "choose scale factor 4 or more" in response.get_json()["error"]
    assert as_array(enhance(client, small, scale_factor=4).data).shape == (240, 320, 3)


def test_samples_are_dark_photos_and_a_folder_adds_its_own(weights, tmp_path):
    folder = tmp_path / "samples"
    folder.mkdir()
    own = io.BytesIO()
    Image.fromarray(darken(skimage.data.rocket())).save(own, "JPEG", quality=95)
    (folder / "my night.jpg").write_bytes(own.getvalue())
    (folder / "the cat again.jpg").write_bytes(dark_photo())  # a built-in sample's picture: not offered twice
    client = make_client(weights, tmp_path, "--samples_dir", str(folder))
    page = client.get("/").get_data(as_text=True)
    for sample_id in ("coffee", "astronaut", "chelsea", "file0"):
        assert f'data-sample="{sample_id}"' in page
        assert client.get(f"/api/samples/{sample_id}/thumbnail").status_code == 200
    assert "my night.jpg" in page
    coffee = client.get("/api/samples/coffee")
    assert coffee.mimetype == "image/png" and as_array(coffee.data).mean() < 40
    assert client.get("/api/samples/file0").data == own.getvalue()
    assert "the cat again" not in page and client.get("/api/samples/file1").status_code == 404
    missing = client.get("/api/samples/nope")
    assert missing.status_code == 404 and "no sample" in missing.get_json()["error"]


def test_page_loads_nothing_from_elsewhere(client):
    response = client.get("/")
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["Cache-Control"] == "no-store"
    for url in ("/", "/static/demo.js", "/static/demo.css"):
        assert "://" not in client.get(url).get_data(as_text=True), url


def test_concurrent_visitors_each_get_their_own_image(client):
    photos = [dark_photo(size) for size in ((451, 300), (200, 150), (333, 222))]
    expected = [enhance(client, photo).data for photo in photos]
    results, errors = {}, []

    def visitor(i):
        try:
            results[i] = [enhance(client, photos[i]).data for _ in range(3)]
        except Exception as e:  # surfaced below: a thread's exception is otherwise lost
            errors.append(e)

    threads = [threading.Thread(target=visitor, args=(i,)) for i in range(len(photos))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, result in results.items():
        assert result == [expected[i]] * 3


def test_uploads_are_never_written_to_disk(client, tmp_path, monkeypatch):
    workdir, tempdir = tmp_path / "cwd", tmp_path / "tmp"
    workdir.mkdir()
    tempdir.mkdir()
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(tempfile, "tempdir", str(tempdir))
    big = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 64, (600, 800, 3), dtype=np.uint8)).save(big, "PNG")
    assert len(big.getvalue()) > 1_000_000  # far over what a multipart parser keeps in memory
    assert enhance(client, big.getvalue()).status_code == 200
    assert list(workdir.iterdir()) == [] and list(tempdir.iterdir()) == []


def run_demo(*argv, cwd=ROOT, env=None):
    return subprocess.run(
        [sys.executable, str(ROOT / "demo" / "app.py"), *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bad_weights_stop_the_server_with_one_line(tmp_path):
    result = run_demo("--weight_dir", str(tmp_path / "missing.pth"), "--port", "0")
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and "missing.pth" in result.stderr and "Traceback" not in result.stderr


def test_busy_port_stops_the_server_with_one_line(weights):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = run_demo("--weight_dir", str(weights), "--port", str(busy.getsockname()[1]), "--device", "cpu")
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and "--port" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------
# End to end: the real server, driven by headless Chromium
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    missing = [
        what
        for what, ok in (
            ("chromium (Debian: apt-get install chromium)", chromium),
            ("playwright (pip install playwright)", sync_playwright),
        )
        if not ok
    ]
    if missing:
        reason = "the browser test needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; .ci/run installs them, so CI must run this test")
        pytest.skip(reason)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, args=CHROMIUM_FLAGS
        )  # a fresh profile each launch
        yield browser
        browser.close()


@contextlib.contextmanager
def running_demo(weights, tmp_path, *argv):
    """`python demo/app.py --port 0 ARGV` run from an empty folder with an empty TMPDIR of its own; yields
    (url, that folder, that TMPDIR, the process)."""
    workdir, tempdir, log = tmp_path / "cwd", tmp_path / "tmp", tmp_path / "server.log"
    workdir.mkdir()
    tempdir.mkdir()
    with open(log, "w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "demo" / "app.py"),
                "--port",
                "0",
                "--device",
                "cpu",
                "--weight_dir",
                str(weights),
                *argv,
            ],
            cwd=workdir,
            env={**os.environ, "TMPDIR": str(tempdir)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while (
            not (url := re.search(r"http://\S+:\d+", log.read_text()))
            and process.poll() is None
            and time.monotonic() < deadline
        ):
            time.sleep(0.2)
        assert url, f"the demo did not start: {log.read_text()}"
        yield url.group(), workdir, tempdir, process
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def server(weights, tmp_path):
    with running_demo(weights, tmp_path) as (url, workdir, tempdir, _):
        yield url, workdir, tempdir


def test_browser_upload_shows_and_downloads_the_enhanced_photo(browser, server, tmp_path):
    from playwright.sync_api import expect

    url, workdir, tempdir = server
    photo, not_a_photo = tmp_path / "night cat.jpg", tmp_path / "notes.jpg"
    photo.write_bytes(dark_photo())
    not_a_photo.write_text("not a photo")
    page = browser.new_page(accept_downloads=True)
    page.set_default_timeout(60_000)
    requested = []
    page.on("request", lambda r: requested.append(r.url))

    def download(name):
        with page.expect_download() as info:
            page.click("#download")
        assert info.value.suggested_filename == "night cat_sgz.png"
        info.value.save_as(tmp_path / name)
        return np.asarray(Image.open(tmp_path / name))

    page.goto(url)
    page.set_input_files("#file", photo)
    expect(page.locator("#info")).to_contain_text("451 × 300 px · scale factor 12")
    enhanced = download("enhanced.png")
    assert enhanced.shape == (300, 451, 3) and enhanced.mean() > as_array(photo.read_bytes()).mean() + 20

    # Both controls re-run the enhancement: a brighter result at brightness 1.5, and the chosen scale factor.
    page.select_option("#scale", "4")
    expect(page.locator("#info")).to_contain_text("scale factor 4")
    page.fill("#strength", "1.5")
    expect(page.locator("#info")).to_contain_text("scale factor 4 · brightness 1.50")
    expect(page.locator("#strength-value")).to_have_text("1.50")
    assert download("brighter.png").mean() > enhanced.mean() + 5
    page.screenshot(path=tmp_path / "demo.png")

    # A bad upload: a clear message on the page, and the server goes on serving.
    page.set_input_files("#file", not_a_photo)
    expect(page.locator("#error")).to_contain_text("This file could not be read as an image")
    expect(page.locator("#result")).to_be_hidden()
    page.set_input_files("#file", photo)
    expect(page.locator("#result")).to_be_visible()
    page.click("button[data-sample=coffee]")  # a built-in sample, 600 x 400
    expect(page.locator("#info")).to_contain_text("600 × 400 px")

    local = (url, "blob:" + url, "data:")
    assert [u for u in requested if not u.startswith(local)] == []
    assert list(workdir.iterdir()) == [] and list(tempdir.iterdir()) == []
