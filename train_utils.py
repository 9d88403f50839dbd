"""The run machinery beside train.py (as torchvision's references keep utils.py beside train.py): what a
training run needs around its recipe, and nothing about the network or its loss.

- processes: the distributed setup and the agreements between ranks, autocast and the loss scaler;
- exact resume: the RNG states, `ResumableSampler`, `Position`, the checkpoint and the settings it restores;
- the run folder (rank 0 writes, each file atomically): its lock, `last.pth` (everything `--resume` needs),
  the bare weights (`EpochN.pth` when epoch N is complete, `EpochN_partial.pth` while it is not), `args.json`
  (the run's settings as text), `train.log` (what the console said), `loss_log.csv` and `loss_plot.png`;
- the console: `Progress` (bar, loss log, plot, closing line), `RunLog`, `SkippedSteps`, `StopOnSignal`.
"""

import argparse
import contextlib
import csv
import hashlib
import json
import os
import random
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from filelock import FileLock, Timeout
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from model import get_device
from option import get_train_parser
from runtime import UserError, atomic_output, check_output_folder, check_output_path, release_pause_points, save_torch

MAX_BAD_STEPS_IN_A_ROW = 5
LOG_COLUMNS = ["epoch", "step", "total", "tv", "spa", "color", "exp", "seg", "grad_norm", "images_per_s"]
LAST, LOG, PLOT, LOCK = "last.pth", "loss_log.csv", "loss_plot.png", ".train.lock"
SETTINGS, TEXT_LOG = "args.json", "train.log"
# Settings a resumed run cannot change, and why.
FIXED_ON_RESUME = {
    "train_batch_size": "the position inside an epoch is counted in batches of the saved size",
    "seed": "the order of the images in every epoch follows from the seed",
    "conv_type": "the checkpoint holds a network of the saved type",
    "load_pretrain": "a resumed run's weights come from its checkpoint",
    "pretrain_dir": "a resumed run's weights come from its checkpoint",
}
NOT_RESTORED = ("resume", "overwrite", "snapshots_folder", "given")  # about this command, not the run
# What a checkpoint written before a setting existed was trained with.
SETTINGS_BEFORE_THEY_EXISTED = {"seg_bn": "frozen"}


