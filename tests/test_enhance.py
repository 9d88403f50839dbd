"""enhance.py: the Enhancer computes what the network computes (to 1/255) in bands and from a few rows,
on every kind of image, at every scale factor and strength."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import dark_image, max_abs_diff

import enhance
import image_io
import model
from enhance import Enhancer, apply_curve_, resize_axis, row_upsampler
from runtime import UserError


@pytest.fixture(scope="module")
def weights(strong_weights):
    return strong_weights


@pytest.fixture(scope="module")
def enhancer(weights):
    return Enhancer(weights, device="cpu")


@torch.inference_mode()
def reference(weights, image, scale_factor=12):
    """The straightforward fp32 computation: model.EnhanceNet on the whole image, rounded like save_image."""
    top = np.iinfo(image.dtype).max
    net = model.load_enhance_net(weights, scale_factor=scale_factor).eval()
    x = torch.from_numpy(image.astype(np.float32) / top).permute(2, 0, 1)[None]
    return (net(x)[0][0].permute(1, 2, 0) * top + 0.5).clamp(0, top).numpy().astype(image.dtype)


# ---------------------------------------------------------------------------------------------
# The computation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(240, 360, 3), (241, 359, 3), (100, 37, 3), (13, 11, 3), (1, 1, 3), (700, 20, 3)])
def test_enhance_array_equals_the_whole_image_computation(weights, enhancer, shape):
    image = dark_image(shape)
    out = enhancer.enhance_array(image)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert max_abs_diff(out, reference(weights, image)) <= 1  # 1/255: only rounding ties may differ


@pytest.mark.parametrize("scale_factor", [1, 5])
def test_other_scale_factors(weights, enhancer, scale_factor):
    image = dark_image((60, 84, 3))
    out = Enhancer(weights, scale_factor=scale_factor, device="cpu").enhance_array(image)
    assert max_abs_diff(out, reference(weights, image, scale_factor)) <= 1
    np.testing.assert_array_equal(enhancer.enhance_array(image, scale_factor=scale_factor), out)  # one net, any scale


@pytest.mark.parametrize("scale_factor", [12, 5, 1])
def test_the_batched_path_equals_enhance_array_and_the_whole_image_computation(weights, enhancer, scale_factor):
    frames = np.stack([dark_image((90, 130, 3), seed=i) for i in range(3)])
    out = enhancer.enhance_frames(torch.from_numpy(frames), scale_factor=scale_factor)
    assert out.shape == frames.shape and out.dtype == torch.uint8
    for o, f in zip(out.numpy(), frames):
        assert max_abs_diff(o, enhancer.enhance_array(f, scale_factor=scale_factor)) <= 1
        assert max_abs_diff(o, reference(weights, f, scale_factor)) <= 1


def test_the_batched_path_takes_strength_and_a_map_filter_as_enhance_array(weights, enhancer):
    frame = dark_image((48, 64, 3))
    halve = lambda curve_map: curve_map / 2
    out = enhancer.enhance_frames(torch.from_numpy(frame)[None], strength=1.6, map_filter=halve)[0].numpy()
    assert max_abs_diff(out, enhancer.enhance_array(frame, strength=1.6, map_filter=halve)) <= 1
    assert max_abs_diff(out, enhancer.enhance_array(frame)) > 1  # they did change the result
    assert max_abs_diff(enhancer.enhance_frame(frame), enhancer.enhance_array(frame)) == 0  # a CPU: enhance_array


def test_official_weights_reproduce_the_official_outputs(shared, official_weights):
    parity = np.load(shared / "reference" / "parity.npz")
    enhancer = Enhancer(official_weights, device="cpu")
    for i in range(4):
        expected = (parity[f"out_s12_{i}"].transpose(1, 2, 0) * 255 + 0.5).clip(0, 255).astype(np.uint8)
        assert max_abs_diff(enhancer.enhance_array(parity[f"in{i}"]), expected) <= 1


def test_bands_of_rows_equal_the_whole_upsample():
    low = torch.rand(7, 9 * 3) * 2 - 1  # (h, W * 3): the curve map after the column resize
    whole = F.interpolate(
        low.view(1, 7, 27, 1).permute(0, 3, 1, 2), size=(50, 27), mode="bilinear", align_corners=True
    )[0, 0]
    fill = row_upsampler(low, 50)
    for bounds in ([0, 50], [0, 1, 2, 50], [0, 13, 17, 31, 49, 50]):
        bands = [fill(a, b, out=torch.empty(b - a, 27)) for a, b in zip(bounds, bounds[1:])]
        torch.testing.assert_close(torch.cat(bands), whole, rtol=0, atol=1e-6)


@pytest.mark.parametrize("sizes", [(360, 480, 30, 40), (361, 479, 30, 40), (100, 37, 8, 3), (7, 5, 1, 1)])
def test_resizing_from_a_few_rows_equals_f_interpolate(sizes):
    height, width, h, w = sizes
    image = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8)
    whole = F.interpolate(image.permute(2, 0, 1)[None].float(), size=(h, w), mode="bilinear", align_corners=False)
    ours = resize_axis(resize_axis(image, 0, h, False), 1, w, False)
    torch.testing.assert_close(ours, whole[0].permute(1, 2, 0), rtol=0, atol=1e-4)  # 0..255 scale


def test_in_place_curve_equals_the_model_curve():
    g = torch.Generator().manual_seed(0)
    x, r = torch.rand(64, 5, 3, generator=g), torch.rand(64, 5, 3, generator=g) * 2 - 1
    scratch = (torch.empty_like(x), torch.empty_like(x))
    ours = apply_curve_(x.clone(), r, scratch, scale=255.0)
    # the two forms round differently over 8 fp32 steps: ~2e-3 of a 0-255 level at most, far below one level
    torch.testing.assert_close(ours, model.apply_curve(x, r) * 255 + 0.5, rtol=0, atol=4e-3)


@pytest.mark.parametrize("shape, dtype", [((97, 61, 4), np.uint8), ((97, 61), np.uint16)])
def test_band_size_does_not_change_the_result(weights, shape, dtype):
    image = dark_image(shape[:2] + (3,), dtype)
    image = np.dstack([image, image[..., :1]]) if len(shape) == 3 else image[..., 0].copy()  # RGBA, grey: in bands
    small_bands = Enhancer(weights, device="cpu")
    small_bands.band_elements = 1  # one row per band
    assert max_abs_diff(small_bands.enhance_array(image), Enhancer(weights, device="cpu").enhance_array(image)) == 0


@pytest.mark.parametrize("shape, dtype", [((83, 121, 3), np.uint8), ((83, 121, 4), np.uint16), ((83, 121), np.uint8)])
def test_cpu_kernel_equals_the_pytorch_bands_of_other_devices(enhancer, shape, dtype):
    """The fused CPU kernel and the PyTorch band path that GPUs run compute the same image."""
    image = dark_image(shape[:2] + (3,), dtype)
    image = np.dstack([image, image[..., :1]]) if shape[-1] == 4 else image if len(shape) == 3 else image[..., 0].copy()
    grey = image.ndim == 2
    rgb = image[..., None] if grey else image[..., :3]
    pixels = torch.from_numpy(np.ascontiguousarray(rgb))
    full_scale = float(np.iinfo(dtype).max)
    with torch.inference_mode():
        curve_rows = enhancer.curve_map_rows(pixels, full_scale, 12, 1.0, None)
        bands = np.empty(image.shape[:2] + (() if grey else (3,)), dtype)
        enhancer.apply_curve_bands(pixels, curve_rows, bands, full_scale)
    kernel = enhancer.enhance_array(image)
    assert max_abs_diff(kernel if grey else kernel[..., :3], bands) <= 1  # float32 either way: rounding ties only


def test_grey_rgba_and_16_bit(weights, enhancer):
    rgb = dark_image((50, 70, 3))
    grey = enhancer.enhance_array(rgb[..., 1].copy())
    assert grey.shape == (50, 70) and grey.dtype == np.uint8
    rgba = np.dstack([rgb, np.arange(50 * 70).reshape(50, 70) % 256]).astype(np.uint8)
    out = enhancer.enhance_array(rgba)
    assert out.shape == rgba.shape
    np.testing.assert_array_equal(out[..., 3], rgba[..., 3])
    assert max_abs_diff(out[..., :3], enhancer.enhance_array(rgb)) == 0
    deep = dark_image((50, 70, 3), np.uint16)
    out16 = enhancer.enhance_array(deep)
    assert out16.dtype == np.uint16 and max_abs_diff(out16, reference(weights, deep)) <= 2  # of 65535


def test_strength_and_map_filter(enhancer):
    image = dark_image((40, 60, 3))
    np.testing.assert_array_equal(enhancer.enhance_array(image, strength=0.0), image)  # r = 0: the identity
    seen = []

    def zero_map(curve_map):
        seen.append(tuple(curve_map.shape))
        return torch.zeros_like(curve_map)

    np.testing.assert_array_equal(enhancer.enhance_array(image, map_filter=zero_map), image)
    assert seen == [(1, 3, 3, 5)]  # the 1/12 map of 40x60
    gentle, full = (enhancer.enhance_array(image, strength=s).astype(int).mean() for s in (0.5, 1.0))
    assert image.mean() < gentle < full or image.mean() > gentle > full


@pytest.mark.parametrize("channels, dtype", [(3, np.uint8), (4, np.uint8), (3, np.uint16)])
def test_bgr_in_and_out_is_rgb_reversed(enhancer, channels, dtype):
    """OpenCV's layout (test.py decodes and encodes in it): the same enhancement, channels reversed; also
    with a map filter, which sees the map in RGB either way."""
    rgb = dark_image((67, 91, 3), dtype)
    if channels == 4:
        rgb = np.dstack([rgb, np.arange(67 * 91).reshape(67, 91).astype(dtype)])
    bgr = np.ascontiguousarray(rgb[..., [2, 1, 0, 3][:channels]])
    order = [2, 1, 0, 3][:channels]
    np.testing.assert_array_equal(enhancer.enhance_array(bgr, order="BGR"), enhancer.enhance_array(rgb)[..., order])
    seen = []

    def halve_red(curve_map):
        seen.append(curve_map[0, 0].clone())
        return curve_map * torch.tensor([0.5, 1.0, 1.0]).view(1, 3, 1, 1)

    out = enhancer.enhance_array(bgr, order="BGR", map_filter=halve_red)
    np.testing.assert_array_equal(out, enhancer.enhance_array(rgb, map_filter=halve_red)[..., order])
    torch.testing.assert_close(seen[0], seen[1])  # the red channel's map, both times
    grey = rgb[..., 0].copy()
    np.testing.assert_array_equal(enhancer.enhance_array(grey, order="BGR"), enhancer.enhance_array(grey))


def test_bf16_is_within_2_of_255_of_fp32(shared, official_weights):
    image = image_io.read_image(shared / "data" / "test_data" / "real" / "101_0_.png")[0]
    fp32 = Enhancer(official_weights, device="cpu").enhance_array(image)
    bf16 = Enhancer(official_weights, device="cpu", precision="bf16").enhance_array(image)
    assert max_abs_diff(fp32, bf16) <= 2


def test_bad_arguments(weights, enhancer):
    with pytest.raises(UserError, match="fp16 needs a GPU"):
        Enhancer(weights, device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="uint8 or uint16"):
        enhancer.enhance_array(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match="order"):
        enhancer.enhance_array(np.zeros((4, 4, 3), np.uint8), order="YUV")
    with pytest.raises(UserError, match="nothere.pth"):
        Enhancer("nothere.pth", device="cpu")


# ---------------------------------------------------------------------------------------------
# Tiles: the network on a large copy runs in overlapping tiles, with the same result
# ---------------------------------------------------------------------------------------------
@torch.inference_mode()
def test_tiled_network_equals_the_whole_run():
    """float64 so that summation order cannot hide a wrong halo: with RECEPTIVE_RADIUS the tiles give the
    whole run's map (1e-12), with one pixel less of context they do not (the test can fail)."""
    torch.manual_seed(0)
    net = model.EnhanceNet().eval().double()
    for p in net.parameters():
        p.mul_(3)  # strong dependence on every pixel of the receptive field
    x = torch.rand(1, 3, 60, 45, dtype=torch.float64)
    whole = net.curve_map_lowres(x)
    for budget in (64, 300, 1000):  # tiles of 7, 3 and 17 pixels (+ the halo)
        assert (enhance.curve_map_tiled(net, x, budget) - whole).abs().max() < 1e-12
    assert torch.equal(enhance.curve_map_tiled(net, x, 60 * 45), whole)  # fits: one run
    radius = enhance.RECEPTIVE_RADIUS
    try:
        enhance.RECEPTIVE_RADIUS = radius - 1
        assert (enhance.curve_map_tiled(net, x, 300) - whole).abs().max() > 1e-3
    finally:
        enhance.RECEPTIVE_RADIUS = radius


