"""Where the CPU time of `python test.py` or of the video script goes, stage by stage, in one fresh process:

    python benchmarks/profile_stages.py photos --input_dir ../shared/data/test_data/real --weight_dir W
    python benchmarks/profile_stages.py video --video_path clip.mp4 --weight_dir W

It runs test.py's Tester (or make_video.enhance_video) as the scripts do, with the functions of each stage
wrapped to count their own CPU seconds (thread CPU time, excluding the stages they call), and prints a table:
imports, loading the weights, the kernel's first load, reading files, decoding, colour conversions, the
network, the curve kernel, encoding, writing, and what is left. bench_test.py and bench_video.py print it too.
"""

import gc
import time

CPU_AT_START, MAIN_CPU_AT_START, WALL_AT_START = time.process_time(), time.thread_time(), time.perf_counter()
gc.disable()  # as the scripts start up (runtime.pause_garbage_collection); resumed once the network is loaded

import argparse  # noqa: E402
import collections  # noqa: E402
import functools  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "demo"))

import curve_kernel  # noqa: E402

STAGES = collections.defaultdict(float)
_lock = threading.Lock()
_local = threading.local()


def counted(stage, fn):
    """fn, counting its thread CPU seconds, less those of the counted calls inside it, under `stage`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        stack = _local.__dict__.setdefault("stack", [])
        stack.append(0.0)  # CPU seconds of the counted calls inside this one
        start = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            spent = time.thread_time() - start
            inner = stack.pop()
            if stack:
                stack[-1] += spent
            with _lock:
                STAGES[stage] += spent - inner

    return wrapper


def count_stage(owner, name, stage):
    setattr(owner, name, counted(stage, getattr(owner, name)))


count_stage(curve_kernel, "warm_up_curve_kernel", "kernel first load")

import cv2  # noqa: E402
import make_video  # noqa: E402
import simplejpeg  # noqa: E402

import enhance  # noqa: E402
import image_io  # noqa: E402
import test  # noqa: E402

IMPORT_CPU = time.thread_time() - MAIN_CPU_AT_START


def count_photo_stages():
    count_stage(image_io.Path, "read_bytes", "read files")
    count_stage(image_io, "decode_image", "headers and metadata")
    count_stage(cv2, "imdecode", "decode")
    count_stage(simplejpeg, "decode_jpeg", "decode")
    count_stage(image_io, "decode_with_pil", "decode")
    count_stage(cv2, "cvtColor", "colour conversions")
    count_stage(enhance.Enhancer, "curve_map_rows", "network (1/s copy, net, map)")
    count_stage(enhance, "apply_curve_cpu", "curve kernel")
    count_stage(enhance.Enhancer, "enhance_array", "enhance, other")
    count_stage(cv2, "imencode", "encode")
    count_stage(image_io, "encode_with_pil", "encode")
    count_stage(image_io, "write_image", "write files")


def count_video_stages():
    count_stage(enhance.Enhancer, "curve_map_rows", "network (1/s copy, net, map)")
    count_stage(enhance, "apply_curve_cpu", "curve kernel")
    count_stage(enhance.Enhancer, "enhance_array", "enhance, other")
    for name in ("to_rgb", "to_frame_array", "to_video_frame"):  # whichever the script has
        if hasattr(make_video, name):
            count_stage(make_video, name, "colour conversions (to and from YUV)")
    count_stage(make_video.FlickerMeter, "add", "flicker meter")


def print_table(total_cpu, wall, inside=None):
    rest = total_cpu - IMPORT_CPU - sum(STAGES.values())
    print(f"\n| stage | CPU s |\n|---|---|\n| imports (main thread) | {IMPORT_CPU:.2f} |")
    for stage, seconds in STAGES.items():
        print(f"| {stage} | {seconds:.2f} |")
    print(f"| the rest (other threads: codecs, thread pools; Python glue) | {rest:.2f} |")
    inside = "" if inside is None else f", inside {inside:.2f} s"
    print(f"| **whole process** | **{total_cpu:.2f}** (wall {wall:.2f} s{inside}) |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["photos", "video"])
    p.add_argument("--input_dir")
    p.add_argument("--video_path")
    p.add_argument("--weight_dir", default=str(ROOT / "weight" / "sgz.pth"))
    args = p.parse_args()
    test.runtime.configure_process()  # as run_script does in the scripts
    with tempfile.TemporaryDirectory() as tmp:
        if args.what == "photos":
            count_photo_stages()
            count_stage(test.Tester, "__init__", "load the weights")
            tester = test.Tester(args.weight_dir)
            test.runtime.resume_garbage_collection()
            summary = tester.run(args.input_dir, tmp, progress=False)
            inside = summary.seconds
        else:
            count_video_stages()
            count_stage(enhance.Enhancer, "__init__", "load the weights")
            enhancer = enhance.Enhancer(args.weight_dir)
            test.runtime.resume_garbage_collection()
            make_video.enhance_video(enhancer, args.video_path, Path(tmp) / "out.mp4")
            inside = None
    print_table(time.process_time() - CPU_AT_START, time.perf_counter() - WALL_AT_START, inside)
    sys.stdout.flush()
    make_video.exit_now(0)


if __name__ == "__main__":
    main()
