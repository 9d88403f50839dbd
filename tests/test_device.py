"""Every path that takes a device, run on that device and compared with the CPU: enhancement of every kind of
image in each precision, test.py, the video path, training steps in fp32, bf16 and fp16 with loss scaling,
checkpoints moving between devices, DDP over NCCL.

    python -m pytest tests -m cuda --device cuda      # on a GPU machine (benchmarks/gpu_check.py runs this)

Without --device these tests are skipped; `--device cpu` runs them on the CPU against itself, a dry run of the
tests (fp16 and NCCL skip there).
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, dark_image, max_abs_diff
from test_video import decode_rgb, make_clip, mv

import image_io
import train
import train_utils
from enhance import Enhancer
from option import get_train_parser

pytestmark = pytest.mark.cuda

REAL_WEIGHTS = ROOT / "weight" / "sgz.pth"
# Largest difference from the CPU's fp32 result, in 1/255 of the full scale. bf16 keeps 8 bits of mantissa: on
# the CPU it is itself within 2/255 of fp32 (see test_enhance); fp16 keeps 11.
TOLERANCE = {"fp32": 1, "fp16": 1, "bf16": 2}
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
LR = 1e-3


def skip_where_unsupported(device, precision):
    if precision == "fp16" and device.type == "cpu":
        pytest.skip("fp16 runs on CUDA only")


def tolerance(precision, dtype):
    return TOLERANCE[precision] * (np.iinfo(dtype).max // 255)


def make_image(layout, dtype, shape=(241, 359)):
    rgb = dark_image((*shape, 3), dtype)
    if layout == "grey":
        return np.ascontiguousarray(rgb[..., 1])
    if layout == "rgba":
        alpha = (np.arange(shape[0] * shape[1]).reshape(shape) % 251).astype(dtype)
        return np.dstack([rgb, alpha])
    return rgb


# ---------------------------------------------------------------------------------------------
# Enhancement
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cpu_results():
    """The CPU's fp32 result for each (weights, layout, dtype), computed once."""
    cache = {}

    def get(weights, layout, dtype):
        key = (str(weights), layout, dtype)
        if key not in cache:
            cache[key] = Enhancer(weights, device="cpu").enhance_array(make_image(layout, dtype))
        return cache[key]

    return get


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16], ids=["uint8", "uint16"])
@pytest.mark.parametrize("layout", ["rgb", "grey", "rgba"])
@pytest.mark.parametrize("weights", ["real", "strong"])
def test_enhancer_on_the_device_equals_the_cpu(device, cpu_results, strong_weights, weights, layout, dtype, precision):
    skip_where_unsupported(device, precision)
    weights = REAL_WEIGHTS if weights == "real" else strong_weights
    image = make_image(layout, dtype)
    out = Enhancer(weights, device=device, precision=precision).enhance_array(image)
    assert out.shape == image.shape and out.dtype == image.dtype
    assert max_abs_diff(out, cpu_results(weights, layout, dtype)) <= tolerance(precision, dtype)
    if layout == "rgba":
        np.testing.assert_array_equal(out[..., 3], image[..., 3])


def test_a_photo_larger_than_one_band_of_rows(device, strong_weights):
    image = dark_image((2160, 1440, 3))  # 9.3M values: two bands on a GPU, many on a CPU
    on_device = Enhancer(strong_weights, device=device).enhance_array(image, scale_factor=5, strength=0.7)
    on_cpu = Enhancer(strong_weights, device="cpu").enhance_array(image, scale_factor=5, strength=0.7)
    assert max_abs_diff(on_device, on_cpu) <= 1


