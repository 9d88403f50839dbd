"""What the web demo refuses so that it survives the open internet: work past its budget of decoded bytes
or its queue (503 + Retry-After), bytes it is not meant to decode (other formats, JPEG scan bombs), POSTs
from other sites, and, on the real server (waitress), chunked bodies past the limit, a chunked upload
that hangs up, and idle connections. The heavy versions are benchmarks/bench_demo_attacks.py."""

import http.client
import io
import re
import socket
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import skimage.data
from PIL import Image
from test_demo import dark_photo, enhance, make_client, running_demo, weights  # noqa: F401  (weights: a fixture)

import demo.app
from demo.app import darken
from enhance import Enhancer
from image_io import encode_image, image_header


@pytest.fixture
def client(weights, tmp_path):  # noqa: F811
    return make_client(weights, tmp_path)


@pytest.fixture
def no_decoding(monkeypatch):
    """Makes any decoding fail the test: a refusal must come from the header, before any pixel is decoded."""

    def decode_image(*args, **kwargs):
        raise AssertionError("decoded an upload that should have been refused from its header")

    monkeypatch.setattr(demo.app, "decode_image", decode_image)


class HeldEnhancer:
    """Enhancer.enhance_array held until release(): work that stays admitted while a test looks on."""

    def __init__(self, monkeypatch):
        self.entered, self.released = threading.Semaphore(0), threading.Event()
        original = Enhancer.enhance_array

        def held(enhancer, *args, **kwargs):
            self.entered.release()
            self.released.wait(60)
            return original(enhancer, *args, **kwargs)

        monkeypatch.setattr(Enhancer, "enhance_array", held)


def wait_until(condition, timeout=30):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_uploads_past_the_running_and_waiting_bounds_get_503_with_retry_after(weights, tmp_path, monkeypatch):  # noqa: F811
    client = make_client(weights, tmp_path, "--max_running", "1", "--max_waiting", "1")
    admission = client.application.config["ADMISSION"]
    held = HeldEnhancer(monkeypatch)
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(enhance, client, dark_photo())
        assert held.entered.acquire(timeout=30)
        waiting = pool.submit(enhance, client, dark_photo())
        wait_until(lambda: len(admission.queue) == 1)
        refused = enhance(client, dark_photo())
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "10"
        assert "1 photos are already waiting" in refused.get_json()["error"]
        held.released.set()
        assert running.result().status_code == 200 and waiting.result().status_code == 200
    assert (admission.running, admission.used_bytes, len(admission.queue)) == (0, 0, 0)  # all given back


def test_an_upload_that_waits_too_long_gets_503(weights, tmp_path, monkeypatch):  # noqa: F811
    client = make_client(weights, tmp_path, "--max_running", "1")
    client.application.config["ADMISSION"].timeout_s = 0.2
    held = HeldEnhancer(monkeypatch)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(enhance, client, dark_photo())
        assert held.entered.acquire(timeout=30)
        refused = enhance(client, dark_photo())
        held.released.set()
        assert running.result().status_code == 200
    assert refused.status_code == 503 and "no turn within 0.2 s" in refused.get_json()["error"]
    assert refused.headers["Retry-After"] == "10"


def test_decoded_bytes_are_budgeted_from_the_header_16_bits_at_8_bytes_a_pixel(weights, tmp_path, monkeypatch):  # noqa: F811
    """160 x 120 RGBA: 77 KB decoded at 8 bits, 154 KB at 16; a budget of 0.1 MB admits only the first."""
    eight, sixteen = (encode_image(np.zeros((120, 160, 4), dtype), ".png").tobytes() for dtype in (np.uint8, np.uint16))
    assert image_header(sixteen).decoded_bytes == 160 * 120 * 8 and image_header(eight).decoded_bytes == 160 * 120 * 4
    client = make_client(weights, tmp_path, "--max_busy_mb", "0.1")
    assert enhance(client, eight).status_code == 200
    monkeypatch.setattr(demo.app, "decode_image", lambda *a, **k: pytest.fail("decoded before refusing"))
    refused = enhance(client, sixteen)
    assert refused.status_code == 413
    assert "needs 0.154 MB once decoded; this demo works on at most 0.1 MB" in refused.get_json()["error"]


def progressive_jpeg(extra_scans=0):
    """The cat as a progressive JPEG (Pillow writes libjpeg's 10 scans for colour), its last scan repeated."""
    out = io.BytesIO()
    Image.fromarray(darken(skimage.data.chelsea())).save(out, "JPEG", progressive=True, quality=90)
    data = out.getvalue()
    last, end = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    return data[:end] + data[last:end] * extra_scans + data[end:]


def test_a_progressive_jpeg_is_enhanced(client):
    assert progressive_jpeg().count(b"\xff\xda") == 10
    assert enhance(client, progressive_jpeg()).status_code == 200


def test_a_jpeg_with_more_scans_than_cameras_write_is_refused_before_decoding(client, no_decoding):
    response = enhance(client, progressive_jpeg(extra_scans=91), name="scans.jpg")
    assert response.status_code == 413
    assert "scans.jpg: a JPEG of 101 scans" in response.get_json()["error"]


def test_a_side_longer_than_any_photo_is_refused_before_decoding(client, no_decoding):
    """70,000 x 1: few pixels, but the enhancement's row buffers grow with the width."""
    wide = encode_image(np.zeros((1, 70_000), np.uint8), ".png").tobytes()
    response = enhance(client, wide, name="wide.png")
    assert response.status_code == 413 and "70000x1 has a side over 65535 pixels" in response.get_json()["error"]


