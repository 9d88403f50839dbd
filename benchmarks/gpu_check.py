"""One prepared check of every CUDA path, and GPU speed measured against the bars, in one run of at most 8 minutes:

    python benchmarks/gpu_check.py --device cuda --out gpu_results.json     # on a GPU machine (one H100/H200)
    SGZ_SHARED=/data/shared python benchmarks/gpu_check.py --device cuda    # test photos elsewhere than ../shared
    python benchmarks/gpu_check.py --device cpu --quick --out cpu.json      # a smoke test of this script (CI runs it)

Prints a summary and writes everything (numbers, failures with their tracebacks) to one JSON file, --out.
Each stage runs in a process of its own, under its own time budget; one that fails or overruns is recorded
and the next one runs; the global --deadline (7.5 minutes) skips the stages that would not fit:
1. correctness: `python -m pytest tests -m cuda --device cuda` (tests/test_device.py): Enhancer on the GPU
   equals the CPU for uint8/uint16 grey/RGB/RGBA in fp32, bf16, fp16; test.py; the video path; training
   steps in fp32, bf16 and fp16 with GradScaler; checkpoints moving cuda -> cpu and back; DDP over NCCL
   (one process on a one-GPU machine: NCCL refuses two ranks on one GPU).
2. inference: frames/s at 1200x900 (Zero-DCE++ reports 1000), one frame and batches, in fp32, bf16 and
   fp16: on the device alone (uint8 frames in GPU memory -> uint8 frames in GPU memory) and host to host
   (pinned uint8 frames -> pinned uint8 frames, copies in and out overlapped with the computation on three
   CUDA streams); eager, in a CUDA graph, and with the full-resolution work compiled by torch.compile.
   Bars: >= 10,000 frames/s on the device, >= 2,500 host to host. The batched computation below is checked
   against Enhancer.enhance_array (within 1/255) before it is timed.
3. training: s/image at 512x512, batch 6, with the semantic loss, ours in fp32 and with --amp against the
   official arrangement (benchmarks/bench_train.py's "official-like") on the same GPU in the same run; peak
   GPU memory. Bars: <= 0.5x official-like in fp32, <= 0.25x with --amp.
4. test_py: `python test.py` (fp32, bf16, fp16) over $SGZ_SHARED/data/test_data/real against this machine's parallel I/O
   floor: OpenCV decoding and encoding the same files, one thread per core, in the same run.
With --device cpu the same stages run small and in one thread, a smoke test of this script whose timings
mean little (the device tests run as a dry run on the CPU); what needs CUDA (fp16, NCCL, pinned memory and
streams, CUDA graphs, torch.compile) is recorded as skipped, and training leaves the semantic loss out.
--quick: only the device tests of Enhancer in fp32.
Exit status: 0 when every stage ran through (or was skipped for want of its test photos), 1 when one failed,
ran out of its time or was not run for the deadline, 2 when the check cannot start (e.g. no CUDA device).

Needs (no network): torch with CUDA (and triton, which comes with it on Linux, for torch.compile),
torchvision, numpy, opencv-python-headless, pillow, av, tqdm, scikit-image, scipy, pytest; the weights
weight/sgz.pth; for stage 4 the test photos (SGZ_SHARED, or a shared/ folder beside or inside the project).
"""

import argparse
import functools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import image_io  # noqa: E402
import runtime
from enhance import Enhancer  # noqa: E402
from runtime import UserError, available_cpus, run_script, thread_limits

