"""Containment replay: test.py and the web demo over ~290 bad inputs, none of which may cost another.

    python benchmarks/bench_containment.py [--weight_dir weight/sgz.pth] [--seed 0] [--per_format 41]

Inputs (seeded, made here in a temporary folder): 4 valid dark photos, a few crashers found before (a JPEG with
junk before its SOF marker, a 118-byte BMP declaring 4 x 2,000,000 pixels, a truncated PNG, random bytes named
.jpg, a TIFF whose TileWidth is text), and `--per_format` mutations of a real photo in each of 7 formats (JPEG,
PNG, TIFF, BMP, WebP, HEIC, AVIF): bit flips, truncation, inserted junk and header fields overwritten.

1. `python test.py` over the whole folder: its exit code, whether a traceback appeared, whether every valid photo
   was enhanced, and the inputs neither enhanced nor named in its output (must be none);
2. `python demo/app.py`, started from another working directory, gets `--demo_uploads` of the inputs in turn:
   status counts, any 500, any absolute path in a body, peak RSS above the idle server's; then
   GET /api/samples/file0, a foreign Host header, and a normal photo.
"""

import argparse
import collections
import http.client
import io
import json
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pillow_heif
import skimage.data
import skimage.transform
from PIL import Image, features

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from demo.app import darken  # noqa: E402

pillow_heif.register_heif_opener()
FORMATS = {  # name: (extension, Pillow format, save options)
    "JPEG": (".jpg", "JPEG", {"quality": 90}),
    "PNG": (".png", "PNG", {}),
    "TIFF": (".tif", "TIFF", {}),
    "BMP": (".bmp", "BMP", {}),
    "WebP": (".webp", "WEBP", {"quality": 90}),
    "HEIC": (".heic", "HEIF", {"quality": 80}),
    "AVIF": (".avif", "AVIF", {"quality": 80}),
}
VALID = ("coffee", "chelsea", "astronaut", "rocket")
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[\w.-]+/)+[\w.-]*")


def photo(name, width=160):
    """A scikit-image photo made dark and small (the bench is about failures, not speed)."""
    rgb = getattr(skimage.data, name)()
    rgb = rgb if rgb.ndim == 3 else np.dstack([rgb] * 3)
    height = round(rgb.shape[0] * width / rgb.shape[1])
    small = skimage.transform.resize(rgb, (height, width), anti_aliasing=True, preserve_range=True).astype(np.uint8)
    return darken(small)


def encoded(rgb, fmt):
    _, pil_format, options = FORMATS[fmt]
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, pil_format, **options)
    return out.getvalue()


def can_encode(fmt):
    if fmt == "AVIF":
        return features.check("avif")
    if fmt == "HEIC":
        return bool(pillow_heif.libheif_info().get("HEIF"))
    return True


def mutate(data, rng):
    """(kind, bytes): one seeded mutation."""
    data = bytearray(data)
    kind = ("bitflip", "truncate", "junk", "header")[rng.integers(4)]
    if kind == "bitflip":
        for _ in range(rng.integers(1, 24)):
            at = rng.integers(len(data))
            data[at] ^= 1 << rng.integers(8)
    elif kind == "truncate":
        data = data[: rng.integers(8, len(data))]
    elif kind == "junk":
        at = rng.integers(2, len(data))
        data[at:at] = rng.integers(0, 256, rng.integers(1, 64), dtype=np.uint8).tobytes()
    else:  # a header field: 2 or 4 bytes in the first 64 set to an extreme or random value
        width = int(rng.choice([2, 4]))
        at = rng.integers(0, min(64, len(data) - width))
        value = [0, 2 ** (8 * width) - 1, 2 ** (8 * width - 1) - 1, int(rng.integers(0, 2 ** (8 * width) - 1))]
        order = "big" if rng.integers(2) else "little"
        data[at : at + width] = int(value[rng.integers(4)]).to_bytes(width, order)
    return kind, bytes(data)


