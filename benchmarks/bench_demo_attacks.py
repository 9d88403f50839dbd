"""Attacks on the web demo, replayed against a real `python demo/app.py` on localhost: it is started here, on a
free port, and stopped at the end. Every attack is bounded in requests and time; the script stops by itself.

    python benchmarks/bench_demo_attacks.py [--weight_dir weight/sgz.pth] [-- more demo/app.py options]

1. chunked hang-up: a chunked POST announcing a 48 MB chunk, 3 bytes of it, then the socket closed;
2. memory: 32 uploads, 16 at a time, of a 0.3 MB all-zero PNG declaring 6300 x 6300 16-bit RGBA (40 MP,
   320 MB decoded), while GET / is timed every 0.25 s;
3. CPU: a 6296 x 6296 progressive JPEG of 20,000 scans (each scan makes libjpeg visit all 620,000 blocks);
4. 400 idle connections (200 silent, 200 stalled inside their headers) held open while a visitor loads
   the page and enhances a photo, then left until the server closes them;
5. small files that need gigabytes: a 0.4 MB PNG of 20,000,000 x 2 pixels (the enhancement's row buffers
   grow with the width) and a 100 x 100 TIFF stored in one 16,000 x 16,000 tile (decoders allocate it whole);
then a normal photo is enhanced. Prints the server's peak RSS (VmHWM), status counts and latencies, and
whether each of the issue's bars is met.
"""

import argparse
import collections
import http.client
import io
import json
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import skimage.data
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from demo.app import darken  # noqa: E402

REQUEST_TIMEOUT_S = 300  # a 40 MP photo takes 1-2 minutes on a busy 2-core machine


# ---------------------------------------------------------------------------------------------
# The server and what it costs
# ---------------------------------------------------------------------------------------------
def start_demo(weight_dir, extra):
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "demo" / "app.py"),
            "--port",
            "0",
            "--device",
            "cpu",
            "--weight_dir",
            weight_dir,
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    for line in process.stdout:
        if match := re.search(r"http://[\d.]+:(\d+)", line):
            threading.Thread(target=collections.deque, args=(process.stdout, 0), daemon=True).start()  # drain the log
            return process, int(match.group(1))
        if time.monotonic() > deadline:
            break
    process.kill()
    sys.exit(f"the demo did not start: {process.stdout.read()}")


def proc_status(pid, field):
    """A field of /proc/PID/status, in kB for memory (Linux)."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+)", text, re.M).group(1))


def rss_mb(pid, peak=False):
    try:
        return proc_status(pid, "VmHWM" if peak else "VmRSS") / 1024
    except (OSError, AttributeError):  # not Linux: psutil samples the current size only
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20


def threads_of(pid):
    try:
        return proc_status(pid, "Threads")
    except (OSError, AttributeError):
        import psutil

        return psutil.Process(pid).num_threads()


class PeakRSS(threading.Thread):
    """Samples the server's RSS every 50 ms (VmHWM, the kernel's own peak, is exact but only on Linux)."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stopped = pid, 0.0, threading.Event()

    def run(self):
        while not self.stopped.wait(0.05):
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except Exception:  # the process is gone: the attack killed it
                return