def test_test_py_on_the_device_equals_the_cpu(device, tmp_path):
    inputs = tmp_path / "in"
    for name, layout, dtype in [
        ("rgb.png", "rgb", np.uint8),
        ("grey.png", "grey", np.uint8),
        ("rgba.png", "rgba", np.uint8),
        ("deep.png", "rgb", np.uint16),
        ("photo.jpg", "rgb", np.uint8),
    ]:
        image_io.write_image(inputs / name, make_image(layout, dtype, shape=(90, 130)))
    for name, d in (("device", device), ("cpu", "cpu")):
        r = subprocess.run(
            [
                sys.executable,
                str(ROOT / "test.py"),
                "--input_dir",
                str(inputs),
                "--test_dir",
                str(tmp_path / name),
                "--weight_dir",
                str(REAL_WEIGHTS),
                "--device",
                str(d),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-2000:]
    for src in sorted(inputs.iterdir()):
        a, b = (image_io.read_image(tmp_path / name / src.name)[0] for name in ("device", "cpu"))
        assert a.shape == b.shape and a.dtype == b.dtype
        assert max_abs_diff(a, b) <= tolerance("fp32", a.dtype), src.name


def test_video_on_the_device_equals_the_cpu(device, tmp_path):
    src = make_clip(tmp_path / "in.mp4", 96, 64, frames=12)
    for name, d in (("device", device), ("cpu", "cpu")):
        summary = mv.enhance_video(
            Enhancer(REAL_WEIGHTS, device=d), src, tmp_path / f"{name}.mp4", temporal_smoothing=0.8, preset="ultrafast"
        )
        assert summary["frames"] == 12
    on_device, on_cpu = decode_rgb(tmp_path / "device.mp4"), decode_rgb(tmp_path / "cpu.mp4")
    assert len(on_device) == len(on_cpu) == 12
    # The encoder sees frames equal to 1/255: what comes out differs by the codec's reaction to that at most.
    assert max(np.abs(a.astype(int) - b).mean() for a, b in zip(on_device, on_cpu)) < 0.5
    assert np.mean(on_device) > np.mean(decode_rgb(src)) + 10  # enhanced, not passed through


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def train_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train_images")
    for i in range(4):
        image_io.write_image(folder / f"{i}.png", dark_image((64, 64, 3), seed=i))
    return folder


def train_args(images, out, device, *extra):
    return get_train_parser().parse_args(
        [
            "--lowlight_images_path",
            str(images),
            "--snapshots_folder",
            str(out),
            "--image_size",
            "64",
            "--train_batch_size",
            "2",
            "--num_workers",
            "0",
            "--device",
            str(device),
            "--seg_weight",
            "0.1",
            "--seg_backbone",
            "random",
            "--lr",
            str(LR),
            "--display_iter",
            "1",
            "--snapshot_iter",
            "1",
            *extra,
        ]
    )


def mean_abs_difference(a, b):
    return float(torch.cat([(a[k].float().cpu() - b[k].float().cpu()).abs().flatten() for k in a]).mean())


@pytest.fixture(scope="module")
def cpu_first_step(train_images, tmp_path_factory):
    """A batch and the CPU's fp32 loss on it, at the initial weights."""
    with train.Trainer(train_args(train_images, tmp_path_factory.mktemp("cpu_run"), "cpu")) as cpu:
        batch = next(iter(cpu.data_loader)).to(memory_format=torch.channels_last)
        return batch, float(one_step(cpu, batch)[0]["total"])


def one_step(trainer, images):
    """train.train_step with the trainer's own model, loss, optimizer and scaler."""
    return train.train_step(
        trainer.model,
        trainer.criterion,
        trainer.optimizer,
        trainer.scaler,
        images,
        trainer.device,
        trainer.args.amp,
        trainer.args.grad_clip_norm,
    )


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_steps_on_the_device_match_the_cpu(
    device, train_images, cpu_first_step, tmp_path, monkeypatch, request, precision
):
    skip_where_unsupported(device, precision)
    batch, cpu_loss = cpu_first_step
    if precision != "fp32":  # train.py picks bf16 where the GPU has it; fp16 + GradScaler is the older GPUs' path
        monkeypatch.setattr(train_utils, "autocast_dtype", lambda _: AMP_DTYPES[precision])
    t = train.Trainer(train_args(train_images, tmp_path / "device", device, "--amp", str(precision != "fp32")))
    request.addfinalizer(t.close)
    assert t.device.type == device.type and t.scaler.is_enabled() == (precision == "fp16" and device.type == "cuda")
    images = batch.to(t.device, memory_format=torch.channels_last)
    done = []
    for _ in range(20):  # fp16: the loss scaler skips steps (halving its scale) until the gradients fit
        result = one_step(t, images)
        done += [result] if result is not None else []
        if len(done) == 5:
            break
    assert len(done) == 5
    totals = [float(terms["total"]) for terms, _ in done]
    assert totals[0] == pytest.approx(cpu_loss, rel=1e-2)  # skipped steps change nothing: the same weights
    assert totals[-1] < totals[0]
    assert all(torch.isfinite(p).all() for p in t.model_without_ddp.parameters())
    if t.scaler.is_enabled():
        assert 0 < t.scaler.get_scale() < float("inf")


@pytest.mark.parametrize("direction", ["device_to_cpu", "cpu_to_device"])
def test_a_checkpoint_resumes_on_the_other_device(device, train_images, tmp_path, direction):
    first, second = (device, "cpu") if direction == "device_to_cpu" else ("cpu", device)
    common = ["--seg_weight", "0", "--num_epochs", "3"]  # 2 steps an epoch
    with train.Trainer(train_args(train_images, tmp_path / "straight", first, *common, "--max_steps", "5")) as t:
        t.train()
    with train.Trainer(train_args(train_images, tmp_path / "split", first, *common, "--max_steps", "3")) as t:
        t.train()
    with train.Trainer(
        train_args(
            train_images,
            tmp_path / "split",
            second,
            *common,
            "--max_steps",
            "5",
            "--resume",
            str(tmp_path / "split" / "last.pth"),
        )
    ) as t:
        assert t.device.type == torch.device(second).type and t.position.step == 3
        t.train()
    split = torch.load(tmp_path / "split" / "last.pth", weights_only=True)
    straight = torch.load(tmp_path / "straight" / "last.pth", weights_only=True)
    assert split["step"] == 5 and all(int(s["step"]) == 5 for s in split["optimizer"]["state"].values())
    # The same run up to the devices' rounding: a lost model or optimizer state would be off by about LR everywhere.
    assert mean_abs_difference(split["model"], straight["model"]) < LR / 10


DDP_OVER_NCCL = """
import sys
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
sys.path.insert(0, sys.argv[1])
import train
from option import get_train_parser

# One process: train.py itself only joins a process group for several (NCCL refuses two ranks on one GPU),
# so join it here and wrap the net as train.Trainer does for several ranks.
dist.init_process_group("nccl", device_id=torch.device("cuda", 0))
with train.Trainer(get_train_parser().parse_args(sys.argv[2:])) as trainer:
    trainer.model = DistributedDataParallel(trainer.model_without_ddp, device_ids=[0])
    trainer.train()
print("backend", dist.get_backend(), "world size", dist.get_world_size())
dist.destroy_process_group()
"""


def test_ddp_over_nccl(device, train_images, tmp_path):
    if device.type != "cuda":
        pytest.skip("NCCL runs on CUDA only")
    gpus = torch.cuda.device_count()
    common = [
        str(a)
        for a in [
            "--lowlight_images_path",
            train_images,
            "--image_size",
            64,
            "--num_workers",
            0,
            "--seg_weight",
            0,
            "--num_epochs",
            1,
            "--lr",
            LR,
            "--device",
            "cuda",
        ]
    ]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(min(gpus, 2))]
    if gpus >= 2:  # train.py's own DDP: each rank takes half of the batch of 2
        argv = [*torchrun, str(ROOT / "train.py"), *common, "--train_batch_size", "1"]
    else:
        (tmp_path / "ddp_over_nccl.py").write_text(DDP_OVER_NCCL)
        argv = [*torchrun, str(tmp_path / "ddp_over_nccl.py"), str(ROOT), *common, "--train_batch_size", "2"]
    r = subprocess.run(
        [*argv, "--snapshots_folder", str(tmp_path / "ddp")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=180,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert gpus >= 2 or "backend nccl world size 1" in r.stdout
    with train.Trainer(
        get_train_parser().parse_args(
            [*common, "--train_batch_size", "2", "--snapshots_folder", str(tmp_path / "single")]
        )
    ) as single:
        single.train()
    ddp = torch.load(tmp_path / "ddp" / "last.pth", weights_only=True)
    assert ddp["step"] == 2
    assert mean_abs_difference(ddp["model"], single.model_without_ddp.state_dict()) < LR / 10
