"""Train SGZ: zero-reference, semantic-guided low-light enhancement.

    python train.py                                   # the paper's recipe on data/train_data -> runs/DATE-TIME/
    python train.py --resume runs/DATE-TIME/last.pth  # continue that run exactly, with its own settings
    torchrun --nproc_per_node 4 train.py --amp        # 4 GPUs, DistributedDataParallel

The recipe, read top to bottom: the step (`train_step`), when to save and stop (`next_action`), and the
`Trainer`, in the shape of torchvision's reference scripts: it builds the data, the model
(`model_without_ddp`, and `model`, the same network wrapped in DistributedDataParallel under torchrun), the
loss and the optimizer; `train()` runs `train_one_epoch()` per epoch. The run machinery (processes, exact
resume, the run folder, the console) is in train_utils.py.

A run lives in one folder (rank 0 writes, each file atomically): `EpochN.pth`, the network's bare state_dict
(the format the paper's code and ours exchange) once epoch N is complete, `EpochN_partial.pth` while it is
not (a run stopped or interrupted mid-epoch); `last.pth`, everything `--resume` needs (model, optimizer,
loss scaler, position, args, RNG states); `args.json`, the run's settings as text; `train.log`, what the
console said; `loss_log.csv` and `loss_plot.png`, the losses. Ctrl-C or SIGTERM stops at the end of the step
in hand and saves, so `--resume` loses nothing; a second one stops at once.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from dataloader import LowLightDataset
from loss import SGZLoss
from model import EnhanceNet, SegmentationNet, load_enhance_net
from option import get_train_parser
from runtime import EXIT_INTERRUPTED, UserError, available_cpus, pause_point, run_script
from train_utils import (
    LAST,
    Position,
    Progress,
    ResumableSampler,
    RunLog,
    SkippedSteps,
    StopOnSignal,
    all_ranks_agree,
    any_rank,
    autocast_context,
    check_run_folder,
    claim_run_folder,
    dataset_fingerprint,
    default_run_folder,
    from_main_process,
    grad_scaler,
    ignore_interrupts,
    is_main_process,
    load_run_checkpoint,
    missing_folders,
    remove_folders,
    resumed_args,
    save_checkpoint,
    set_rng_state,
    setup_distributed,
    write_settings,
)


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


# ---------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------
class Trainer:
    """Builds a run from its args (a resumed run from its checkpoint's args, overridden by the flags
    given) and holds its folder's lock until `close()`; use it as a context manager."""

    def __init__(self, args):
        self.lock, self.run_log, self.made_folders = None, RunLog(), []
        self.rank, self.world_size, self.device = setup_distributed(args.device)
        try:
            self.build(args)
        except BaseException as e:
            if isinstance(e, UserError):
                self.run_log.record(f"error: {e}")
            self.close()
            remove_folders(self.made_folders)
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
            self.run_log.open(self.folder)
            if ckpt:
                self.say(
                    f"resuming {args.resume} at epoch {ckpt['epoch']}, step {ckpt['step']}, into {self.folder}"
                    + (f"; overriding the saved settings: {overrides}" if overrides else "")
                )
            else:
                self.say(f"run folder: {self.folder}")
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
            worker_init_fn=ignore_interrupts,
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
        self.scaler = grad_scaler(self.device, args.amp)
        self.position = Position()
        if ckpt:
            self.restore(ckpt)
        write_settings(self.folder, args)  # once the run is built: a resume refused leaves them as they were

    def say(self, message):
        """To the console and train.log (rank 0)."""
        self.run_log.say(message)

    def num_workers(self):
        """--num_workers, or what fits the machine; never more than its cores (PyTorch warns above that)."""
        cpus = available_cpus()
        if self.args.num_workers == "auto":
            return max(0, min(4, cpus - 1))
        if self.args.num_workers > cpus:
            self.say(f"--num_workers {self.args.num_workers} lowered to {cpus}, the CPU cores this process may use")
        return min(self.args.num_workers, cpus)

    def build_dataset(self):
        root = Path(self.args.lowlight_images_path)
        if not root.exists():
            raise UserError(f"training images not found: {root} does not exist (set --lowlight_images_path)")
        dataset = LowLightDataset(root, self.args.image_size)
        if dataset.skipped:
            self.say(f"skipped {len(dataset.skipped)} unreadable file(s) under {root}, e.g. {dataset.skipped[0]}")
        if len(dataset) == 0:
            raise UserError(f"no training images found under {root} (looked for jpg, png, bmp, tif, webp)")
        self.say(
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
            self.say(f"starting from {args.pretrain_dir}")
            return net
        return EnhanceNet(scale_factor=args.scale_factor, conv_type=args.conv_type)

    def build_criterion(self):
        args = self.args
        seg_net = None
        if args.seg_weight > 0:
            seg_net = SegmentationNet(args.num_of_SegClass, backbone=args.seg_backbone, batch_norm=args.seg_bn)
            seg_net = seg_net.to(self.device, memory_format=torch.channels_last)
            self.say(
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
        """Epochs until the last one or --max_steps, then the closing line (rank 0). Ctrl-C or SIGTERM
        ends the step in hand, saves and stops. Returns the exit status."""
        args, position = self.args, self.position
        images_per_step = args.train_batch_size * self.world_size
        progress = Progress(
            self.folder, position, self.planned_steps(), self.steps_per_epoch, args, images_per_step, bool(args.resume)
        )
        skipped_steps = SkippedSteps(self.say, self.folder)
        ended = "done" if next_action(position, args)[1] else None  # a resumed run may have nothing left to do
        try:
            with StopOnSignal() as signals:
                while ended is None:
                    ended = self.train_one_epoch(progress, skipped_steps, signals)
        except UserError as e:
            self.run_log.record(f"error: {e}")
            raise
        finally:
            progress.close()
        if dist.is_initialized():
            dist.barrier()
        self.say(progress.summary(position, interrupted=ended == "interrupted"))
        return EXIT_INTERRUPTED if ended == "interrupted" else 0

    def train_one_epoch(self, progress, skipped_steps, signals):
        """The rest of the current epoch from `self.position` (advanced in place), saving as `next_action`
        says. Returns "done" when the run is over, "interrupted" after a signal, None at the epoch's end."""
        args, position = self.args, self.position
        self.model.train()
        self.sampler.set_position(position.epoch, position.batch_in_epoch)
        for images in self.data_loader:
            pause_point()
            images = images.to(self.device, non_blocking=True, memory_format=torch.channels_last)
            result = train_step(
                self.model,
                self.criterion,
                self.optimizer,
                self.scaler,
                images,
                self.device,
                args.amp,
                args.grad_clip_norm,
            )
            position.advance(self.steps_per_epoch)
            skipped_steps.record(result is None, position.step)
            interrupted = any_rank(signals.received is not None, self.device)
            save, stop = next_action(position, args)
            if save or interrupted:
                self.save()
            progress.step(position, result, save, stop or interrupted)
            if stop or interrupted:
                return "interrupted" if interrupted and not stop else "done"
        return None

    def close(self):
        self.run_log.close()
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
            return trainer.train()
    except KeyboardInterrupt:  # while the run was being built, or a second Ctrl-C
        where = f"; continue with --resume {Path(folder) / LAST}" if folder and (Path(folder) / LAST).exists() else ""
        print(f"interrupted{where}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(run_script(main, get_train_parser()))