def test_enhancer_in_tiles_equals_untiled(weights, enhancer, monkeypatch):
    """The whole Enhancer at scale factor 1 (the network on the full image) with a tiny tile budget: within
    1e-5 of the untiled map, so the same pixels (up to a rounding tie)."""
    image = dark_image((90, 70, 3))
    untiled = enhancer.enhance_array(image, scale_factor=1)
    rows_untiled = enhancer.curve_map_rows(torch.from_numpy(image), 255.0, 1, 1.0, None)
    monkeypatch.setattr(enhance, "TILE_PIXELS", 900)  # tiles of 16 + 2 * 7 pixels a side
    calls = []
    net_run = enhancer.net.curve_map_small
    monkeypatch.setattr(enhancer.net, "curve_map_small", lambda x: calls.append(x.shape) or net_run(x))
    rows_tiled = enhancer.curve_map_rows(torch.from_numpy(image), 255.0, 1, 1.0, None)
    assert len(calls) > 4 and all(s[-2] * s[-1] <= 900 for s in calls)
    assert (rows_tiled - rows_untiled).abs().max() < 1e-5
    assert max_abs_diff(enhancer.enhance_array(image, scale_factor=1), untiled) <= 1
    assert max_abs_diff(untiled, reference(weights, image, scale_factor=1)) <= 1


