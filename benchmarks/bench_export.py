"""The exported ONNX graph in ONNX Runtime and OpenCV's DNN module against our PyTorch path, on 1080p and 4K
photos in the same run, a uint8 photo in and a uint8 photo out on every path:

- PyTorch: enhance.Enhancer.enhance_array(photo), what test.py runs (the 1/s copy from a few rows, the
  banded in-place curve, straight into a uint8 array).
- ONNX Runtime, OpenCV DNN: export.enhance_array_onnx(session, photo), timed whole: HxWx3 uint8 ->
  (1, 3, H, W) float32 / 255, the graph, then * 255 + 0.5, clipped, -> HxWx3 uint8. The graph's own share
  ("graph") is timed too; the rest is that conversion.

Times are CPU seconds of the process per photo (wall seconds are printed below the table): every library
gets --threads threads, 1 by default, so on a machine shared with other jobs the CPU time is the work
itself while the wall time also counts waiting for a core. Medians over every photo of a size and --repeat
runs (interleaved, after an untimed warm-up). Outputs are compared with PyTorch's in 1/255.

    python benchmarks/bench_export.py                                # $SGZ_SHARED or ../shared/data/test_data/real
    python benchmarks/bench_export.py --repeat 5 --threads 0         # every core
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import export  # noqa: E402
import image_io  # noqa: E402
import model  # noqa: E402
from enhance import Enhancer  # noqa: E402
from runtime import available_cpus, thread_limits

SIZES = {"1080p": (1080, 1920), "4K": (2160, 3840)}


def get_bench_parser():
    shared = Path(os.environ.get("SGZ_SHARED", ROOT.parent / "shared"))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--input_dir",
        default=str(shared / "data" / "test_data" / "real"),
        help="photos; those of exactly 1920x1080 and 3840x2160 (landscape) are used",
    )
    p.add_argument("--weight_dir", default=str(ROOT / "weight" / "sgz.pth"))
    p.add_argument("--repeat", type=int, default=3, help="runs over the photos (interleaved); medians reported")
    p.add_argument("--photos", type=int, default=4, help="photos of each size at most")
    p.add_argument("--threads", type=int, default=1, help="threads of torch, ONNX Runtime and OpenCV; 0 = one per CPU")
    return p


def photos_by_size(input_dir, limit):
    found = {name: [] for name in SIZES}
    for path in image_io.find_images(input_dir):
        image = image_io.read_image(path)[0]
        for name, size in SIZES.items():
            if image.shape[:2] == size and image.ndim == 3 and len(found[name]) < limit:
                found[name].append(image[..., :3])
    missing = [name for name, images in found.items() if not images]
    if missing:
        sys.exit(f"no {' or '.join(missing)} photos in {input_dir}")
    return found


class OpenCVSession:
    """An OpenCV DNN net behind ONNX Runtime's session.run, so that export.enhance_array_onnx drives it."""

    def __init__(self, path):
        self.net = cv2.dnn.readNetFromONNX(str(path))

    def run(self, output_names, feeds):
        for name, value in feeds.items():
            self.net.setInput(value, name)
        return [self.net.forward()]


class TimedSession:
    """A session whose run() adds its CPU seconds to `seconds`: the graph's share of a call."""

    def __init__(self, session):
        self.session, self.seconds = session, 0.0

    def run(self, output_names, feeds):
        start = time.process_time()
        try:
            return self.session.run(output_names, feeds)
        finally:
            self.seconds += time.process_time() - start


def run(paths, sessions, photos, repeat):
    """Per (size, path): lists of CPU and wall seconds per photo and of the graph's CPU seconds, and the
    largest difference from the first path's output in 1/255."""
    cpu, wall, graph = ({(size, path): [] for size in photos for path in paths} for _ in range(3))
    worst = {(size, path): 0 for size in photos for path in paths}
    for images in photos.values():  # warm-up, untimed: first calls allocate and pick kernels
        for enhance in paths.values():
            enhance(images[0])
    for _ in range(repeat):
        for size, images in photos.items():
            for image in images:
                reference = None
                for path, enhance in paths.items():
                    session = sessions.get(path)
                    graph_before = session.seconds if session else 0.0
                    start, cpu_start = time.perf_counter(), time.process_time()
                    out = enhance(image)
                    cpu[size, path].append(time.process_time() - cpu_start)
                    wall[size, path].append(time.perf_counter() - start)
                    graph[size, path].append(session.seconds - graph_before if session else float("nan"))
                    reference = out if reference is None else reference
                    worst[size, path] = max(worst[size, path], int(np.abs(out.astype(int) - reference).max()))
    return cpu, wall, graph, worst


def main():
    args = get_bench_parser().parse_args()
    threads = args.threads or available_cpus()
    photos = photos_by_size(args.input_dir, args.photos)
    enhancer = Enhancer(args.weight_dir, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "sgz.onnx"
        export.export_onnx(model.load_enhance_net(args.weight_dir, scale_factor=12), onnx_path)
        sessions = {
            "ONNX Runtime": TimedSession(export.onnx_session(onnx_path, threads)),
            "OpenCV DNN": TimedSession(OpenCVSession(onnx_path)),
        }
    paths = {"PyTorch (Enhancer)": enhancer.enhance_array}
    paths.update(
        {name: (lambda image, s=session: export.enhance_array_onnx(s, image)) for name, session in sessions.items()}
    )
    with thread_limits(threads, threads):
        cpu, wall, graph, worst = run(paths, sessions, photos, args.repeat)
    median = statistics.median
    print(
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, OpenCV {cv2.__version__}; {threads} "
        f"thread(s) each, {available_cpus()} CPUs; {', '.join(f'{len(v)} {k}' for k, v in photos.items())} "
        f"photos x {args.repeat}; CPU seconds per photo (x PyTorch; the graph's share)"
    )
    print("| photo | " + " | ".join(paths) + " |")
    print("|---|" + "---|" * len(paths))
    for size in photos:
        base = median(cpu[size, next(iter(paths))])
        cells = [
            f"{median(cpu[size, p]):.3f} s ({median(cpu[size, p]) / base:.2f}x"
            + (f"; graph {median(graph[size, p]):.3f} s)" if p in sessions else ")")
            for p in paths
        ]
        print(f"| {size} {SIZES[size][1]}x{SIZES[size][0]} | " + " | ".join(cells) + " |")
    for size in photos:
        print(
            f"{size}: wall seconds "
            + ", ".join(f"{p} {median(wall[size, p]):.3f}" for p in paths)
            + "; largest difference from PyTorch "
            + ", ".join(f"{p} {worst[size, p]}/255" for p in sessions)
        )


if __name__ == "__main__":
    main()