def crashers(rgb):
    """Inputs that stopped earlier versions: {name: bytes}."""
    jpeg = encoded(rgb, "JPEG")
    sof = jpeg.index(b"\xff\xc0")
    bmp = b"BM" + struct.pack("<IHHI", 118, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, 4, 2_000_000, 1, 24, *[0] * 6)
    png = encoded(rgb, "PNG")

    def entry(tag, kind, count, value):
        return struct.pack("<HHI", tag, kind, count) + value

    text = b"abc\x00"  # TileWidth as ASCII text, TileLength a number: the product once was a 1 GB string
    entries = [
        entry(256, 3, 1, struct.pack("<HH", 16, 0)),
        entry(257, 3, 1, struct.pack("<HH", 16, 0)),
        entry(258, 3, 1, struct.pack("<HH", 8, 0)),
        entry(262, 3, 1, struct.pack("<HH", 1, 0)),
        entry(322, 2, 4, text),
        entry(323, 4, 1, struct.pack("<I", 300_000_000)),
        entry(324, 4, 1, struct.pack("<I", 8)),
        entry(325, 4, 1, struct.pack("<I", 256)),
    ]
    tiff = b"II*\x00" + struct.pack("<I", 8 + 256) + bytes(256)
    tiff += struct.pack("<H", len(entries)) + b"".join(entries) + struct.pack("<I", 0)
    return {
        "crasher_junk_before_sof.jpg": jpeg[:sof] + b"\x00" * 8 + jpeg[sof:],
        "crasher_tall.bmp": bmp + bytes(118 - len(bmp)),
        "crasher_truncated.png": png[: len(png) // 2],
        "crasher_random.jpg": np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes(),
        "crasher_text_tile.tif": tiff,
    }


def make_inputs(folder, seed, per_format):
    """Write the inputs; returns (valid names, all names, the bytes of each, in order)."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for i, name in enumerate(VALID):
        inputs[f"valid_{name}{FORMATS[('JPEG', 'PNG', 'WebP', 'TIFF')[i]][0]}"] = encoded(
            photo(name), ("JPEG", "PNG", "WebP", "TIFF")[i]
        )
    inputs.update(crashers(photo("coffee")))
    base = photo("chelsea")
    skipped = []
    for fmt, (ext, _, _) in FORMATS.items():
        if not can_encode(fmt):
            skipped.append(fmt)
            continue
        data = encoded(base, fmt)
        for i in range(per_format):
            kind, mutant = mutate(data, rng)
            inputs[f"{fmt.lower()}_{i:03d}_{kind}{ext}"] = mutant
    for name, data in inputs.items():
        (folder / name).write_bytes(data)
    return [n for n in inputs if n.startswith("valid_")], inputs, skipped


# ---------------------------------------------------------------------------------------------
# test.py
# ---------------------------------------------------------------------------------------------
def run_test_py(folder, out, weight_dir):
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(ROOT / "test.py"), "--input_dir", str(folder), "--test_dir", str(out)]
        + ["--weight_dir", weight_dir, "--device", "cpu"],
        capture_output=True,
        text=True,
    )
    return result, time.monotonic() - started


# ---------------------------------------------------------------------------------------------
# The demo
# ---------------------------------------------------------------------------------------------
def start_demo(weight_dir, cwd):
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "demo" / "app.py"), "--port", "0", "--device", "cpu", "--weight_dir", weight_dir],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,  # not the project's folder: the default --samples_dir must still be found
    )
    deadline = time.monotonic() + 120
    for line in process.stdout:
        if match := re.search(r"http://[\d.]+:(\d+)", line):
            threading.Thread(target=collections.deque, args=(process.stdout, 0), daemon=True).start()
            return process, int(match.group(1))
        if time.monotonic() > deadline:
            break
    process.kill()
    sys.exit(f"the demo did not start: {process.stdout.read()}")


def status_kb(pid, field):
    return int(re.search(rf"^{field}:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M).group(1))


def request(port, method, path, body=None, headers=None):
    """(status or an error's name, body text)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as e:
        return type(e).__name__, b""
    finally:
        connection.close()


def replay_demo(port, pid, inputs):
    idle = status_kb(pid, "VmRSS") / 1024
    counts, five_hundreds, paths = collections.Counter(), [], []
    for name, data in inputs.items():
        status, body = request(port, "POST", f"/api/enhance?name={name}", data)
        counts[status] += 1
        text = body.decode(errors="replace") if status != 200 else ""
        if status == 500:
            five_hundreds.append(f"{name}: {text[:120]}")
        if status != 200 and ABSOLUTE_PATH.search(json.loads(text).get("error", "") if text.startswith("{") else text):
            paths.append(f"{name}: {text[:120]}")
    peak = status_kb(pid, "VmHWM") / 1024
    return idle, peak, counts, five_hundreds, paths


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weight_dir", default=str(ROOT / "weight" / "sgz.pth"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per_format", type=int, default=41, help="mutations of each of the 7 formats")
    p.add_argument("--demo_uploads", type=int, default=180)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder, out = Path(tmp) / "inputs", Path(tmp) / "out"
        folder.mkdir()
        valid, inputs, skipped = make_inputs(folder, args.seed, args.per_format)
        print(f"inputs: {len(inputs)} ({len(valid)} valid photos, seed {args.seed})", end="")
        print(f"; formats this installation cannot encode, left out: {', '.join(skipped)}" if skipped else "")

        result, seconds = run_test_py(folder, out, args.weight_dir)
        output = result.stdout + result.stderr
        enhanced = {p.stem for p in out.rglob("*") if p.is_file()}
        neither = [n for n in inputs if Path(n).stem not in enhanced and n not in output]
        print(f"test.py: exit {result.returncode} in {seconds:.0f} s; traceback: {'Traceback' in output}")
        failed = [
            line for line in result.stderr.splitlines() if line.startswith("error: ") and "images failed" not in line
        ]
        contained = collections.Counter(
            m.group(1) for line in failed if (m := re.search(r": (\w*Error|error): ", line))
        )
        print(f"  enhanced {len(enhanced)}, named as failed {len(failed)} (non-UserError: {dict(contained)})")
        print(f"  valid photos enhanced: {sum(Path(n).stem in enhanced for n in valid)} of {len(valid)}")
        print(f"  inputs neither enhanced nor named: {len(neither)} {neither[:5]}")

        names = [n for n in inputs if not n.startswith("valid_")]
        step = max(1, len(names) // args.demo_uploads)
        uploads = {n: inputs[n] for n in names[::step][: args.demo_uploads]}
        process, port = start_demo(args.weight_dir, tmp)
        try:
            idle, peak, counts, five_hundreds, paths = replay_demo(port, process.pid, uploads)
            sample = request(port, "GET", "/api/samples/file0")[0]
            foreign = request(port, "GET", "/", headers={"Host": "rebound.attacker.example"})[0]
            normal = request(port, "POST", "/api/enhance?name=photo.jpg", inputs[valid[0]])[0]
        finally:
            process.kill()
            process.wait()
        print(f"demo: {len(uploads)} uploads in turn; statuses {dict(sorted(counts.items(), key=str))}")
        print(f"  500s: {len(five_hundreds)} {five_hundreds[:3]}")
        print(f"  absolute paths in bodies: {len(paths)} {paths[:3]}")
        print(f"  peak RSS {peak:.0f} MB, idle {idle:.0f} MB: +{peak - idle:.0f} MB (bar: +400)")
        print(f"  /api/samples/file0: {sample}; foreign Host: {foreign}; a normal photo at the end: {normal}")
        bars = {
            "test.py exit 1": result.returncode == 1,
            "no traceback": "Traceback" not in output,
            "every valid photo enhanced": all(Path(n).stem in enhanced for n in valid),
            "every input enhanced or named": not neither,
            "demo: no 500": not five_hundreds,
            "demo: no absolute path": not paths,
            "demo: RSS within +400 MB": peak - idle <= 400,
            "demo: sample 200": sample == 200,
            "demo: foreign Host 4xx": isinstance(foreign, int) and 400 <= foreign < 500,
            "demo: normal photo 200": normal == 200,
        }
        for bar, met in bars.items():
            print(f"  [{'met' if met else 'NOT MET'}] {bar}")


if __name__ == "__main__":
    main()