# ---------------------------------------------------------------------------------------------
# Distributed and precision helpers
# ---------------------------------------------------------------------------------------------
def setup_distributed(device_name):
    """Under torchrun (WORLD_SIZE > 1) join the process group; returns (rank, world_size, device)."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    device = get_device(device_name)
    if world_size > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world_size, device


def is_main_process():
    return not dist.is_initialized() or dist.get_rank() == 0


def all_ranks_agree(flag, device):
    """True only if `flag` is true on every rank (all ranks must skip a bad step together, or DDP hangs)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor(1.0 if flag else 0.0, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def any_rank(flag, device):
    """True if `flag` is true on some rank (a Ctrl-C that reached one rank stops them all at the same step)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor(1.0 if flag else 0.0, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def from_main_process(value):
    """Rank 0's `value` on every rank (e.g. a folder name made from the clock)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def autocast_dtype(device):
    """bfloat16 on CPUs and GPUs that have it (no loss scaling needed), else fp16 with a GradScaler."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def autocast_context(device, enabled):
    return torch.autocast(device.type, dtype=autocast_dtype(device)) if enabled else nullcontext()


def grad_scaler(device, amp):
    """The loss scaler: active only where autocast runs in float16 (bfloat16 needs none)."""
    enabled = amp and device.type == "cuda" and autocast_dtype(device) == torch.float16
    return torch.amp.GradScaler(device.type, enabled=enabled)


def ignore_interrupts(worker_id):
    """DataLoader workers leave Ctrl-C and SIGTERM to the main process, which stops at a step boundary
    and stops them (a worker killed by the terminal's Ctrl-C would fail the batch being fetched)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def rng_state():
    # numpy's state as plain lists: checkpoints must load with weights_only=True.
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumableSampler(DistributedSampler):
    """DistributedSampler (also for one process) whose epoch order depends only on (seed, epoch),
    and which can start part-way through an epoch, so a resumed run sees exactly the same batches."""

    def __init__(self, dataset, batch_size, **kwargs):
        super().__init__(dataset, shuffle=True, **kwargs)
        self.batch_size = batch_size
        self.start_batch = 0

    def set_position(self, epoch, start_batch=0):
        self.set_epoch(epoch)
        self.start_batch = start_batch

    def __iter__(self):
        indices = list(super().__iter__())
        return iter(indices[self.start_batch * self.batch_size :])

    def __len__(self):
        return max(0, super().__len__() - self.start_batch * self.batch_size)


# ---------------------------------------------------------------------------------------------
# The run: its settings when resumed, its folder and lock, its checkpoints
# ---------------------------------------------------------------------------------------------
@dataclass
class Position:
    """Where a run is; `--resume` restores it. Skipped (non-finite) steps count as steps."""

    epoch: int = 0  # epochs completed
    step: int = 0  # steps done in all
    batch_in_epoch: int = 0  # steps done in the current epoch

    def advance(self, steps_per_epoch):
        self.step += 1
        self.batch_in_epoch += 1
        if self.batch_in_epoch == steps_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    @property
    def weights_epoch(self):
        """N of the epoch the weights belong to: the epoch in progress, or the one just completed."""
        return self.epoch - 1 if self.batch_in_epoch == 0 else self.epoch

    @property
    def weights_name(self):
        """`EpochN.pth` once epoch N is complete (the official name), `EpochN_partial.pth` while it is
        not: a run stopped after 5 steps leaves no file that looks like a whole epoch's weights."""
        n = max(self.weights_epoch, 0)
        return f"Epoch{n}.pth" if self.batch_in_epoch == 0 and self.epoch > 0 else f"Epoch{n}_partial.pth"

    def where(self, num_epochs, steps_per_epoch):
        """'epoch 2 of 5, 1 of its 3 steps done' (mid-epoch) or '2 of 5 epochs complete'."""
        if self.batch_in_epoch == 0:
            return f"{self.epoch} of {num_epochs} epochs complete"
        return f"epoch {self.epoch + 1} of {num_epochs}, {self.batch_in_epoch} of its {steps_per_epoch} steps done"


def load_run_checkpoint(path):
    """A full training checkpoint (last.pth) as a dict; anything else is a UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"--resume {path}: {'is a folder, not' if path.is_dir() else 'not found; give'} the run's last.pth"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, empty, foreign: pickle, zip and format errors all mean "not a checkpoint"
        first_sentence = (str(e).splitlines() or [""])[0].split(". ")[0][:200]
        raise UserError(
            f"--resume {path} is not a readable PyTorch checkpoint ({type(e).__name__}: {first_sentence})"
        ) from None
    needed = {"model", "optimizer", "scaler", "epoch", "step", "batch_in_epoch", "args", "rng"}
    if not isinstance(ckpt, dict) or not needed <= set(ckpt):
        raise UserError(
            f"--resume {path} is not a full training checkpoint (last.pth); for bare weights "
            "start a new run with --load_pretrain --pretrain_dir"
        )
    return ckpt


def check_saved_setting(name, value, path):
    """A setting read from a checkpoint, checked as the flag would be on the command line (a checkpoint is an
    input like any other: `lr: nan` in it must not train on NaN)."""
    action = next((a for a in get_train_parser()._actions if a.dest == name), None)
    if action is None or action.type is None or value is None:
        return value
    try:
        action.type(str(value))
    except (argparse.ArgumentTypeError, ValueError) as e:
        raise UserError(f"--resume {path} holds a bad --{name} setting: {e}; start a new run") from None
    return value


def resumed_args(args, ckpt):
    """The run's saved settings, overridden by the flags given on this command line. Returns
    (args, the overrides as one line). A setting the run cannot change is a UserError saying why."""
    saved = {**SETTINGS_BEFORE_THEY_EXISTED, **ckpt["args"]}
    merged, overrides = dict(vars(args)), []
    for name, value in vars(args).items():
        if name in NOT_RESTORED or name not in saved:
            continue
        old = saved[name]
        if name not in args.given:
            merged[name] = check_saved_setting(name, old, args.resume)
        elif value != old:
            if name in FIXED_ON_RESUME:
                raise UserError(
                    f"--{name} cannot change when resuming ({FIXED_ON_RESUME[name]}; the run has {old}): "
                    f"drop the flag, or start a new run from the weights with --load_pretrain --pretrain_dir"
                )
            overrides.append(f"--{name} {value} (was {old})")
    if "snapshots_folder" not in args.given:
        merged["snapshots_folder"] = str(Path(args.resume).parent)
    return type(args)(**merged), ", ".join(overrides)


def default_run_folder():
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def run_files(folder):
    """The files of a run in `folder` (not its lock)."""
    named = [folder / name for name in (LAST, LOG, PLOT, SETTINGS, TEXT_LOG)]
    return [p for p in named if p.exists()] + sorted(folder.glob("Epoch*.pth"))


def check_run_folder(folder):
    """The run folder is a folder (or nothing yet) and its files (checkpoints, logs, plot) are regular files
    or nothing: refused with one line before anything is created or loaded."""
    check_output_folder(folder)
    for name in (LAST, LOG, PLOT, SETTINGS, TEXT_LOG):
        check_output_path(folder / name)


def missing_folders(folder):
    """The folders that creating `folder` would make: itself and its missing parents, innermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def remove_folders(folders):
    """A run that fails while it is built (no images, bad weights) leaves no run folder holding only its lock
    and log: the folders it made (innermost first) are removed again, if they hold nothing else."""
    for folder in folders:
        with contextlib.suppress(OSError):
            for name in (LOCK, TEXT_LOG):
                (folder / name).unlink(missing_ok=True)
            folder.rmdir()


def claim_run_folder(folder, resume_from, overwrite):
    """Lock the run folder for this process (the lock goes with the process, even on SIGKILL) and make
    sure no other run's files get overwritten. Returns the held lock."""
    check_run_folder(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(folder / LOCK, timeout=0)
        lock.acquire()
    except Timeout:
        raise UserError(
            f"{folder} is in use by another training run that is still going (it holds "
            f"{folder / LOCK}); wait for it to end, or choose another --snapshots_folder"
        ) from None
    except OSError as e:
        raise UserError(f"cannot use {folder} as the run folder: {e.strerror or e}") from None
    continuing = resume_from and Path(resume_from).parent.resolve() == folder.resolve()
    if not continuing and run_files(folder):
        if not overwrite:
            lock.release()
            raise UserError(
                f"{folder} already holds a training run; continue it with --resume {folder / LAST}, choose "
                "another --snapshots_folder, or pass --overwrite to delete its checkpoints and logs"
            )
        for old in run_files(folder):
            old.unlink(missing_ok=True)
    return lock


def dataset_fingerprint(dataset):
    """The images a run trains on, by their names under the folder: a resumed run must see the same ones."""
    names = "\n".join(str(p.relative_to(dataset.root)) for p in dataset.paths)
    return hashlib.sha256(names.encode()).hexdigest()[:16]


def saved_settings(args):
    """The run's settings as saved (in last.pth and args.json): plain values, without this command's own."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in NOT_RESTORED}


def write_settings(folder, args):
    """args.json: the run's settings as text, for people and tools (`--resume` reads last.pth's own copy)."""
    if is_main_process():
        with atomic_output(folder / SETTINGS) as tmp:
            Path(tmp).write_text(json.dumps(saved_settings(args), indent=2, sort_keys=True, default=str) + "\n")


def save_checkpoint(folder, model_without_ddp, optimizer, scaler, position, args, world_size, fingerprint):
    """last.pth with the whole state, and the network alone under `position.weights_name` (rank 0 only);
    an epoch's partial weights go once the epoch is complete."""
    if not is_main_process():
        return
    weights = {k: v.contiguous() for k, v in model_without_ddp.state_dict().items()}  # the exchange format
    full = {
        "model": weights,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        **asdict(position),
        "args": saved_settings(args),
        "world_size": world_size,
        "dataset": fingerprint,
        "rng": rng_state(),
    }
    save_torch(full, folder / LAST)
    save_torch(weights, folder / position.weights_name)
    if position.batch_in_epoch == 0:
        (folder / f"Epoch{position.weights_epoch}_partial.pth").unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Progress: the bar, the loss log, the plot and the closing line (rank 0)
# ---------------------------------------------------------------------------------------------
class LossLog:
    """One CSV row per logged step. A resumed run keeps the rows up to its checkpoint's step and drops
    those written after it (the steps it is about to redo), so no step is logged twice."""

    def __init__(self, path, keep_through_step=None):
        rows = []
        if keep_through_step is not None and path.exists():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= keep_through_step]
        with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=LOG_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        # Rows are appended (flushed one by one) to the file atomic_output has just made, so a crash keeps
        # every row logged before it.
        self.file = open(path, "a", newline="")  # noqa: SIM115 (open for the whole run, closed by close())
        self.writer = csv.DictWriter(self.file, fieldnames=LOG_COLUMNS, extrasaction="ignore")

    def write(self, **row):
        try:
            self.writer.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})
            self.file.flush()
        except OSError as e:  # a full disk: one line naming the log, as for the checkpoints
            raise UserError(f"cannot write {self.file.name}: {e.strerror or e}") from None

    def close(self):
        self.file.close()


