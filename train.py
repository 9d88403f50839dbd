"""Train SGZ: zero-reference, semantic-guided low-light enhancement.

    python train.py                                   # the paper's recipe on data/train_data -> runs/DATE-TIME/
    python train.py --resume runs/DATE-TIME/last.pth  # continue that run exactly, with its own settings
    torchrun --nproc_per_node 4 train.py --amp        # 4 GPUs, DistributedDataParallel

The shape of torchvision's reference scripts: a `Trainer` builds the data, the model (`model_without_ddp`,
and `model`, the same network wrapped in DistributedDataParallel under torchrun), the loss and the optimizer;
`train()` calls `train_one_epoch(...)` per epoch, and `next_action` is the one place that decides when to
save and when to stop.

A run lives in one folder (rank 0 writes, each file atomically): `EpochN.pth` is the network's bare
state_dict (the format the paper's code and ours exchange); `last.pth` holds everything `--resume` needs
(model, optimizer, loss scaler, position, args, RNG states); `loss_log.csv` and `loss_plot.png` the losses.
"""

import argparse
import contextlib
import csv
import hashlib
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from filelock import FileLock, Timeout
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from dataloader import LowLightDataset
from loss import SGZLoss
from model import EnhanceNet, SegmentationNet, get_device, load_enhance_net
from option import get_train_parser
from runtime import (
    EXIT_INTERRUPTED,
    UserError,
    atomic_output,
    available_cpus,
    check_output_folder,
    check_output_path,
    run_script,
    save_torch,
)

MAX_BAD_STEPS_IN_A_ROW = 5
LOG_COLUMNS = ["epoch", "step", "total", "tv", "spa", "color", "exp", "seg", "grad_norm", "images_per_s"]
LAST, LOG, PLOT, LOCK = "last.pth", "loss_log.csv", "loss_plot.png", ".train.lock"
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
        """N of the EpochN.pth the weights go to: the epoch in progress, or the one just completed."""
        return self.epoch - 1 if self.batch_in_epoch == 0 else self.epoch


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


def holds_a_run(folder):
    return (folder / LAST).exists() or (folder / LOG).exists() or any(folder.glob("Epoch*.pth"))


def check_run_folder(folder):
    """The run folder is a folder (or nothing yet) and its files (checkpoints, log, plot) are regular files
    or nothing: refused with one line before anything is created or loaded."""
    check_output_folder(folder)
    for name in (LAST, LOG, PLOT):
        check_output_path(folder / name)


