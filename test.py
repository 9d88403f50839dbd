"""Enhance low-light images with SGZ: an image or a folder (searched recursively) in, the mirrored tree of
enhanced images out, each exactly the size, bit depth and alpha of its input.

    python test.py                                    # data/test_data -> test_output with weight/sgz.pth
    python test.py --input_dir photos --test_dir out --weight_dir weight/Epoch99.pth
    torchrun --nproc_per_node 4 test.py ...          # each process takes a disjoint share of the files

The enhancement itself is enhance.Enhancer; this script finds the files, plans where each result goes,
and decodes, enhances and encodes whole images in parallel threads (OpenCV and torch release the GIL).
"""
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

import image_io
import model
from enhance import Enhancer, available_cpus, thread_limits
from option import EXIT_INTERRUPTED, EXIT_SOME_INPUTS_FAILED, UserError, get_test_parser, run_script


@dataclass
class RunSummary:
    images: int = 0
    megapixels: float = 0.0
    seconds: float = 0.0
    failed: list = field(default_factory=list)  # (path, one-line reason)
    skipped: list = field(default_factory=list)  # files that are not images


def plan_outputs(input_path, output_dir):
    """(jobs, skipped): a (source, destination) pair for every image under input_path, its folder tree
    mirrored under output_dir, and the other files found. Hidden files and anything already under
    output_dir are left out. Raises UserError when there is nothing to do or when an output would
    replace an input."""
    root, out_root = Path(input_path), Path(output_dir)
    if not root.exists():
        raise UserError(f"input not found: {root} (give an image or a folder with --input_dir)")
    if root.is_file():
        if root.suffix.lower() not in image_io.IMAGE_EXTENSIONS:
            raise UserError(f"{root} is not an image file ({' '.join(image_io.IMAGE_EXTENSIONS)})")
        jobs, skipped = [(root, out_root / root.name)], []
    else:
        # Results of an earlier run into a folder inside this one are not inputs (the folder itself is: see below).
        outputs = out_root.resolve() if out_root.resolve() != root.resolve() else None
        files = [p for p in sorted(root.rglob("*")) if p.is_file()
                 and not any(part.startswith(".") for part in p.relative_to(root).parts)
                 and outputs not in p.resolve().parents]
        images = [p for p in files if p.suffix.lower() in image_io.IMAGE_EXTENSIONS]
        skipped = [p for p in files if p.suffix.lower() not in image_io.IMAGE_EXTENSIONS]
        if not images:
            raise UserError(f"no images in {root} (looked recursively for {' '.join(image_io.IMAGE_EXTENSIONS)})")
        jobs = [(p, out_root / p.relative_to(root)) for p in images]
    inputs = {src.resolve() for src, _ in jobs}
    for _, dst in jobs:
        if dst.resolve() in inputs:
            raise UserError(f"writing {dst} would overwrite an input image; choose another --test_dir")
    return jobs, skipped


class Tester:
    """An Enhancer applied to files (enhance_file) and folders (run), as `python test.py` does."""

    def __init__(self, weight_dir="weight/sgz.pth", scale_factor=12, device="auto", precision="fp32", conv_type=None,
                 max_pixels=image_io.DEFAULT_MAX_PIXELS):
        self.enhancer = Enhancer(weight_dir, scale_factor, device, precision, conv_type)
        self.max_pixels = max_pixels

    def enhance_file(self, src, dst):
        """One image file -> one enhanced file (atomically; never over the source). Returns (height, width)."""
        if Path(dst).resolve() == Path(src).resolve():
            raise UserError(f"writing {dst} would overwrite its input; choose another output path")
        image, _ = image_io.read_image(src, self.max_pixels)
        image_io.write_image(dst, self.enhancer.enhance_array(image))
        return image.shape[:2]

    def run(self, input_path, output_dir, workers=0, rank=0, world_size=1, progress=True):
        """Enhance an image or a folder (recursively) into output_dir, mirroring the tree, `workers`
        images at a time (0: one per CPU); this process takes files[rank::world_size]. A file the user
        must fix (unreadable, unwritable) is reported in one line and the rest still run; any other error
        is a bug and stops the run. Returns a RunSummary."""
        jobs, skipped = plan_outputs(input_path, output_dir)
        summary = RunSummary(skipped=skipped if rank == 0 else [])
        for path in summary.skipped:
            tqdm.write(f"skipping {path}: not an image file", file=sys.stderr)
        jobs = jobs[rank::world_size]
        workers = max(1, min(workers or available_cpus(), len(jobs)))
        start = time.perf_counter()
        # Parallel images, serial ops (see thread_limits).
        with thread_limits(torch_threads=1, opencv_threads=0), ThreadPoolExecutor(workers) as pool, \
                tqdm(total=len(jobs), unit="img", disable=None if progress else True, file=sys.stderr) as bar:
            futures = {pool.submit(self.enhance_file, src, dst): src for src, dst in jobs}
            try:
                for future in as_completed(futures):
                    try:
                        height, width = future.result()
                        summary.images += 1
                        summary.megapixels += height * width / 1e6
                    except UserError as e:  # one bad file must not stop the others
                        src, reason = futures[future], str(e)
                        summary.failed.append((src, reason))
                        tqdm.write(f"error: {reason if str(src) in reason else f'{src}: {reason}'}", file=sys.stderr)
                    bar.update()
            except BaseException:  # Ctrl-C or a bug: finish the images in flight (their writes are atomic), start no more
                for future in futures:
                    future.cancel()
                raise
        if self.enhancer.device.type == "cuda":
            torch.cuda.synchronize(self.enhancer.device)
        summary.seconds = time.perf_counter() - start
        return summary


def local_device(name):
    """--device, on this process's own GPU (LOCAL_RANK) under torchrun."""
    device = model.get_device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def main(args):
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    workers = args.workers or max(1, available_cpus() // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    tester = Tester(args.weight_dir, args.scale_factor, local_device(args.device), args.precision,
                    max_pixels=args.max_mpix * 1e6)
    try:
        summary = tester.run(args.input_dir, args.test_dir, workers=workers, rank=rank, world_size=world_size)
    except KeyboardInterrupt:
        print("interrupted: the images already written are complete, the others were not started", file=sys.stderr)
        return EXIT_INTERRUPTED
    shard = f"[rank {rank}/{world_size}] " if world_size > 1 else ""
    print(f"{shard}{summary.images} images, {summary.megapixels:.1f} megapixels in {summary.seconds:.2f} s "
          f"-> {args.test_dir}")
    if summary.failed:
        print(f"{shard}error: {len(summary.failed)} of {summary.images + len(summary.failed)} images failed: "
              + ", ".join(str(path) for path, _ in summary.failed[:5]) + (" ..." if len(summary.failed) > 5 else ""),
              file=sys.stderr)
        return EXIT_SOME_INPUTS_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main, get_test_parser()))
