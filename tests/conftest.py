"""Shared test fixtures. `shared` is the project's ../shared folder (or $SGZ_SHARED): reference
checkpoints and data from elsewhere that are never copied into the project."""

import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("SGZ_SHARED", ROOT.parent / "shared"))

import model  # noqa: E402  (after the path is set)
from runtime import PAUSED  # noqa: E402


def wait_until_paused(proc):
    """Read a script's stderr (a text pipe) until it says it waits at runtime.pause_point (run it with
    SGZ_TEST_PAUSE_AFTER set), so a signal sent now arrives mid-work. Returns what it said."""
    said = []
    for line in proc.stderr:
        said.append(line)
        if line.rstrip().endswith(PAUSED):
            return "".join(said)
    proc.wait()
    raise AssertionError(f"the script ended (status {proc.returncode}) without pausing: {''.join(said)[-2000:]}")


@pytest.fixture(scope="session")
def shared():
    if not (SHARED / "reference" / "parity.npz").is_file():
        pytest.skip(f"reference data not found at {SHARED} (set SGZ_SHARED to the shared/ folder)")
    return SHARED


@pytest.fixture(scope="session")
def official_weights(shared):
    return shared / "reference" / "sgz_official_Epoch99.pth"


@pytest.fixture(scope="module")
def strong_weights(tmp_path_factory):
    """A random network whose last layer is scaled up so that its curve map spans [-1, 1]: every
    branch of the curve is exercised (the official weights are tested where ../shared is present)."""
    torch.manual_seed(0)
    net = model.EnhanceNet()
    with torch.no_grad():
        net.e_conv7.point_conv.weight.mul_(30)
    path = tmp_path_factory.mktemp("weights") / "strong.pth"
    torch.save(net.state_dict(), path)
    return path


def dark_image(shape, dtype=np.uint8, seed=0):
    """A smooth, dark test photo (HxW or HxWx3) of the given integer dtype."""
    top = np.iinfo(dtype).max
    smooth = cv2.resize(
        np.random.default_rng(seed).random((8, 8, 3)), (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC
    )
    image = np.clip(smooth**3 * 0.4 * top, 0, top).astype(dtype)
    return image if len(shape) == 3 else image[..., 0]


def max_abs_diff(a, b):
    return np.abs(a.astype(np.int64) - b.astype(np.int64)).max()


# ---------------------------------------------------------------------------------------------
# Device tests: `python -m pytest tests -m cuda --device cuda` runs the tests marked `cuda` (each takes the
# `device` fixture and compares that device with the CPU); without --device they are skipped, and
# `--device cpu` runs them on the CPU, a dry run of the tests themselves (benchmarks/gpu_check.py --device cpu).
# ---------------------------------------------------------------------------------------------
def pytest_addoption(parser):
    parser.addoption(
        "--device",
        default=None,
        help="run the tests marked cuda on this device (cuda, cuda:1; cpu: a dry run on the CPU)",
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "cuda: checks a device path against the CPU; runs only with --device "
        "(python -m pytest tests -m cuda --device cuda)",
    )
    name = config.getoption("--device")
    if name and torch.device(name).type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"--device {name}: PyTorch sees no CUDA device on this machine")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--device"):
        return
    skip = pytest.mark.skip(reason="device test: run with --device cuda (python -m pytest tests -m cuda --device cuda)")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def device(request):
    """The device given with --device (the tests that take it are skipped without one)."""
    return torch.device(request.config.getoption("--device"))