def tiled_tiff(size, tile):
    """A black size x size RGB TIFF stored as one deflated tile of tile x tile pixels (a tile may be larger
    than the image; the decoder allocates the whole tile)."""
    pixels = zlib.compress(bytes(tile * tile * 3), 9)
    tags = [
        (256, 4, size),
        (257, 4, size),
        (258, 3, 8),
        (259, 3, 8),
        (262, 3, 2),
        (277, 3, 3),
        (284, 3, 1),
        (322, 4, tile),
        (323, 4, tile),
        (324, 4, 8 + 2 + 12 * 11 + 4),
        (325, 4, len(pixels)),
    ]
    ifd = b"".join(
        struct.pack("<HHII", tag, kind, 1, value) if kind == 4 else struct.pack("<HHIHH", tag, kind, 1, value, 0)
        for tag, kind, value in tags
    )
    return struct.pack("<2sHIH", b"II", 42, 8, len(tags)) + ifd + struct.pack("<I", 0) + pixels


def test_a_tiff_tile_larger_than_its_image_counts_against_the_budget(weights, tmp_path, monkeypatch):  # noqa: F811
    """64 x 64 pixels (16 KB decoded) in one 2048 x 2048 tile (16.8 MB to decode)."""
    tiff = tiled_tiff(64, 2048)
    assert image_header(tiff).decoded_bytes == (64 * 64 + 2048 * 2048) * 4
    assert enhance(make_client(weights, tmp_path, "--max_busy_mb", "20"), tiff).status_code == 200
    monkeypatch.setattr(demo.app, "decode_image", lambda *a, **k: pytest.fail("decoded before refusing"))
    refused = enhance(make_client(weights, tmp_path, "--max_busy_mb", "10"), tiff)
    assert refused.status_code == 413 and "needs 16.8 MB once decoded" in refused.get_json()["error"]


def test_formats_the_page_does_not_offer_are_refused_before_decoding(client, no_decoding):
    gif = io.BytesIO()
    Image.new("P", (64, 48)).save(gif, "GIF")
    response = enhance(client, gif.getvalue(), name="anim.gif")
    assert response.status_code == 415 and "anim.gif: this demo does not read GIF files" in response.get_json()["error"]


@pytest.mark.parametrize(
    "headers, status",
    [
        ({}, 200),  # curl, scripts
        ({"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"}, 200),  # the demo's own page
        ({"Origin": "http://localhost"}, 200),  # a browser without Fetch Metadata, on the demo's page
        ({"Sec-Fetch-Site": "cross-site", "Origin": "https://elsewhere.example"}, 403),
        ({"Sec-Fetch-Site": "same-site", "Origin": "http://other.localhost"}, 403),
        ({"Origin": "https://elsewhere.example"}, 403),
    ],
)
def test_posts_from_other_sites_pages_are_refused(client, headers, status):
    response = client.post("/api/enhance", data=dark_photo(), headers=headers)
    assert response.status_code == status
    assert "Access-Control-Allow-Origin" not in response.headers  # and no site is allowed to read an answer
    if status == 403:
        assert "other sites" in response.get_json()["error"]


def server_threads(pid):
    return int(re.search(r"^Threads:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M).group(1))


def get_page(port):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/")
    return connection.getresponse().status


def test_the_real_server_survives_hang_ups_bounds_chunked_bodies_and_idle_connections(weights, tmp_path):  # noqa: F811
    with running_demo(weights, tmp_path, "--max_upload_mb", "0.1") as (url, _, _, process):
        port = urlsplit(url).port
        # A chunk of 48 MB announced, 3 bytes sent, and the connection closed (this killed the old server).
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /api/enhance HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3000000\r\nabc")
            time.sleep(0.5)
        time.sleep(0.5)
        assert process.poll() is None and get_page(port) == 200

        # A chunked body has no Content-Length to check: it is cut off at the limit as it arrives, with a 413
        # or, when the server closes while the client is still sending, a broken connection.
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            connection.request("POST", "/api/enhance", body=iter([bytes(20_000)] * 100), encode_chunked=True)
            status = connection.getresponse().status
        except (BrokenPipeError, ConnectionResetError):
            status = "cut off"
        assert status in (413, "cut off")

        # Idle connections, silent or stalled inside their headers, hold no thread and starve no one.
        linux = Path(f"/proc/{process.pid}/status").exists()
        before = server_threads(process.pid) if linux else None
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
        for s in idle[::2]:
            s.sendall(b"POST /api/enhance HTTP/1.1\r\nHost: x\r\nContent-Le")
        assert get_page(port) == 200
        if linux:
            assert server_threads(process.pid) == before
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("POST", "/api/enhance", body=dark_photo((200, 150)))
        assert connection.getresponse().status == 200
        for s in idle:
            s.close()


def test_with_no_queue_an_idle_server_still_admits(weights, tmp_path):  # noqa: F811
    assert enhance(make_client(weights, tmp_path, "--max_waiting", "0"), dark_photo()).status_code == 200


def test_wsgi_app_takes_the_command_line_options(weights, tmp_path):  # noqa: F811
    """The app a WSGI server of the user's own runs (waitress-serve --call demo.app:wsgi_app), limits included."""
    app = demo.app.wsgi_app(
        "--weight_dir", str(weights), "--device", "cpu", "--samples_dir", str(tmp_path), "--max_busy_mb", "0.1"
    )
    assert app.config["ADMISSION"].budget_bytes == 100_000
    assert enhance(app.test_client(), dark_photo((160, 120))).status_code == 200
    assert enhance(app.test_client(), dark_photo()).status_code == 413  # 451 x 300 x 4 bytes: over 0.1 MB
