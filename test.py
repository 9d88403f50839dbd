"""Enhance low-light images with SGZ: an image or a folder (searched recursively) in, the mirrored tree of
enhanced images out, each exactly the size, bit depth and alpha of its input.

    python test.py                                    # data/test_data -> test_output with weight/sgz.pth
    python test.py --input_dir photos --test_dir out --weight_dir Epoch99.pth   # the paper's weights, downloaded
    torchrun --nproc_per_node 4 test.py ...          # each process takes a disjoint share of the files

The enhancement itself is enhance.Enhancer; this script finds the files, plans where each result goes,
and decodes, enhances and encodes whole images in parallel threads (OpenCV and torch release the GIL).

Every frame of a multi-frame image (GIF, APNG, animated WebP, multi-page TIFF) is enhanced, its durations
and loop count kept. One bad file never costs another: whatever goes wrong with one file (unreadable,
corrupt, out of memory, an encoder's error) is reported in one line naming it (runtime.input_failure;
SGZ_DEBUG=1 adds the traceback), the others go on, and the run exits 1. Only Ctrl-C and SIGTERM stop it.
"""

import runtime

if __name__ == "__main__":
    runtime.pause_garbage_collection()  # for the imports and the network's loading; main resumes it

import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import ImageFile
from tqdm import tqdm

import image_io
import model
import validate
from enhance import Enhancer
from option import get_test_parser
from runtime import (
    EXIT_INTERRUPTED,
    EXIT_SOME_INPUTS_FAILED,
    UserError,
    available_cpus,
    exit_now,
    plural,
    run_script,
    thread_limits,
)


@dataclass
class RunSummary:
    images: int = 0
    megapixels: float = 0.0
    seconds: float = 0.0
    failed: list = field(default_factory=list)  # (path, one-line reason)
    skipped: list = field(default_factory=list)  # (path, why): files that are not images, folder loops


def plan_outputs(input_path, output_dir, output_format="same"):
    """(jobs, skipped): a (source, destination) pair for every image under input_path, its folder tree
    mirrored under output_dir (through linked folders), each destination with the extension of
    image_io.output_extension, and (path, why) for what is left out: other files and links that loop back.
    Hidden files and anything already under output_dir are left out. Raises UserError when there is
    nothing to do, when an output would replace an input, or when two inputs would share an output."""
    root, out_root = Path(input_path), Path(output_dir)
    if not root.exists():
        raise UserError(f"input not found: {root} (give an image or a folder with --input_dir)")
    if root.is_file():
        if root.suffix.lower() not in image_io.IMAGE_EXTENSIONS:
            raise UserError(f"{root} is not an image file ({' '.join(image_io.IMAGE_EXTENSIONS)})")
        images, skipped = [root], []
        relative = {root: Path(root.name)}
    else:
        # Results of an earlier run into a folder inside this one are not inputs (the folder itself is: see below).
        outputs = out_root.resolve() if out_root.resolve() != root.resolve() else None
        loops = []
        files = [
            p
            for p in image_io.walk_files(root, loops)
            if not any(part.startswith(".") for part in p.relative_to(root).parts)
            and outputs not in p.resolve().parents
        ]
        images = [p for p in files if p.suffix.lower() in image_io.IMAGE_EXTENSIONS]
        skipped = [(p, "not an image file") for p in files if p.suffix.lower() not in image_io.IMAGE_EXTENSIONS]
        skipped += [(link, f"a link back to {target} (a loop), not followed") for link, target in loops]
        if not images:
            raise UserError(f"no images in {root} (looked recursively for {' '.join(image_io.IMAGE_EXTENSIONS)})")
        relative = {p: p.relative_to(root) for p in images}
    jobs = [(p, (out_root / relative[p]).with_suffix(image_io.output_extension(p, output_format))) for p in images]
    inputs = {src.resolve() for src, _ in jobs}
    destinations = {}
    for src, dst in jobs:
        if dst.resolve() in inputs:
            raise UserError(f"writing {dst} would overwrite an input image; choose another --test_dir")
        if dst in destinations:
            raise UserError(
                f"{destinations[dst]} and {src} would both be written to {dst}; "
                "rename one or choose another --output_format"
            )
        destinations[dst] = src
    return jobs, skipped