class PageTimer(threading.Thread):
    """GET / every 0.25 s while an attack runs: the page must stay fast for everyone else."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port, self.times, self.failures, self.stopped = port, [], [], threading.Event()

    def run(self):
        while not self.stopped.wait(0.25):
            status, seconds, _ = request(self.port, "GET", "/", timeout=30)
            (self.times if status == 200 else self.failures).append(seconds if status == 200 else status)

    def stop(self):
        self.stopped.set()
        self.join()
        return self


def request(port, method, path, body=None, timeout=REQUEST_TIMEOUT_S, headers=None):
    """(status or an error's name, seconds, the JSON error or the body's length)."""
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        status, retry_after = response.status, response.getheader("Retry-After")
    except (OSError, http.client.HTTPException) as e:
        return type(e).__name__, time.monotonic() - started, str(e)
    finally:
        connection.close()
    seconds = time.monotonic() - started
    if status == 200:
        return status, seconds, len(data)
    try:
        reason = json.loads(data)["error"]
    except ValueError:
        reason = data[:80].decode(errors="replace")
    return status, seconds, reason + (f" [Retry-After: {retry_after}]" if retry_after else "")


def alive(process, port):
    return process.poll() is None and request(port, "GET", "/", timeout=10)[0] == 200


# ---------------------------------------------------------------------------------------------
# The files
# ---------------------------------------------------------------------------------------------
def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def zero_png(width=6300, height=6300, rgba16=True):
    """An all-zero PNG, 16-bit RGBA (colour type 6, 8 bytes a pixel) or 8-bit RGB (type 2, 3 bytes),
    compressed a row at a time: 0.3 MB on disk for 6300 x 6300 16-bit RGBA, 320 MB once decoded."""
    depth, colour_type, pixel_bytes = (16, 6, 8) if rgba16 else (8, 2, 3)
    compressor, row = zlib.compressobj(9), bytes(1 + width * pixel_bytes)  # filter byte 0, then the samples
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0))
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def tiled_tiff(size, tile):
    """A black size x size RGB TIFF stored as one deflated tile of tile x tile pixels (a tile may be declared
    larger than the image, and decoders allocate the whole tile)."""
    compressor, row = zlib.compressobj(9), bytes(tile * 3)
    pixels = b"".join(compressor.compress(row) for _ in range(tile)) + compressor.flush()
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


class BitWriter:
    def __init__(self):
        self.bits = []

    def write(self, value, length):
        self.bits += [(value >> i) & 1 for i in reversed(range(length))]

    def entropy_bytes(self):
        """The bits padded with ones to a byte, every FF byte stuffed with 00 (as JPEG's entropy coding has it)."""
        bits = self.bits + [1] * (-len(self.bits) % 8)
        out = bytearray()
        for i in range(0, len(bits), 8):
            out.append(int("".join(map(str, bits[i : i + 8])), 2))
            if out[-1] == 0xFF:
                out.append(0)
        return bytes(out)


def scan_bomb_jpeg(size=6296, scans=20_000):
    """A grey progressive JPEG of size x size whose first scans are Pillow's (libjpeg's) and which then
    repeats one AC scan `scans` times. The scan codes all blocks as runs of 'end of band' (EOB14, 32767
    blocks a code, ~40 bytes), yet libjpeg's decoder visits each of the image's blocks in every scan. The
    repeated scan breaks the progression rules, which libjpeg only warns about."""
    out = io.BytesIO()
    Image.new("L", (size, size)).save(out, "JPEG", progressive=True, quality=90)
    jpeg = out.getvalue()
    blocks = (-(-size // 8)) ** 2
    # AC table 1: 0 -> EOB14 (symbol 0xE0, 14 extra bits), 10 -> EOB (0x00); no code may be all ones.
    dht = b"\xff\xc4" + struct.pack(">H", 2 + 1 + 16 + 2) + b"\x11" + bytes([1, 1] + [0] * 14) + b"\xe0\x00"
    bits = BitWriter()
    left = blocks
    while left > 0:
        run = min(left, 32767)
        if run >= 1 << 14:
            bits.write(0, 1)
            bits.write(run - (1 << 14), 14)
        else:  # the last few blocks, one EOB each
            for _ in range(run):
                bits.write(0b10, 2)
        left -= run
    # SOS: one component (1), DC table 0 / AC table 1, Ss=1 Se=63 Ah=0 Al=0
    scan = b"\xff\xda" + struct.pack(">HBBBBBB", 8, 1, 1, 0x01, 1, 63, 0) + bits.entropy_bytes()
    end = jpeg.rindex(b"\xff\xd9")
    return jpeg[:end] + dht + scan * scans + jpeg[end:]


def photo_jpeg():
    out = io.BytesIO()
    Image.fromarray(darken(skimage.data.chelsea())).save(out, "JPEG", quality=95)
    return out.getvalue()


# ---------------------------------------------------------------------------------------------
# The attacks
# ---------------------------------------------------------------------------------------------
def chunked_hang_up(port):
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST /api/enhance HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3000000\r\nabc")
        time.sleep(0.5)


def upload_flood(port, body, total, at_once):
    """`total` uploads of body, `at_once` at a time; [(status, seconds, reason)]."""
    with ThreadPoolExecutor(at_once) as pool:
        return list(
            pool.map(lambda _: request(port, "POST", "/api/enhance?scale_factor=12&name=zero.png", body), range(total))
        )


def idle_connections(port, count):
    """`count` open sockets: half silent, half stalled in the middle of their headers."""
    sockets = []
    for i in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if i % 2:
            s.sendall(b"POST /api/enhance HTTP/1.1\r\nHost: x\r\nContent-Len")
        sockets.append(s)
    return sockets


def wait_closed(sockets, opened, deadline_s):
    """Seconds from `opened` until the server closed each socket (those it closed within deadline_s)."""
    closed = []
    for s in sockets:
        s.settimeout(max(0.01, opened + deadline_s - time.monotonic()))
        try:
            s.recv(1 << 16)  # waitress closes a timed-out connection without a word: the end of the stream
        except TimeoutError:
            continue
        except OSError:  # reset by the server
            pass
        closed.append(time.monotonic() - opened)
    return closed


def summary(results):
    counts = collections.Counter(status for status, _, _ in results)
    seconds = sorted(s for _, s, _ in results)
    reasons = collections.Counter(reason for status, _, reason in results if status != 200)
    return counts, seconds, reasons


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weight_dir", default=str(ROOT / "weight" / "sgz.pth"))
    parser.add_argument("--uploads", type=int, default=32)
    parser.add_argument("--at_once", type=int, default=16)
    parser.add_argument("--scans", type=int, default=20_000)
    parser.add_argument("--idle", type=int, default=400)
    parser.add_argument("demo_args", nargs="*", help="more options for demo/app.py (after --)")
    args = parser.parse_args()
    bars = {}

    print("building the files ...", flush=True)
    zero, bomb, photo = zero_png(), scan_bomb_jpeg(scans=args.scans), photo_jpeg()
    wide, tiled = zero_png(20_000_000, 2, rgba16=False), tiled_tiff(100, 16_000)
    sample_bomb = scan_bomb_jpeg(scans=200)  # libjpeg's cost per scan, measured here on the same image
    started = time.monotonic()
    cv2.imdecode(np.frombuffer(sample_bomb, np.uint8), cv2.IMREAD_UNCHANGED)
    per_scan = (time.monotonic() - started) / 200
    print(
        f"  PNG bomb {len(zero) / 1e6:.2f} MB (6300x6300 16-bit RGBA); scan bomb {len(bomb) / 1e6:.2f} MB "
        f"({args.scans} scans, 6296x6296): OpenCV here decodes a 200-scan version at {per_scan * 1e3:.1f} ms a scan, "
        f"so ~{per_scan * args.scans:.0f} s for this one"
    )

    process, port = start_demo(args.weight_dir, args.demo_args)
    pid = process.pid
    try:
        time.sleep(1)
        print(f"demo on port {port}, pid {pid}: {rss_mb(pid):.0f} MB RSS idle, {threads_of(pid)} threads")
        monitor = PeakRSS(pid)
        monitor.start()

        print("\n1. chunked upload announcing 48 MB, 3 bytes sent, hang-up")
        chunked_hang_up(port)
        time.sleep(1)
        bars["1. server survives the chunked hang-up"] = ok = alive(process, port)
        print(f"  server alive and serving: {ok}")

        print(f"\n2. {args.uploads} uploads of the 40 MP 16-bit PNG, {args.at_once} at a time; GET / every 0.25 s")
        timer = PageTimer(port)
        timer.start()
        started = time.monotonic()
        results = upload_flood(port, zero, args.uploads, args.at_once)
        elapsed = time.monotonic() - started
        timer.stop()
        counts, seconds, reasons = summary(results)
        peak = max(rss_mb(pid, peak=True), monitor.peak)
        print(
            f"  {elapsed:.1f} s; statuses {dict(counts)}; latency min {seconds[0]:.2f} s, median "
            f"{seconds[len(seconds) // 2]:.2f} s, max {seconds[-1]:.2f} s"
        )
        for reason, n in reasons.items():
            print(f"  {n} x {reason}")
        print(f"  GET /: {len(timer.times)} served, max {max(timer.times, default=0):.3f} s, failures {timer.failures}")
        print(f"  server peak RSS so far: {peak:.0f} MB")
        answered = all(status == 200 or (status in (413, 429, 503) and reason) for status, _, reason in results)
        bars["2. peak RSS <= 3.0 GB"] = peak <= 3000
        bars["2. every upload answered (200, or 413/429/503 with a reason)"] = answered
        bars["2. GET / within 2 s throughout"] = not timer.failures and max(timer.times, default=0) <= 2

        print(f"\n3. progressive JPEG, {args.scans} scans, 6296x6296")
        status, seconds, reason = request(port, "POST", "/api/enhance?name=scans.jpg", bomb)
        print(f"  {status} in {seconds:.2f} s: {reason}")
        bars["3. scan bomb answered or refused within 20 s"] = isinstance(status, int) and seconds <= 20

        print(f"\n4. {args.idle} idle connections held open, then a visitor")
        before = threads_of(pid)
        opened = time.monotonic()
        sockets = idle_connections(port, args.idle)
        time.sleep(1)
        during = threads_of(pid)
        page = request(port, "GET", "/", timeout=30)
        visitor = request(port, "POST", "/api/enhance?name=cat.jpg", photo, timeout=60)
        print(f"  server threads {before} before, {during} with the idle connections open")
        print(f"  GET / {page[0]} in {page[1]:.3f} s; a photo enhanced: {visitor[0]} in {visitor[1]:.2f} s")
        bars["4. idle connections hold no threads and starve no one"] = (
            during <= before and page[0] == 200 and page[1] <= 2 and visitor[0] == 200
        )
        closed_after = wait_closed(sockets, opened, deadline_s=90)
        print(
            f"  the server closed {len(closed_after)} of {len(sockets)} idle connections, the last "
            f"{max(closed_after, default=0):.0f} s after they opened"
        )
        for s in sockets:
            s.close()

        print(
            "\n5. small files that need gigabytes: a 20,000,000 x 2 PNG, a 100 x 100 TIFF in one 16,000 x 16,000 tile"
        )
        for name, body in (("wide.png", wide), ("tiled.tif", tiled)):
            status, seconds, reason = request(port, "POST", f"/api/enhance?name={name}", body)
            print(f"  {name} ({len(body) / 1e6:.2f} MB): {status} in {seconds:.2f} s: {reason}")
            bars[f"5. {name} refused"] = status == 413

        print("\nafterwards: a normal photo")
        status, seconds, size = request(port, "POST", "/api/enhance?name=cat.jpg", photo)
        print(f"  {status} in {seconds:.2f} s ({size} bytes of PNG)")
        bars["afterwards the server still enhances a photo"] = status == 200 and process.poll() is None

        monitor.stopped.set()
        peak = max(rss_mb(pid, peak=True), monitor.peak)
        print(f"\nserver peak RSS over the whole run: {peak:.0f} MB")
        bars["2. peak RSS <= 3.0 GB"] &= peak <= 3000
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    print()
    for bar, ok in bars.items():
        print(f"{'PASS' if ok else 'FAIL'}  {bar}")
    return 0 if all(bars.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