def missing_folders(folder):
    """The folders that creating `folder` would make: itself and its missing parents, innermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


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
    if not continuing and holds_a_run(folder):
        if not overwrite:
            lock.release()
            raise UserError(
                f"{folder} already holds a training run; continue it with --resume {folder / LAST}, choose "
                "another --snapshots_folder, or pass --overwrite to delete its checkpoints and log"
            )
        for old in [folder / LAST, folder / LOG, folder / PLOT, *folder.glob("Epoch*.pth")]:
            old.unlink(missing_ok=True)
    return lock


def dataset_fingerprint(dataset):
    """The images a run trains on, by their names under the folder: a resumed run must see the same ones."""
    names = "\n".join(str(p.relative_to(dataset.root)) for p in dataset.paths)
    return hashlib.sha256(names.encode()).hexdigest()[:16]


def save_checkpoint(folder, model_without_ddp, optimizer, scaler, position, args, world_size, fingerprint):
    """last.pth with the whole state, and the network alone as EpochN.pth (rank 0 only)."""
    if not is_main_process():
        return
    weights = {
        k: v.contiguous() for k, v in model_without_ddp.state_dict().items()
    }  # the exchange format: plain layout
    saved_args = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in NOT_RESTORED}
    full = {
        "model": weights,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        **asdict(position),
        "args": saved_args,
        "world_size": world_size,
        "dataset": fingerprint,
        "rng": rng_state(),
    }
    save_torch(full, folder / LAST)
    save_torch(weights, folder / f"Epoch{position.weights_epoch}.pth")


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


class Progress:
    """A bar over the whole run (loss shown from the first step), a log row every `display_iter` steps,
    at each epoch's end and at the last step, the plot refreshed at each epoch's end and at the last step."""

    def __init__(self, folder, position, total_steps, args, images_per_step, resuming):
        self.folder, self.args, self.images_per_step = folder, args, images_per_step
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

    def warn(self, message):
        if self.active:
            self.bar.write(message, file=sys.stderr)

    def close(self):
        self.bar.close()
        if self.log:
            self.log.close()

    def summary(self, position):
        """The closing line: how far the run got, in how long, and where everything is."""
        took = timedelta(seconds=round(time.perf_counter() - self.start_time))
        loss = f"{self.last_loss:.5f}" if self.last_loss is not None else "n/a (no step run)"
        f = self.folder
        if position.step == self.start_step:
            return (
                f"nothing to do: the run in {f} has reached its --num_epochs {self.args.num_epochs}"
                f"{f' or --max_steps {self.args.max_steps}' if self.args.max_steps else ''} (step {position.step}); "
                f"resume with a larger one to continue"
            )
        weights = f / f"Epoch{max(position.weights_epoch, 0)}.pth"
        return (
            f"done: {position.epoch} of {self.args.num_epochs} epochs complete, step {position.step} "
            f"({position.step - self.start_step} in this session, {took}), final loss {loss}; run folder {f}: "
            f"weights {weights}, resumable state {f / LAST}, losses {f / LOG} and {f / PLOT}"
        )


# ---------------------------------------------------------------------------------------------
# The epoch loop
# ---------------------------------------------------------------------------------------------
def train_step(model, criterion, optimizer, scaler, images, device, amp, grad_clip_norm):
    """One optimisation step; returns (loss terms, grad norm), or None when the step was skipped
    because its loss or gradient is not finite (on every rank together)."""
    with autocast_context(device, amp):
        enhanced, curve_map = model(images)
        total, terms = criterion(images, enhanced, curve_map)
    if not all_ranks_agree(bool(torch.isfinite(total)), device):
        return None
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
    if not all_ranks_agree(bool(torch.isfinite(grad_norm)), device):
        optimizer.zero_grad(set_to_none=True)
        scaler.update()  # lets fp16 loss scaling back off
        return None
    scaler.step(optimizer)
    scaler.update()
    terms = {k: v.detach() for k, v in terms.items()}
    terms["total"] = total.detach()
    return terms, grad_norm


def next_action(position, args):
    """(save, stop) after a step: the one place that decides both. The run stops after its last epoch
    or at --max_steps, saving first; it saves every --snapshot_iter steps and at each epoch's end."""
    stop = position.epoch >= args.num_epochs or (args.max_steps > 0 and position.step >= args.max_steps)
    save = stop or position.batch_in_epoch == 0 or position.step % args.snapshot_iter == 0
    return save, stop


class SkippedSteps:
    """Counts skipped (non-finite) steps in a row, across epochs; too many stop the run."""

    def __init__(self, progress, folder):
        self.progress, self.folder, self.in_a_row = progress, folder, 0

    def record(self, skipped, step):
        self.in_a_row = self.in_a_row + 1 if skipped else 0
        if skipped:
            self.progress.warn(f"warning: non-finite loss or gradient at step {step}; step skipped")
        if self.in_a_row >= MAX_BAD_STEPS_IN_A_ROW:
            raise UserError(
                f"{self.in_a_row} non-finite steps in a row at step {step}: lower --lr or check the "
                f"input images; the last good state is in {self.folder / LAST}"
            )


def train_one_epoch(
    model,
    criterion,
    optimizer,
    scaler,
    data_loader,
    device,
    position,
    steps_per_epoch,
    args,
    progress,
    skipped_steps,
    save,
):
    """The rest of the current epoch from `position` (advanced in place); `save()` writes the
    checkpoints. Returns True when the run must stop."""
    model.train()
    for images in data_loader:
        images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
        result = train_step(model, criterion, optimizer, scaler, images, device, args.amp, args.grad_clip_norm)
        position.advance(steps_per_epoch)
        skipped_steps.record(result is None, position.step)
        do_save, stop = next_action(position, args)
        if do_save:
            save()
        progress.step(position, result, do_save, stop)
        if stop:
            return True
    return False