def write_loss_plot(log_path, plot_path):
    """Each weighted loss term and the total over the steps, from the log, as a PNG (written atomically)."""
    from matplotlib.figure import Figure  # here: only the plot needs it (no pyplot, no global backend)

    with open(log_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    fig = Figure(figsize=(8, 4.5))
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.11, top=0.93)
    ax = fig.add_subplot()
    steps = [int(r["step"]) for r in rows]
    for name in ("total", "tv", "spa", "color", "exp", "seg"):
        values = [float(r[name]) if r[name] else float("nan") for r in rows]
        if any(v > 0 for v in values):
            ax.plot(
                steps, values, label=name, linewidth=2 if name == "total" else 1, marker="." if len(rows) < 50 else None
            )
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("weighted loss")
    ax.set_title(f"SGZ training losses, {plot_path.parent}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    with atomic_output(plot_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


class RunLog:
    """What the console says about the run, also appended to its folder's train.log with the time (rank 0):
    the run folder, resumes and their overrides, skipped files and steps, the closing line."""

    def __init__(self):
        self.file = None

    def open(self, folder):
        if is_main_process():
            self.file = open(folder / TEXT_LOG, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())

    def say(self, message):
        if is_main_process():
            tqdm.write(message, file=sys.stderr)
            self.record(message)

    def record(self, message):
        """Into train.log alone (for what the console prints elsewhere, e.g. run_script's error line)."""
        if self.file is not None:
            self.file.write(f"{datetime.now():%Y-%m-%d %H:%M:%S} {message}\n")
            self.file.flush()

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None


class Progress:
    """A bar over the whole run (loss shown from the first step), a log row every `display_iter` steps,
    at each epoch's end and at the last step, the plot refreshed at each epoch's end and at the last step."""

    def __init__(self, folder, position, total_steps, steps_per_epoch, args, images_per_step, resuming):
        self.folder, self.args, self.images_per_step = folder, args, images_per_step
        self.steps_per_epoch = steps_per_epoch
        self.active = is_main_process()
        self.bar = tqdm(
            total=total_steps,
            initial=position.step,
            disable=not self.active,
            unit="step",
            desc=self.description(position),
            dynamic_ncols=True,
            file=sys.stderr,
        )
        self.log = LossLog(folder / LOG, position.step if resuming else None) if self.active else None
        self.last_row_time, self.last_row_step = time.perf_counter(), position.step
        self.start_time, self.start_step = time.perf_counter(), position.step
        self.last_loss = None

    def description(self, position):
        return f"epoch {min(position.epoch + 1, self.args.num_epochs)}/{self.args.num_epochs}"

    def step(self, position, result, saved, stopping):
        if result is not None:
            terms, grad_norm = result
            values = {k: float(v) for k, v in terms.items()}
            self.last_loss = values["total"]
            self.bar.set_postfix(loss=f"{self.last_loss:.4f}", refresh=False)
            epoch_end = position.batch_in_epoch == 0
            if self.active and (position.step % self.args.display_iter == 0 or epoch_end or stopping):
                now = time.perf_counter()
                speed = (position.step - self.last_row_step) * self.images_per_step / (now - self.last_row_time)
                self.last_row_time, self.last_row_step = now, position.step
                self.log.write(
                    epoch=position.weights_epoch,
                    step=position.step,
                    grad_norm=float(grad_norm),
                    images_per_s=round(speed, 3),
                    **values,
                )
        self.bar.set_description(self.description(position), refresh=False)
        self.bar.update(1)
        if self.active and saved and (position.batch_in_epoch == 0 or stopping):
            write_loss_plot(self.folder / LOG, self.folder / PLOT)

    def close(self):
        self.bar.close()
        if self.log:
            self.log.close()

    def summary(self, position, interrupted=False):
        """The closing line: how far the run got, in how long, and where everything is."""
        took = timedelta(seconds=round(time.perf_counter() - self.start_time))
        loss = f"{self.last_loss:.5f}" if self.last_loss is not None else "n/a (no step run)"
        f, args = self.folder, self.args
        if position.step == self.start_step and not interrupted:
            return (
                f"nothing to do: the run in {f} has reached its --num_epochs {args.num_epochs}"
                f"{f' or --max_steps {args.max_steps}' if args.max_steps else ''} (step {position.step}); "
                f"resume with a larger one to continue"
            )
        where = position.where(args.num_epochs, self.steps_per_epoch)
        head = (
            f"interrupted at step {position.step} ({where})" if interrupted else f"done: {where}, step {position.step}"
        )
        tail = f"; continue with --resume {f / LAST}" if interrupted else ""
        return (
            f"{head} ({position.step - self.start_step} in this session, {took}), final loss {loss}; run folder {f}: "
            f"weights {f / position.weights_name}, resumable state {f / LAST}, losses {f / LOG} and {f / PLOT}{tail}"
        )


class SkippedSteps:
    """Counts skipped (non-finite) steps in a row, across epochs; too many stop the run."""

    def __init__(self, say, folder):
        self.say, self.folder, self.in_a_row = say, folder, 0

    def record(self, skipped, step):
        self.in_a_row = self.in_a_row + 1 if skipped else 0
        if skipped:
            self.say(f"warning: non-finite loss or gradient at step {step}; step skipped")
        if self.in_a_row >= MAX_BAD_STEPS_IN_A_ROW:
            raise UserError(
                f"{self.in_a_row} non-finite steps in a row at step {step}: lower --lr or check the "
                f"input images; the last good state is in {self.folder / LAST}"
            )


class StopOnSignal:
    """While active, Ctrl-C (SIGINT) and SIGTERM only set `received`: the loop finishes the step in hand,
    saves and stops, so `--resume` loses nothing and no half-done step is saved. A second signal acts at
    once, as it would without this (Ctrl-C raises KeyboardInterrupt, SIGTERM ends the process)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received, self.previous = None, {}

    def handle(self, signum, frame):
        self.received = signal.Signals(signum).name
        release_pause_points()
        self.restore()

    def restore(self):
        for s, handler in self.previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # only there can Python handle signals
            self.previous = {s: signal.signal(s, self.handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        self.restore()