WEIGHTS = ROOT / "weight" / "sgz.pth"
SCALE_FACTOR = 12
# (frame height, width, batch), (training size, batch, timed steps), photos for test.py (None: all)
CUDA_SIZES = {"frames": (900, 1200, 32), "training": (512, 6, 20), "photos": None}  # 1200x900: Zero-DCE++'s figure
CPU_SIZES = {"frames": (225, 300, 2), "training": (64, 2, 1), "photos": 4}  # the smoke test: small
STAGE_BUDGETS = {"correctness": 150, "inference": 180, "training": 90, "test_py": 60}  # seconds, at most
MIN_STAGE_SECONDS = 20  # a stage with less time left than this is skipped
BARS = {"device_fps": 10_000, "host_fps": 2_500, "train_fp32_ratio": 0.5, "train_amp_ratio": 0.25}
QUICK_DEVICE_TESTS = "enhancer and real and fp32"  # --quick: the device tests' Enhancer cases only


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------
def run_command(argv, timeout, cwd=ROOT, env=None):
    """Run argv in a process group of its own (so that a timeout also ends its children, e.g. torchrun's
    workers); returns (exit status or None when it timed out, stdout and stderr together, seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [str(a) for a in argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=max(1.0, timeout))
        status = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        status = None
    return status, output, time.perf_counter() - start


def exit_text(status):
    return "ran out of the stage's time" if status is None else f"exited with status {status}"


def tail(text, chars=4000):
    return text if len(text) <= chars else "..." + text[-chars:]


class Stage:
    """What a stage process knows: its device and size, its deadline, and where its results go. `record`
    rewrites the results file whole each time, so a stage killed at its deadline leaves what it had."""

    def __init__(self, args):
        self.device, self.quick, self.input_dir = args.device, args.quick, args.input_dir
        self.cuda = args.device.startswith("cuda")
        self.sizes = CUDA_SIZES if self.cuda else CPU_SIZES
        self.deadline, self.out = args.stage_deadline, Path(args.stage_out)
        self.results = {}

    def seconds_left(self):
        return self.deadline - time.time()

    def record(self, **items):
        self.results.update(items)
        with runtime.atomic_output(self.out) as tmp:
            Path(tmp).write_text(json.dumps(self.results, indent=1, default=str))

    def attempt(self, key, fn, *args):
        """fn(*args) recorded under results[key] (a list): its result, or its error with the traceback."""
        try:
            entry = fn(*args)
        except Exception:
            entry = {"args": [str(a) for a in args], "error": traceback.format_exc()}
        self.record(**{key: self.results.get(key, []) + [entry]})
        return entry


# ---------------------------------------------------------------------------------------------
# 1. Correctness: the device tests
# ---------------------------------------------------------------------------------------------
def junit_cases(path):
    """(name, outcome, seconds, message) of each test case in a pytest --junitxml file."""
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or "")[:300]
                if message == "collection failure":  # a test module that could not be imported
                    outcome = "not_collected"
                if outcome != "skipped":
                    message = tail(child.text or message, 3000)
        cases.append(
            {
                "name": f"{case.get('classname')}::{case.get('name')}",
                "outcome": outcome,
                "seconds": round(float(case.get("time") or 0), 2),
                "message": message,
            }
        )
    return cases


def stage_correctness(stage):
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "tests",
        "-m",
        "cuda",
        "--device",
        stage.device,
        "-q",
        "-rfEs",
        "-p",
        "no:cacheprovider",
        "--continue-on-collection-errors",
    ]
    if stage.quick:
        argv += ["-k", QUICK_DEVICE_TESTS]
    stage.record(command=shlex.join(["python", *argv[1:]]))
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        status, output, seconds = run_command([*argv, f"--junitxml={junit}"], stage.seconds_left() - 5)
        cases = junit_cases(junit) if junit.is_file() else []
    counts = {
        k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped", "not_collected")
    }
    lines = [line for line in output.splitlines() if line.strip()]
    # A test module that cannot be imported here (a missing optional package) is reported, not failed: the
    # device tests that were collected decide.
    ok = status in (0, 1) and counts["passed"] > 0 and counts["failed"] == counts["error"] == 0
    stage.record(
        status="ok" if ok else "failed",
        exit_status=status,
        seconds=round(seconds, 1),
        counts=counts,
        summary=lines[-1] if lines else "",
        tests=cases,
        **({} if ok else {"output_tail": tail(output)}),
    )


# ---------------------------------------------------------------------------------------------
# 2. Inference speed
# ---------------------------------------------------------------------------------------------
def sample_frames(count, height, width):
    """`count` RGB uint8 frames made from the project's sample photos (data/test_data), flipped
    in turn so that consecutive frames differ."""
    photos = [np.asarray(image_io.load_rgb(p)) for p in image_io.find_images(ROOT / "data" / "test_data")]
    frames = np.empty((count, height, width, 3), np.uint8)
    for i in range(count):
        photo = cv2.resize(photos[i % len(photos)], (width, height), interpolation=cv2.INTER_AREA)
        frames[i] = photo[:, ::-1] if (i // len(photos)) % 2 else photo
    return frames


def frame_pipeline(precision, device, compiled=False):
    """Enhancer.enhance_frames for one precision, as a function of the frames alone (what a CUDA graph
    captures): the batched enhancement of enhance.py, computed nowhere else."""
    enhancer = Enhancer(WEIGHTS, SCALE_FACTOR, device, precision)
    return functools.partial(enhancer.enhance_frames, compiled=compiled, check=False)


def in_cuda_graph(fn, example):
    """fn captured in a CUDA graph on a copy of `example`: returns (replay, static input, static output)."""
    static_in = example.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (and compilation) off the capture
        for _ in range(3):
            fn(static_in)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fn(static_in)
    return graph.replay, static_in, static_out


def timed(step, frames_per_call, min_seconds, sync, min_calls=3):
    """Frames/s of step() called repeatedly for at least min_seconds and min_calls (after one warm-up call)."""
    step()
    sync()
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < min_seconds:
        step()
        calls += 1
        if calls % 8 == 0:
            sync()
    sync()
    return calls * frames_per_call / (time.perf_counter() - start)


def device_run(pipeline, frames, mode, min_seconds, sync):
    """Frames/s of one batch on the device, in and out of device memory."""
    if mode == "eager":
        return timed(lambda: pipeline(frames), len(frames), min_seconds, sync)
    replay, _, _ = in_cuda_graph(pipeline, frames)
    return timed(replay, len(frames), min_seconds, sync)


def host_to_host_run(pipeline, device, host_in, host_out, batch, min_seconds):
    """Frames/s from pinned host frames to pinned host frames, `batch` at a time through three slots, each a
    CUDA graph with its own device buffers: while one batch is copied in (stream 1), the one before is computed
    (stream 2) and the one before that copied out (stream 3). Returns (frames/s, frames done)."""
    copy_in, compute, copy_out = (torch.cuda.Stream() for _ in range(3))
    slots = []
    for _ in range(3):
        replay, dev_in, dev_out = in_cuda_graph(pipeline, host_in[:batch].to(device))
        slots.append(
            {
                "replay": replay,
                "in": dev_in,
                "out": dev_out,
                **{e: torch.cuda.Event() for e in ("loaded", "computed", "drained")},
            }
        )
    torch.cuda.synchronize()
    batches = len(host_in) // batch
    done, start = 0, time.perf_counter()
    while done < 2 * len(host_in) or time.perf_counter() - start < min_seconds:
        b = done // batch % batches
        slot, rows = slots[done // batch % 3], slice(b * batch, (b + 1) * batch)
        slot["drained"].synchronize()  # the slot's last batch is out: its buffers are free
        with torch.cuda.stream(copy_in):
            slot["in"].copy_(host_in[rows], non_blocking=True)
            slot["loaded"].record()
        compute.wait_event(slot["loaded"])
        with torch.cuda.stream(compute):
            slot["replay"]()
            slot["computed"].record()
        copy_out.wait_event(slot["computed"])
        with torch.cuda.stream(copy_out):
            host_out[rows].copy_(slot["out"], non_blocking=True)
            slot["drained"].record()
        done += batch
    torch.cuda.synchronize()
    return done / (time.perf_counter() - start), done


def stage_inference(stage):
    device, cuda = torch.device(stage.device), stage.cuda
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    height, width, batch = stage.sizes["frames"]
    precisions = ["fp32", "bf16", "fp16"] if cuda else ["fp32", "bf16"]
    min_seconds = 1.0 if cuda else 0.0
    if cuda:
        torch.cuda.set_device(device)
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest convolutions
    stage.record(
        frame=f"{width}x{height} RGB uint8",
        scale_factor=SCALE_FACTOR,
        batch=batch,
        device_name=torch.cuda.get_device_name(device) if cuda else "cpu",
        torch=torch.__version__,
        skipped=[] if cuda else ["fp16, CUDA graphs, torch.compile, pinned host-to-host: need CUDA"],
    )
    host = sample_frames(2 * batch if cuda else batch, height, width)
    frames = torch.from_numpy(host).to(device)

    @torch.inference_mode()
    def check(precision, mode):
        """Max |pipeline - Enhancer.enhance_array| over a few frames, in 1/255."""
        enhancer = Enhancer(WEIGHTS, SCALE_FACTOR, device, precision)
        some = frames[: min(3, batch)]
        if mode == "eager":
            out = frame_pipeline(precision, device)(some)
        else:  # compiled for the batch size it is timed at
            out = frame_pipeline(precision, device, compiled=True)(frames[:batch])[: len(some)]
        diff = max(
            int(np.abs(o.astype(int) - enhancer.enhance_array(f)).max())
            for o, f in zip(out.cpu().numpy(), host[: len(some)])
        )
        return {"precision": precision, "mode": mode, "max_diff_vs_enhancer": diff, "ok": diff <= 1}

    @torch.inference_mode()
    def on_device(precision, mode, size):
        pipeline = frame_pipeline(precision, device, compiled=mode.startswith("compiled"))
        fps = device_run(pipeline, frames[:size], "eager" if mode == "eager" else "graph", min_seconds, sync)
        return {"precision": precision, "mode": mode, "batch": size, "frames_per_s": round(fps, 1)}

    @torch.inference_mode()
    def host_to_host(precision, mode, size):
        pipeline = frame_pipeline(precision, device, compiled=mode.startswith("compiled"))
        pool = 4 * batch  # frames cycled through: 4 batches of pinned memory each way
        host_in, host_out = (torch.empty((pool, height, width, 3), dtype=torch.uint8, pin_memory=True) for _ in "io")
        host_in.copy_(torch.from_numpy(np.concatenate([host] * (pool // len(host)))))
        fps, done = host_to_host_run(pipeline, device, host_in, host_out, size, min_seconds)
        # the overlapped copies delivered what the device computes, frame for frame
        expected = pipeline(host_in[:batch].to(device)).cpu()
        diff = int((host_out[:batch].int() - expected.int()).abs().max())
        return {
            "precision": precision,
            "mode": mode,
            "batch": size,
            "frames_per_s": round(fps, 1),
            "frames": done,
            "max_diff_vs_device_result": diff,
        }

    def if_time(key, fn, *args, needs=10):
        if stage.seconds_left() < needs:
            stage.record(skipped=stage.results["skipped"] + [f"{key} {' '.join(map(str, args))}: out of time"])
            return None
        return stage.attempt(key, fn, *args)

    def best_precision(mode):
        runs = [
            r
            for r in stage.results.get("device", [])
            if r.get("mode") == mode and r.get("batch") == batch and "frames_per_s" in r
        ]
        return max(runs, key=lambda r: r["frames_per_s"])["precision"] if runs else "fp32"

    for precision in precisions:
        stage.attempt("checks", check, precision, "eager")
    for mode in ("eager", "graph") if cuda else ("eager",):
        for precision in precisions:
            for size in (1, batch):
                if_time("device", on_device, precision, mode, size)
    if not cuda:
        stage.record(status="failed" if failures(stage.results) else "ok")
        return
    for precision in precisions:
        if_time("host_to_host", host_to_host, precision, "graph", batch, needs=15)
    if_time("host_to_host", host_to_host, best_precision("graph"), "graph", 1, needs=15)
    # torch.compile last: compiling takes the longest, and the figures above do not depend on it
    compiled = if_time("checks", check, "fp32", "compiled", needs=60)
    if compiled and "error" not in compiled:
        for precision in precisions:
            for size in (1, batch):
                if_time("device", on_device, precision, "compiled+graph", size)
        for precision in precisions:
            if_time("host_to_host", host_to_host, precision, "compiled+graph", batch, needs=15)
        if_time("host_to_host", host_to_host, best_precision("compiled+graph"), "compiled+graph", 1, needs=15)
    stage.record(status="failed" if failures(stage.results) else "ok")


def failures(results):
    """The inference runs that failed, or whose output was off by more than 1/255."""
    return [
        r
        for key in ("checks", "device", "host_to_host")
        for r in results.get(key, [])
        if "error" in r or not r.get("ok", True) or r.get("max_diff_vs_device_result", 0) > 1
    ]


# ---------------------------------------------------------------------------------------------
# 3. Training speed
# ---------------------------------------------------------------------------------------------
def stage_training(stage):
    size, batch, steps = stage.sizes["training"]
    semantic = (
        stage.cuda and not stage.quick
    )  # the smoke test leaves the ResNet-50 out: its start-up is most of its time
    stage.record(size=size, batch=batch, timed_steps=steps, semantic_loss=semantic, runs=[])

    def measure(setting):
        argv = [
            sys.executable,
            ROOT / "benchmarks" / "bench_train.py",
            "--one",
            setting,
            int(semantic),
            "--size",
            size,
            "--batch",
            batch,
            "--steps",
            steps,
            "--device",
            stage.device,
        ]
        status, output, seconds = run_command(argv, stage.seconds_left() - 5)
        if status != 0:
            raise RuntimeError(f"bench_train.py {setting} {exit_text(status)}:\n{tail(output)}")
        last_json = [line for line in output.splitlines() if line.startswith("{")][-1]  # its logs go to stderr
        return {"setting": setting, "seconds": round(seconds, 1), **json.loads(last_json)}

    for setting in ("official-like", "ours fp32", "ours amp"):
        stage.attempt("runs", measure, setting)
    runs = {r["setting"]: r for r in stage.results["runs"] if "s_per_image" in r}
    if "official-like" in runs:
        for r in runs.values():
            r["vs_official_like"] = round(r["s_per_image"] / runs["official-like"]["s_per_image"], 3)
    stage.record(status="ok" if len(runs) == 3 else "failed")


# ---------------------------------------------------------------------------------------------
# 4. test.py against the parallel I/O floor
# ---------------------------------------------------------------------------------------------
def real_photos(input_dir):
    if input_dir:
        return Path(input_dir)
    candidates = [Path(os.environ["SGZ_SHARED"])] if os.environ.get("SGZ_SHARED") else []
    for shared in [*candidates, ROOT.parent / "shared", ROOT / "shared"]:
        if (shared / "data" / "test_data" / "real").is_dir():
            return shared / "data" / "test_data" / "real"
    return None


def parallel_io_floor(files, out_dir):
    """Seconds to decode and re-encode every file with OpenCV, one file per thread, one thread per core
    (OpenCV's own threads off, as test.py runs it): what test.py would take if enhancing were free."""

    def copy(i):
        cv2.imwrite(str(out_dir / f"{i}{files[i].suffix}"), cv2.imread(str(files[i]), cv2.IMREAD_UNCHANGED))

    start = time.perf_counter()
    with thread_limits(torch_threads=1, opencv_threads=0), ThreadPoolExecutor(available_cpus()) as pool:
        list(pool.map(copy, range(len(files))))
    return time.perf_counter() - start


def stage_test_py(stage):
    folder = real_photos(stage.input_dir)
    if folder is None or not folder.is_dir():
        stage.record(
            status="skipped",
            reason="test photos not found: set SGZ_SHARED to the shared/ folder "
            "(data/test_data/real) or pass --input_dir",
        )
        return
    files = image_io.find_images(folder)[: stage.sizes["photos"] and stage.sizes["photos"] // (2 if stage.quick else 1)]
    stage.record(input_dir=str(folder), images=len(files), cpus=available_cpus(), runs=[])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = tmp / "input"
        inputs.mkdir()
        for f in files:  # the same files in a folder of their own (--quick takes a few)
            (inputs / f.name).symlink_to(f.resolve())
        (tmp / "floor").mkdir()
        floor = parallel_io_floor(files, tmp / "floor")
        stage.record(floor_s=round(floor, 3))

        def run(precision):
            out = tmp / precision
            status, output, seconds = run_command(
                [
                    sys.executable,
                    ROOT / "test.py",
                    "--input_dir",
                    inputs,
                    "--test_dir",
                    out,
                    "--weight_dir",
                    WEIGHTS,
                    "--device",
                    stage.device,
                    "--precision",
                    precision,
                ],
                stage.seconds_left() - 5,
            )
            if status != 0:
                raise RuntimeError(f"test.py --precision {precision} {exit_text(status)}:\n{tail(output)}")
            written = len(image_io.find_images(out))
            inside = ([None] + re.findall(r"in ([0-9.]+) s", output))[-1]  # its own figure: without start-up
            return {
                "precision": precision,
                "wall_s": round(seconds, 3),
                "wall_vs_floor": round(seconds / floor, 2),
                "enhancing_s": inside and float(inside),
                "enhancing_vs_floor": inside and round(float(inside) / floor, 2),
                "outputs": written,
                "ok": written == len(files),
            }

        for precision in ("fp32", "bf16", "fp16") if stage.cuda else ("fp32",):
            stage.attempt("runs", run, precision)
    ok = all(r.get("ok") for r in stage.results["runs"])
    stage.record(status="ok" if ok else "failed")


STAGES = {
    "correctness": stage_correctness,
    "inference": stage_inference,
    "training": stage_training,
    "test_py": stage_test_py,
}


# ---------------------------------------------------------------------------------------------
# The run: stages in processes of their own, a summary, one results file
# ---------------------------------------------------------------------------------------------
def run_stage(name, args, deadline):
    budget = min(STAGE_BUDGETS[name], deadline - time.time())
    if budget < MIN_STAGE_SECONDS:
        return {"status": "not_run", "reason": f"the global deadline ({args.deadline:.0f} s) leaves {budget:.0f} s"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "stage.json"
        argv = [
            sys.executable,
            Path(__file__).resolve(),
            "--device",
            args.device,
            "--stage",
            name,
            "--stage_out",
            out,
            "--stage_deadline",
            time.time() + budget - 5,
            *(["--quick"] if args.quick else []),
            *(["--input_dir", args.input_dir] if args.input_dir else []),
        ]
        # The CPU smoke test computes in one thread: on a busy machine threads mostly wait for each other.
        env = None if args.device.startswith("cuda") else {**os.environ, "OMP_NUM_THREADS": "1"}
        status, output, seconds = run_command(argv, budget, env=env)
        result = json.loads(out.read_text()) if out.is_file() else {}
    if status is None:
        result.update(status="timed_out", output_tail=tail(output))
    elif status != 0 or "status" not in result:
        result.update(status="failed", output_tail=tail(output))
    result.update(stage_seconds=round(seconds, 1), budget_s=round(budget))
    return result


def best(runs, key="frames_per_s"):
    runs = [r for r in runs or [] if key in r]
    return max(runs, key=lambda r: r[key]) if runs else None


def bars_and_summary(results):
    """The bars (met or not; None where they do not apply) and the lines of the printed summary."""
    stages, cuda = results["stages"], results["device"].startswith("cuda")
    bars, lines = [], []

    def bar(name, value, limit, higher_is_better):
        met = None if value is None or not cuda else (value >= limit if higher_is_better else value <= limit)
        bars.append(
            {"name": name, "value": value, "bar": (">= " if higher_is_better else "<= ") + str(limit), "met": met}
        )
        return {None: "n/a" if cuda else "bars apply to CUDA", True: "MET", False: "MISSED"}[met]

    for name, s in stages.items():
        head = f"{name:<12} {s.get('status', '?'):<9} {s.get('stage_seconds', 0):>6.1f} s  "
        if "reason" in s:
            lines.append(head + s.get("reason", ""))
        elif name == "correctness":
            lines.append(head + f"{s.get('summary', '')}  ({s.get('command', '')})")
            lines += [
                f"    {c['outcome'].upper()} {c['name']}"
                for c in s.get("tests", [])
                if c["outcome"] in ("failed", "error", "not_collected")
            ]
        elif name == "inference":
            d, h = best(s.get("device")), best(s.get("host_to_host"))
            checks = [
                f"{c['precision']} {c['mode']} {c['max_diff_vs_enhancer']}/255"
                if "error" not in c
                else f"{' '.join(c['args'])} ERROR {c['error'].splitlines()[-1]}"
                for c in s.get("checks", [])
            ]
            lines.append(head + f"{s.get('device_name', '')}, {s.get('frame')}; vs Enhancer: " + ", ".join(checks))
            for label, key in (("device", "device"), ("host->host", "host_to_host")):
                for r in s.get(key, []):
                    lines.append(
                        f"    {label:<11} {r.get('precision', ''):<5} {r.get('mode', ''):<15} batch "
                        f"{r.get('batch', ''):<3} "
                        + (
                            f"{r['frames_per_s']:>10,.0f} frames/s"
                            if "frames_per_s" in r
                            else "ERROR " + r["error"].splitlines()[-1]
                        )
                    )
            verdict = bar("device frames/s at 1200x900", d and d["frames_per_s"], BARS["device_fps"], True)
            lines.append(
                f"    best on the device: {d and d['frames_per_s']:,} frames/s (bar >= 10,000: {verdict})"
                if d
                else "    no device figure"
            )
            verdict = bar("host-to-host frames/s at 1200x900", h and h["frames_per_s"], BARS["host_fps"], True)
            lines.append(
                f"    best host to host: {h['frames_per_s']:,} frames/s (bar >= 2,500: {verdict})"
                if h
                else "    no host-to-host figure" + ("" if cuda else " (needs CUDA)")
            )
        elif name == "training":
            lines.append(
                head
                + f"{s.get('size')}x{s.get('size')}, batch {s.get('batch')}, "
                + ("with" if s.get("semantic_loss") else "without")
                + " the semantic loss"
            )
            for r in s.get("runs", []):
                lines.append(
                    f"    {r.get('setting', ''):<14} "
                    + (
                        f"{r['s_per_image']:.4f} s/image  "
                        f"{r.get('vs_official_like', float('nan')):.2f}x official-like  "
                        f"loss {r['loss']:.5f}  peak {r['peak_mb']:.0f} MB"
                        if "s_per_image" in r
                        else "ERROR " + r["error"].splitlines()[-1]
                    )
                )
            runs = {r.get("setting"): r for r in s.get("runs", [])}
            for setting, key in (("ours fp32", "train_fp32_ratio"), ("ours amp", "train_amp_ratio")):
                verdict = bar(
                    f"training s/image, {setting} / official-like",
                    runs.get(setting, {}).get("vs_official_like"),
                    BARS[key],
                    False,
                )
                lines.append(f"    {setting} vs official-like: bar <= {BARS[key]}x: {verdict}")
        elif name == "test_py":
            lines.append(
                head + f"{s.get('images')} images from {s.get('input_dir')}; parallel I/O floor "
                f"{s.get('floor_s')} s on {s.get('cpus')} CPUs"
            )
            for r in s.get("runs", []):
                lines.append(
                    f"    test.py {r.get('precision', '')}: "
                    + (
                        f"{r['wall_s']:.2f} s whole process ({r['wall_vs_floor']}x floor), {r['enhancing_s']} s "
                        f"enhancing ({r['enhancing_vs_floor']}x floor)"
                        if "wall_s" in r
                        else "ERROR " + r["error"].splitlines()[-1]
                    )
                )
        if s.get("status") in ("failed", "timed_out") and "output_tail" in s:
            lines.append("    " + s["output_tail"].strip().splitlines()[-1] if s["output_tail"].strip() else "")
    return bars, lines


def write_results(path, results):
    with runtime.atomic_output(path) as tmp:
        Path(tmp).write_text(json.dumps(results, indent=1, default=str))


def main(args):
    if args.stage:  # a stage's own process
        stage = Stage(args)
        try:
            STAGES[args.stage](stage)
        except Exception:
            stage.record(status="failed", error=traceback.format_exc())
            return 1
        return 0
    names = args.stages.split(",")
    unknown = set(names) - set(STAGES)
    if unknown:
        raise UserError(f"unknown stage(s) {', '.join(sorted(unknown))}; choose from {', '.join(STAGES)}")
    if args.input_dir and not Path(args.input_dir).is_dir():
        raise UserError(f"--input_dir {args.input_dir}: no such folder (give a folder of test photos)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            f"--device {args.device}: PyTorch {torch.__version__} sees no CUDA device here "
            "(use --device cpu for the smoke test)"
        )
    start = time.time()
    deadline = start + args.deadline
    results = {
        "command": " ".join(["python", *sys.argv]),
        "device": args.device,
        "quick": args.quick,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(start)),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpus": torch.cuda.device_count(),
        "cpus": os.cpu_count(),
        "stages": {},
    }
    for name in names:
        print(f"{name} ...", flush=True)
        results["stages"][name] = run_stage(name, args, deadline)
        results["bars"], results["summary"] = bars_and_summary(results)
        results["seconds"] = round(time.time() - start, 1)
        write_results(args.out, results)  # after every stage: a run cut short still leaves its results
    print("\n".join(results["summary"]))
    print(f"{results['seconds']} s in all; results in {args.out}")
    return 1 if any(s["status"] in ("failed", "timed_out", "not_run") for s in results["stages"].values()) else 0


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (a smoke test of this script)")
    p.add_argument("--out", default="gpu_check_results.json", help="the results file (JSON)")
    p.add_argument(
        "--quick", action="store_true", help="only the Enhancer device tests in fp32, fewer photos (the CI smoke test)"
    )
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, from {','.join(STAGES)}")
    p.add_argument("--deadline", type=float, default=450, help="seconds for the whole run; later stages are skipped")
    p.add_argument("--input_dir", help="stage test_py's photos (default: SGZ_SHARED/data/test_data/real)")
    p.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    p.add_argument("--stage_out", help=argparse.SUPPRESS)
    p.add_argument("--stage_deadline", type=float, help=argparse.SUPPRESS)
    return p


if __name__ == "__main__":
    sys.exit(run_script(main, get_parser()))
