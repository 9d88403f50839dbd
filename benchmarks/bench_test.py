"""How fast and how big `python test.py` is, as a user runs it (a whole process: start-up, model load,
decode, enhance, encode), against the floor measured in the same run: decoding and re-encoding the
same files with OpenCV, one after another. Also checks the outputs: default mode against the
straightforward fp32 computation (model.EnhanceNet on the whole image), bf16 against default.

    python benchmarks/bench_test.py                                   # ../shared/data/test_data/real
    python benchmarks/bench_test.py --repeat 3 --mpix100              # medians of 3; a 100-megapixel photo too

Other processes on the machine make single timings noisy: use --repeat and read the ratios.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import image_io  # noqa: E402
import model  # noqa: E402


def get_bench_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input_dir", default=str(ROOT.parent / "shared" / "data" / "test_data" / "real"))
    p.add_argument("--weight_dir", default=str(ROOT.parent / "shared" / "reference" / "sgz_official_Epoch99.pth"))
    p.add_argument("--repeat", type=int, default=1, help="runs of each configuration (interleaved); medians reported")
    p.add_argument("--skip_check", action="store_true", help="do not compare outputs with the fp32 reference")
    p.add_argument("--mpix100", action="store_true", help="also enhance one 100-megapixel photo (wall time, peak RSS)")
    return p


def opencv_floor(files, out_dir):
    """(wall, CPU) seconds to decode and re-encode every file with OpenCV, one after another: the I/O floor."""
    start, cpu_start = time.perf_counter(), time.process_time()
    for i, f in enumerate(files):
        cv2.imwrite(str(out_dir / f"{i}{f.suffix}"), cv2.imread(str(f), cv2.IMREAD_UNCHANGED))
    return time.perf_counter() - start, time.process_time() - cpu_start, float("nan")


def run_test_py(args):
    """(wall seconds, CPU seconds, peak RSS in GB) of one `python test.py ...` process."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "test.py"), *args], cwd=ROOT, stdout=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"test.py {' '.join(args)} failed")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


@torch.inference_mode()
def max_differences(input_dir, dir_a, dir_b, weight_dir):
    """Largest |a - b| (in 1/255) over the outputs in dir_a vs dir_b, and of dir_a vs the straightforward fp32
    computation: model.EnhanceNet(scale 12) on the whole image, rounded as torchvision's save_image rounds."""
    net = model.load_enhance_net(weight_dir, scale_factor=12).eval()
    vs_reference = vs_other = 0
    for src in image_io.find_images(input_dir):
        dst = dir_a / src.relative_to(input_dir)
        image, _ = image_io.read_image(src)
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
        reference = (net(x)[0][0].permute(1, 2, 0) * 255 + 0.5).clamp(0, 255).to(torch.uint8).numpy()
        a = image_io.read_image(dst)[0].astype(int)
        b = image_io.read_image(dir_b / dst.relative_to(dir_a))[0].astype(int)
        vs_reference = max(vs_reference, np.abs(a - reference).max())
        vs_other = max(vs_other, np.abs(a - b).max())
    return vs_reference, vs_other


def make_100mpix_photo(source, path):
    """A 12288 x 8192 dark photo (100.7 MPix) resized from a real one, written as PNG."""
    image = cv2.imread(str(source), cv2.IMREAD_COLOR)
    cv2.imwrite(str(path), cv2.resize(image, (12288, 8192), interpolation=cv2.INTER_CUBIC))


def main(args):
    files = image_io.find_images(args.input_dir)
    megapixels = sum(np.prod(Image.open(f).size) for f in files) / 1e6
    print(f"{len(files)} images, {megapixels:.1f} MPix from {args.input_dir}; {os.cpu_count()} CPUs; torch {torch.__version__}")
    results = {"floor": [], "fp32": [], "bf16": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in ("floor", "fp32", "bf16"):
            (tmp / name).mkdir()
        for _ in range(args.repeat):
            results["floor"].append(opencv_floor(files, tmp / "floor"))
            for precision in ("fp32", "bf16"):
                results[precision].append(run_test_py(["--input_dir", args.input_dir, "--test_dir", str(tmp / precision),
                                                       "--weight_dir", args.weight_dir, "--precision", precision]))
        floor = statistics.median(wall for wall, _, _ in results["floor"])
        print("\n| run | wall (s) | x floor | CPU (s) | peak RSS (GB) |\n|---|---|---|---|---|")
        for name, runs in results.items():
            wall, cpu = statistics.median(w for w, _, _ in runs), statistics.median(c for _, c, _ in runs)
            rss = "" if name == "floor" else f"{max(r for _, _, r in runs):.2f}"
            label = {"floor": "OpenCV decode + encode, sequential (floor)", "fp32": "`python test.py` (fp32, default)",
                     "bf16": "`python test.py --precision bf16`"}[name]
            print(f"| {label} | {wall:.2f} | {wall / floor:.2f} | {cpu:.2f} | {rss} |")
        if args.repeat > 1:
            print("all runs, wall (s):", {k: [round(w, 2) for w, _, _ in v] for k, v in results.items()})
        if not args.skip_check:
            vs_reference, vs_bf16 = max_differences(args.input_dir, tmp / "fp32", tmp / "bf16", args.weight_dir)
            print(f"\nmax |fp32 - straightforward fp32 reference| = {vs_reference}/255; max |bf16 - fp32| = {vs_bf16}/255")
        if args.mpix100:
            big = tmp / "big" / "photo_100mpix.png"
            big.parent.mkdir()
            make_100mpix_photo(files[0], big)
            wall, _, rss = run_test_py(["--input_dir", str(big), "--test_dir", str(tmp / "big_out"), "--weight_dir", args.weight_dir])
            shape = cv2.imread(str(tmp / "big_out" / big.name), cv2.IMREAD_UNCHANGED).shape
            print(f"\n100.7-MPix photo: {wall:.2f} s, peak RSS {rss:.2f} GB, output {shape[1]}x{shape[0]}")


if __name__ == "__main__":
    main(get_bench_parser().parse_args())
