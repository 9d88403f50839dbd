"""The fuzz targets: each takes the bytes of one input and either returns (the input was handled: decoded,
refused with a UserError, answered 4xx) or raises FuzzCrash / any other exception (a crash: a bug).

The oracle is the same everywhere: a user's bad file may only ever cost a UserError naming it (or, for the
web demo, a 4xx answer with a generic body); anything else (a ValueError from a decoder, cv2.error, a
MemoryError from a forged size, a 500, an output that does not decode again) is a defect.

Used twice: benchmarks/fuzz.py drives them with atheris (coverage-guided, instrumented), and
tests/test_fuzz.py replays the committed corpus (tests/fuzz/seeds and tests/fuzz/regressions/<target>)
through every target in-process, without atheris. `load(name)` imports a target's modules only when it
is asked for, so that atheris can instrument them on import."""

import contextlib
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

HERE = Path(__file__).resolve().parent
SEEDS = HERE / "seeds"
REGRESSIONS = HERE / "regressions"
WEIGHTS = ROOT / "weight" / "sgz.pth"
FUZZ_MAX_PIXELS = 16_000_000  # a fuzzed header may declare anything up to this (the BMP: 8 MP)
# What each target instruments when atheris drives it (coverage guidance reaches into these modules).
INSTRUMENTED = {
    "decode": ["image_io", "PIL"],
    "header": ["image_io", "PIL", "demo.app"],
    "metadata": ["image_io", "PIL"],
    "demo": ["image_io", "demo.app"],
    "checkpoint": ["model", "train_utils"],  # and torch's unpickler (benchmarks/fuzz.py: not all of torch, 10x slower)
    "video": ["make_video", "av"],
}
TARGETS = tuple(INSTRUMENTED)


class FuzzCrash(AssertionError):
    """The target handled the input without an exception but broke its promise (a wrong shape, a 500)."""


def check(condition, message):
    if not condition:
        raise FuzzCrash(message)


def corpus_files(target=None):
    """The committed corpus: every seed, and the regressions of `target` (of every target when None)."""
    folders = [SEEDS] + ([REGRESSIONS / target] if target else sorted(REGRESSIONS.glob("*")))
    return sorted(p for folder in folders if folder.is_dir() for p in folder.iterdir() if p.is_file())


def check_decoded(image, max_pixels=FUZZ_MAX_PIXELS):
    import numpy as np

    check(isinstance(image, np.ndarray), f"decode_image returned {type(image).__name__}")
    check(image.dtype in (np.uint8, np.uint16), f"decoded samples are {image.dtype}")
    check(image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4)), f"decoded shape {image.shape}")
    check(0 < image.shape[0] * image.shape[1] <= max_pixels, f"decoded {image.shape}, limit {max_pixels} pixels")


# ---------------------------------------------------------------------------------------------
# The targets: make_<name>() imports what the target needs and returns its one-input function
# ---------------------------------------------------------------------------------------------
def make_decode():
    from image_io import decode_image
    from runtime import UserError

    def decode(data):
        """Any bytes -> an image array (and its other frames) or a UserError: as test.py reads (strict, every
        frame), then as the demo and --allow_corrupt do (the first frame, not strict)."""
        for strict, all_frames in ((True, True), (False, False)):
            try:
                image, info = decode_image(data, "fuzz.bin", FUZZ_MAX_PIXELS, strict=strict, all_frames=all_frames)
            except UserError:
                continue
            check_decoded(image)
            frames = info.get("animation", {}).get("frames", [])
            for frame in frames:  # the same layout (a GIF's canvas may grow: sizes may differ)
                check_decoded(frame)
                check(frame.shape[2:] == image.shape[2:] and frame.dtype == image.dtype, "frames of different layouts")
            pixels = sum(f.shape[0] * f.shape[1] for f in [image, *frames])
            check(pixels <= FUZZ_MAX_PIXELS, f"{len(frames) + 1} frames of {pixels} pixels together")
            check(info["orientation"] in range(1, 9), f"orientation {info['orientation']!r}")
            check(all(isinstance(v, bytes) for v in info["metadata"].values()), "metadata values not bytes")

    return decode


def make_header():
    from demo.app import BadRequest, check_upload_header
    from image_io import decode_image, image_header
    from runtime import UserError

    def header(data):
        """image_header and the demo's check_upload_header: values checked, and the budget they give bounds
        what decoding then takes."""
        try:
            found = image_header(data, "fuzz.bin")
        except UserError:
            found = None
        if found is not None:
            check(all(isinstance(v, int) and v > 0 for v in found[1:]), f"image_header gave {found}")
        try:
            checked = check_upload_header(data, "fuzz.bin", FUZZ_MAX_PIXELS)
        except BadRequest as e:
            check(400 <= e.status < 500, f"check_upload_header answered {e.status}")
            return
        except UserError:  # a header value out of range: the demo answers 422
            return
        try:
            image = decode_image(data, "fuzz.bin", FUZZ_MAX_PIXELS)[0]
        except UserError:
            return
        check(
            image.nbytes <= checked.decoded_bytes,
            f"decoded {image.shape} {image.dtype} ({image.nbytes} bytes) beyond the header's budget {checked}",
        )

    return header


