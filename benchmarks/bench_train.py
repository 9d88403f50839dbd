"""Training-step speed and memory: ours (fp32 and --amp) against the official code's cost profile.

    python benchmarks/bench_train.py [--size 512] [--batch 2] [--steps 3]

Each setting runs in its own process (so its peak RSS is its own) on the same random dark batch:
- official-like: fp32, NCHW, the segmentation net in train mode with gradients for its 28M
  parameters and running BatchNorm statistics updated, as the paper's train.py leaves it (its
  parameters are not in the optimizer, but autograd still computes their gradients);
- ours fp32: both nets channels-last, the segmentation net fixed (no parameter gradients, nothing
  updated) and normalising with batch statistics, the same objective (`--seg_bn batch`);
- ours --amp: the same under bfloat16 autocast (CPU) / fp16 or bf16 (CUDA).
Each runs without and with the semantic branch. Prints s/image, the ratio to official-like, the
loss value and peak memory.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = ["official-like", "ours fp32", "ours amp"]


def measure(setting, semantic, size, batch, steps, device):
    import numpy as np
    import torch
    from PIL import Image

    import train
    from option import get_train_parser

    with tempfile.TemporaryDirectory() as d:
        rng = np.random.default_rng(0)
        for i in range(batch):
            Image.fromarray((rng.random((size, size, 3)) * 70).astype(np.uint8)).save(f"{d}/{i}.png")
        args = get_train_parser().parse_args(
            [
                "--lowlight_images_path",
                d,
                "--snapshots_folder",
                f"{d}/out",
                "--image_size",
                str(size),
                "--train_batch_size",
                str(batch),
                "--num_workers",
                "0",
                "--device",
                device,
                "--seg_weight",
                "0.1" if semantic else "0",
                "--seg_backbone",
                "random",
                "--amp",
                str(setting == "ours amp"),
            ]
        )
        torch.manual_seed(0)
        with train.Trainer(args) as t:
            seg = t.criterion.seg_net
            layout = torch.contiguous_format if setting == "official-like" else torch.channels_last
            t.model_without_ddp.to(memory_format=layout)
            if setting == "official-like" and seg is not None:
                seg.requires_grad_(True)
                for m in seg.modules():
                    if isinstance(m, torch.nn.BatchNorm2d):
                        m.track_running_stats = True
                seg.to(memory_format=layout)
            images = next(iter(t.data_loader)).to(t.device, memory_format=layout)

            def step():
                return train.train_step(
                    t.model, t.criterion, t.optimizer, t.scaler, images, t.device, args.amp, args.grad_clip_norm
                )

            step()  # warm-up
            sync = torch.cuda.synchronize if t.device.type == "cuda" else (lambda: None)
            sync()
            start = time.perf_counter()
            for _ in range(steps):
                terms, _ = step()
            sync()
            seconds = (time.perf_counter() - start) / steps / batch
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if t.device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    return {"s_per_image": seconds, "loss": float(terms["total"]), "peak_mb": peak_mb}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--one", nargs=2, metavar=("SETTING", "SEMANTIC"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1] == "1", args.size, args.batch, args.steps, args.device)))
        return
    print(f"training step, {args.size}x{args.size}, batch {args.batch}, {args.steps} timed steps after a warm-up")
    print(f"{'semantic':<9} {'setting':<14} {'s/image':>8} {'vs official-like':>17} {'loss':>9} {'peak MB':>8}")
    for semantic in (False, True):
        base = None
        for setting in SETTINGS:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    setting,
                    "1" if semantic else "0",
                    "--size",
                    str(args.size),
                    "--batch",
                    str(args.batch),
                    "--steps",
                    str(args.steps),
                    "--device",
                    args.device,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            base = base or r["s_per_image"]
            print(
                f"{'with' if semantic else 'without':<9} {setting:<14} {r['s_per_image']:>8.3f} "
                f"{r['s_per_image'] / base:>16.2f}x {r['loss']:>9.5f} {r['peak_mb']:>8.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
