"""Train SGZ: zero-reference, semantic-guided low-light enhancement.

    python train.py                                   # the paper's recipe on data/train_data -> weight/
    python train.py --resume weight/last.pth          # continue an interrupted run exactly
    torchrun --nproc_per_node 4 train.py --amp        # 4 GPUs, DistributedDataParallel

Checkpoints (rank 0 only, written atomically): `EpochN.pth` is the network's bare state_dict (the
format the paper's code and ours exchange); `last.pth` holds everything `--resume` needs (model,
optimizer, loss scaler, epoch, step, args, RNG states). Losses are logged to `loss_log.csv`.
"""
import csv
import os
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from dataloader import LowLightDataset
from image_io import atomic_output
from loss import SGZLoss
from model import EnhanceNet, SegmentationNet, get_device, load_enhance_net
from option import EXIT_INTERRUPTED, UserError, get_train_parser, run_script

MAX_BAD_STEPS_IN_A_ROW = 5
LOG_COLUMNS = ["epoch", "step", "total", "tv", "spa", "color", "exp", "seg", "grad_norm", "images_per_s"]


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
    state = {"torch": torch.get_rng_state(), "numpy": [name, keys.tolist(), pos, has_gauss, cached],
             "python": random.getstate()}
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
        return iter(indices[self.start_batch * self.batch_size:])

    def __len__(self):
        return max(0, super().__len__() - self.start_batch * self.batch_size)


