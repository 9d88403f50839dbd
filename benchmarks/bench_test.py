"""How fast and how big `python test.py` is, against floors measured in the same run on the same files:

- the parallel I/O floor: OpenCV decodes and re-encodes every file with test.py's own encoder settings, one
  thread per core (what test.py would take if enhancing cost nothing);
- the sequential floor: the same, one file after another with OpenCV's default settings (the older floor).

It also times `python -c "import torch"` and prints the bars from the best of the runs: inside the process
and the whole process minus torch's import, each against the parallel floor; then where test.py's CPU time
goes, stage by stage (benchmarks/profile_stages.py; --no_stages leaves it out).

For `python test.py` it reports the time inside the process (the "N images ... in S s" it prints: decoding,
enhancing, encoding) and the whole process as a user runs it (start-up, imports, weights, the same work),
with CPU time and peak RSS. It also checks the outputs: fp32 against the straightforward fp32 computation
(model.EnhanceNet on the whole image), bf16 against fp32.

    python benchmarks/bench_test.py                                   # ../shared/data/test_data/real, our weights
    python benchmarks/bench_test.py --repeat 3 --mpix100              # medians of 3; a 100-megapixel photo too
    python benchmarks/bench_test.py --scale1_only                     # peak RSS of a 12 MP photo at --scale_factor 1

Other processes on the machine make single timings noisy: use --repeat and read the ratios.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import image_io  # noqa: E402
import model  # noqa: E402
from runtime import available_cpus

SHARED = Path(os.environ.get("SGZ_SHARED", ROOT.parent / "shared"))


def get_bench_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input_dir", default=str(SHARED / "data" / "test_data" / "real"))
    p.add_argument("--weight_dir", default=str(ROOT / "weight" / "sgz.pth"))
    p.add_argument("--repeat", type=int, default=1, help="runs of each configuration (interleaved); medians reported")
    p.add_argument("--skip_check", action="store_true", help="do not compare outputs with the fp32 reference")
    p.add_argument("--no_bf16", action="store_true", help="leave out the --precision bf16 run")
    p.add_argument("--mpix100", action="store_true", help="also enhance one 100-megapixel photo (wall time, peak RSS)")
    p.add_argument(
        "--scale1_only",
        action="store_true",
        help="only enhance one 12-megapixel photo (4000x3000) at --scale_factor 1, the network on the whole image "
        "(in tiles): wall time and peak RSS",
    )
    p.add_argument("--no_stages", action="store_true", help="do not print the per-stage CPU profile")
    return p


def import_torch_seconds():
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    return {"wall": time.perf_counter() - start}


def transcode(src, dst):
    """Decode and re-encode one file as test.py would write it, with OpenCV (the format's own encoder settings)."""
    image = cv2.imdecode(np.fromfile(src, np.uint8), cv2.IMREAD_UNCHANGED)
    ok, encoded = cv2.imencode(dst.suffix, image, image_io.encoder_params(dst.suffix.lower(), 95))
    encoded.tofile(dst)


def parallel_floor(files, out_dir):
    """(wall, CPU) seconds to decode and re-encode every file, one thread per core (threads=0: OpenCV serial)."""
    old = cv2.getNumThreads()
    cv2.setNumThreads(0)
    start, cpu_start = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(available_cpus()) as pool:
        list(pool.map(lambda i: transcode(files[i], out_dir / f"{i}{files[i].suffix}"), range(len(files))))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    cv2.setNumThreads(old)
    return {"wall": wall, "cpu": cpu}


def sequential_floor(files, out_dir):
    start, cpu_start = time.perf_counter(), time.process_time()
    for i, f in enumerate(files):
        cv2.imwrite(str(out_dir / f"{i}{f.suffix}"), cv2.imread(str(f), cv2.IMREAD_UNCHANGED))
    return {"wall": time.perf_counter() - start, "cpu": time.process_time() - cpu_start}


def run_test_py(args):
    """One `python test.py ...` process: whole-process wall and CPU seconds, peak RSS in GB, and the
    seconds inside the process that it prints."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "test.py"), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"test.py {' '.join(args)} failed")
    inside = float(re.search(r"megapixels in ([\d.]+) s", out).group(1))
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss": usage.ru_maxrss / 2**20, "inside": inside}


@torch.inference_mode()
def max_differences(input_dir, dir_a, dir_b, weight_dir):
    """Largest |a - b| (in 1/255) over the outputs in dir_a vs dir_b, and of dir_a vs the straightforward fp32
    computation: model.EnhanceNet(scale 12) on the whole image, rounded as torchvision's save_image rounds."""
    net = model.load_enhance_net(weight_dir, scale_factor=12).eval()
    vs_reference = vs_other = 0
    for src in image_io.find_images(input_dir):
        dst = dir_a / src.relative_to(input_dir)
        image, _ = image_io.read_image(src)
        x = torch.from_numpy(image[..., :3]).permute(2, 0, 1)[None].float() / 255
        reference = (net(x)[0][0].permute(1, 2, 0) * 255 + 0.5).clamp(0, 255).to(torch.uint8).numpy()
        a = image_io.read_image(dst)[0][..., :3].astype(int)
        vs_reference = max(vs_reference, np.abs(a - reference).max())
        if dir_b is not None:
            b = image_io.read_image(dir_b / dst.relative_to(dir_a))[0][..., :3].astype(int)
            vs_other = max(vs_other, np.abs(a - b).max())
    return vs_reference, vs_other


def make_100mpix_photo(source, path, size=(12288, 8192)):
    """A 12288 x 8192 dark photo (100.7 MPix; or `size`, width x height) resized from a real one, as PNG."""
    image = cv2.imread(str(source), cv2.IMREAD_COLOR)
    cv2.imwrite(str(path), cv2.resize(image, size, interpolation=cv2.INTER_CUBIC))


def scale1_memory(source, tmp, weight_dir):
    """Peak RSS of test.py on a 12-megapixel photo at --scale_factor 1 (without tiles: 16 GB)."""
    photo = tmp / "mpix12" / "photo_12mpix.png"
    photo.parent.mkdir()
    make_100mpix_photo(source, photo, size=(4000, 3000))
    run = run_test_py(
        ["--input_dir", str(photo), "--test_dir", str(tmp / "mpix12_out"), "--weight_dir", weight_dir]
        + ["--scale_factor", "1"]
    )
    print(f"12-MPix photo at --scale_factor 1: {run['wall']:.2f} s, peak RSS {run['rss']:.2f} GB")


def median(runs, key):
    return statistics.median(r[key] for r in runs)


def main(args):
    files = image_io.find_images(args.input_dir)
    if not files:
        sys.exit(f"no images in {args.input_dir} (set --input_dir, or SGZ_SHARED to the shared/ folder)")
    megapixels = sum(np.prod(Image.open(f).size) for f in files) / 1e6
    print(
        f"{len(files)} images, {megapixels:.1f} MPix from {args.input_dir}; {available_cpus()} CPUs; "
        f"torch {torch.__version__}; weights {args.weight_dir}"
    )
    if args.scale1_only:
        with tempfile.TemporaryDirectory() as tmp:
            scale1_memory(files[0], Path(tmp), args.weight_dir)
        return
    precisions = ["fp32"] + ([] if args.no_bf16 else ["bf16"])
    results = {"parallel": [], "sequential": [], "import torch": [], **{p: [] for p in precisions}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in results:
            (tmp / name).mkdir()
        for _ in range(args.repeat):  # interleaved, so that a noisy moment hits every configuration alike
            results["parallel"].append(parallel_floor(files, tmp / "parallel"))
            results["sequential"].append(sequential_floor(files, tmp / "sequential"))
            results["import torch"].append(import_torch_seconds())
            for precision in precisions:
                results[precision].append(
                    run_test_py(
                        [
                            "--input_dir",
                            args.input_dir,
                            "--test_dir",
                            str(tmp / precision),
                            "--weight_dir",
                            args.weight_dir,
                            "--precision",
                            precision,
                        ]
                    )
                )
        floor, floor_cpu = median(results["parallel"], "wall"), median(results["parallel"], "cpu")
        print(
            "\n| run | wall (s) | x parallel floor | CPU (s) | x floor CPU | peak RSS (GB) |\n|---|---|---|---|---|---|"
        )
        print(
            f"| OpenCV decode + encode, test.py's settings, {available_cpus()} threads (parallel floor) "
            f"| {floor:.2f} | "
            f"1.00 | {floor_cpu:.2f} | 1.00 | |"
        )
        seq = results["sequential"]
        print(
            f"| OpenCV decode + encode, one after another (sequential floor) | {median(seq, 'wall'):.2f} | "
            f"{median(seq, 'wall') / floor:.2f} | {median(seq, 'cpu'):.2f} | {median(seq, 'cpu') / floor_cpu:.2f} | |"
        )
        for precision in precisions:
            runs = results[precision]
            flag = "" if precision == "fp32" else f" --precision {precision}"
            inside, wall = median(runs, "inside"), median(runs, "wall")
            print(f"| `python test.py{flag}`, inside the process | {inside:.2f} | {inside / floor:.2f} | | | |")
            print(
                f"| `python test.py{flag}`, whole process | {wall:.2f} | {wall / floor:.2f} "
                f"| {median(runs, 'cpu'):.2f} | "
                f"{median(runs, 'cpu') / floor_cpu:.2f} | {max(r['rss'] for r in runs):.2f} |"
            )
        best = {name: min(r["wall"] for r in runs) for name, runs in results.items()}
        best_inside = min(r["inside"] for r in results["fp32"])
        floor_best, script = best["parallel"], best["fp32"] - best["import torch"]
        print(
            f"\nbars, best of {args.repeat}: inside the process {best_inside:.2f} s = {best_inside / floor_best:.2f}x "
            f"the parallel floor ({floor_best:.2f} s; bar 1.4x); whole process {best['fp32']:.2f} s minus "
            f"`import torch` {best['import torch']:.2f} s = {script / floor_best:.2f}x (bar 1.6x); "
            f"peak RSS {max(r['rss'] for r in results['fp32']):.2f} GB (bar 1.2)"
        )
        if args.repeat > 1:
            print("all runs, wall (s):", {k: [round(r["wall"], 2) for r in v] for k, v in results.items()})
            print(
                "all runs, inside (s):",
                {k: [round(r["inside"], 2) for r in v] for k, v in results.items() if k in precisions},
            )
        if not args.skip_check:
            vs_reference, vs_bf16 = max_differences(
                args.input_dir, tmp / "fp32", tmp / "bf16" if "bf16" in precisions else None, args.weight_dir
            )
            print(
                f"\nmax |fp32 - straightforward fp32 reference| = {vs_reference}/255"
                + (f"; max |bf16 - fp32| = {vs_bf16}/255" if "bf16" in precisions else "")
            )
        if not args.no_stages:
            sys.stdout.flush()
            profile = [sys.executable, str(ROOT / "benchmarks" / "profile_stages.py"), "photos"]
            subprocess.run([*profile, "--input_dir", args.input_dir, "--weight_dir", args.weight_dir], check=True)
        if args.mpix100:
            big = tmp / "big" / "photo_100mpix.png"
            big.parent.mkdir()
            make_100mpix_photo(files[0], big)
            run = run_test_py(
                ["--input_dir", str(big), "--test_dir", str(tmp / "big_out"), "--weight_dir", args.weight_dir]
            )
            shape = cv2.imread(str(tmp / "big_out" / big.name), cv2.IMREAD_UNCHANGED).shape
            print(
                f"\n100.7-MPix photo: {run['wall']:.2f} s, peak RSS {run['rss']:.2f} GB, output {shape[1]}x{shape[0]}"
            )


if __name__ == "__main__":
    main(get_bench_parser().parse_args())