def estimated_output_bytes(src, dst):
    """A generous guess of an output's size: 3x its input's in the same format (brighter photos show more
    noise; 2.5x at most on the test sets), else 1 byte a pixel for the lossy formats, 3 for the others."""
    if src.suffix.lower() == dst.suffix.lower():
        return 3 * src.stat().st_size
    try:
        width, height = image_io.header_size(src, src) or (0, 0)
    except UserError:
        width = height = 0
    if not width:
        return 3 * src.stat().st_size  # read_image will name the problem
    return width * height * (1 if dst.suffix.lower() in (".jpg", ".jpeg", ".heic", ".heif", ".avif") else 3)


def largest_first(jobs):
    """The jobs by input file size, largest first (then by path): the threads then run out of work together,
    none left alone with a big image at the end, and ranks under torchrun get equal shares."""

    def size(job):
        try:
            return job[0].stat().st_size
        except OSError:  # gone since it was found: read_image will name the problem
            return 0

    return sorted(jobs, key=lambda job: (-size(job), str(job[0])))


def check_output_folder(jobs, out_root):
    """Fail before computing anything when the outputs cannot be written: the folder cannot be made or
    written to, a name is longer than its file system allows, or the free space is short of an
    estimate of what will be written (estimated_output_bytes)."""
    out_root = runtime.check_output_folder(out_root)
    for _, dst in jobs:
        runtime.check_output_path(dst)
    try:
        out_root.mkdir(parents=True, exist_ok=True)
        probe = runtime.temporary_name(out_root / "probe")
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as e:
        raise UserError(
            f"cannot write into the output folder {out_root}: {e.strerror or e}; choose another --test_dir"
        ) from None
    try:
        name_max = os.pathconf(out_root, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):  # no pathconf (Windows), or a file system that does not say
        name_max = 255
    for _, dst in jobs:
        for part in dst.relative_to(out_root).parts:
            if len(os.fsencode(part)) > name_max:
                raise UserError(
                    f"{dst}: the name '{part[:40]}...' has {len(os.fsencode(part))} bytes, more than the "
                    f"{name_max} the output folder's file system allows; shorten it"
                )
    needed = sum(estimated_output_bytes(src, dst) for src, dst in jobs)
    free = shutil.disk_usage(out_root).free
    if needed > free:
        raise UserError(
            f"{out_root} has {free / 1e6:.0f} MB free, and the outputs need about {needed / 1e6:.0f} MB; "
            "free some space or choose another --test_dir"
        )


