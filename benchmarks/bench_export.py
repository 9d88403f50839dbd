"""The exported ONNX graph in ONNX Runtime (and OpenCV's DNN module) against our PyTorch path, on 1080p and 4K
photos in the same run, uint8 photo in, uint8 photo out on both sides:

- PyTorch: enhance.Enhancer.enhance_array(photo), what test.py runs (the 1/s copy from a few rows, the
  banded in-place curve, straight into a uint8 array).
- ONNX Runtime / OpenCV DNN: export.enhance_array_onnx's work, timed whole: HxWx3 uint8 -> (1, 3, H, W)
  float32 / 255, the graph, then * 255 + 0.5, clipped, -> HxWx3 uint8.

Each cell is the median seconds per photo over every photo of that size and --repeat runs (interleaved, after
an untimed warm-up);
every library gets --threads threads (1 by default: on a machine shared with other jobs, an op split over
threads waits for the slowest of them). Outputs are compared with PyTorch's in 1/255.

    python benchmarks/bench_export.py                                # $SGZ_SHARED or ../shared/data/test_data/real
    python benchmarks/bench_export.py --repeat 5 --threads 2
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
from enhance import Enhancer, available_cpus, thread_limits  # noqa: E402

SIZES = {"1080p": (1080, 1920), "4K": (2160, 3840)}


def get_bench_parser():
    shared = Path(os.environ.get("SGZ_SHARED", ROOT.parent / "shared"))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input_dir", default=str(shared / "data" / "test_data" / "real"),
                   help="photos; those of exactly 1920x1080 and 3840x2160 (landscape) are used")
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


def opencv_enhance(net, image):
    """export.enhance_array_onnx with OpenCV's DNN module as the runtime."""
    net.setInput(np.divide(image.transpose(2, 0, 1)[None], 255, dtype=np.float32), export.INPUT_NAME)
    y = net.forward()[0]
    y *= 255
    y += 0.5
    return np.clip(y, 0, 255).transpose(1, 2, 0).astype(np.uint8)


def run(paths, photos, repeat):
    """({(size, path): [seconds per photo]}, {(size, path): largest difference from the first path in 1/255})."""
    times = {(size, path): [] for size in photos for path in paths}
    worst = {(size, path): 0 for size in photos for path in paths}
    for size, images in photos.items():  # warm-up, untimed: first calls allocate and pick kernels
        for enhance in paths.values():
            enhance(images[0])
    for _ in range(repeat):
        for size, images in photos.items():
            for image in images:
                reference = None
                for path, enhance in paths.items():
                    start = time.perf_counter()
                    out = enhance(image)
                    times[size, path].append(time.perf_counter() - start)
                    reference = out if reference is None else reference
                    worst[size, path] = max(worst[size, path], int(np.abs(out.astype(int) - reference).max()))
    return times, worst


def main():
    args = get_bench_parser().parse_args()
    threads = args.threads or available_cpus()
    photos = photos_by_size(args.input_dir, args.photos)
    enhancer = Enhancer(args.weight_dir, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "sgz.onnx"
        export.export_onnx(model.load_enhance_net(args.weight_dir, scale_factor=12), onnx_path)
        session = export.onnx_session(onnx_path, threads)
        opencv_net = cv2.dnn.readNetFromONNX(str(onnx_path))
    paths = {"PyTorch (Enhancer)": enhancer.enhance_array,
             "ONNX Runtime": lambda image: export.enhance_array_onnx(session, image),
             "OpenCV DNN": lambda image: opencv_enhance(opencv_net, image)}
    with thread_limits(threads, threads):
        times, worst = run(paths, photos, args.repeat)
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, OpenCV {cv2.__version__}; {threads} "
          f"thread(s) each on {available_cpus()} CPUs; {', '.join(f'{len(v)} {k}' for k, v in photos.items())} "
          f"photos x {args.repeat}")
    print("| photo | " + " | ".join(paths) + " |")
    print("|---|" + "---|" * len(paths))
    for size in photos:
        base = statistics.median(times[size, next(iter(paths))])
        cells = [f"{statistics.median(times[size, p]):.3f} s ({statistics.median(times[size, p]) / base:.2f}x, "
                 f"max diff {worst[size, p]}/255)" for p in paths]
        print(f"| {size} {SIZES[size][1]}x{SIZES[size][0]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