# ---------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, args):
        self.args = args
        self.rank, self.world_size, self.device = setup_distributed(args.device)
        torch.manual_seed(args.seed)
        self.out_dir = Path(args.snapshots_folder)
        self.amp = args.amp
        self.dataset = self.build_dataset()
        self.sampler = ResumableSampler(self.dataset, args.train_batch_size, num_replicas=self.world_size,
                                        rank=self.rank, seed=args.seed, drop_last=True)
        self.loader = DataLoader(self.dataset, batch_size=args.train_batch_size, sampler=self.sampler,
                                 num_workers=args.num_workers, pin_memory=self.device.type == "cuda",
                                 drop_last=True, persistent_workers=False)
        self.steps_per_epoch = len(self.dataset) // self.world_size // args.train_batch_size
        if self.steps_per_epoch == 0:
            raise UserError(f"{len(self.dataset)} images in {args.lowlight_images_path} are fewer than one batch of "
                                f"{args.train_batch_size} per process; lower --train_batch_size")

        # channels-last makes the depthwise-separable convs 2.5x faster on CPU (benchmarks/bench_train.py)
        self.net = self.build_network().to(self.device, memory_format=torch.channels_last)
        self.model = self.net
        if self.world_size > 1:
            self.model = DistributedDataParallel(self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        seg_net = None
        if args.seg_weight > 0:
            seg_net = SegmentationNet(args.num_of_SegClass, backbone=args.seg_backbone).to(self.device)
            seg_net = seg_net.to(memory_format=torch.channels_last)
            self.log(f"segmentation backbone: {seg_net.backbone_source}")
        self.criterion = SGZLoss(seg_net, tv_weight=args.tv_weight, spa_weight=args.spa_weight,
                                 color_weight=args.color_weight, exp_weight=args.exp_weight, seg_weight=args.seg_weight,
                                 patch_size=args.patch_size, exp_level=args.exp_level).to(self.device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        use_scaler = self.amp and self.device.type == "cuda" and autocast_dtype(self.device) == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.epoch, self.step, self.batch_in_epoch = 0, 0, 0
        if args.resume:
            self.load_checkpoint(args.resume)

    def log(self, message):
        if is_main_process():
            tqdm.write(message, file=sys.stderr)

    def build_dataset(self):
        root = Path(self.args.lowlight_images_path)
        if not root.exists():
            raise UserError(f"training images not found: {root} does not exist (set --lowlight_images_path)")
        dataset = LowLightDataset(root, self.args.image_size)
        if dataset.skipped:
            self.log(f"skipped {len(dataset.skipped)} unreadable file(s) under {root}, e.g. {dataset.skipped[0]}")
        if len(dataset) == 0:
            raise UserError(f"no training images found under {root} (looked for jpg, png, bmp, tif, webp)")
        self.log(f"{len(dataset)} training images from {root}, resized to {self.args.image_size}x{self.args.image_size}")
        return dataset

    def build_network(self):
        args = self.args
        if args.load_pretrain and not args.resume:
            net = load_enhance_net(args.pretrain_dir, scale_factor=args.scale_factor)
            if net.conv_type != args.conv_type:
                raise UserError(f"{args.pretrain_dir} holds a '{net.conv_type}' network but --conv_type is '{args.conv_type}'")
            self.log(f"starting from {args.pretrain_dir}")
            return net
        return EnhanceNet(scale_factor=args.scale_factor, conv_type=args.conv_type)

    # --- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self, weights_epoch):
        """last.pth with the whole state, and the network alone as Epoch{weights_epoch}.pth."""
        if not is_main_process():
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        weights = {k: v.contiguous() for k, v in self.net.state_dict().items()}  # the exchange format: plain layout
        full = {"model": weights, "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "epoch": self.epoch, "step": self.step,
                "batch_in_epoch": self.batch_in_epoch, "args": {k: str(v) if isinstance(v, Path) else v
                                                                for k, v in vars(self.args).items()},
                "rng": rng_state()}
        with atomic_output(self.out_dir / "last.pth") as tmp:
            torch.save(full, tmp)
        with atomic_output(self.out_dir / f"Epoch{weights_epoch}.pth") as tmp:
            torch.save(weights, tmp)

    def load_checkpoint(self, path):
        path = Path(path)
        if not path.is_file():
            raise UserError(f"--resume checkpoint not found: {path}")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            self.net.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (KeyError, TypeError, RuntimeError, ValueError) as e:
            raise UserError(f"{path} is not a full training checkpoint of this network "
                                  f"(use --load_pretrain --pretrain_dir for bare weights): {str(e).splitlines()[0][:200]}") from None
        for group in self.optimizer.param_groups:  # the command line decides the learning rate from here on
            group["lr"] = self.args.lr
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step, self.batch_in_epoch = ckpt["epoch"], ckpt["step"], ckpt["batch_in_epoch"]
        set_rng_state(ckpt["rng"])
        self.log(f"resumed from {path}: epoch {self.epoch}, step {self.step}")

    # --- training ----------------------------------------------------------------------------
    def train_step(self, images):
        """One optimisation step; returns (loss terms, grad norm) or None when the step was skipped."""
        with autocast_context(self.device, self.amp):
            enhanced, curve_map = self.model(images)
            total, terms = self.criterion(images, enhanced, curve_map)
        if not all_ranks_agree(bool(torch.isfinite(total)), self.device):
            return None
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.args.grad_clip_norm)
        if not all_ranks_agree(bool(torch.isfinite(grad_norm)), self.device):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()  # lets fp16 loss scaling back off
            return None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        terms = {k: v.detach() for k, v in terms.items()}
        terms["total"] = total.detach()
        return terms, grad_norm

    def reached_max_steps(self):
        return bool(self.args.max_steps) and self.step >= self.args.max_steps

    def train(self):
        args = self.args
        self.net.train()
        bad_in_a_row = 0
        logger = LossLogger(self.out_dir / "loss_log.csv") if is_main_process() else None
        last_time, last_step = time.perf_counter(), self.step
        while self.epoch < args.num_epochs:
            self.sampler.set_position(self.epoch, self.batch_in_epoch)
            bar = tqdm(self.loader, total=self.steps_per_epoch, initial=self.batch_in_epoch, disable=not is_main_process(),
                       desc=f"epoch {self.epoch + 1}/{args.num_epochs}", unit="step", dynamic_ncols=True)
            for images in bar:
                result = self.train_step(images.to(self.device, non_blocking=True, memory_format=torch.channels_last))
                self.batch_in_epoch += 1
                self.step += 1
                if result is None:
                    bad_in_a_row += 1
                    self.log(f"warning: non-finite loss or gradient at step {self.step}; step skipped")
                    if bad_in_a_row >= MAX_BAD_STEPS_IN_A_ROW:
                        raise UserError(f"{bad_in_a_row} non-finite steps in a row at step {self.step}: "
                                            "lower --lr or check the input images; last good weights are in "
                                            f"{self.out_dir / 'last.pth'}")
                else:
                    bad_in_a_row = 0
                    terms, grad_norm = result
                    if self.step % args.display_iter == 0:
                        now = time.perf_counter()
                        speed = (self.step - last_step) * args.train_batch_size * self.world_size / (now - last_time)
                        last_time, last_step = now, self.step
                        values = {k: float(v) for k, v in terms.items()}
                        bar.set_postfix(loss=f"{values['total']:.4f}", img_s=f"{speed:.1f}")
                        if logger:
                            logger.write(epoch=self.epoch, step=self.step, grad_norm=float(grad_norm),
                                         images_per_s=round(speed, 3), **values)
                if self.batch_in_epoch == self.steps_per_epoch:
                    continue  # the loader ends here; the epoch's end is saved below
                if self.step % args.snapshot_iter == 0:
                    self.save_checkpoint(weights_epoch=self.epoch)
                if self.reached_max_steps():
                    self.save_checkpoint(weights_epoch=self.epoch)
                    return
            self.epoch += 1
            self.batch_in_epoch = 0
            self.save_checkpoint(weights_epoch=self.epoch - 1)
            if self.reached_max_steps():
                return
        if dist.is_initialized():
            dist.barrier()


class LossLogger:
    """Appends one CSV row per logged step (appending keeps a resumed run's history in one file)."""

    def __init__(self, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        self.file = open(path, "a", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=LOG_COLUMNS, extrasaction="ignore")
        if new:
            self.writer.writeheader()

    def write(self, **row):
        self.writer.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})
        self.file.flush()


def main(args):
    try:
        Trainer(args).train()
    except KeyboardInterrupt:
        print("interrupted; continue with --resume " + str(Path(args.snapshots_folder) / "last.pth"), file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main, get_train_parser()))