# ---------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------
class Trainer:
    """Builds a run from its args (a resumed run from its checkpoint's args, overridden by the flags
    given) and holds its folder's lock until `close()`; use it as a context manager."""

    def __init__(self, args):
        self.lock, self.made_folders = None, []
        self.rank, self.world_size, self.device = setup_distributed(args.device)
        try:
            self.build(args)
        except BaseException:
            self.close()
            self.remove_made_folders()
            raise

    def build(self, args):
        ckpt = load_run_checkpoint(args.resume) if args.resume else None
        if ckpt:
            args, overrides = resumed_args(args, ckpt)
            if ckpt.get("world_size", 1) != self.world_size:
                raise UserError(
                    f"{args.resume} was trained by {ckpt.get('world_size', 1)} processes, not "
                    f"{self.world_size}: the position inside an epoch depends on it"
                )
        self.args = args
        self.folder = Path(args.snapshots_folder or from_main_process(default_run_folder()))
        args.snapshots_folder = str(self.folder)
        if is_main_process():
            self.made_folders = missing_folders(self.folder)
            self.lock = claim_run_folder(self.folder, args.resume, args.overwrite)
            if ckpt:
                self.log(
                    f"resuming {args.resume} at epoch {ckpt['epoch']}, step {ckpt['step']}, into {self.folder}"
                    + (f"; overriding the saved settings: {overrides}" if overrides else "")
                )
            else:
                self.log(f"run folder: {self.folder}")
        torch.manual_seed(args.seed)

        self.dataset = self.build_dataset()
        self.fingerprint = dataset_fingerprint(self.dataset)
        if ckpt and ckpt.get("dataset", self.fingerprint) != self.fingerprint:
            raise UserError(
                f"the images under {args.lowlight_images_path} ({len(self.dataset)}) are not those the run "
                f"{args.resume} trained on: the position inside an epoch would point at other images"
            )
        self.sampler = ResumableSampler(
            self.dataset,
            args.train_batch_size,
            num_replicas=self.world_size,
            rank=self.rank,
            seed=args.seed,
            drop_last=True,
        )
        num_workers = self.num_workers()
        self.data_loader = DataLoader(
            self.dataset,
            batch_size=args.train_batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            persistent_workers=num_workers > 0,
        )
        self.steps_per_epoch = len(self.dataset) // self.world_size // args.train_batch_size
        if self.steps_per_epoch == 0:
            raise UserError(
                f"{len(self.dataset)} images in {args.lowlight_images_path} are fewer than one batch of "
                f"{args.train_batch_size} per process; lower --train_batch_size"
            )

        # channels-last makes the depthwise-separable convs 2.5x faster on CPU (benchmarks/bench_train.py)
        self.model_without_ddp = self.build_network(ckpt).to(self.device, memory_format=torch.channels_last)
        self.model = self.model_without_ddp
        if self.world_size > 1:
            self.model = DistributedDataParallel(
                self.model_without_ddp, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.criterion = self.build_criterion()
        self.optimizer = torch.optim.Adam(
            self.model_without_ddp.parameters(), lr=args.lr, weight_decay=args.weight_decay
        )
        use_scaler = args.amp and self.device.type == "cuda" and autocast_dtype(self.device) == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.position = Position()
        if ckpt:
            self.restore(ckpt)

    def remove_made_folders(self):
        """A run that fails while it is built (no images, bad weights) leaves no run folder holding only its
        lock: the folders it made are removed again, if they hold nothing else."""
        for folder in self.made_folders:  # the run folder first, then the parents it needed
            with contextlib.suppress(OSError):
                (folder / LOCK).unlink(missing_ok=True)
                folder.rmdir()

    def log(self, message):
        if is_main_process():
            tqdm.write(message, file=sys.stderr)

    def num_workers(self):
        """--num_workers, or what fits the machine; never more than its cores (PyTorch warns above that)."""
        cpus = available_cpus()
        if self.args.num_workers == "auto":
            return max(0, min(4, cpus - 1))
        if self.args.num_workers > cpus:
            self.log(f"--num_workers {self.args.num_workers} lowered to {cpus}, the CPU cores this process may use")
        return min(self.args.num_workers, cpus)

    def build_dataset(self):
        root = Path(self.args.lowlight_images_path)
        if not root.exists():
            raise UserError(f"training images not found: {root} does not exist (set --lowlight_images_path)")
        dataset = LowLightDataset(root, self.args.image_size)
        if dataset.skipped:
            self.log(f"skipped {len(dataset.skipped)} unreadable file(s) under {root}, e.g. {dataset.skipped[0]}")
        if len(dataset) == 0:
            raise UserError(f"no training images found under {root} (looked for jpg, png, bmp, tif, webp)")
        self.log(
            f"{len(dataset)} training images from {root}, resized to {self.args.image_size}x{self.args.image_size}"
        )
        return dataset

    def build_network(self, ckpt):
        args = self.args
        if args.load_pretrain and not ckpt:
            net = load_enhance_net(args.pretrain_dir, scale_factor=args.scale_factor)
            if net.conv_type != args.conv_type:
                raise UserError(
                    f"{args.pretrain_dir} holds a '{net.conv_type}' network but --conv_type is '{args.conv_type}'"
                )
            self.log(f"starting from {args.pretrain_dir}")
            return net
        return EnhanceNet(scale_factor=args.scale_factor, conv_type=args.conv_type)

    def build_criterion(self):
        args = self.args
        seg_net = None
        if args.seg_weight > 0:
            seg_net = SegmentationNet(args.num_of_SegClass, backbone=args.seg_backbone, batch_norm=args.seg_bn)
            seg_net = seg_net.to(self.device, memory_format=torch.channels_last)
            self.log(
                f"segmentation net: {seg_net.backbone_source}, BatchNorm with "
                + ("batch statistics (the official objective)" if args.seg_bn == "batch" else "frozen statistics")
            )
        return SGZLoss(
            seg_net,
            tv_weight=args.tv_weight,
            spa_weight=args.spa_weight,
            color_weight=args.color_weight,
            exp_weight=args.exp_weight,
            seg_weight=args.seg_weight,
            patch_size=args.patch_size,
            exp_level=args.exp_level,
        ).to(self.device)

    def restore(self, ckpt):
        try:
            self.model_without_ddp.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (KeyError, TypeError, RuntimeError, ValueError) as e:
            raise UserError(
                f"--resume {self.args.resume} does not fit this network "
                f"(--conv_type {self.args.conv_type}): {str(e).splitlines()[0][:200]}"
            ) from None
        for group in self.optimizer.param_groups:  # the settings (saved, or given now) decide from here on
            group["lr"], group["weight_decay"] = self.args.lr, self.args.weight_decay
        if ckpt["scaler"] and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
        self.position = Position(ckpt["epoch"], ckpt["step"], ckpt["batch_in_epoch"])
        set_rng_state(ckpt["rng"])

    def save(self):
        save_checkpoint(
            self.folder,
            self.model_without_ddp,
            self.optimizer,
            self.scaler,
            self.position,
            self.args,
            self.world_size,
            self.fingerprint,
        )

    def planned_steps(self):
        steps = self.args.num_epochs * self.steps_per_epoch
        return min(steps, self.args.max_steps) if self.args.max_steps > 0 else steps

    def train(self):
        """Epochs until the last one or --max_steps, then the closing line (rank 0)."""
        args, position = self.args, self.position
        progress = Progress(
            self.folder,
            position,
            self.planned_steps(),
            args,
            args.train_batch_size * self.world_size,
            resuming=bool(args.resume),
        )
        skipped_steps = SkippedSteps(progress, self.folder)
        try:
            stop = next_action(position, args)[1]  # a resumed run may have nothing left to do
            while not stop:
                self.sampler.set_position(position.epoch, position.batch_in_epoch)
                stop = train_one_epoch(
                    self.model,
                    self.criterion,
                    self.optimizer,
                    self.scaler,
                    self.data_loader,
                    self.device,
                    position,
                    self.steps_per_epoch,
                    args,
                    progress,
                    skipped_steps,
                    self.save,
                )
        finally:
            progress.close()
        if dist.is_initialized():
            dist.barrier()
        if is_main_process():
            print(progress.summary(position), file=sys.stderr)

    def close(self):
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if dist.is_initialized():
            dist.destroy_process_group()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def main(args):
    folder = args.snapshots_folder
    if folder:
        check_run_folder(Path(folder))
    try:
        with Trainer(args) as trainer:
            folder = trainer.folder
            trainer.train()
    except KeyboardInterrupt:
        where = f"; continue with --resume {Path(folder) / LAST}" if folder and (Path(folder) / LAST).exists() else ""
        print(f"interrupted{where}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main, get_train_parser()))