@pytest.mark.parametrize("bad", [0, -3, float("nan"), 2.5, True, "x"])
def test_bad_scale_factor_and_strength_are_refused(enhancer, bad):
    with pytest.raises(ValueError, match="scale_factor: expected a positive integer"):
        enhancer.enhance_array(dark_image((8, 8, 3)), scale_factor=bad)
    with pytest.raises(UserError, match="strength: expected a finite number >= 0"):
        enhancer.enhance_array(dark_image((8, 8, 3)), strength=float("nan") if bad is True else -1)


# ---------------------------------------------------------------------------------------------
# Speed mechanisms: the same results by faster means
# ---------------------------------------------------------------------------------------------
@torch.inference_mode()
def test_pointwise_convs_on_onednn_compute_the_same_network(weights):
    """The Enhancer's net runs its 1x1 convolutions through OneDNNConv2d (where PyTorch has oneDNN), and that
    net computes the plain net's map (to float rounding), in fp32 and, falling back to PyTorch's own choice,
    under bf16 autocast. The weights (the state dict) are untouched."""
    plain = model.load_enhance_net(weights).eval().to(memory_format=torch.channels_last)
    fast = model.load_enhance_net(weights).eval().to(memory_format=torch.channels_last)
    enhance.pointwise_convs_on_onednn_(fast)
    swapped = [m for m in fast.modules() if isinstance(m, enhance.OneDNNConv2d)]
    if torch.backends.mkldnn.is_available():
        assert len(swapped) == 7 and all(m.kernel_size == (1, 1) for m in swapped)
    for key, value in plain.state_dict().items():
        assert torch.equal(fast.state_dict()[key], value)
    x = torch.rand(1, 3, 37, 53).contiguous(memory_format=torch.channels_last)
    assert (fast.curve_map_small(x) - plain.curve_map_small(x)).abs().max() < 1e-5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (fast.curve_map_small(x).float() - plain.curve_map_small(x).float()).abs().max() < 1e-2
    assert (fast.curve_map_small(x.contiguous()) - plain.curve_map_small(x)).abs().max() < 1e-5  # NCHW input too


def test_the_kernel_loads_without_scipy_and_scipy_stays_importable():
    """In a fresh process the kernel's first load leaves SciPy out (numba only checks for its BLAS), and
    SciPy can still be imported afterwards; the refusal holds only in the loading thread."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, threading\n"
        "import curve_kernel\n"
        "curve_kernel.warm_up_curve_kernel()\n"
        "assert 'scipy' not in sys.modules, 'scipy imported by the load'\n"
        "import scipy.linalg\n"
        "finder = curve_kernel.SciPyRefused()\n"
        "seen = []\n"
        "t = threading.Thread(target=lambda: seen.append(finder.find_spec('scipy')))\n"
        "t.start(); t.join()\n"
        "assert seen == [None], 'refused in another thread'\n"
        "try:\n"
        "    finder.find_spec('scipy.special')\n"
        "    raise SystemExit('not refused in its own thread')\n"
        "except ModuleNotFoundError:\n"
        "    pass\n"
        "print('ok')\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