class Tester:
    """An Enhancer applied to files (enhance_file) and folders (run), as `python test.py` does."""

    def __init__(
        self,
        weights="weight/sgz.pth",
        scale_factor=12,
        device="auto",
        precision="fp32",
        conv_type=None,
        max_pixels=image_io.DEFAULT_MAX_PIXELS,
        quality=95,
        allow_corrupt=False,
        strength=1.0,
    ):
        max_pixels = validate.positive_int(max_pixels, "max_pixels")
        quality = validate.quality(quality, "quality")
        self.enhancer = Enhancer(weights, scale_factor, device, precision, conv_type, weights_argument="--weight_dir")
        self.max_pixels, self.quality, self.allow_corrupt = max_pixels, quality, allow_corrupt
        self.strength = strength

    def enhance_file(self, src, dst):
        """One image file -> one enhanced file with the input's metadata, every frame of a multi-frame image
        (atomically; never over the source). Notes on the metadata (a profile not carried) are printed.
        Returns the pixels enhanced (all frames')."""
        runtime.pause_point()
        if Path(dst).resolve() == Path(src).resolve():
            raise UserError(f"writing {dst} would overwrite its input; choose another output path")
        # In OpenCV's channel order: its decoders and encoders then convert nothing (the curve works on each
        # channel alone, and Enhancer shows its network the small copy in RGB).
        image, info = image_io.read_image(
            src, self.max_pixels, strict=not self.allow_corrupt, all_frames=True, order="BGR"
        )
        for note in info["notes"]:
            tqdm.write(f"note: {src}: {note}", file=sys.stderr)
        animation = info.get("animation")
        pixels = image.shape[0] * image.shape[1]
        if animation:
            frames = [
                self.enhancer.enhance_array(frame, strength=self.strength, order="BGR") for frame in animation["frames"]
            ]
            pixels += sum(frame.shape[0] * frame.shape[1] for frame in frames)
            animation = {**animation, "frames": frames}
        enhanced = self.enhancer.enhance_array(image, strength=self.strength, order="BGR")
        image_io.write_image(dst, enhanced, self.quality, info["metadata"], animation, order="BGR")
        return pixels

    def run(self, input_path, output_dir, workers=0, rank=0, world_size=1, progress=True, output_format="same"):
        """Enhance an image or a folder (recursively) into output_dir, mirroring the tree, `workers`
        images at a time (0: one per CPU); this process takes files[rank::world_size]. Any failure of one
        file (an Exception) is reported in one line (runtime.input_failure) and the rest still run; only
        Ctrl-C and SIGTERM (KeyboardInterrupt) stop the run. Returns a RunSummary."""
        jobs, skipped = plan_outputs(input_path, output_dir, output_format)
        check_output_folder(jobs, output_dir)
        runtime.remove_stale_temporaries({dst.parent for _, dst in jobs})
        summary = RunSummary(skipped=skipped if rank == 0 else [])
        for path, why in summary.skipped:
            tqdm.write(f"skipping {path}: {why}", file=sys.stderr)
        jobs = largest_first(jobs)[rank::world_size]
        workers = max(1, min(workers or available_cpus(), len(jobs)))
        start = time.perf_counter()
        # Parallel images, serial ops (see thread_limits).
        with (
            thread_limits(torch_threads=1, opencv_threads=0),
            ThreadPoolExecutor(workers) as pool,
            tqdm(total=len(jobs), unit="img", disable=None if progress else True, file=sys.stderr) as bar,
        ):
            futures = {pool.submit(self.enhance_file, src, dst): src for src, dst in jobs}
            try:
                for future in as_completed(futures):
                    try:
                        pixels = future.result()
                        summary.images += 1
                        summary.megapixels += pixels / 1e6
                    except Exception as e:  # one bad file must not stop the others
                        src, line = futures[future], runtime.input_failure(futures[future], e)
                        summary.failed.append((src, line))
                        tqdm.write(f"error: {line}", file=sys.stderr)
                    bar.update()
            except (
                BaseException
            ):  # Ctrl-C, SIGTERM: finish the images in flight (their writes are atomic), start no more
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
    tester = Tester(
        args.weight_dir,
        args.scale_factor,
        local_device(args.device),
        args.precision,
        max_pixels=args.max_mpix * 1e6,
        quality=args.quality,
        allow_corrupt=args.allow_corrupt,
        strength=args.strength,
    )
    runtime.resume_garbage_collection()
    if args.allow_corrupt:  # Pillow's decoders too (a process-wide switch; the JPEG decoder takes it per call)
        ImageFile.LOAD_TRUNCATED_IMAGES = True
    runtime.interrupt_on_sigterm()
    try:
        summary = tester.run(
            args.input_dir,
            args.test_dir,
            workers=workers,
            rank=rank,
            world_size=world_size,
            output_format=args.output_format,
        )
    except KeyboardInterrupt:
        print("interrupted: the images already written are complete, the others were not started", file=sys.stderr)
        return EXIT_INTERRUPTED
    shard = f"[rank {rank}/{world_size}] " if world_size > 1 else ""
    print(
        f"{shard}{plural(summary.images, 'image')}, {summary.megapixels:.1f} megapixels in {summary.seconds:.2f} s "
        f"-> {args.test_dir}"
    )
    if summary.failed:
        print(
            f"{shard}error: {len(summary.failed)} of {plural(summary.images + len(summary.failed), 'image')} failed: "
            + ", ".join(str(path) for path, _ in summary.failed[:5])
            + (" ..." if len(summary.failed) > 5 else ""),
            file=sys.stderr,
        )
        return EXIT_SOME_INPUTS_FAILED
    return 0


if __name__ == "__main__":
    exit_now(run_script(main, get_test_parser()))