def make_metadata():
    import numpy as np

    from image_io import decode_image, encode_image
    from runtime import UserError

    rgb = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)

    def metadata(data):
        """The metadata of a decoded input, spliced into every format that carries it: the result must be
        a file that decodes again, with the ICC profile where the format keeps it."""
        try:
            image, info = decode_image(data, "fuzz.bin", FUZZ_MAX_PIXELS)
        except UserError:
            return
        carried = info["metadata"]
        pixels = rgb[..., 0] if image.ndim == 2 else rgb  # the profile carried describes pixels of this kind
        for ext in (".jpg", ".png", ".webp", ".tif"):
            encoded = encode_image(pixels, ext, metadata=carried)
            try:
                again = decode_image(encoded.tobytes(), f"out{ext}")[1]["metadata"]
            except UserError as e:
                raise FuzzCrash(f"{ext} written with {sorted(carried)} does not decode: {e}") from None
            if "icc_profile" in carried:
                check(again.get("icc_profile") == carried["icc_profile"], f"{ext} lost its ICC profile")

    return metadata


def make_demo():
    from demo.app import create_app
    from image_io import decode_image
    from option import get_demo_parser

    folder = tempfile.TemporaryDirectory(prefix="sgz-fuzz-")  # removed with the target
    no_samples = folder.name
    argv = ["--weight_dir", str(WEIGHTS), "--device", "cpu", "--samples_dir", no_samples]
    argv += ["--max_mpix", "2", "--max_upload_mb", "1", "--scale_factor", "4"]  # an enhancement takes < 1 s
    app = create_app(get_demo_parser().parse_args(argv))
    app.logger.disabled = True  # a 500's traceback is reported by the oracle, once
    client = app.test_client()
    secrets = (str(ROOT), tempfile.gettempdir(), os.path.expanduser("~"), "Traceback")

    def demo(data):
        """POST /api/enhance: 200 with a PNG, or a 4xx (503 when busy) whose body gives nothing away."""
        response = client.post("/api/enhance?name=fuzz.jpg", data=data)
        body = response.get_data()
        if response.status_code == 200:
            check_decoded(decode_image(body, "result.png")[0])
            return
        check(400 <= response.status_code < 500 or response.status_code == 503, f"answered {response.status}: {body}")
        text = body.decode("utf-8", "replace")
        check(not any(secret in text for secret in secrets), f"the answer shows a path: {text}")

    demo.folder = folder
    return demo


def make_checkpoint():
    import model
    import train_utils
    from runtime import UserError

    folder = tempfile.TemporaryDirectory(prefix="sgz-fuzz-")  # removed with the target
    path = Path(folder.name) / "fuzz.pth"

    def checkpoint(data):
        """Bytes as a weights file and as --resume's last.pth: a network, a training checkpoint, or a UserError."""
        path.write_bytes(data)
        with contextlib.suppress(UserError):
            model.load_enhance_net(path)
        with contextlib.suppress(UserError):
            train_utils.load_run_checkpoint(path)

    checkpoint.folder = folder
    return checkpoint


def make_video():
    sys.path.insert(0, str(ROOT / "demo"))
    import av
    import make_video as mv

    from runtime import UserError

    folder = tempfile.TemporaryDirectory(prefix="sgz-fuzz-")  # removed with the target
    path = Path(folder.name) / "fuzz.mp4"

    def video(data):
        """Bytes as a video file, read as the script reads it (VideoReader: its first frame, then every audio packet
        and frame, each frame converted to RGB): read through, or a UserError."""
        path.write_bytes(data)
        with contextlib.suppress(UserError), mv.VideoReader(path) as reader:
            mv.display_matrix(reader.first_frame())
            for item in reader:
                if isinstance(item, av.VideoFrame):
                    rgb = mv.to_rgb(item, mv.is_deep(item), path)
                    check(rgb.ndim == 3 and rgb.shape[2] == 3, f"a frame came out as {rgb.shape}")

    video.folder = folder
    return video


def load(name):
    """The target function `name` (one of TARGETS), its modules imported now."""
    return globals()[f"make_{name}"]()


def replay(target, files):
    """Run every file through the target; returns [(file, the exception it raised)]."""
    failures = []
    for path in files:
        try:
            target(path.read_bytes())
        except Exception as e:  # noqa: BLE001  (every exception that escapes a target is a finding)
            failures.append((path, e))
    return failures


def describe(data):
    """An input as the message that lets anyone reproduce it: its base64."""
    import base64

    return base64.b64encode(data).decode()


if __name__ == "__main__":  # python tests/fuzz/targets.py TARGET FILE...: replay files with tracebacks
    import traceback

    run = load(sys.argv[1])
    for file in sys.argv[2:]:
        try:
            run(Path(file).read_bytes())
            print(f"{file}: ok")
        except Exception:  # noqa: BLE001
            print(f"{file}:")
            traceback.print_exc()
